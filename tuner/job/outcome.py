"""Reporting a job: its trials as rows (from Ray's ``ResultGrid``), ``results.csv``, how the job ended
(``TuneOutcome.state``, the exit status), and its ``JobSummary`` (``summarize``), which every reader
renders."""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainables.vocab import (
    ALL_MET,
    BEST_EPOCH,
    EPOCH_REACHED,
    OBJECTIVE,
    OBJECTIVE_METRICS,
    TARGET_PREFIX,
    JobState,
    Status,
    trial_status,
)
from tuner.cluster.runtime import redact
from tuner.core.layout import RESULTS_FILE, TRIAL_NUMBERS_FILE, trial_run_name
from tuner.core.outputs import atomic_write
from tuner.core.summary import (
    BASELINE,
    STACK,
    ArmBudget,
    ArmResult,
    Delivery,
    JobSummary,
    TrialLine,
    WinnerResult,
)
from tuner.job.plan import TuneJob
from tuner.present.text import render_summary
from tuner.present.verdict import best_so_far

if TYPE_CHECKING:
    from ray.tune import ResultGrid

__all__ = ["TrialRow", "TuneOutcome", "rows_from_grid", "met_by", "write_results_csv", "format_summary", "summarize",
           "delivery", "arm_budgets", "arm_curves", "RESULTS_FILE", "TRIAL_NUMBERS_FILE"]



@dataclass
class TrialRow:
    """One trial of a search as losstune reads it from Ray's results: its number, status, epochs, best
    epoch and objective, validation metrics at that epoch, targets, searched values and checkpoint."""

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
    resources: dict[str, Any] = field(default_factory=dict)  # trial/gpu_ids, trial/device, trial/node_id
    checkpoint: str = ""  # the trial's latest checkpoint folder (its best weights are inside)
    seconds: float = 0.0  # the trial's running time (Tune's time_total_s), restores included
    pareto: bool = False  # several objectives: no other trial with a model dominates it (arms.mark_front)



