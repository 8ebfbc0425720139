"""The Ray Tune callback that records trials in MLflow, from the driver, without blocking Tune.

Tune's hooks only enqueue events; one writer thread turns them into MLflow calls in order,
coalescing the per-epoch results of a trial into ``log_batch`` calls. The callback pickles without
its thread, its queue or any URI (Tune saves callbacks with the experiment): the writer reads
the URI from MLFLOW_TRACKING_URI, which the driver sets for its own process only.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from typing import Any

from ray.tune import Callback

from trainables.config import Config
from tuner.tracking import CONFIG_TAG, TRIAL_TAG, Store, metric_entities, param_entities

__all__ = ["MLflowTrialCallback"]

_SKIP = {"trial_id", "date", "hostname", "node_ip", "pid", "timestamp", "done", "config", "experiment_tag"}


class MLflowTrialCallback(Callback):
    def __init__(self, *, experiment_id: str, parent_run_id: str, base_config: dict[str, Any], report_path: str,
                 flush_every_s: float = 5.0) -> None:
        self.experiment_id, self.parent_run_id = experiment_id, parent_run_id
        self.base_config, self.flush_every_s, self.report_path = base_config, flush_every_s, report_path
        self._init_runtime()
        self._fresh = True  # a new job: no trial has a run yet, nothing to look up

    # ---- pickling: Tune stores callbacks with the experiment state
    def __getstate__(self) -> dict[str, Any]:
        keep = ("experiment_id", "parent_run_id", "base_config", "flush_every_s", "report_path")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()
        self._fresh = False  # unpickled: Tune restored a job, whose trials may have runs already

    def _init_runtime(self) -> None:
        self.store = Store(os.environ.get("MLFLOW_TRACKING_URI", ""))
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._runs: dict[str, str] = {}  # trial id → run id
        self._last_step: dict[str, int] = {}
        self._pending: dict[str, list[tuple[dict[str, float], int]]] = {}
        self._last_flush: dict[str, float] = {}
        self._ended: set[str] = set()

    def _put(self, *event: Any) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="losstune-mlflow", daemon=True)
            self._thread.start()
        self._queue.put(event)

    # ---- Tune hooks (driver thread): enqueue only
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._put("start", trial.trial_id, dict(trial.config))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        metrics = {k: v for k, v in result.items() if k not in _SKIP and isinstance(v, (int, float))
                   and not isinstance(v, bool)}
        self._put("result", trial.trial_id, metrics, int(result.get("epoch", result.get("training_iteration", 0))))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._put("flush", trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._put("end", trial.trial_id, dict(trial.last_result or {}), False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._put("end", trial.trial_id, dict(trial.last_result or {}), True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for t in trials:  # nothing is left RUNNING, whatever happened
            self._put("end", t.trial_id, dict(t.last_result or {}), t.status == "ERROR")
        self.drain()
        # The driver reads this to say which records are incomplete (it holds no reference to a
        # callback that Tune restored from the experiment state).
        with open(self.report_path, "w", encoding="utf-8") as f:
            json.dump({"incomplete": self.store.incomplete}, f)

    def drain(self, timeout_s: float = 120.0) -> None:
        if self._thread is None:
            return
        self._queue.put(("stop",))
        self._thread.join(timeout=timeout_s)
        self._thread = None

    # ---- writer thread
    def _work(self) -> None:
        while True:
            try:
                event = self._queue.get(timeout=self.flush_every_s)
            except queue.Empty:
                self._flush_all(due_only=True)
                continue
            if event[0] == "stop":
                self._flush_all(due_only=False)
                return
            try:
                self._handle(event)
            except Exception as exc:  # never let one bad record stop the writer
                self.store.incomplete.append(f"{event[0]} of trial {event[1]} ({type(exc).__name__}: {exc})"[:300])

    def _handle(self, event: tuple) -> None:
        kind = event[0]
        if kind == "start":
            self._run_for(event[1], event[2])
        elif kind == "result":
            _, tid, metrics, step = event
            if step <= self._last_step.get(tid, 0):
                return  # re-reported after a restore: already on record
            self._last_step[tid] = step
            self._pending.setdefault(tid, []).append((metrics, step))
            if time.time() - self._last_flush.get(tid, 0.0) >= self.flush_every_s:
                self._flush(tid)
        elif kind == "flush":
            self._flush(event[1])
        elif kind == "end":
            self._end(*event[1:])

    def _run_for(self, trial_id: str, config: dict[str, Any] | None = None, *, create: bool = True) -> str | None:
        if trial_id in self._runs:
            return self._runs[trial_id]
        c = self.store.client
        found = [] if self._fresh else self.store.call(
            f"find the run of trial {trial_id}", c.search_runs, [self.experiment_id],
            filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.mlflow.parentRunId = '{self.parent_run_id}'",
            max_results=1)
        if found:  # a resumed or retried trial continues its own run
            run = found[0]
            self._runs[trial_id] = run.info.run_id
            self._last_step[trial_id] = int(run.data.metrics.get("epoch", 0))
            self.store.call(f"reopen run of trial {trial_id}", c.update_run, run.info.run_id, status="RUNNING")
            return run.info.run_id
        if not create or (found is None and self.store.incomplete):
            return None
        cfg = Config.from_dict(self.base_config).with_overrides(dict(config or {}), source="trial config")
        tags = {"mlflow.parentRunId": self.parent_run_id, TRIAL_TAG: trial_id,
                CONFIG_TAG: json.dumps(cfg.to_dict(), separators=(",", ":"))}
        run = self.store.call(f"create run of trial {trial_id}", c.create_run, self.experiment_id,
                              run_name=f"trial {trial_id}", tags=tags)
        if run is None:
            return None
        rid = run.info.run_id
        self._runs[trial_id] = rid
        self.store.call(f"params of trial {trial_id}", c.log_batch, rid, params=param_entities(cfg.flat()))
        return rid

    def _flush(self, trial_id: str) -> None:
        rows = self._pending.pop(trial_id, [])
        self._last_flush[trial_id] = time.time()
        if not rows:
            return
        rid = self._run_for(trial_id, create=False)
        if rid is None:
            self.store.incomplete.append(f"epoch metrics of trial {trial_id} (its run could not be created)")
            return
        self._log(trial_id, rid, rows)

    def _log(self, trial_id: str, rid: str, rows: list[tuple[dict[str, float], int]], tags: list | None = None) -> None:
        """(values, step) rows as few log_batch calls as MLflow allows (1000 metrics each); the tags
        go with the last call."""
        metrics = [m for values, step in rows for m in metric_entities(values, step)]
        for i in range(0, max(len(metrics), 1), 900):  # one call even with no metrics, for the tags
            chunk = metrics[i:i + 900]
            steps = sorted({m.step for m in chunk}) or [0]
            last = i + 900 >= len(metrics)
            if chunk or (last and tags):
                self.store.call(f"metrics of trial {trial_id} (epochs {steps[0]}-{steps[-1]})",
                                self.store.client.log_batch, rid, metrics=chunk, tags=(tags or []) if last else [])

    def _flush_all(self, *, due_only: bool) -> None:
        now = time.time()
        for tid in list(self._pending):
            if not due_only or now - self._last_flush.get(tid, 0.0) >= self.flush_every_s:
                self._flush(tid)

    def _end(self, trial_id: str, last: dict[str, Any], errored: bool) -> None:
        if trial_id in self._ended:
            return
        rid = self._run_for(trial_id, create=False)
        if rid is None:  # a trial that never started has no run
            self._pending.pop(trial_id, None)
            return
        self._ended.add(trial_id)
        status = "failed" if errored else {"completed": "completed", "early_stopped": "early-stopped",
                                           "diverged": "diverged"}.get(str(last.get("status")), "stopped")
        summary = {k: last[k] for k in ("objective", "best/epoch", "best/val/auroc", "best/val/auprc", "best/val/ece",
                                        "best/val/score") if k in last}
        summary.update({k.replace("target/", "target."): v for k, v in last.items() if k.startswith("target/")})
        # The last epochs and the summary in one call: fewer round trips per trial.
        from mlflow.entities import RunTag

        rows = self._pending.pop(trial_id, []) + [(summary, int(last.get("epoch", 0)))]
        self._log(trial_id, rid, rows, tags=[RunTag("losstune.status", status)])
        mlflow_status = "FAILED" if status == "failed" else ("KILLED" if status == "stopped" else "FINISHED")
        self.store.call(f"end run of trial {trial_id}", self.store.client.set_terminated, rid, mlflow_status)
