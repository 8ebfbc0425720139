"""The Ray Tune callback that writes each trial's records into the job's MLflow spool, from the
driver, without blocking Tune.

Tune's hooks only enqueue events. One writer thread turns them into records in the job's spool
(``tuner.record.spool``), one fsync per burst. The callback never talks to MLflow and holds no
tracking URI (Tune pickles callbacks with the experiment, and a URI may hold credentials): the job
run owns a :class:`tuner.record.deliverer.Deliverer`, which reads the spool and sends what is
pending, and whatever is still pending at the end is delivered by the driver, on ``--resume`` or by
``losstune sync``. On ``--resume`` Tune unpickles the callback as it was; it writes into the spool
of the job run delivering in this process (``tuner.record.deliverer.active_spool``: the job resumed
from another folder or machine has its spool there), else into the one it was given.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from trainables.config import Config
from trainables.vocab import (
    ALL_MET,
    ARM_KEY,
    EPOCH_REACHED,
    TARGET_METRICS,
    TARGET_PREFIX,
    Status,
    mlflow_key,
    target_flag,
    trial_status,
)
from tuner.cluster.runtime import redact
from tuner.core.layout import trial_run_name
from tuner.record.deliverer import active_spool
from tuner.record.records import NOTE_TAG
from tuner.record.spool import Spool, metric_rows

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

__all__ = ["TrialSpooler", "trial_description"]

_log = logging.getLogger(__name__)
_SKIP = {"trial_id", "date", "hostname", "node_ip", "pid", "timestamp", "done", "config", "experiment_tag"}
# An event for the writer thread: (kind, trial id, payload…)
Event = tuple[Any, ...]


class TrialSpooler(Callback):
    """The Tune callback that writes each trial's records into the job's spool (the module says how).

    Args:
        base_config: the arm's configuration, which each trial's sampled values change.
        spool_path: the job's spool file.
        tags: tags of each trial's run (its arm and phase).
        arm_base_configs: several arms in the run (the confirmation): each arm's configuration; a
            trial's ``arm`` key (``trainables.vocab.ARM_KEY``) picks it and its ``losstune.arm`` tag.
    """

    def __init__(self, *, base_config: dict[str, Any], spool_path: str, tags: dict[str, str] | None = None,
                 arm_base_configs: dict[str, dict[str, Any]] | None = None) -> None:
        self.tags = dict(tags or {"losstune.arm": "stack", "losstune.phase": "search"})
        self.base_config, self.spool_path = base_config, spool_path
        self.arm_base_configs = dict(arm_base_configs or {})
        self._init_runtime()

    # ---- pickling: Tune stores callbacks with the experiment state
    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in ("base_config", "spool_path", "tags", "arm_base_configs")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"arm_base_configs": {}, **state})
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._queue: queue.Queue[Event] = queue.Queue()
        self._thread: threading.Thread | None = None

    def _put(self, *event: object) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="losstune-spool", daemon=True)
            self._thread.start()
        self._queue.put(event)

    # ---- Tune hooks (driver thread): enqueue only
    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: object) -> None:
        # Tune keeps its trials in the order it created them: the number losstune's summaries show
        number = trials.index(trial) if trial in trials else -1
        self._put("start", trial.trial_id, dict(trial.config), number)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, object],
                        **info: object) -> None:
        metrics = {k: v for k, v in result.items() if k not in _SKIP and isinstance(v, (int, float))
                   and not isinstance(v, bool)}
        self._put("result", trial.trial_id, metrics, int(result.get("epoch", result.get("training_iteration", 0))))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: object) -> None:
        self._put("end", trial.trial_id, dict(trial.last_result or {}), False)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: object) -> None:
        self._put("end", trial.trial_id, dict(trial.last_result or {}), True)

    def on_experiment_end(self, trials: list[Trial], **info: object) -> None:
        for t in trials:  # nothing is left RUNNING, whatever happened
            self._put("end", t.trial_id, dict(t.last_result or {}), t.status == "ERROR")
        self.drain()

    def drain(self, timeout_s: float = 120.0) -> None:
        """Spool every queued event; the job's deliverer and, at the end, the driver send them."""
        if self._thread is None:
            return
        self._queue.put(("stop",))
        self._thread.join(timeout=timeout_s)
        self._thread = None

    # ---- writer thread
    def _work(self) -> None:
        # where the job is now: the running job's spool (a resumed job may have moved), else the pickled path
        spool = Spool(active_spool() or self.spool_path)
        try:
            while True:
                events = self._take()
                for event in events:
                    if event[0] == "stop":
                        continue
                    try:
                        self._record(spool, event)
                    except Exception as exc:  # never let one bad event stop the writer
                        _log.warning("losstune: cannot spool the %s of trial %s: %s", event[0], event[1],
                                     redact(str(exc))[:300])
                if events:
                    spool.sync()  # one fsync for the burst
                if any(e[0] == "stop" for e in events):
                    return
        finally:
            spool.close()

    def _take(self) -> list[Event]:
        """The events queued now (waiting up to half a second for the first)."""
        try:
            events = [self._queue.get(timeout=0.5)]
        except queue.Empty:
            return []
        while True:
            try:
                events.append(self._queue.get_nowait())
            except queue.Empty:
                return events

    def _record(self, spool: Spool, event: Event) -> None:
        """Append the event's record to the spool."""
        kind, tid = event[0], event[1]
        if kind == "start":
            values = dict(event[2] or {})
            arm = values.pop(ARM_KEY, None)
            base = self.arm_base_configs[arm] if arm is not None else self.base_config
            tags = {**self.tags, **({"losstune.arm": str(arm)} if arm is not None else {})}
            cfg = Config.from_dict(base).with_overrides(values, source="trial config")
            number = event[3] if len(event) > 3 else -1
            spool.append({"kind": "trial_start", "trial": tid, "name": self._run_name(tid, number, tags),
                          "tags": {**tags, NOTE_TAG: "**Running**."},
                          "config_json": json.dumps(cfg.to_dict(), separators=(",", ":")),
                          "params": {k: str(v) for k, v in cfg.flat().items()}}, sync=False)
            return
        if kind == "result":
            _, _, metrics, step = event
            if step <= spool.last_step(tid):
                return  # re-reported after a restore: already on record
            rows = metric_rows(metrics, step)
            if rows:
                spool.append({"kind": "trial_metrics", "trial": tid, "metrics": rows}, sync=False)
            return
        if kind == "end":
            _, _, last, errored = event
            if spool.trial_state(tid) != "started":
                return  # never started (it has no run), or already ended
            status = trial_status(last.get("status"), errored=errored)
            # the last epoch's metrics (objective, best/*) are on record from its own report already:
            # only the target flags under their MLflow names are new here
            summary = {mlflow_key(k): v for k, v in last.items() if k.startswith(TARGET_PREFIX)}
            spool.append({"kind": "trial_end", "trial": tid, "metrics": metric_rows(summary, int(last.get("epoch", 0))),
                          "tags": {"losstune.status": status.value, NOTE_TAG: trial_description(status, last)},
                          "status": status.mlflow_status}, sync=False)

    @staticmethod
    def _run_name(tid: str, number: int, tags: dict[str, str]) -> str:
        return trial_run_name(tid, number, arm=tags.get("losstune.arm", "stack"),
                              phase=tags.get("losstune.phase", "search"))


