"""Reporting a job: its trials as rows (from Ray's ``ResultGrid``), ``results.csv``, the summary a
person reads, and how the job ended (``TuneOutcome.state``, the exit status)."""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.compare import lift_sentence
from trainables.vocab import (
    ALL_MET,
    BEST_EPOCH,
    EPOCH_REACHED,
    OBJECTIVE,
    TARGET_METRICS,
    TARGET_PREFIX,
    JobState,
    Status,
    targets_met,
    trial_status,
)
from tuner.core.layout import RESULTS_FILE, TRIAL_NUMBERS_FILE
from tuner.core.outputs import atomic_write
from tuner.job.plan import TuneJob
from tuner.present.tables import metric, side_by_side, table, value
from tuner.present.verdict import COMPARED_NAMES, bottom_line, budget_sentence, convergence_notes

__all__ = ["TrialRow", "TuneOutcome", "rows_from_grid", "met_by", "write_results_csv", "format_summary", "RESULTS_FILE",
           "TRIAL_NUMBERS_FILE"]



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
    resources: dict[str, Any] = field(default_factory=dict)  # trial/gpu_ids, trial/device, trial/node_id
    checkpoint: str = ""  # the trial's latest checkpoint folder (its best weights are inside)
    seconds: float = 0.0  # the trial's running time (Tune's time_total_s), restores included



@dataclass
class TuneOutcome:
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

    @property
    def state(self) -> JobState:
        if self.interrupted:
            return JobState.INTERRUPTED
        if not any(Status(r.status).produced_model for r in self.rows):  # also: no trial at all
            return JobState.FAILED
        return JobState.STOPPED_ON_TARGET if self.stopped_on_target else JobState.FINISHED

    @property
    def exit_code(self) -> int:
        return self.state.exit_code

    def resume_command(self) -> str:
        return f"losstune tune --resume {shlex.quote(self.job.location)}"

    def spent(self) -> dict[str, float]:
        """What the job cost: trials run, wall time, and CPU- and GPU-hours (each trial's reserved
        resources × its running time); the whole job, and each part of it (``budget.stack.*``,
        ``budget.baseline.*``, ``budget.confirm.*``)."""
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
        return {"budget.trials": sum(v for k, v in out.items() if k.endswith(".trials")),
                "budget.wall_s": round(self.wall_s, 1),
                "budget.cpu_hours": round(sum(v for k, v in out.items() if k.endswith(".cpu_hours")), 4),
                "budget.gpu_hours": round(sum(v for k, v in out.items() if k.endswith(".gpu_hours")), 4), **out}

    @property
    def met_all_targets(self) -> list[TrialRow]:
        """The trials that reached every target on validation (none when no target was set)."""
        return [r for r in self.rows if r.targets.get(ALL_MET) == 1]

    @property
    def best(self) -> TrialRow | None:
        ok = [r for r in self.rows if not math.isnan(r.objective)]
        return max(ok, key=lambda r: r.objective) if ok else None



def met_by(grid: Any, job: TuneJob) -> tuple[str, int] | None:
    """(trial id, epoch) of the first trial that met every target, when --stop-on-target ended the job."""
    if not job.stop_on_target:
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


def rows_from_grid(grid: Any, job: TuneJob, searched: list[str], *, folder: Path | None = None) -> list[TrialRow]:
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
            metrics={k: at_best.get(k) for k in ("val/auroc", "val/auprc", "val/ece", "val/score") if k in at_best},
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
    path = outcome.job.path / RESULTS_FILE
    keys = sorted({k for r in outcome.rows for k in r.config})
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["rank", "trial", "trial_id", "status", "epochs", "best_epoch", "objective", "val/auroc",
                "val/auprc", "val/ece", ALL_MET, EPOCH_REACHED, *keys, "error"])
    for i, r in enumerate(outcome.rows, 1):
        w.writerow([i, r.number, r.trial_id, r.status, r.epochs, r.best_epoch, r.objective, r.metrics.get("val/auroc"),
                    r.metrics.get("val/auprc"), r.metrics.get("val/ece"), r.targets.get(ALL_MET, ""),
                    r.targets.get(EPOCH_REACHED, ""), *[r.config.get(k, "") for k in keys], r.error])
    atomic_write(path, buf.getvalue())
    return path


