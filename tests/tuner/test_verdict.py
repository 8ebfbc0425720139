"""What a job concluded, in words (issue 19): the bottom line names the best model here, the budgets
each arm searched with (and a warning when they differ), a note for a search still improving, and
one winner — the deployed model — behind the headline, the targets and every interval."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest

from trainables.compare import Lift
from tuner.core.summary import ArmResult, JobSummary, WinnerResult
from tuner.job.outcome import TrialRow, arm_budgets, arm_curves
from tuner.present.verdict import best_so_far, bottom_line, budget_sentence, convergence_notes


def _row(number: int, objective: float, seconds: float = 10.0) -> TrialRow:
    return TrialRow(number=number, trial_id=f"t{number}", status="completed", epochs=3, best_epoch=3,
                    objective=objective, metrics={}, targets={}, config={}, path="", seconds=seconds)


def _lift(estimate, low, high):
    return Lift(estimate=estimate, low=low, high=high, metric="auroc", label="macro", n_resamples=1000)


def _outcome(*, stack=0.80, baseline=0.79, refs=None, lifts=None, stack_rows=None, base_rows=None,
             cpus=1.0) -> JobSummary:
    """A job's summary with just what the sentences read: the deployed models' test AUROC, the lifts,
    and the arms' trials (their budgets and best-so-far curves computed as a job computes them)."""
    refs = {"logistic_regression": 0.78, "gradient_boosting": 0.76} if refs is None else refs
    winner = WinnerResult(trial_id="t0", run_name="trial 0 (t0)", best_epoch=3, val={}, holdout={"test/auroc": stack},
                          calibration_kinds=(), targets_test={}, references={n: {"auroc": v} for n, v in refs.items()},
                          lifts={k: (v,) for k, v in (lifts or {}).items()})
    arms = {"baseline": ArmResult(arm="baseline", search_trials=0, source_trial="b0", deployed_seed=None,
                                  deployed_objective=math.nan, deployed={"auroc": baseline}, seeds=1,
                                  val=(math.nan, math.nan), test={})} if baseline is not None else {}
    trials = SimpleNamespace(job=SimpleNamespace(resources={"cpu": cpus, "gpu": 0.0}), rows=stack_rows or [],
                             arm_rows={"baseline": base_rows} if base_rows is not None else {})
    return JobSummary(experiment="j", scenario="rare_disease_detection", detection=None, metric="val/score",
                      num_trials=len(stack_rows or []), state="finished", wall_s=0.0, folder="/j", location="/j",
                      remote=False, data_given="d", data_source="d", data_rows=(1, 1, 1), data_fingerprint="f",
                      targets={"auroc": None, "auprc": None}, time_budget_s=None, search_keys=(), rows=(),
                      baseline_planned=True, winner=winner, arms=arms, budgets=arm_budgets(trials),
                      curves=arm_curves(trials))


def test_the_bottom_line_names_a_reference_model_that_beats_both_arms():
    out = _outcome(stack=0.735, baseline=0.74, refs={"logistic_regression": 0.781, "gradient_boosting": 0.77},
                   lifts={"baseline": _lift(-0.005, -0.02, 0.01), "logistic_regression": _lift(-0.046, -0.070, -0.020),
                          "gradient_boosting": _lift(-0.035, -0.05, -0.01)})
    assert bottom_line(out) == ("Best here on test AUROC: logistic regression, 0.7810; the tuned loss stack (deployed "
                                "model), 0.7350, is 0.046 lower (difference \u22120.046, 95% CI \u22120.070 to "
                                "\u22120.020: it hurts on this data).")


def test_the_bottom_line_when_the_stack_is_best_compares_it_with_the_next_best():
    out = _outcome(stack=0.912, baseline=0.907, refs={"logistic_regression": 0.88},
                   lifts={"baseline": _lift(0.005, 0.0004, 0.010), "logistic_regression": _lift(0.032, 0.01, 0.05)})
    line = bottom_line(out)
    assert line.startswith("Best here on test AUROC: the tuned loss stack (deployed model), 0.9120; the next best, "
                           "the tuned plain baseline, 0.9070, is 0.005 lower")
    # the interval prints 0.000 at its lower end: not "it helps" (METHODS.md, "Words")
    assert line.endswith("(difference +0.005, 95% CI 0.000 to +0.010: no evidence that it helps on this data).")


