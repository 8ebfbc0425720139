"""The Ray Tune callback that records trials in MLflow, from the driver, without blocking Tune.

Tune's hooks only enqueue events. One writer thread turns them into records in the job's spool
(``tuner.record.spool``: written and fsynced before they are sent) and delivers what is pending: at once
for a trial's start and end, every ``flush_every_s`` for its epochs (so they go out in a few
``log_batch`` calls per trial). While the store does not answer, the writer keeps spooling and
tries again with a growing pause (at most ``max_backoff_s``), so a server that comes back mid-job
receives everything; whatever is still pending at the end is delivered by the driver, on
``--resume`` or by ``losstune sync``.

The callback takes its tracking URI in its constructor and pickles without it (Tune saves
callbacks with the experiment, and a URI may hold credentials), without its thread, its queue or
its spool handle. On ``--resume`` Tune unpickles it; the driver has handed the URI over before
(``MLflowTrialCallback.expect_uri``), in this process only. What could not be delivered stays in
the spool, which the driver reads: no side channel.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from trainables.config import Config
from trainables.vocab import (
    ALL_MET,
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
from tuner.record.records import NOTE_TAG
from tuner.record.spool import Courier, Spool, metric_rows

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

__all__ = ["MLflowTrialCallback", "trial_description"]

_log = logging.getLogger(__name__)
_SKIP = {"trial_id", "date", "hostname", "node_ip", "pid", "timestamp", "done", "config", "experiment_tag"}


class MLflowTrialCallback(Callback):
    """The Tune callback that writes each trial's MLflow run through the job's spool (the module says how)."""

    _handed_over: dict[str, str] = {}  # spool path → URI, for callbacks that Tune unpickles on resume

    def __init__(self, *, uri: str, experiment_id: str, parent_run_id: str, base_config: dict[str, Any],
                 spool_path: str, flush_every_s: float = 5.0, max_backoff_s: float = 8.0,
                 tags: dict[str, str] | None = None) -> None:
        self.uri = uri
        self.tags = dict(tags or {"losstune.arm": "stack", "losstune.phase": "search"})  # on each trial's run
        self.experiment_id, self.parent_run_id = experiment_id, parent_run_id
        self.base_config, self.spool_path = base_config, spool_path
        self.flush_every_s, self.max_backoff_s = flush_every_s, max_backoff_s
        self._init_runtime()
        self._fresh = True  # a new job: no trial has a run yet, nothing to look up

    # ---- pickling: Tune stores callbacks with the experiment state
    def __getstate__(self) -> dict[str, Any]:
        keep = ("experiment_id", "parent_run_id", "base_config", "spool_path", "flush_every_s", "max_backoff_s",
                "tags")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.uri = MLflowTrialCallback._handed_over.get(str(self.spool_path), "")
        self._init_runtime()
        self._fresh = False  # unpickled: Tune restored a job, whose trials may have runs already

    @classmethod
    def expect_uri(cls, spool_path: str | Path, uri: str) -> None:
        """The URI for the callback of the job whose spool is ``spool_path``, when Tune restores it."""
        cls._handed_over[str(spool_path)] = uri

    def _init_runtime(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def _put(self, *event: Any) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="losstune-mlflow", daemon=True)
            self._thread.start()
        self._queue.put(event)

    # ---- Tune hooks (driver thread): enqueue only
    def on_trial_start(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        # Tune keeps its trials in the order it created them: the number losstune's summaries show
        number = trials.index(trial) if trial in trials else -1
        self._put("start", trial.trial_id, dict(trial.config), number)

    def on_trial_result(self, iteration: int, trials: list, trial: Trial, result: dict, **info: Any) -> None:
        metrics = {k: v for k, v in result.items() if k not in _SKIP and isinstance(v, (int, float))
                   and not isinstance(v, bool)}
        self._put("result", trial.trial_id, metrics, int(result.get("epoch", result.get("training_iteration", 0))))

    def on_trial_recover(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self._put("flush", trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self._put("end", trial.trial_id, dict(trial.last_result or {}), False)

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self._put("end", trial.trial_id, dict(trial.last_result or {}), True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for t in trials:  # nothing is left RUNNING, whatever happened
            self._put("end", t.trial_id, dict(t.last_result or {}), t.status == "ERROR")
        self.drain()

    def drain(self, timeout_s: float = 120.0) -> None:
        """Record every queued event and try one last delivery; the driver delivers the rest."""
        if self._thread is None:
            return
        self._queue.put(("stop",))
        self._thread.join(timeout=timeout_s)
        self._thread = None

    # ---- writer thread
    def _work(self) -> None:
        spool = Spool(self.spool_path)
        courier = Courier(spool, self.uri, experiment_id=self.experiment_id,
                          parent_run_id=self.parent_run_id, lookup_first=not self._fresh)
        last_try, retry_at, backoff = 0.0, 0.0, 1.0
        try:
            while True:
                events = self._take()
                stop, urgent = False, False
                for event in events:
                    if event[0] == "stop":
                        stop = True
                        continue
                    try:
                        urgent = self._record(spool, event) or urgent
                    except Exception as exc:  # never let one bad event stop the writer
                        _log.warning("losstune: cannot record %s of trial %s in MLflow: %s", event[0], event[1],
                                     redact(str(exc))[:300])
                if events:
                    spool.sync()  # one fsync for the burst, before anything is sent
                now = time.monotonic()
                due = stop or urgent or now - last_try >= self.flush_every_s or 0 < retry_at <= now
                if due and now >= retry_at and spool.pending():
                    last_try = now
                    try:
                        failed = bool(courier.deliver().error)
                    except Exception as exc:  # the spool itself (a full disk): the writer goes on
                        _log.warning("losstune: cannot deliver MLflow records: %s", redact(str(exc))[:300])
                        failed = True
                    if failed:  # the store does not answer: keep spooling, try again later
                        retry_at, backoff = now + backoff, min(backoff * 2, self.max_backoff_s)
                    else:
                        retry_at, backoff = 0.0, 1.0
                if stop:
                    return
        finally:
            spool.close()

    def _take(self) -> list[tuple]:
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

    def _record(self, spool: Spool, event: tuple) -> bool:
        """Append the event's record to the spool; True when it should be delivered now."""
        kind, tid = event[0], event[1]
        if kind == "start":
            cfg = Config.from_dict(self.base_config).with_overrides(dict(event[2] or {}), source="trial config")
            number = event[3] if len(event) > 3 else -1
            spool.append({"kind": "trial_start", "trial": tid, "name": self._run_name(tid, number),
                          "tags": {**self.tags, NOTE_TAG: "**Running**."},
                          "config_json": json.dumps(cfg.to_dict(), separators=(",", ":")),
                          "params": {k: str(v) for k, v in cfg.flat().items()}}, sync=False)
            return True
        if kind == "result":
            _, _, metrics, step = event
            if step <= spool.last_step(tid):
                return False  # re-reported after a restore: already on record
            rows = metric_rows(metrics, step)
            if rows:
                spool.append({"kind": "trial_metrics", "trial": tid, "metrics": rows}, sync=False)
            return False
        if kind == "end":
            _, _, last, errored = event
            if spool.trial_state(tid) != "started":
                return False  # never started (it has no run), or already ended
            status = trial_status(last.get("status"), errored=errored)
            # the last epoch's metrics (objective, best/*) are on record from its own report already:
            # only the target flags under their MLflow names are new here
            summary = {mlflow_key(k): v for k, v in last.items() if k.startswith(TARGET_PREFIX)}
            spool.append({"kind": "trial_end", "trial": tid, "metrics": metric_rows(summary, int(last.get("epoch", 0))),
                          "tags": {"losstune.status": status.value, NOTE_TAG: trial_description(status, last)},
                          "status": status.mlflow_status}, sync=False)
            return True
        return kind == "flush"

    def _run_name(self, tid: str, number: int) -> str:
        return trial_run_name(tid, number, arm=self.tags.get("losstune.arm", "stack"),
                              phase=self.tags.get("losstune.phase", "search"))


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
