"""The job's summary as the command line prints it (and report.html quotes it), and the job part of
``losstune best``: both rendered from a ``JobSummary`` (``tuner.core.summary``)."""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from trainables.compare import lift_sentence
from trainables.vocab import METRIC_MEANING, TARGET_METRICS, JobState, targets_met
from tuner.core.layout import RESULTS_FILE
from tuner.core.summary import BASELINE, STACK, Delivery, JobSummary, WinnerResult
from tuner.present.tables import fit_width, metric, side_by_side, table, value
from tuner.present.verdict import (
    COMPARED_NAMES,
    bottom_line,
    budget_sentence,
    convergence_notes,
    interrupted_where,
    race_sentence,
)

__all__ = ["render_summary", "render_best", "render_head", "cost_line", "score_note", "searched_values", "select_words",
           "front_lines"]


def render_head(*, experiment: str, scenario: str, reasons: Sequence[str] | None, metric_name: str, source: str,
                rows: Sequence[int], backbone: str, trainings: Mapping[str, int], confirm: tuple[int, int, int],
                slots: int | None, shape: Sequence[int] | None = None, objectives: Sequence[str] = (),
                select: str = "") -> list[str]:
    """A job's first lines, before anything is trained: its data and model, why its scenario, what
    its metric is, and what it will cost (``cost_line``).

    Args:
        reasons: why the scenario was detected from the data (None: it was asked for).
        rows: training / validation / test rows.
        trainings, confirm, slots: as for ``cost_line``.
        shape: an image job's input shape.
        objectives, select: several objectives, and the rule that chooses a model from their front.
    """
    images = f"; images {'x'.join(map(str, shape))}" if shape else ""
    why = f", chosen from the data: {'; '.join(reasons)}" if reasons else " (as asked)"
    return fit_width([
        f"job {experiment} · data {source} · model {backbone}",
        f"  rows: {rows[0]} training, {rows[1]} validation, {rows[2]} test{images}",
        f"scenario {scenario}{why}",
        *([f"objectives {', '.join(objectives)} on validation, at the epoch best for {metric_name}: their Pareto "
           f"front is kept, and {select_words(select)} is chosen from it"] if objectives else
          [f"metric {metric_name} = {METRIC_MEANING.get(metric_name, metric_name)}, on validation "
           "(--metric changes it)"]),
        cost_line(trainings, confirm=confirm, slots=slots)])


def select_words(select: str) -> str:
    """The --select rule in words: 'the knee' (default) or the rule as given."""
    return f"the member --select '{select}' prefers" if select else "the knee (nearest the best of every objective)"


def cost_line(trainings: Mapping[str, int], *, confirm: tuple[int, int, int], slots: int | None) -> str:
    """How many models a job trains, at most, per part, and how many at once.

    Args:
        trainings: per part (stack, baseline, confirm), the trainings it runs at most.
        confirm: the confirmation as (configs per arm, seeds per config, arms).
        slots: trainings at once (None: not known before the job joins its cluster).
    """
    k, seeds, arms = confirm
    parts = [f"stack search {trainings.get(STACK, 0)}"]
    if trainings.get(BASELINE):
        parts.append(f"baseline arm {trainings[BASELINE]}")
    if trainings.get("confirm"):
        of_arms = f"{arms} arm{'s' * (arms != 1)}"
        how = (f"1 config × {seeds} seeds × {of_arms}" if k == 1 else
               f"{k} configs raced over up to {seeds} seeds: {trainings['confirm'] // arms} per arm × {of_arms}")
        parts.append(f"confirmation {trainings['confirm']} ({how})")
    total = sum(trainings.values())
    at_once = f" ({slots} at a time)" if slots else ""
    return f"trains up to {total} models{at_once}: {', '.join(parts)}"