@dataclass
class TuneOutcome:
    """Everything a job produced while it ran: its trials, the arms' searches and confirmations, the
    winner on test, the time spent, where its records went, and (once known) its ``JobSummary``."""

    job: TuneJob
    rows: list[TrialRow]
    stopped_on_target: tuple[str, int] | None = None  # (trial id, epoch)
    wall_s: float = 0.0
    winner: Any = None  # tuner.job.winner.Winner: the best trial on the held-out test split
    tracking_note: str = ""
    records_kept: int = 0  # MLflow records still in the job's spool (the store did not answer)
    records_refused: list[str] = field(default_factory=list)  # records the store will never take
    spool_path: str = ""
    interrupted: bool = False  # Ctrl-C / SIGTERM: the search stopped early, the test split was not touched
    arm_rows: dict[str, list[TrialRow]] = field(default_factory=dict)  # the other arms' searches (baseline)
    confirm_rows: dict[str, list[TrialRow]] = field(default_factory=dict)  # arm → its confirmation trials
    confirmed: dict[str, Any] = field(default_factory=dict)  # arm → tuner.job.arms.Confirmed (its winner on test)
    wall_by_part: dict[str, float] = field(default_factory=dict)  # stack, baseline, confirm: seconds of Tune's fit
    plots: dict[str, str] = field(default_factory=dict)  # name → PNG in the job folder (a finished job)
    report: str = ""  # report.html in the job folder (a finished job)
    data: dict[str, Any] = field(default_factory=dict)  # the data read: source (redacted), fingerprint, rows
    summary: JobSummary | None = None  # what every reader is told: built once, when the job's results are known
    selected: list[str] = field(default_factory=list)  # several objectives: the front members --select ranks, in order
    runtime_cpus: float = 0.0  # the Ray runtime's CPUs, for the share of its trial slots the trials kept busy

    @property
    def state(self) -> JobState:
        if self.interrupted:
            return JobState.INTERRUPTED
        if not any(Status(r.status).produced_model for r in self.rows):  # also: no trial at all
            return JobState.FAILED
        if self.job.spec.objectives and not self.selected:
            return JobState.NO_SELECTION
        return JobState.STOPPED_ON_TARGET if self.stopped_on_target else JobState.FINISHED

    @property
    def exit_code(self) -> int:
        return self.state.exit_code

    def resume_command(self) -> str:
        return f"losstune tune --resume {shlex.quote(self.job.location)}"

    def spent(self) -> dict[str, float]:
        """What the job cost: trials run, wall time, and CPU- and GPU-hours (each trial's reserved
        resources × its running time); the whole job, and each part of it (``budget.stack.*``,
        ``budget.baseline.*``, ``budget.confirm.*``); and ``budget.slot_utilisation``, the trials'
        reserved CPU-seconds ÷ (the job's wall time × the runtime's CPUs), when the runtime is known."""
        res = self.job.resources
        parts = {"stack": self.rows, **self.arm_rows,
                 "confirm": [r for rows in self.confirm_rows.values() for r in rows]}
        out: dict[str, float] = {}
        for name, rows in parts.items():
            hours = sum(r.seconds for r in rows) / 3600
            if name in self.wall_by_part:
                out[f"budget.{name}.wall_s"] = round(self.wall_by_part[name], 1)
            out.update({f"budget.{name}.trials": float(sum(r.status != Status.PENDING for r in rows)),
                        f"budget.{name}.cpu_hours": round(hours * res["cpu"], 4),
                        f"budget.{name}.gpu_hours": round(hours * res["gpu"], 4)})
        if self.runtime_cpus > 0 and self.wall_s > 0:
            held = sum(r.seconds for rows in parts.values() for r in rows) * res["cpu"]
            out["budget.slot_utilisation"] = round(held / (self.wall_s * self.runtime_cpus), 3)
        return {"budget.trials": sum(v for k, v in out.items() if k.endswith(".trials")),
                "budget.wall_s": round(self.wall_s, 1),
                "budget.cpu_hours": round(sum(v for k, v in out.items() if k.endswith(".cpu_hours")), 4),
                "budget.gpu_hours": round(sum(v for k, v in out.items() if k.endswith(".gpu_hours")), 4), **out}

    @property
    def met_all_targets(self) -> list[TrialRow]:
        """The trials that reached every target on validation (none when no target was set)."""
        return [r for r in self.rows if r.targets.get(ALL_MET) == 1]

    @property
    def deployed(self) -> TrialRow | None:
        """The winner's trial: the stack's confirmed config at its seed best on validation, or, without
        a confirmation, the search's best trial (METHODS.md, "One winner")."""
        return self.confirmed[STACK].best_seed_row if STACK in self.confirmed else self.best

    @property
    def best(self) -> TrialRow | None:
        ok = [r for r in self.rows if not math.isnan(r.objective)]
        return max(ok, key=lambda r: r.objective) if ok else None



def met_by(grid: ResultGrid, job: TuneJob) -> tuple[str, int] | None:
    """(trial id, epoch) of the first trial that met every target, when --stop-on-target ended the job."""
    if not job.spec.targets.stop_on_target:
        return None
    hits = []
    for r in grid:
        df = r.metrics_dataframe
        if df is None or ALL_MET not in df:
            continue
        met = df[df[ALL_MET] == 1]
        if len(met):
            hits.append((float(met["timestamp"].iloc[0]) if "timestamp" in met else 0.0, r.metrics.get("trial_id", ""),
                         int(met[EPOCH_REACHED].iloc[0])))
    if not hits:
        return None
    _, trial_id, epoch = min(hits)
    return trial_id, epoch


