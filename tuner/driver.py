"""`losstune tune`: plan a job (every check, no Ray), run or resume it on Ray Tune, summarise it.

A job is described by a ``TuneJob`` saved as ``losstune_job.json`` in its experiment folder, so
that ``--resume`` rebuilds exactly the same data and trainable; Ray restores the searcher (with its
history), the scheduler and the trials from its own experiment state.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search_spaces import SearchSpace
from trainables.data import PreparedData
from trainables.errors import UserError
from tuner.plan import JOB_FILE, TuneJob, load_job, plan_job
from tuner.runtime import redact
from tuner.tables import metric, side_by_side, table, value

__all__ = ["TuneJob", "TrialRow", "TuneOutcome", "plan_job", "load_job", "run_job", "JOB_FILE", "RESULTS_FILE"]

RESULTS_FILE = "results.csv"


# --------------------------------------------------------------------------- running
@dataclass
class TrialRow:
    number: int  # creation order, 0 = the first trial (the preset)
    trial_id: str
    status: str
    epochs: int
    best_epoch: int
    objective: float
    metrics: dict[str, Any]  # validation metrics at the best epoch
    targets: dict[str, Any]
    config: dict[str, Any]  # the searched values (dotted keys)
    path: str
    error: str = ""
    resources: dict[str, Any] = field(default_factory=dict)  # trial/gpu_ids, trial/device as reported
    checkpoint: str = ""  # the trial's latest checkpoint folder (its best weights are inside)


@dataclass
class Tracking:
    uri: str
    experiment: str
    # At the end of a job, how long to wait for a tracking store that does not answer before the
    # undelivered records are left in the job's spool for `losstune sync`.
    final_retry_s: float = 15.0


@dataclass
class TuneOutcome:
    job: TuneJob
    rows: list[TrialRow]
    stopped_on_target: tuple[str, int] | None = None  # (trial id, epoch)
    wall_s: float = 0.0
    winner: Any = None  # tuner.winner.Winner: the best trial on the held-out test split
    tracking_note: str = ""
    records_kept: int = 0  # MLflow records still in the job's spool (the store did not answer)
    records_refused: list[str] = field(default_factory=list)  # records the store will never take
    spool_path: str = ""
    interrupted: bool = False  # Ctrl-C / SIGTERM: the search stopped early, the test split was not touched

    @property
    def state(self) -> str:
        """finished | stopped on target | interrupted | failed (no trial produced a model)."""
        if self.interrupted:
            return "interrupted"
        if all(r.status in ("diverged", "failed") for r in self.rows):  # also: no trial at all
            return "failed"
        return "stopped on target" if self.stopped_on_target else "finished"

    @property
    def exit_code(self) -> int:
        return {"interrupted": 130, "failed": 1}.get(self.state, 0)

    def resume_command(self) -> str:
        return f"losstune tune --resume {shlex.quote(str(self.job.path))}"

    @property
    def best(self) -> TrialRow | None:
        ok = [r for r in self.rows if not math.isnan(r.objective)]
        return max(ok, key=lambda r: r.objective) if ok else None


class _TargetStopper:
    """Ends the whole job as soon as one trial reaches every target (``--stop-on-target``)."""

    def __init__(self) -> None:
        self.met_by: tuple[str, int] | None = None

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if self.met_by is None and result.get("target/all_met") == 1:
            self.met_by = (trial_id, int(result.get("target/epoch_reached", result.get("epoch", 0))))
        return self.met_by is not None and self.met_by[0] == trial_id

    def stop_all(self) -> bool:
        return self.met_by is not None


def _stopper_class():
    from ray import tune

    return type("TargetStopper", (_TargetStopper, tune.Stopper), {})


def run_job(job: TuneJob, data: PreparedData, space: SearchSpace | None, pretrained: dict | None, *,
            address: str | None, resume: bool = False, trainable: Callable | None = None,
            callbacks: Sequence[Any] = (), verbose: int = 1, tracking: Tracking | None = None) -> TuneOutcome:
    """Run (or, with ``resume``, continue) a job on Ray Tune, evaluate the winner on the held-out
    test split, record everything in MLflow (``tracking``) and summarise the trials."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from trainables.data import SharedData
    from trainables.tune_trainable import TrialInputs, train_trial
    from tuner.runtime import Runtime, check_resources, connect, local_resources

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.time()
    # Ray's classic live table (a compact line per trial) rather than a box of every metric per trial.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if resume and not tune.Tuner.can_restore(str(job.path)):
        raise UserError(f"job '{job.experiment}' at {job.path} has no Ray Tune state to resume "
                        "(it never started its first trial?)")
    if address in (None, "", "local"):  # known without starting Ray: fail in a second, not after its start
        check_resources(Runtime("local", True, local_resources()), cpus=job.resources["cpu"], gpus=job.resources["gpu"])
    runtime = connect(address)
    try:
        check_resources(runtime, cpus=job.resources["cpu"], gpus=job.resources["gpu"])
        records = _open_records(job, tracking, runtime.address, resume=resume)
        if records is not None and not resume:
            from tuner.tracking_callback import MLflowTrialCallback

            callbacks = [*callbacks, MLflowTrialCallback(
                experiment_id=records.experiment_id, parent_run_id=records.parent_run_id,
                base_config=job.base_config, spool_path=str(records.spool_path))]
        inputs = TrialInputs(data=SharedData.from_prepared(data), base_config=job.base_config, targets=job.targets,
                             pretrained=pretrained, select=job.metric)
        fn = tune.with_parameters(tune.with_resources(trainable or train_trial, job.resources), inputs=inputs)
        if resume:
            with _Interrupts():  # for its log filter: restoring trials that never reported warns harmlessly
                tuner = tune.Tuner.restore(str(job.path), trainable=fn, resume_errored=True)
            job.save()
        else:
            job.save()
            searcher = OptunaSearch(space=space, metric="objective", mode="max", seed=job.seed,
                                    points_to_evaluate=[space.warm_start_point()])
            s = job.scheduler
            max_t = int(job.base_config["optim"]["max_epochs"])
            scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                                       grace_period=min(s["grace_period"], max_t), reduction_factor=s["reduction_factor"])
                         if s["name"] == "asha" else FIFOScheduler())
            tuner = tune.Tuner(
                fn,
                tune_config=tune.TuneConfig(metric="objective", mode="max", search_alg=searcher, scheduler=scheduler,
                                            num_samples=job.num_trials, max_concurrent_trials=job.concurrency,
                                            time_budget_s=job.spec.time_budget_s, reuse_actors=True),
                run_config=tune.RunConfig(
                    name=job.experiment, storage_path=job.storage_path, verbose=verbose,
                    progress_reporter=_reporter(job),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    failure_config=tune.FailureConfig(max_failures=job.max_failures),
                    stop=_stopper_class()() if job.stop_on_target else None, callbacks=list(callbacks)),
            )
        with _Interrupts() as interrupts:
            grid = tuner.fit()
        outcome = TuneOutcome(job=job, rows=_rows(grid, job), stopped_on_target=_met_by(grid, job),
                              wall_s=time.time() - started, interrupted=interrupts.received)
        write_results_csv(outcome)
        best = outcome.best
        # The test split is for the final winner of a finished search only: never for an interrupted one.
        if best is not None and best.checkpoint and outcome.state in ("finished", "stopped on target"):
            from tuner.winner import evaluate_winner

            outcome.winner = evaluate_winner(best.checkpoint, best.trial_id, data, job.targets)
        if records is not None:
            _close_records(records, outcome, data, within_s=tracking.final_retry_s if tracking else 15.0)
        return outcome
    finally:
        runtime.shutdown()