def render_summary(s: JobSummary, delivery: Delivery | None = None, *, top: int = 10) -> str:
    """The summary a job prints when it ends: the bottom line, the best trials and their searched
    values, the targets, the winner on the held-out test split, the arms, the reference models, what
    it spent, where its results are, and what became of its MLflow records (``delivery``)."""
    delivery = delivery or Delivery()
    lines = [f"\njob {s.experiment}: {s.done} of {s.num_trials} trials, scenario {s.scenario}"
             f"{' (auto)' if s.detection else ''}, metric {s.metric}, {s.wall_s:.0f} s"]
    if bottom_line(s):
        lines.append(bottom_line(s))
    results = Path(s.folder) / RESULTS_FILE
    if s.job_state is JobState.INTERRUPTED:
        lines.append(f"INTERRUPTED {interrupted_where(s)}: the job is incomplete, so no winner was "
                     "chosen and the held-out test split was not touched")
    elif s.job_state is JobState.FAILED:
        lines.append("job FAILED: every trial diverged or failed, so no model was selected (see the status and error "
                     f"columns; {results}); a lower optim.lr or a smaller search range may help")
    elif s.stopped_on_target:
        tid, ep = s.stopped_on_target
        lines.append(f"stopped early: trial {tid} met every target at epoch {ep}")
    header = ["#", "trial id", "no.", "status", "epochs", "score", "val auroc", "val auprc", "val ece", "targets"]
    rows = []
    for i, r in enumerate(s.rows[:top], 1):
        t = "-" if r.all_met is None else ("met" if r.all_met else "not met")
        rows.append([str(i), r.trial_id, str(r.number) + (" preset" if r.number == 0 else ""), r.status,
                     str(r.epochs), metric(r.objective), metric(r.metrics.get("val/auroc")),
                     metric(r.metrics.get("val/auprc")), metric(r.metrics.get("val/ece")), t])
    lines.append(table(header, rows))
    lines.append(score_note(s.metric))
    lines += front_lines(s)
    if searched_values(s):  # a table as long as the space: in `best` and report.html, not on the screen
        lines.append(f"their searched values: `losstune best --job {s.experiment}` and report.html")
    if s.has_targets:
        goal = ", ".join(f"{k.upper()} >= {v:g}" for k, v in s.targets.items() if v is not None)
        lines.append(f"targets ({goal}, validation): met by {s.met} of {len(s.rows)} trials"
                     + ("" if s.met else " — the target was NOT reached"))
    lines += _winner_lines(s)
    lines += _arm_lines(s)
    if s.winner is not None:
        lines += _comparison_lines(s.winner)
    lines += _spent_lines(s, results)
    lines += _delivery_lines(s, delivery)
    if s.job_state is JobState.INTERRUPTED:
        lines.append(f"continue the job with: {s.resume_command()}")
    return "\n".join(fit_width(lines))


def front_lines(s: JobSummary, *, top: int = 12) -> list[str]:
    """Several objectives: the Pareto front on validation (the member the rule chose first), then what
    was chosen, or that nothing meets the rule."""
    if not s.objectives:
        return []
    metrics = [o.rsplit(":", 1)[0] for o in s.objectives]
    front = s.front
    out = [f"Pareto front of {', '.join(s.objectives)} on validation (each trial at its epoch best for "
           f"{metrics[0]}): {len(front)} of {s.done} trials; by {select_words(s.select)}"]
    ranked = set(s.selected)
    rows = [[("> " if r.trial_id in s.selected[:1] else "") + r.trial_id, str(r.number),
             *[metric(r.metrics.get(m)) for m in metrics], "yes" if r.trial_id in ranked else "no"]
            for r in front[:top]]
    out.append(table(["trial id", "no.", *[m.removeprefix("val/") for m in metrics],
                      "meets --select" if s.select else "ranked"], rows))
    if s.job_state is JobState.NO_SELECTION:
        out.append(f"NO MODEL SELECTED: no member of the front meets --select '{s.select}', so nothing was confirmed "
                   "or tested; loosen the rule and run the job again (losstune tune --job "
                   f"{shlex.quote(str(Path(s.folder) / 'job.yaml'))} --select RULE --experiment NEW_NAME), or take a "
                   "member as it is: losstune export --trial ID")
    elif s.selected:
        stack = s.arms.get(STACK)
        confirmed = len(stack.by_config) if stack is not None and stack.by_config else 0
        out.append(f"selected in the search: trial {s.selected[0]} (marked >)"
                   + (f"; it and the next {confirmed - 1} the rule ranks were trained again with fresh seeds, and the "
                      "rule chose among their seed means (below)" if confirmed > 1 else ""))
        if stack is not None and stack.met_on_means is False:
            out.append(f"  note: on its seed mean no confirmed config meets --select '{s.select}'; the search's "
                       "selection is kept")
    return out