def rows_from_grid(grid: ResultGrid, job: TuneJob, searched: list[str], *,
                   folder: Path | None = None) -> list[TrialRow]:
    """One row per trial from Ray's ``ResultGrid`` (each ``Result``'s metrics, history, config,
    path, checkpoint and error), best first; ``searched``: the config keys the search varied;
    ``folder``: where its trial numbers are (the job's folder, or an arm's inside it)."""
    numbers = read_trial_numbers(folder or job.path)
    rows = []
    for r in grid:
        last = r.metrics or {}
        df = r.metrics_dataframe
        best_epoch = int(last.get(BEST_EPOCH, 0) or 0)
        at_best: dict[str, Any] = dict(last)
        if df is not None and len(df) and "epoch" in df and best_epoch:
            hit = df[df["epoch"] == best_epoch]
            if len(hit):
                at_best = hit.iloc[-1].to_dict()
        objective = last.get(OBJECTIVE, math.nan)
        trial_id = str(last.get("trial_id", ""))
        rows.append(TrialRow(
            number=numbers.get(trial_id, -1), trial_id=trial_id or "?",
            status=trial_status(last.get("status"), errored=r.error is not None).value,
            epochs=int(last.get("epoch", 0) or 0), best_epoch=best_epoch,
            objective=float(objective) if objective is not None else math.nan,
            metrics={k: at_best.get(k) for k in OBJECTIVE_METRICS if k in at_best},
            targets={k: v for k, v in last.items() if str(k).startswith(TARGET_PREFIX)},
            config={k: r.config.get(k) for k in searched if k in (r.config or {})},
            path=str(r.path or ""), error=str(r.error).splitlines()[0] if r.error is not None else "",
            resources={k: last[k] for k in ("trial/gpu_ids", "trial/device", "trial/node_id") if k in last},
            checkpoint=str(r.checkpoint.path) if r.checkpoint is not None else "",
            seconds=float(last.get("time_total_s", 0.0) or 0.0)))
    rows.sort(key=lambda x: (math.isnan(x.objective), -x.objective if not math.isnan(x.objective) else 0))
    return rows