def format_summary(outcome: TuneOutcome, *, top: int = 10) -> str:
    job = outcome.job
    lines = []
    done = sum(r.status != Status.PENDING for r in outcome.rows)
    lines.append(f"\njob {job.experiment}: {done} of {job.num_trials} trials, scenario {job.scenario}"
                 f"{' (auto)' if job.detection else ''}, metric {job.metric}, {outcome.wall_s:.0f} s")
    if bottom_line(outcome):
        lines.append(bottom_line(outcome))
    if outcome.state is JobState.INTERRUPTED:
        lines.append(f"INTERRUPTED after {done} of {job.num_trials} trials: the search is incomplete, so no winner was "
                     "chosen and the held-out test split was not touched")
    elif outcome.state is JobState.FAILED:
        lines.append("job FAILED: every trial diverged or failed, so no model was selected (see the status and error "
                     f"columns; {job.path / RESULTS_FILE}); a lower optim.lr or a smaller search range may help")
    elif outcome.stopped_on_target:
        tid, ep = outcome.stopped_on_target
        lines.append(f"stopped early: trial {tid} met every target at epoch {ep}")
    header = ["#", "trial", "id", "status", "epochs", job.metric, "val auroc", "val auprc", "val ece", "targets"]
    rows = []
    for i, r in enumerate(outcome.rows[:top], 1):
        t = "-" if ALL_MET not in r.targets else ("met" if r.targets[ALL_MET] else "not met")
        rows.append([str(i), str(r.number) + (" (preset)" if r.number == 0 else ""), r.trial_id, r.status,
                     str(r.epochs), metric(r.objective), metric(r.metrics.get("val/auroc")),
                     metric(r.metrics.get("val/auprc")), metric(r.metrics.get("val/ece")), t])
    lines.append(table(header, rows))
    shown = outcome.rows[:min(top, 5)]
    keys = [k for k in job.search_space if any(k in r.config for r in shown)]
    if shown and keys:
        lines.append("\nsearched values of the best trials:")
        lines.append(side_by_side(keys, [(f"#{i} {r.trial_id}",
                                          [value(r.config[k]) if k in r.config else "" for k in keys])
                                         for i, r in enumerate(shown, 1)]))
    if job.targets and any(v is not None for v in job.targets.values()):
        met = outcome.met_all_targets
        goal = ", ".join(f"{k.upper()} >= {v:g}" for k, v in job.targets.items() if v is not None)
        lines.append(f"targets ({goal}, validation): met by {len(met)} of {len(outcome.rows)} trials"
                     + ("" if met else " — the target was NOT reached"))
    w = outcome.winner
    if w is not None:
        h = w.holdout
        stack = outcome.confirmed.get("stack")
        seeds = len(stack.seeds) if stack is not None else 0
        of = (f", the deployed model: seed {stack.deployed_seed} of the config of trial {stack.source_trial}, the best "
              f"of its {seeds} training seeds on validation" if seeds > 1 else ", the deployed model")
        lines.append(f"winner {w.trial_id}{of}; on the held-out test split (never seen by the search): AUROC "
                     f"{h['test/auroc']:.4f}, AUPRC {h['test/auprc']:.4f}, ECE {h['test/ece']:.4f} -> "
                     f"{h['test/ece_scaled']:.4f} after temperature scaling (T = {h['temperature']:.3f})"
                     f"{_test_verdict(h, job.targets)}")
        if "test/ece_calibrated" in h:
            kinds = sorted({label["kind"] for label in w.calibration.get("labels", [])})
            lines.append(f"  calibrated on validation ({'/'.join(kinds) or 'none'}): test ECE "
                         f"{h['test/ece_calibrated']:.4f}, Brier {h['test/brier']:.4f} -> "
                         f"{h['test/brier_calibrated']:.4f}")
    lines += _arm_lines(outcome)
    if w is not None:
        lines += _comparison_lines(w)
    spent = outcome.spent()
    parts = "; ".join(f"{name} {int(spent[f'budget.{name}.trials'])} trials, {spent[f'budget.{name}.cpu_hours']:.3f} "
                      f"CPU-hours, {spent.get(f'budget.{name}.wall_s', 0):.0f} s"
                      for name in ("stack", "baseline", "confirm") if spent.get(f"budget.{name}.trials"))
    lines.append(f"spent: {int(spent['budget.trials'])} trials, {spent['budget.wall_s']:.0f} s wall, "
                 f"{spent['budget.cpu_hours']:.3f} CPU-hours, {spent['budget.gpu_hours']:.3f} GPU-hours"
                 + (f" (time budget {job.spec.time_budget_s:g} s)" if job.spec.time_budget_s else "")
                 + (f" ({parts})" if outcome.arm_rows or outcome.confirm_rows else ""))
    lines.append(f"results: {job.path / RESULTS_FILE}"
                 + (f" (experiment in {job.location})" if job.storage.remote else ""))
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
    if outcome.state is JobState.INTERRUPTED:
        lines.append(f"continue the job with: {outcome.resume_command()}")
    return "\n".join(lines)