def searched_values(s: JobSummary, top: int = 5) -> str:
    """The searched values of the best trials side by side ('' when nothing was searched)."""
    shown = s.rows[:top]
    keys = [k for k in s.search_keys if any(k in r.config for r in shown)]
    if not shown or not keys:
        return ""
    return side_by_side(keys, [(f"#{i} {r.trial_id}", [value(r.config[k]) if k in r.config else "" for k in keys])
                               for i, r in enumerate(shown, 1)])


def score_note(metric_name: str) -> str:
    """What the trials' score column is (the metric the search maximises), in words."""
    return (f"score = {metric_name} = {METRIC_MEANING.get(metric_name, metric_name)}, on validation (a trial's "
            "best epoch); trial id: what `losstune export --trial` takes; no.: the order of the search")


def _winner_lines(s: JobSummary) -> list[str]:
    """The winner, the deployed model, on the held-out test split, and its calibration."""
    w = s.winner
    if w is None:
        return []
    h = w.holdout
    stack = s.arms.get(STACK)
    of = (f", the deployed model: seed {stack.deployed_seed} of the config of trial {stack.source_trial}, the best "
          f"of its {stack.seeds} training seeds on validation" if stack is not None and stack.seeds > 1
          else ", the deployed model")
    lines = [f"winner {w.trial_id}{of}; on the held-out test split (never seen by the search): AUROC "
             f"{h['test/auroc']:.4f}, AUPRC {h['test/auprc']:.4f}{prevalence_words(w)}, ECE {h['test/ece']:.4f} -> "
             f"{h['test/ece_scaled']:.4f} after temperature scaling (T = {h['temperature']:.3f})"
             f"{_test_verdict(h, s.targets)}"]
    if "test/ece_calibrated" in h:
        lines.append(f"  calibrated on validation ({'/'.join(w.calibration_kinds) or 'none'}): test ECE "
                     f"{h['test/ece_calibrated']:.4f}, Brier {h['test/brier']:.4f} -> "
                     f"{h['test/brier_calibrated']:.4f}")
    for label, points in list(w.operating.items())[:3]:
        youden = next((p for p in points if p["rule"] == "youden"), None)
        if youden is not None:
            name = f" ({label})" if len(w.operating) > 1 else ""
            lines.append(f"  at the validation-chosen threshold{name} {youden['threshold']:.3f}: {point_words(youden)} "
                         "on test (report.html: at sensitivity 0.80 and 0.90 too)")
    return lines


def prevalence_words(w: WinnerResult) -> str:
    """' (prevalence 0.050)' beside a single label's AUPRC: the AUPRC of a model that guesses."""
    if len(w.prevalence) != 1:
        return ""
    return f" (prevalence {next(iter(w.prevalence.values())):.3f})"


def point_words(p: Mapping[str, float]) -> str:
    """An operating point in a reviewer's words: sensitivity, specificity, PPV, NPV, alerts per 100 patients."""
    return (f"sensitivity {p['sensitivity']:.2f}, specificity {p['specificity']:.2f}, PPV {p['ppv']:.2f}, "
            f"NPV {p['npv']:.2f}, {p['alerts_per_100']:.0f} alerts per 100 patients")


def _spent_lines(s: JobSummary, results: Path) -> list[str]:
    """What the job spent, in all and per part, and where its results are."""
    spent = s.spent
    parts = "; ".join(f"{name} {int(spent[f'budget.{name}.trials'])} trials, {spent[f'budget.{name}.cpu_hours']:.3f} "
                      f"CPU-hours, {spent.get(f'budget.{name}.wall_s', 0):.0f} s"
                      for name in ("stack", "baseline", "confirm") if spent.get(f"budget.{name}.trials"))
    return [f"spent: {int(spent['budget.trials'])} trials, {spent['budget.wall_s']:.0f} s wall, "
            f"{spent['budget.cpu_hours']:.3f} CPU-hours, {spent['budget.gpu_hours']:.3f} GPU-hours"
            + (f" (time budget {s.time_budget_s:g} s)" if s.time_budget_s else "")
            + (f" ({parts})" if s.parts else "")
            + (f"; trial slots busy {spent['budget.slot_utilisation']:.0%} of the time (the trials' reserved "
               "CPU-seconds ÷ (wall × the runtime's CPUs); the rest: starting workers and runs, waiting for a "
               "round's last trial, evaluating)" if "budget.slot_utilisation" in spent else ""),
            f"results: {results}" + (f" (experiment in {s.location})" if s.remote else "")]