def read_trial_numbers(folder: Path) -> dict[str, int]:
    try:
        return {str(k): int(v) for k, v in json.loads((folder / TRIAL_NUMBERS_FILE).read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def write_results_csv(outcome: TuneOutcome) -> Path:
    """``results.csv`` in the job folder: every trial of the stack's search, best first; with several
    objectives, a ``pareto`` column (1: on the front) and each objective's value."""
    path = outcome.job.path / RESULTS_FILE
    keys = sorted({k for r in outcome.rows for k in r.config})
    several = bool(outcome.job.spec.objectives)
    extra = [o.metric for o in outcome.job.spec.objective_list
             if o.metric not in ("val/auroc", "val/auprc", "val/ece")]
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["rank", "trial", "trial_id", "status", "epochs", "best_epoch", "objective", "val/auroc",
                "val/auprc", "val/ece", *extra, *(["pareto"] if several else []), ALL_MET, EPOCH_REACHED, *keys,
                "error"])
    for i, r in enumerate(outcome.rows, 1):
        w.writerow([i, r.number, r.trial_id, r.status, r.epochs, r.best_epoch, r.objective, r.metrics.get("val/auroc"),
                    r.metrics.get("val/auprc"), r.metrics.get("val/ece"), *[r.metrics.get(m) for m in extra],
                    *([int(r.pareto)] if several else []), r.targets.get(ALL_MET, ""),
                    r.targets.get(EPOCH_REACHED, ""), *[r.config.get(k, "") for k in keys], r.error])
    atomic_write(path, buf.getvalue())
    return path


def format_summary(outcome: TuneOutcome, *, top: int = 10) -> str:
    """The summary the command line prints (``tuner.present.text``), with what became of the records."""
    return render_summary(outcome.summary or summarize(outcome), delivery(outcome), top=top)


def delivery(outcome: TuneOutcome) -> Delivery:
    """What became of the job's MLflow records, as the printed summary says it."""
    return Delivery(note=outcome.tracking_note, kept=outcome.records_kept, refused=tuple(outcome.records_refused),
                    spool=outcome.spool_path, uri_written=bool(outcome.job.tracking.get("uri")))


def arm_budgets(outcome: TuneOutcome) -> dict[str, ArmBudget]:
    """Each arm's search budget (its confirmation is not search): trials run and their reserved
    CPU- and GPU-seconds."""
    res = outcome.job.resources
    out = {}
    for arm, rows in ((STACK, outcome.rows), (BASELINE, outcome.arm_rows.get(BASELINE))):
        if rows:
            ran = [r for r in rows if r.status != Status.PENDING]
            seconds = sum(r.seconds for r in ran)
            out[arm] = ArmBudget(trials=len(ran), cpu_s=seconds * res["cpu"], gpu_s=seconds * res["gpu"])
    return out


def arm_curves(outcome: TuneOutcome) -> dict[str, tuple[float, ...]]:
    """Each arm's best validation score so far, trial by trial in creation order (arms that searched)."""
    return {arm: tuple(best_so_far(rows)) for arm, rows in ((STACK, outcome.rows),
                                                           (BASELINE, outcome.arm_rows.get(BASELINE))) if rows}


def summarize(outcome: TuneOutcome) -> JobSummary:
    """The job's outcome as the one ``JobSummary`` every reader renders."""
    job, w = outcome.job, outcome.winner
    winner = None
    if w is not None:
        best = outcome.deployed
        confirmation = any(r.trial_id == best.trial_id for r in outcome.confirm_rows.get(STACK, ()))
        winner = WinnerResult(
            trial_id=w.trial_id,
            run_name=trial_run_name(best.trial_id, best.number, arm=STACK,
                                    phase="confirm" if confirmation else "search"),
            best_epoch=best.best_epoch, val=dict(best.metrics), holdout=_floats(w.holdout),
            calibration_kinds=tuple(sorted({label["kind"] for label in w.calibration.get("labels", [])})),
            targets_test={k: int(v) for k, v in w.targets_test.items()},
            references={n: _floats(m) for n, m in w.references.items()},
            lifts={n: tuple(lifts) for n, lifts in w.lifts.items()},
            operating={label: tuple(points) for label, points in w.operating.items()},
            prevalence=dict(w.prevalence))
    arms = {}
    for arm, f in outcome.confirmed.items():
        search = outcome.arm_rows.get(arm, outcome.rows if arm == STACK else [])
        arms[arm] = ArmResult(
            arm=arm, search_trials=len(search), source_trial=f.source_trial, deployed_seed=f.deployed_seed,
            deployed_objective=f.best_seed_row.objective if f.best_seed_row is not None else math.nan,
            deployed=_floats(f.deployed), seeds=len(f.seeds), val=(float(f.val[0]), float(f.val[1])),
            test={m: (float(mean), float(sd)) for m, (mean, sd) in f.test.items()},
            by_config=tuple(dict(c) for c in f.by_config), met_on_means=f.met_on_means)
    facts = outcome.data
    return JobSummary(
        experiment=job.experiment, scenario=job.scenario,
        detection=tuple(job.detection["reasons"]) if job.detection else None, metric=job.spec.metric,
        num_trials=job.spec.num_trials, state=outcome.state.value, wall_s=outcome.wall_s, folder=str(job.path),
        location=job.location, remote=job.storage.remote, data_given=redact(str(job.spec.data.source)),
        data_source=facts.get("source", ""), data_rows=tuple(facts.get("rows", (0, 0, 0))),
        data_fingerprint=job.data_fingerprint, targets=job.spec.targets.goals(), time_budget_s=job.spec.time_budget_s,
        search_keys=tuple(job.search_space),
        rows=tuple(TrialLine(number=r.number, trial_id=r.trial_id, status=r.status, epochs=r.epochs,
                             best_epoch=r.best_epoch, objective=r.objective, metrics=dict(r.metrics),
                             all_met=int(r.targets[ALL_MET]) if ALL_MET in r.targets else None,
                             config=dict(r.config), pareto=r.pareto) for r in outcome.rows),
        baseline_planned=bool(job.arms), stopped_on_target=outcome.stopped_on_target, winner=winner, arms=arms,
        budgets=arm_budgets(outcome), curves=arm_curves(outcome), spent=outcome.spent(),
        parts=bool(outcome.arm_rows or outcome.confirm_rows), report=w is not None,
        objectives=tuple(job.spec.objectives), select=job.spec.select, selected=tuple(outcome.selected))


def _floats(values: dict[str, Any]) -> dict[str, Any]:
    """Numbers as plain floats (numpy's as well); anything else as it is."""
    return {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for k, v in values.items()}
