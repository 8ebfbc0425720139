"""What a job concluded, in words, said once: the bottom line (which model is best here), the budgets
its two arms searched with, and whether a search was still improving when it stopped.

The printed summary, the MLflow job run's description, ``losstune best`` and report.html all show these
same sentences, made from the job's ``JobSummary``. Every number in them is the deployed models' on the
held-out test split (METHODS.md, "One winner"); the words follow the interval at the printed
precision (``trainables.compare.interval_words``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from trainables.compare import interval_words, printed, signed
from tuner.core.summary import BASELINE, STACK, JobSummary

__all__ = ["MODEL_NAMES", "COMPARED_NAMES", "budget_sentence", "race_sentence", "best_so_far", "convergence_notes",
           "bottom_line", "findings", "interrupted_where", "BOTTOM_LINE_TAG", "BUDGETS_TAG", "CONVERGENCE_TAG"]

# the MLflow job run's tags holding the sentences, for `losstune best`
BOTTOM_LINE_TAG = "losstune.bottom_line"
BUDGETS_TAG = "losstune.budgets"
CONVERGENCE_TAG = "losstune.convergence"

MODEL_NAMES = {"stack": "the tuned loss stack", "baseline": "the tuned plain baseline",
               "logistic_regression": "logistic regression", "gradient_boosting": "gradient boosting"}
# the models the winner is compared with, in the comparisons' sentences
COMPARED_NAMES = {"logistic_regression": "logistic regression", "gradient_boosting": "gradient boosting",
                  "baseline": "the plain baseline", "baseline_as_trained": "the plain baseline (both as trained)"}
# an arm whose best trial came this late in its search was probably still improving
_LATE = 0.75


def budget_sentence(s: JobSummary) -> str:
    """``budgets: stack 12 trials, 41 CPU-s; baseline 4 trials, 9 CPU-s — the baseline had less search;
    the lift may be overstated`` (or nothing said about fairness when the arms had the same trials)."""
    b = s.budgets
    if STACK not in b:
        return ""
    if BASELINE not in b:
        return f"budget: stack {b[STACK].words()}; no baseline arm"
    text = f"budgets: stack {b[STACK].words()}; baseline {b[BASELINE].words()}"
    if b[BASELINE].trials < b[STACK].trials:
        return text + " — the baseline had less search; the lift may be overstated"
    if b[BASELINE].trials > b[STACK].trials:
        return text + " — the stack had less search; the lift may be understated"
    return text


def race_sentence(s: JobSummary) -> str:
    """``seeds per confirmed config (a race: ...): stack 1a2b3_00000 3, 1a2b3_00001 2, ...`` for the arms
    that confirmed more than one config ('' otherwise): how many seeds each got, in the search's order."""
    parts = [f"{arm} " + ", ".join(f"{c['source_trial']} {c['seeds']}" for c in f.by_config)
             for arm, f in s.arms.items() if len(f.by_config) > 1]
    if not parts:
        return ""
    return ("seeds per confirmed config (a race: after each seed the better half went on, and the winner is "
            "the best mean of those given the most): " + "; ".join(parts))


def best_so_far(rows: Iterable[Any]) -> list[float]:
    """The arm's best validation score after each of its trials, in the order they were created."""
    ordered = sorted((r for r in rows if r.number >= 0), key=lambda r: r.number)
    out, best = [], -math.inf
    for r in ordered:
        if not math.isnan(r.objective):
            best = max(best, r.objective)
        out.append(best if best > -math.inf else math.nan)
    return out


def convergence_notes(s: JobSummary) -> list[str]:
    """A sentence for each arm whose best trial came in the last quarter of its search: more trials
    could still find a better config, for either arm, and so move the verdict."""
    notes = []
    for arm in (STACK, BASELINE):
        curve = list(s.curves.get(arm, ()))
        n = len(curve)
        if n < 4 or math.isnan(curve[-1]):
            continue
        at = curve.index(curve[-1])  # the trial (0-based, in creation order) that set the final best
        if at >= math.ceil(_LATE * n):
            notes.append(f"the {arm} arm's best came in trial {at} of {n} (its last quarter): still improving; "
                         "more trials may change the verdict")
    return notes


def bottom_line(s: JobSummary) -> str:
    """One sentence naming the best of the stack, the baseline arm and the reference models on this
    data by test AUROC (deployed models), with the interval of the stack against it (or, when the
    stack is best, against the next best)."""
    w = s.winner
    if w is None:
        return ""
    scores = {STACK: float(w.holdout["test/auroc"])}
    if BASELINE in s.arms and BASELINE in w.lifts:
        scores[BASELINE] = float(s.arms[BASELINE].deployed["auroc"])
    for name, metrics in w.references.items():
        if name in w.lifts:
            scores[name] = float(metrics["auroc"])
    ranked = sorted(scores, key=lambda k: -scores[k])
    best = ranked[0]
    stack = f"{MODEL_NAMES[STACK]} (deployed model)"
    if len(ranked) == 1:
        return f"Only {stack} was evaluated here: test AUROC {scores[STACK]:.4f}; nothing to compare it with."
    other = ranked[1] if best == STACK else best
    lift = w.macro(other, "auroc")
    name = MODEL_NAMES.get(other, other)
    diff = (f"difference {signed(lift.estimate)}, 95% CI {signed(lift.low)} to {signed(lift.high)}: "
            f"{interval_words(lift, model_b=name)}")
    if best == STACK:
        return (f"Best here on test AUROC: {stack}, {scores[STACK]:.4f}; the next best, {name}, "
                f"{scores[other]:.4f}, is {printed(lift.estimate):.3f} lower ({diff}).")
    return (f"Best here on test AUROC: {MODEL_NAMES.get(best, best)}, {scores[best]:.4f}; {stack}, "
            f"{scores[STACK]:.4f}, is {abs(printed(lift.estimate)):.3f} lower ({diff}).")


def findings(s: JobSummary) -> dict[str, str]:
    """The sentences as the MLflow job run's tags (MLflow's UI shows them beside the run)."""
    out = {BOTTOM_LINE_TAG: bottom_line(s), BUDGETS_TAG: budget_sentence(s),
           CONVERGENCE_TAG: "\n".join(convergence_notes(s))}
    return {k: v for k, v in out.items() if v}


def interrupted_where(s: JobSummary) -> str:
    """Which part of an interrupted job stopped: the stack's search (n of N trials), else the part
    after it that had started (the baseline arm or the confirmation)."""
    if s.done < s.num_trials:
        return f"in the stack's search, after {s.done} of {s.num_trials} trials"
    part = "the confirmation" if s.spent.get("budget.confirm.trials") else "the baseline arm"
    return f"in {part}, after the stack's search had finished its {s.num_trials} trials"