def _delivery_lines(s: JobSummary, delivery: Delivery) -> list[str]:
    """Where the job's record is, and what MLflow did not take (yet)."""
    lines = [delivery.note] if delivery.note else []
    if delivery.kept:
        uri = "" if delivery.uri_written else " --tracking-uri URI"  # a URI with credentials was not written down
        lines.append(f"MLflow did not answer: {delivery.kept} records kept in {delivery.spool}; run "
                     f"`losstune sync {shlex.quote(s.folder)}{uri}` when the server answers")
    if delivery.refused:
        shown = "; ".join(delivery.refused[:3])
        more = len(delivery.refused) - 3
        lines.append(f"MLflow refused {len(delivery.refused)} records for good ({shown}"
                     f"{f'; and {more} more' if more > 0 else ''})")
    return lines


def _pm(mean_sd: tuple[float, float], sd_digits: int = 4) -> str:
    mean, sd = mean_sd
    return metric(mean) + ("" if math.isnan(sd) else f" ± {sd:.{sd_digits}f}")


def _arm_lines(s: JobSummary) -> list[str]:
    """Each arm's deployed model and its config's seed mean ± sd on the test split, the lift of the
    stack over the baseline arm in words (the question a job answers), the budgets each arm searched
    with, and whether a search was still improving."""
    if not s.arms:
        if s.winner is not None and not s.baseline_planned:
            return ["no baseline arm (--no-baseline): this job cannot say whether the loss stack beats a plain model"]
        return []
    rows = []
    for arm, f in s.arms.items():
        seed = f", seed {f.deployed_seed}" if f.deployed_seed is not None else ""
        rows.append([f"  {arm}{seed}", f.source_trial, metric(f.deployed_objective),
                     metric(f.deployed["auroc"]), metric(f.deployed["auprc"]), metric(f.deployed["ece_calibrated"])])
        if f.seeds > 1:
            rows.append([f"    mean ± sd, {f.seeds} seeds", "", _pm(f.val, 3), _pm(f.test["auroc"], 3),
                         _pm(f.test["auprc"], 3), _pm(f.test["ece_calibrated"], 3)])
    lines = ["arms on the held-out test split (deployed: the config's seed best on validation, what is exported; "
             "ECE after calibration):",
             table(["  arm", "config of", "val score", "test AUROC", "test AUPRC", "test ECE"], rows)]
    w = s.winner
    if w is not None and BASELINE in w.lifts:
        lines += ["  " + lift_sentence(lift) + " (calibrated)" * (lift.metric == "ece") for lift in w.lifts[BASELINE]
                  if lift.label == "macro" and lift.metric in ("auroc", "auprc", "ece")]
        lines += ["  " + lift_sentence(lift, model_b=COMPARED_NAMES["baseline_as_trained"])
                  for lift in w.lifts.get("baseline_as_trained", ()) if lift.label == "macro"]
    elif BASELINE not in s.arms and s.baseline_planned:
        lines.append("  the baseline arm produced no model: no comparison")
    lines += ["  " + line for line in (race_sentence(s), budget_sentence(s), *convergence_notes(s)) if line]
    return lines


def _comparison_lines(winner: WinnerResult) -> list[str]:
    """The reference models on the same test split, and the winner's lift over each (macro), in words."""
    if not winner.references:
        return []
    lines = ["reference models on the same test split (fit on the same training split): " + "; ".join(
        f"{COMPARED_NAMES.get(n, n)} AUROC {m['auroc']:.4f}, AUPRC {m['auprc']:.4f}, ECE {m['ece']:.4f}"
        for n, m in winner.references.items())]
    for name in winner.references:
        for lift in winner.lifts.get(name, ()):
            if lift.label == "macro" and lift.metric in ("auroc", "auprc"):
                lines.append("  " + lift_sentence(lift, model_a="the loss stack's winner",
                                                   model_b=COMPARED_NAMES.get(name, name)))
    return lines