def _pm(mean_sd: tuple[float, float]) -> str:
    mean, sd = mean_sd
    return metric(mean) + ("" if math.isnan(sd) else f" ± {sd:.4f}")


def _arm_lines(outcome: TuneOutcome) -> list[str]:
    """Each arm's deployed model and its config's seed mean ± sd on the test split, the lift of the
    stack over the baseline arm in words (the question a job answers), the budgets each arm searched
    with, and whether a search was still improving."""
    if not outcome.confirmed:
        if outcome.winner is not None and not outcome.job.arms:
            return ["no baseline arm (--no-baseline): this job cannot say whether the loss stack beats a plain model"]
        return []
    rows = []
    for arm, f in outcome.confirmed.items():
        trials = str(len(outcome.arm_rows.get(arm, outcome.rows if arm == "stack" else [])))
        seed = f" (seed {f.deployed_seed})" if f.deployed_seed is not None else ""
        rows.append([f"  {arm}: deployed{seed}", trials, f.source_trial, metric(f.best_seed_row.objective),
                     metric(f.deployed["auroc"]), metric(f.deployed["auprc"]), metric(f.deployed["ece_calibrated"])])
        if len(f.seeds) > 1:
            rows.append([f"    seed mean ± sd ({len(f.seeds)} seeds)", "", "", _pm(f.val), _pm(f.test["auroc"]),
                         _pm(f.test["auprc"]), _pm(f.test["ece_calibrated"])])
    lines = ["arms on the held-out test split (deployed: the config's seed best on validation, what is exported):",
             table(["  arm", "trials", "config of", "val score", "test AUROC", "test AUPRC", "test ECE (calibrated)"],
                   rows)]
    w = outcome.winner
    if w is not None and "baseline" in w.lifts:
        from trainables.compare import lift_sentence

        lines += ["  " + lift_sentence(lift) + " (calibrated)" * (lift.metric == "ece") for lift in w.lifts["baseline"]
                  if lift.label == "macro" and lift.metric in ("auroc", "auprc", "ece")]
        lines += ["  " + lift_sentence(lift, model_b=COMPARED_NAMES["baseline_as_trained"])
                  for lift in w.lifts.get("baseline_as_trained", []) if lift.label == "macro"]
    elif "baseline" not in outcome.confirmed and outcome.job.arms:
        lines.append("  the baseline arm produced no model: no comparison")
    lines += ["  " + line for line in (budget_sentence(outcome), *convergence_notes(outcome)) if line]
    return lines


def _comparison_lines(winner: Any) -> list[str]:
    """The reference models on the same test split, and the winner's lift over each (macro), in words."""

    if not winner.references:
        return []
    lines = ["reference models on the same test split (fit on the same training split): " + "; ".join(
        f"{COMPARED_NAMES.get(n, n)} AUROC {m['auroc']:.4f}, AUPRC {m['auprc']:.4f}, ECE {m['ece']:.4f}"
        for n, m in winner.references.items())]
    for name in winner.references:
        for lift in winner.lifts.get(name, []):
            if lift.label == "macro" and lift.metric in ("auroc", "auprc"):
                lines.append("  " + lift_sentence(lift, model_a="the loss stack's winner",
                                                   model_b=COMPARED_NAMES.get(name, name)))
    return lines


def _test_verdict(holdout: dict[str, Any], targets: dict[str, float | None]) -> str:
    met = targets_met({m: holdout[f"test/{m}"] for m in TARGET_METRICS}, targets)
    if not met:
        return ""
    failed = [f"{n.upper()} {holdout[f'test/{n}']:.4f} < {targets[n]:g}"
              for n, ok in met.items() if n != "all" and not ok]
    return "; targets on test: " + ("met" if met["all"] else f"NOT met ({', '.join(failed)})")
