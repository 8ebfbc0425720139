"""The MLflow job run's description (Markdown, what MLflow's UI shows on the run's page): while the
job runs, what it searches for; at its end, the verdict first (the UI shows the first lines and folds
the rest), then the winner, the targets, the comparisons, what it spent and how to run it again.
The printed summary (``tuner.present.text``) says the same in plain text."""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from trainables.compare import lift_sentence
from trainables.vocab import TARGET_METRICS, JobState, targets_met
from tuner.cluster.runtime import redact
from tuner.core.layout import REPORT_FILE, SPEC_FILE
from tuner.core.summary import STACK, JobSummary, WinnerResult
from tuner.present.verdict import COMPARED_NAMES, bottom_line, budget_sentence, convergence_notes, interrupted_where

if TYPE_CHECKING:
    from trainables.data import PreparedData

__all__ = ["data_summary", "running_note", "job_facts", "describe", "verdict"]


def data_summary(data: PreparedData | None) -> dict[str, Any]:
    """The prepared data in a description: its source (credentials removed), fingerprint and rows per
    split; empty without data."""
    if data is None:
        return {}
    return {"source": redact(str(data.source)), "fingerprint": data.fingerprint,
            "rows": [len(data.train), len(data.val), len(data.test)]}


def running_note(*, scenario: str, reasons: Sequence[str] | None, num_trials: int, metric: str,
                 goals: dict[str, float | None], location: str, experiment: str,
                 data_summary: dict[str, Any]) -> str:
    """The job run's description while it runs: what it searches for, its data and how to rerun it.

    Args:
        scenario, reasons: the job's scenario and, when it was detected from the data, why.
        num_trials, metric, goals: the stack's trials, the metric it selects on, the targets (None: not set).
        location, experiment: the job's folder and name (the command that reruns it).
    """
    lines = [f"**Running**: scenario {_scenario_words(scenario, tuple(reasons) if reasons else None)}; "
             f"{num_trials} trials, metric `{metric}`; targets: {_targets_words(goals)}. The verdict is written "
             "here when the job ends.", ""]
    return "\n".join(lines + job_facts(location=location, experiment=experiment, data_summary=data_summary))


def job_facts(*, location: str, experiment: str, data_summary: dict[str, Any]) -> list[str]:
    """The bullets every description of the job ends with: its data and how to run it again."""
    out = []
    d = data_summary
    if d:
        out.append(f"- **Data**: `{d['source']}`, {d['rows'][0]} / {d['rows'][1]} / {d['rows'][2]} rows for "
                   f"training / validation / test (fingerprint `{d['fingerprint']}`)")
    command = (f"losstune tune --job {shlex.quote(f'{location}/{SPEC_FILE}')} "
               f"--experiment {shlex.quote(experiment + '-again')}")
    out.append(f"- **Run it again**: `{command}`")
    return out