class _Interrupts:
    """Ctrl-C (SIGINT) or SIGTERM during ``Tuner.fit``: remembered, then handed to Ray Tune as the
    SIGUSR1 it listens to, so that Tune stops the trials and saves the experiment state as on its
    own Ctrl-C. Ray's own SIGINT handler (off with TUNE_DISABLE_SIGINT_HANDLER, a documented
    setting) would stop the job the same way but let ``fit`` return as if it had finished. A second
    signal raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.received = False
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received:
            raise KeyboardInterrupt
        self.received = True
        print(f"\nlosstune: {signal.Signals(signum).name} received: stopping the trials and saving the job state "
              "(press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGUSR1)

    @staticmethod
    def _quiet(record: logging.LogRecord) -> bool:
        """Ray's own stop and ``Tuner.restore(...)`` hints: losstune prints the command that resumes."""
        return not any(m in str(record.msg) for m in ("Stop signal received", "has been interrupted",
                                                      "Failed to fetch metrics"))

    _LOGGERS = ("ray.tune.tune", "ray.tune.analysis.experiment_analysis")

    def __enter__(self) -> _Interrupts:
        for name in self._LOGGERS:
            logging.getLogger(name).addFilter(self._quiet)
        if threading.current_thread() is threading.main_thread():
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for name in self._LOGGERS:
            logging.getLogger(name).removeFilter(self._quiet)
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if exc[0] is KeyboardInterrupt:  # a second Ctrl-C, or one that came before Tune listened
            self.received = True