def test_the_budgets_are_named_and_a_smaller_baseline_search_is_a_warning():
    stack = [_row(i, 0.5, seconds=10.0) for i in range(12)]
    assert budget_sentence(_outcome(stack_rows=stack, base_rows=[_row(i, 0.5, 4.0) for i in range(12)], cpus=2.0)) \
        == "budgets: stack 12 trials, 240 CPU-s; baseline 12 trials, 96 CPU-s"
    assert budget_sentence(_outcome(stack_rows=stack, base_rows=[_row(i, 0.5, 2.25) for i in range(4)])) == (
        "budgets: stack 12 trials, 120 CPU-s; baseline 4 trials, 9 CPU-s — the baseline had less search; the lift "
        "may be overstated")
    assert budget_sentence(_outcome(stack_rows=stack, base_rows=None)) == "budget: stack 12 trials, 120 CPU-s; " \
                                                                          "no baseline arm"


def test_a_search_whose_best_came_in_its_last_quarter_is_still_improving():
    rising = [_row(i, 0.5 + 0.01 * i) for i in range(8)]  # best at trial 7 of 8
    early = [_row(0, 0.9), *(_row(i, 0.5) for i in range(1, 8))]
    at_edge = [_row(i, v) for i, v in enumerate([0.5, 0.5, 0.5, 0.5, 0.5, 0.9, 0.5, 0.5])]  # trial 5 of 8: not last
    assert best_so_far(rising)[-1] == pytest.approx(0.57) and best_so_far([_row(0, math.nan), _row(1, 0.4)])[0] != 0.4
    notes = convergence_notes(_outcome(stack_rows=rising, base_rows=early))
    assert notes == ["the stack arm's best came in trial 7 of 8 (its last quarter): still improving; more trials "
                     "may change the verdict"]
    assert convergence_notes(_outcome(stack_rows=at_edge, base_rows=[_row(i, 0.5 + 0.01 * i) for i in range(8)])) \
        == [re.sub("stack", "baseline", notes[0])]


@pytest.mark.slow
def test_a_job_whose_reference_model_wins_says_so_first(small_job, tmp_path):
    """Issue 19, acceptance 3: on data where a reference model beats both arms (a linear task and a
    network trained one epoch at a tiny learning rate), the bottom line names it first in the summary
    and the MLflow description; the headline's test metrics are the deployed model's."""
    from mlflow import MlflowClient

    from tuner.job.outcome import format_summary
    from tuner.job.plan import plan_job
    from tuner.job.run import Tracking, run_job

    uri = f"sqlite:///{tmp_path}/v.db"
    spec, storage = small_job(num_trials=2, max_epochs=1, scheduler="fifo", baseline_trials=None, confirm_top=1,
                              confirm_seeds=2, fix=["optim.lr=0.00001"])
    job, data, space, pretrained = plan_job(spec, storage)
    outcome = run_job(job, data, space, pretrained, address=None, verbose=0, tracking=Tracking(uri, "v"))
    assert len(outcome.arm_rows["baseline"]) == len(outcome.rows) == 2  # budget-matched by default
    refs = outcome.winner.references
    best_ref = max(refs, key=lambda n: refs[n]["auroc"])
    assert refs[best_ref]["auroc"] > max(outcome.winner.holdout["test/auroc"],
                                         outcome.confirmed["baseline"].deployed["auroc"])
    shown = {"logistic_regression": "logistic regression", "gradient_boosting": "gradient boosting"}[best_ref]
    printed = format_summary(outcome)
    summary = printed.splitlines()
    prose = " ".join(printed.split())  # as read, whatever the wrapping at 100 columns
    stack_auroc = outcome.winner.holdout["test/auroc"]
    opening = (f"Best here on test AUROC: {shown}, {refs[best_ref]['auroc']:.4f}; the tuned loss stack (deployed "
               f"model), {stack_auroc:.4f}, is ")
    assert summary[2].startswith(opening[:60]) and opening in prose, summary[:4]
    stack = outcome.confirmed["stack"]
    assert outcome.winner.holdout["test/auroc"] == pytest.approx(stack.deployed["auroc"])
    assert outcome.winner.trial_id == stack.best_seed_row.trial_id
    headline = prose[prose.index("winner "):prose.index("winner ") + 400]
    assert f"AUROC {stack.deployed['auroc']:.4f}" in headline and "the deployed model" in headline
    assert "budgets: stack 2 trials" in "\n".join(summary) and "less search" not in "\n".join(summary)
    c = MlflowClient(uri)
    [job_run] = c.search_runs([c.get_experiment_by_name("v").experiment_id],
                              filter_string="tags.`losstune.role` = 'job'")
    note = job_run.data.tags["mlflow.note.content"]
    bottom = job_run.data.tags["losstune.bottom_line"]
    assert bottom.startswith(opening) and f" {bottom} " in f" {prose} " and note.startswith(f"**{bottom}**"), note[:300]
    assert job_run.data.metrics["arm/stack/deployed/test/auroc"] == pytest.approx(stack.deployed["auroc"])