def describe(s: JobSummary, *, winner_link: str, report_link: str) -> str:
    """The job run's description at its end (Markdown): the verdict first (MLflow shows the first
    lines and folds the rest), then the winner's validation and held-out test metrics, the targets,
    the comparisons, what the job spent, the data, the command that reruns it and the report.

    Args:
        s: the job's summary.
        winner_link, report_link: where the winner's run and report.html are in MLflow's UI.
    """
    winner = s.winner
    first = bottom_line(s)  # which model is best here, before whether the targets were met
    lines = [f"**{first}**", "", verdict(s), ""] if first else [f"**{verdict(s)}**", ""]
    if winner is not None:
        h = winner.holdout
        stack = s.arms.get(STACK)  # with one seed: the search's best itself, no confirmation
        of = (f": seed {stack.deployed_seed}, the best on validation of {stack.seeds} training seeds of the "
              f"config of trial `{stack.source_trial}`" if stack is not None and stack.seeds > 1 else "")
        lines += [f"The winner, the deployed model, is [{winner.run_name}]({winner_link}){of}.", "",
                  "| | AUROC | AUPRC | ECE | ECE calibrated |", "|---|---|---|---|---|",
                  f"| validation (best epoch {winner.best_epoch}) | {_num(winner.val.get('val/auroc'))} | "
                  f"{_num(winner.val.get('val/auprc'))} | {_num(winner.val.get('val/ece'))} | "
                  f"{_num(h.get('val/ece_calibrated', h.get('val/ece_scaled')))} |",
                  f"| **held-out test** | {_num(h.get('test/auroc'))} | {_num(h.get('test/auprc'))} | "
                  f"{_num(h.get('test/ece'))} | {_num(h.get('test/ece_calibrated', h.get('test/ece_scaled')))} |",
                  ""]
    if s.has_targets:
        lines.append(f"- **Targets** {_targets_words(s.targets)}: met on validation by {s.met} of "
                     f"{len(s.rows)} trials" + (f"; {_test_words(winner.holdout, s.targets)}"
                                                if winner is not None else ""))
    if s.stopped_on_target:
        lines.append(f"- **Stopped early**: trial `{s.stopped_on_target[0]}` met every target at epoch "
                     f"{s.stopped_on_target[1]}")
    lines.append(f"- **Scenario** {_scenario_words(s.scenario, s.detection)}, metric `{s.metric}`")
    if s.objectives:
        chosen = f"; selected in the search: `{s.selected[0]}`" if s.selected else ""
        lines.append(f"- **Pareto front** of {', '.join(f'`{o}`' for o in s.objectives)}: {len(s.front)} of "
                     f"{s.done} trials (runs tagged `losstune.pareto = true`), chosen by "
                     f"{'`--select ' + s.select + '`' if s.select else 'the knee'}{chosen}")
    if winner is not None:
        lines += [f"- **Compared**: {x}" for x in _lift_sentences(winner)]
        if budget_sentence(s):
            lines.append(f"- **Searched**: {budget_sentence(s)}")
        lines += [f"- **Still improving**: {x}" for x in convergence_notes(s)]
    spent = s.spent
    lines.append(f"- **Spent**: {int(spent['budget.trials'])} trials, {spent['budget.wall_s']:.0f} s wall, "
                 f"{spent['budget.cpu_hours']:.3f} CPU-hours, {spent['budget.gpu_hours']:.3f} GPU-hours"
                 + (f" (time budget {s.time_budget_s:g} s)" if s.time_budget_s else ""))
    lines += job_facts(location=s.location, experiment=s.experiment,
                       data_summary={"source": s.data_source, "rows": list(s.data_rows),
                                     "fingerprint": s.data_fingerprint} if s.data_source else {})
    if s.job_state is JobState.INTERRUPTED:
        lines.append(f"- **Continue it**: `{s.resume_command()}`")
    if s.report:
        lines.append(f"- **Report**: [{REPORT_FILE}]({report_link}): plots, calibration, the arms side by side")
    return "\n".join(lines)


def verdict(s: JobSummary) -> str:
    """The job's outcome in one sentence: the first thing its MLflow description says."""
    w, state, done = s.winner, s.job_state, s.done
    if state is JobState.INTERRUPTED:
        return (f"Interrupted {interrupted_where(s)}: no winner was chosen and the held-out test split was not "
                "touched.")
    if state is JobState.FAILED:
        return "Failed: every trial diverged or failed, so no model was selected."
    if state is JobState.NO_SELECTION:
        return (f"No model selected: no member of the Pareto front of {', '.join(s.objectives)} meets --select "
                f"'{s.select}'; nothing was confirmed or tested.")
    if w is None:
        return f"Finished {done} trials without a winner on the held-out test split."
    h = w.holdout
    if not s.has_targets:
        return (f"No targets were set; the winner reached AUROC {_num(h.get('test/auroc'))} and AUPRC "
                f"{_num(h.get('test/auprc'))} on the held-out test split.")
    return _test_words(h, s.targets, sentence=True)


def _test_words(holdout: Mapping[str, Any], targets: Mapping[str, float | None], *, sentence: bool = False) -> str:
    met = targets_met({m: holdout.get(f"test/{m}") for m in TARGET_METRICS}, dict(targets))
    parts = [f"{n.upper()} {_num(holdout.get(f'test/{n}'))} {'≥' if ok else '<'} {targets[n]:g}"
             for n, ok in met.items() if n != "all"]
    words = "met" if met.get("all") else "NOT met"
    if sentence:
        return f"Targets {words} on the held-out test split: {', '.join(parts)}."
    return f"on the held-out test split: {words} ({', '.join(parts)})"


def _targets_words(targets: Mapping[str, float | None]) -> str:
    goals = [f"{n.upper()} ≥ {v:g}" for n, v in targets.items() if v is not None]
    return ", ".join(goals) if goals else "none"


def _scenario_words(scenario: str, reasons: tuple[str, ...] | None) -> str:
    why = f" (auto: {'; '.join(reasons)})" if reasons else ""
    return f"`{scenario}`{why}"


def _lift_sentences(winner: WinnerResult) -> list[str]:
    """The winner against the baseline arm and the reference models (macro AUROC), in words."""
    out = []
    # the baseline arm first: whether the loss stack helps is the question a job answers
    for name, lifts in sorted(winner.lifts.items(), key=lambda kv: kv[0] != "baseline"):
        if name == "baseline_as_trained":
            continue
        for lift in lifts:
            if lift.label == "macro" and lift.metric == "auroc":
                model_a = "the loss stack" if name == "baseline" else "the loss stack's winner"
                out.append(lift_sentence(lift, model_a=model_a, model_b=COMPARED_NAMES.get(name, name)))
    return out


def _num(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{float(v):.4f}"