def _open_records(job: TuneJob, tracking: Tracking | None, ray_address: str, *, resume: bool) -> Any:
    if tracking is None:
        return None
    from tuner.tracking import JobRecords

    # Set only now, after the runtime started: Ray's processes never inherit the URI.
    os.environ["MLFLOW_TRACKING_URI"] = tracking.uri
    # On resume, opening replays what earlier runs of the job kept in its spool, before any trial.
    records = JobRecords(tracking.uri, tracking.experiment, job.path)
    try:
        records.open(job, ray_address=ray_address, parent_run_id=job.tracking.get("parent_run_id") if resume else None)
    except Exception as exc:
        raise UserError(f"cannot open the MLflow records of job '{job.experiment}' in experiment "
                        f"'{tracking.experiment}': {redact(str(exc).splitlines()[0])[:200]}") from None
    job.tracking = {"experiment": tracking.experiment, "experiment_id": records.experiment_id,
                    "parent_run_id": records.parent_run_id}
    if "@" not in tracking.uri:  # a URI with credentials is never written down
        job.tracking["uri"] = tracking.uri
    return records


def _close_records(records: Any, outcome: TuneOutcome, data: PreparedData, *, within_s: float) -> None:
    """The job's summary on its parent run: counts, the best trial, the winner on test, plots, artifacts.

    It goes through the job's spool like every other record: the artifact files are written into
    the spool's files folder first, and the best trial's run id (which may not exist yet while the
    store is down) is filled in when the record is delivered."""
    from tuner.plots import job_plots
    from tuner.spool import BEST_TRIAL_RUN_ID, SPOOL_FILES_DIR
    from tuner.winner import winner_yaml

    job, rows, best, winner = outcome.job, outcome.rows, outcome.best, outcome.winner
    met = [r for r in rows if r.targets.get("target/all_met") == 1]
    metrics: dict[str, Any] = {
        "trials.count": len(rows), "trials.failed": sum(r.status == "failed" for r in rows),
        "trials.diverged": sum(r.status == "diverged" for r in rows), "trials.met_all_targets": len(met),
        "target.attainment_rate": len(met) / len(rows) if rows else 0.0,
    }
    tags = {"losstune.status": outcome.state}
    texts: dict[str, str] = {"results.csv": (job.path / RESULTS_FILE).read_text(encoding="utf-8")}
    files_dir = f"{SPOOL_FILES_DIR}/close-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    folder = job.path / files_dir
    folder.mkdir(parents=True, exist_ok=True)
    files: list[tuple[str, str]] = []  # (artifact folder, file relative to the job folder)
    if best is not None:
        metrics.update({"best.objective": best.objective, "best.epoch": best.best_epoch,
                        **{f"best/{k}": v for k, v in best.metrics.items() if v is not None}})
        tags["losstune.best_trial_id"] = best.trial_id
    if winner is not None:
        metrics.update({k: v for k, v in winner.holdout.items()
                        if k.startswith("test/") or k in ("temperature", "val/ece_scaled")})
        metrics.update(winner.targets_test)
        prov = provenance(job, best, trial_run_id=BEST_TRIAL_RUN_ID, job_run_id=records.parent_run_id,
                          test=winner.holdout)
        texts["winner/config.yaml"] = winner_yaml(winner.config, scenario=job.scenario, provenance=prov)
        (folder / "model.pt").write_bytes(winner.model_bytes)
        files.append(("winner", f"{files_dir}/model.pt"))
        if data.preprocessor is not None:
            (folder / "preprocessor.json").write_text(json.dumps(data.preprocessor.to_dict(), indent=1))
            files.append(("winner", f"{files_dir}/preprocessor.json"))
    pngs = job_plots(rows, metric=job.metric, targets=job.targets, out=folder / "plots")
    files += [("plots", f"{files_dir}/plots/{png.name}") for png in pngs]
    result, spool = records.close(metrics=metrics, tags=tags, texts=texts, files=files, files_dir=files_dir,
                                  best_trial=best.trial_id if best is not None else None,
                                  status={"interrupted": "KILLED", "failed": "FAILED"}.get(outcome.state, "FINISHED"),
                                  within_s=within_s)
    outcome.records_kept = result.remaining
    outcome.records_refused = [*spool.refused().values()]
    outcome.spool_path = str(spool.path)
    outcome.tracking_note = (f"MLflow: experiment '{records.experiment}', job run {records.parent_run_id}")