def _test_verdict(holdout: Mapping[str, float], targets: Mapping[str, float | None]) -> str:
    met = targets_met({m: holdout[f"test/{m}"] for m in TARGET_METRICS}, dict(targets))
    if not met:
        return ""
    failed = [f"{n.upper()} {holdout[f'test/{n}']:.4f} < {targets[n]:g}"
              for n, ok in met.items() if n != "all" and not ok]
    return "; targets on test: " + ("met" if met["all"] else f"NOT met ({', '.join(failed)})")


def render_best(s: JobSummary) -> list[str]:
    """``losstune best``'s lines about the job after its table of trials (which comes from the trials'
    own MLflow runs): the winner on the test split, the targets, the arms, the reference models and the
    lifts, the budgets and what the job spent."""
    lines = []
    w = s.winner
    if w is not None:
        h = w.holdout
        lines.append(f"\nwinner {w.trial_id} on the held-out test split: AUROC {h['test/auroc']:.4f}, AUPRC "
                     f"{h['test/auprc']:.4f}, ECE {h['test/ece']:.4f} -> {h.get('test/ece_scaled', math.nan):.4f} "
                     "after temperature scaling")
    goals = {n: v for n, v in s.targets.items() if v is not None}
    if goals:
        rate = s.met / len(s.rows) if s.rows else 0.0
        on_test = w.targets_test.get("target.test_all_met") if w is not None else None
        lines.append("targets (" + ", ".join(f"{n.upper()} >= {v}" for n, v in goals.items()) + "): met by "
                     f"{s.met} trials on validation ({rate:.0%})"
                     + ("" if on_test is None else f"; on test: {'met' if on_test else 'NOT met'}"))
    lines += _best_arms_and_lifts(s)
    lines += ["  " + line for line in (budget_sentence(s), *convergence_notes(s)) if line]
    if s.spent:
        spent = s.spent
        lines.append(f"spent: {int(spent['budget.trials'])} trials, {spent.get('budget.wall_s', 0):.0f} s wall, "
                     f"{spent.get('budget.cpu_hours', 0):.3f} CPU-hours, {spent.get('budget.gpu_hours', 0):.3f} "
                     "GPU-hours")
    return lines


def _best_arms_and_lifts(s: JobSummary) -> list[str]:
    lines = []
    arms = [a for a in (STACK, BASELINE) if a in s.arms]
    if arms:
        rows = []
        for a in arms:
            f = s.arms[a]
            if f.deployed:
                rows.append([f"  {a}: deployed", "", *(metric(f.deployed.get(k))
                                                       for k in ("auroc", "auprc", "ece_calibrated"))])
            rows.append(["    seed mean ± sd", str(f.seeds), *(_pm(f.test[k]) for k in ("auroc", "auprc",
                                                                                        "ece_calibrated"))])
        lines.append("\narms on the held-out test split (deployed: the config's seed best on validation; the seed "
                     "mean ± sd of its config):")
        lines.append(table(["  arm", "seeds", "test AUROC", "test AUPRC", "test ECE (calibrated)"], rows))
    w = s.winner
    refs = sorted(w.references) if w is not None else []
    if refs:
        lines.append("reference models on the same test split: " + "; ".join(
            f"{COMPARED_NAMES.get(n, n)} AUROC {metric(w.references[n].get('auroc'))}, "
            f"AUPRC {metric(w.references[n].get('auprc'))}" for n in refs))
    for name in (BASELINE, "baseline_as_trained", *refs):
        for what in ("auroc", "auprc", "ece"):
            lift = w.macro(name, what) if w is not None else None
            if lift is not None:
                model_a = "the loss stack" if name == BASELINE else "the loss stack's winner"
                lines.append("  " + lift_sentence(lift, model_a=model_a, model_b=COMPARED_NAMES.get(name, name)))
    return lines
