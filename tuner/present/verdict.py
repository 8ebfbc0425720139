"""What a job concluded, in words, said once: the bottom line (which model is best here), the budgets
its two arms searched with, and whether a search was still improving when it stopped.

The printed summary, the MLflow job run's description, ``losstune best`` (from the run's tags) and
report.html all show these same sentences. Every number in them is the deployed models' on the
held-out test split (METHODS.md, "One winner"); the words follow the interval at the printed
precision (``trainables.compare.interval_words``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trainables.compare import interval_words, printed, signed

__all__ = ["MODEL_NAMES", "COMPARED_NAMES", "ArmBudget", "arm_budgets", "budget_sentence", "best_so_far",
           "convergence_notes", "bottom_line", "findings", "BOTTOM_LINE_TAG", "BUDGETS_TAG", "CONVERGENCE_TAG"]

# the MLflow job run's tags holding the sentences, for `losstune best`
BOTTOM_LINE_TAG = "losstune.bottom_line"
BUDGETS_TAG = "losstune.budgets"
CONVERGENCE_TAG = "losstune.convergence"

STACK, BASELINE = "stack", "baseline"
MODEL_NAMES = {"stack": "the tuned loss stack", "baseline": "the tuned plain baseline",
               "logistic_regression": "logistic regression", "gradient_boosting": "gradient boosting"}
# the models the winner is compared with, in the comparisons' sentences
COMPARED_NAMES = {"logistic_regression": "logistic regression", "gradient_boosting": "gradient boosting",
                  "baseline": "the plain baseline", "baseline_as_trained": "the plain baseline (both as trained)"}
# an arm whose best trial came this late in its search was probably still improving
_LATE = 0.75


@dataclass(frozen=True)
class ArmBudget:
    trials: int
    cpu_s: float
    gpu_s: float

    def words(self) -> str:
        gpu = f", {self.gpu_s:.0f} GPU-s" if self.gpu_s else ""
        return f"{self.trials} trials, {self.cpu_s:.0f} CPU-s{gpu}"


def arm_budgets(outcome: Any) -> dict[str, ArmBudget]:
    """Each arm's search budget (its confirmation is not search): trials run and their reserved
    CPU- and GPU-seconds."""
    res = outcome.job.resources
    out = {}
    for arm, rows in ((STACK, outcome.rows), (BASELINE, outcome.arm_rows.get(BASELINE))):
        if rows:
            ran = [r for r in rows if r.status != "pending"]
            seconds = sum(r.seconds for r in ran)
            out[arm] = ArmBudget(trials=len(ran), cpu_s=seconds * res["cpu"], gpu_s=seconds * res["gpu"])
    return out


def budget_sentence(outcome: Any) -> str:
    """``budgets: stack 12 trials, 41 CPU-s; baseline 4 trials, 9 CPU-s — the baseline had less search;
    the lift may be overstated`` (or nothing said about fairness when the arms had the same trials)."""
    b = arm_budgets(outcome)
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


def best_so_far(rows: list[Any]) -> list[float]:
    """The arm's best validation score after each of its trials, in the order they were created."""
    ordered = sorted((r for r in rows if r.number >= 0), key=lambda r: r.number)
    out, best = [], -math.inf
    for r in ordered:
        if not math.isnan(r.objective):
            best = max(best, r.objective)
        out.append(best if best > -math.inf else math.nan)
    return out


def convergence_notes(outcome: Any) -> list[str]:
    """A sentence for each arm whose best trial came in the last quarter of its search: more trials
    could still find a better config, for either arm, and so move the verdict."""
    notes = []
    for arm, rows in ((STACK, outcome.rows), (BASELINE, outcome.arm_rows.get(BASELINE))):
        curve = best_so_far(rows or [])
        n = len(curve)
        if n < 4 or math.isnan(curve[-1]):
            continue
        at = curve.index(curve[-1])  # the trial (0-based, in creation order) that set the final best
        if at >= math.ceil(_LATE * n):
            notes.append(f"the {arm} arm's best came in trial {at} of {n} (its last quarter): still improving; "
                         "more trials may change the verdict")
    return notes


def _macro(lifts: list[Any], metric: str = "auroc") -> Any:
    return next((x for x in lifts if x.label == "macro" and x.metric == metric), None)


def bottom_line(outcome: Any) -> str:
    """One sentence naming the best of the stack, the baseline arm and the reference models on this
    data by test AUROC (deployed models), with the interval of the stack against it (or, when the
    stack is best, against the next best)."""
    w = outcome.winner
    if w is None:
        return ""
    scores = {STACK: float(w.holdout["test/auroc"])}
    if BASELINE in outcome.confirmed and BASELINE in w.lifts:
        scores[BASELINE] = float(outcome.confirmed[BASELINE].deployed["auroc"])
    for name, metrics in w.references.items():
        if name in w.lifts:
            scores[name] = float(metrics["auroc"])
    ranked = sorted(scores, key=lambda k: -scores[k])
    best = ranked[0]
    stack = f"{MODEL_NAMES[STACK]} (deployed model)"
    if len(ranked) == 1:
        return f"Only {stack} was evaluated here: test AUROC {scores[STACK]:.4f}; nothing to compare it with."
    other = ranked[1] if best == STACK else best
    lift = _macro(w.lifts[other])
    name = MODEL_NAMES.get(other, other)
    diff = (f"difference {signed(lift.estimate)}, 95% CI {signed(lift.low)} to {signed(lift.high)}: "
            f"{interval_words(lift, model_b=name)}")
    if best == STACK:
        return (f"Best here on test AUROC: {stack}, {scores[STACK]:.4f}; the next best, {name}, "
                f"{scores[other]:.4f}, is {printed(lift.estimate):.3f} lower ({diff}).")
    return (f"Best here on test AUROC: {MODEL_NAMES.get(best, best)}, {scores[best]:.4f}; {stack}, "
            f"{scores[STACK]:.4f}, is {abs(printed(lift.estimate)):.3f} lower ({diff}).")


def findings(outcome: Any) -> dict[str, str]:
    """The sentences as the MLflow job run's tags (``losstune best`` prints them)."""
    out = {BOTTOM_LINE_TAG: bottom_line(outcome), BUDGETS_TAG: budget_sentence(outcome),
           CONVERGENCE_TAG: "\n".join(convergence_notes(outcome))}
    return {k: v for k, v in out.items() if v}