def provenance(job: TuneJob, row: TrialRow | None, *, trial_run_id: str, job_run_id: str,
               test: dict[str, Any] | None) -> dict[str, Any]:
    from tuner.winner import make_provenance

    data = {**{k: job.data.get(k) for k in ("source", "label_cols", "val_frac", "test_frac", "split_seed",
                                             "min_positives", "drop_cols")},
            "fingerprint": job.data_fingerprint, "split_fingerprint": job.split_fingerprint}
    validation = {**{k.removeprefix("val/"): v for k, v in (row.metrics if row else {}).items()},
                  "best_epoch": row.best_epoch if row else None}
    flags = {k.replace("target/", "target."): v for k, v in (row.targets if row else {}).items()
             if k != "target/epoch_reached"}
    return make_provenance(job=job.experiment, job_run_id=job_run_id, trial_id=row.trial_id if row else "",
                           trial_run_id=trial_run_id, data=data, validation=validation, targets=job.targets,
                           target_flags=flags, test=test)


def _reporter(job: TuneJob) -> Any:
    from ray.tune import CLIReporter

    searched = [k for k, v in job.search_space.items() if not v.startswith("fixed ")][:6]
    return CLIReporter(
        metric_columns={"epoch": "epoch", "objective": job.metric, "val/auroc": "auroc", "val/auprc": "auprc",
                        "target/all_met": "target", "status": "state"},
        parameter_columns={k: k for k in searched}, max_report_frequency=15, sort_by_metric=True,
        max_progress_rows=12, max_error_rows=5)