_HOW = {Status.COMPLETED: "ran every epoch", Status.EARLY_STOPPED: "stopped by its own early stopping",
        Status.STOPPED: "stopped from outside (by ASHA, --stop-on-target or an interrupted job)",
        Status.DIVERGED: "its loss turned NaN or infinite", Status.FAILED: "its worker failed more often than "
                                                                          "--max-failures allows"}


def trial_description(status: Status, last: dict[str, Any]) -> str:
    """A trial run's description (Markdown): how it ended, its best epoch, whether it met the targets."""
    epochs = int(last.get("epoch", 0) or 0)
    lines = [f"**{status.value}** after {epochs} epoch{'s' * (epochs != 1)}: {_HOW.get(status, status.value)}."]
    best = int(last.get("best/epoch", 0) or 0)
    if best:
        shown = ", ".join(f"{k.upper()} {float(last[f'best/val/{k}']):.4f}" for k in ("auroc", "auprc", "ece")
                          if isinstance(last.get(f"best/val/{k}"), (int, float)))
        lines.append(f"Best epoch {best}: validation {shown}.")
    else:
        lines.append("No epoch was evaluated.")
    flags = {m: last.get(target_flag(m)) for m in TARGET_METRICS if target_flag(m) in last}
    if not flags:
        lines.append("No targets were set.")
    elif last.get(ALL_MET) == 1:
        lines.append(f"Targets: **met** on validation (first at epoch {int(last.get(EPOCH_REACHED, 0))}).")
    else:
        each = ", ".join(f"{m.upper()} {'met' if v == 1 else 'not met'}" for m, v in flags.items())
        lines.append(f"Targets: **not met** on validation ({each}).")
    return " ".join(lines)