def _met_by(grid: Any, job: TuneJob) -> tuple[str, int] | None:
    if not job.stop_on_target:
        return None
    hits = []
    for r in grid:
        df = r.metrics_dataframe
        if df is None or "target/all_met" not in df:
            continue
        met = df[df["target/all_met"] == 1]
        if len(met):
            hits.append((float(met["timestamp"].iloc[0]) if "timestamp" in met else 0.0, r.metrics.get("trial_id", ""),
                         int(met["target/epoch_reached"].iloc[0])))
    if not hits:
        return None
    _, trial_id, epoch = min(hits)
    return trial_id, epoch


def _rows(grid: Any, job: TuneJob) -> list[TrialRow]:
    rows = []
    searched = [k for k in job.search_space if not job.search_space[k].startswith("fixed ")]
    for r in grid:
        last = r.metrics or {}
        df = r.metrics_dataframe
        best_epoch = int(last.get("best/epoch", 0) or 0)
        at_best: dict[str, Any] = dict(last)
        if df is not None and len(df) and "epoch" in df and best_epoch:
            hit = df[df["epoch"] == best_epoch]
            if len(hit):
                at_best = hit.iloc[-1].to_dict()
        status = str(last.get("status", "pending"))
        if r.error is not None:
            status = "failed"
        elif status == "running":
            status = "stopped"  # by ASHA, or by --stop-on-target after another trial met the targets
        elif status == "early_stopped":
            status = "early-stopped"
        objective = last.get("objective", math.nan)
        rows.append(TrialRow(
            number=_trial_number(r.path), trial_id=str(last.get("trial_id", Path(r.path).name if r.path else "?")), status=status,
            epochs=int(last.get("epoch", 0) or 0), best_epoch=best_epoch,
            objective=float(objective) if objective is not None else math.nan,
            metrics={k: at_best.get(k) for k in ("val/auroc", "val/auprc", "val/ece", "val/score") if k in at_best},
            targets={k: v for k, v in last.items() if str(k).startswith("target/")},
            config={k: r.config.get(k) for k in searched if k in (r.config or {})},
            path=str(r.path or ""), error=str(r.error).splitlines()[0] if r.error is not None else "",
            resources={k: last[k] for k in ("trial/gpu_ids", "trial/device") if k in last},
            checkpoint=str(r.checkpoint.path) if r.checkpoint is not None else ""))
    rows.sort(key=lambda x: (math.isnan(x.objective), -x.objective if not math.isnan(x.objective) else 0))
    return rows


def _trial_number(path: str | None) -> int:
    """Ray names trial folders <trainable>_<id>_<n>_...; n counts from 1 in creation order."""
    m = re.match(r"^.+?_[0-9a-f]{5,}_(\d+)_", Path(path or "").name)
    return int(m.group(1)) - 1 if m else -1


def write_results_csv(outcome: TuneOutcome) -> Path:
    path = outcome.job.path / RESULTS_FILE
    keys = sorted({k for r in outcome.rows for k in r.config})
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["rank", "trial", "trial_id", "status", "epochs", "best_epoch", "objective", "val/auroc", "val/auprc",
                    "val/ece", "target/all_met", "target/epoch_reached", *keys, "error"])
        for i, r in enumerate(outcome.rows, 1):
            w.writerow([i, r.number, r.trial_id, r.status, r.epochs, r.best_epoch, r.objective, r.metrics.get("val/auroc"),
                        r.metrics.get("val/auprc"), r.metrics.get("val/ece"), r.targets.get("target/all_met", ""),
                        r.targets.get("target/epoch_reached", ""), *[r.config.get(k, "") for k in keys], r.error])
    return path


def format_summary(outcome: TuneOutcome, *, top: int = 10) -> str:
    job = outcome.job
    lines = []
    done = sum(r.status not in ("pending",) for r in outcome.rows)
    lines.append(f"\njob {job.experiment}: {done} of {job.num_trials} trials, scenario {job.scenario}"
                 f"{' (auto)' if job.detection else ''}, metric {job.metric}, {outcome.wall_s:.0f} s")
    if outcome.state == "interrupted":
        lines.append(f"INTERRUPTED after {done} of {job.num_trials} trials: the search is incomplete, so no winner was "
                     "chosen and the held-out test split was not touched")
    elif outcome.state == "failed":
        lines.append("job FAILED: every trial diverged or failed, so no model was selected (see the status and error "
                     f"columns; {job.path / RESULTS_FILE}); a lower optim.lr or a smaller search range may help")
    elif outcome.stopped_on_target:
        tid, ep = outcome.stopped_on_target
        lines.append(f"stopped early: trial {tid} met every target at epoch {ep}")
    header = ["#", "trial", "id", "status", "epochs", job.metric, "val auroc", "val auprc", "val ece", "targets"]
    rows = []
    for i, r in enumerate(outcome.rows[:top], 1):
        t = "-" if "target/all_met" not in r.targets else ("met" if r.targets["target/all_met"] else "not met")
        rows.append([str(i), str(r.number) + (" (preset)" if r.number == 0 else ""), r.trial_id, r.status,
                     str(r.epochs), metric(r.objective), metric(r.metrics.get("val/auroc")),
                     metric(r.metrics.get("val/auprc")), metric(r.metrics.get("val/ece")), t])
    lines.append(table(header, rows))
    shown = outcome.rows[:min(top, 5)]
    keys = [k for k in job.search_space if any(k in r.config for r in shown)]
    if shown and keys:
        lines.append("\nsearched values of the best trials:")
        lines.append(side_by_side(keys, [(f"#{i} {r.trial_id}", [value(r.config[k]) if k in r.config else "" for k in keys])
                                         for i, r in enumerate(shown, 1)]))
    if job.targets and any(v is not None for v in job.targets.values()):
        met = [r for r in outcome.rows if r.targets.get("target/all_met") == 1]
        goal = ", ".join(f"{k.upper()} >= {v:g}" for k, v in job.targets.items() if v is not None)
        lines.append(f"targets ({goal}, validation): met by {len(met)} of {len(outcome.rows)} trials"
                     + ("" if met else " — the target was NOT reached"))
    w = outcome.winner
    if w is not None:
        h = w.holdout
        lines.append(f"winner {w.trial_id} on the held-out test split (never seen by the search): AUROC "
                     f"{h['test/auroc']:.4f}, AUPRC {h['test/auprc']:.4f}, ECE {h['test/ece']:.4f} -> "
                     f"{h['test/ece_scaled']:.4f} after temperature scaling (T = {h['temperature']:.3f})"
                     f"{_test_verdict(h, job.targets)}")
    lines.append(f"results: {job.path / RESULTS_FILE}")
    if outcome.tracking_note:
        lines.append(outcome.tracking_note)
    if outcome.records_kept:
        uri = "" if job.tracking.get("uri") else " --tracking-uri URI"  # a URI with credentials was not written down
        lines.append(f"MLflow did not answer: {outcome.records_kept} records kept in {outcome.spool_path}; run "
                     f"`losstune sync {shlex.quote(str(job.path))}{uri}` when the server answers")
    if outcome.records_refused:
        shown = "; ".join(outcome.records_refused[:3])
        more = len(outcome.records_refused) - 3
        lines.append(f"MLflow refused {len(outcome.records_refused)} records for good ({shown}"
                     f"{f'; and {more} more' if more > 0 else ''})")
    if outcome.state == "interrupted":
        lines.append(f"continue the job with: {outcome.resume_command()}")
    return "\n".join(lines)


def _test_verdict(holdout: dict[str, Any], targets: dict[str, float | None]) -> str:
    goals = {n: g for n, g in targets.items() if g is not None}
    if not goals:
        return ""
    failed = [f"{n.upper()} {holdout[f'test/{n}']:.4f} < {g:g}" for n, g in goals.items() if holdout[f"test/{n}"] < g]
    return "; targets on test: " + ("met" if not failed else f"NOT met ({', '.join(failed)})")

