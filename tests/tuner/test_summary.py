"""One job's outcome as one JobSummary (tuner/core/summary.py): written to MLflow as summary.json and
read back by `losstune best`, so a summary must survive JSON whole (NaN included) and every renderer
must say the same of the copy as of the original."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from trainables.compare import Lift
from tuner.core.summary import SUMMARY_FORMAT, ArmBudget, ArmResult, Delivery, JobSummary, TrialLine, WinnerResult
from tuner.present.html import write_report
from tuner.present.markdown import describe
from tuner.present.text import render_best, render_summary


def _lift(metric: str, estimate: float, low: float, high: float) -> Lift:
    return Lift(estimate=estimate, low=low, high=high, metric=metric, label="macro", n_resamples=1000)


def _summary() -> JobSummary:
    rows = tuple(TrialLine(number=i, trial_id=f"a{i}b2c3d4"[:8], status="completed" if i < 3 else "stopped",
                           epochs=4, best_epoch=3, objective=0.9 - 0.05 * i,
                           metrics={"val/auroc": 0.91 - 0.05 * i, "val/auprc": 0.4, "val/ece": 0.02,
                                    "val/score": 0.9 - 0.05 * i},
                           all_met=int(i == 0), config={"main_loss.gamma": 2.0 + i, "optim.lr": 1e-3 / (i + 1)})
                 for i in range(4))
    holdout = {"test/auroc": 0.8812, "test/auprc": 0.3511, "test/ece": 0.031, "test/ece_scaled": 0.012,
               "temperature": 1.7, "test/ece_calibrated": 0.009, "test/brier": 0.05, "test/brier_calibrated": 0.045,
               "val/auroc": 0.91, "val/ece_calibrated": 0.008}
    winner = WinnerResult(
        trial_id="c0ffe_00001", run_name="stack confirmation 5 (c0ffe_00001)", best_epoch=3,
        val={"val/auroc": 0.91, "val/auprc": 0.4, "val/ece": 0.02}, holdout=holdout, calibration_kinds=("platt",),
        targets_test={"target.test_auroc_met": 1, "target.test_all_met": 1},
        references={"logistic_regression": {"auroc": 0.86, "auprc": 0.30, "ece": 0.02, "brier": 0.06}},
        lifts={"baseline": (_lift("auroc", 0.004, -0.001, 0.009), _lift("auprc", 0.01, 0.002, 0.02),
                            _lift("ece", -0.002, -0.004, 0.0)),
               "logistic_regression": (_lift("auroc", 0.021, 0.004, 0.04), _lift("auprc", 0.05, 0.01, 0.09))})
    arms = {
        "stack": ArmResult(arm="stack", search_trials=4, source_trial="a0b2c3d4", deployed_seed=2,
                           deployed_objective=0.905,
                           deployed={"auroc": 0.8812, "auprc": 0.3511, "ece": 0.031, "ece_calibrated": 0.009,
                                     "brier_calibrated": 0.045},
                           seeds=2, val=(0.9, 0.004),
                           test={m: (0.88, 0.002) for m in ("auroc", "auprc", "ece", "ece_calibrated",
                                                            "brier_calibrated")},
                           by_config=({"source_trial": "a0b2c3d4", "val_mean": 0.9, "val_sd": 0.004, "seeds": 2},)),
        "baseline": ArmResult(arm="baseline", search_trials=4, source_trial="b1", deployed_seed=None,
                              deployed_objective=0.88,
                              deployed={"auroc": 0.877, "auprc": 0.34, "ece": 0.03, "ece_calibrated": 0.01,
                                        "brier_calibrated": 0.046},
                              seeds=1, val=(0.88, math.nan),  # one seed: no spread
                              test={m: (0.877, math.nan) for m in ("auroc", "auprc", "ece", "ece_calibrated",
                                                                   "brier_calibrated")})}
    return JobSummary(
        experiment="sepsis", scenario="rare_disease_detection", detection=("one label with positives at 1:32",),
        metric="val/score", num_trials=4, state="finished", wall_s=61.2, folder="/runs/sepsis",
        location="s3://bucket/jobs/sepsis", remote=True, data_given="s3://bucket/data.csv",
        data_source="s3://bucket/data.csv", data_rows=(600, 200, 200), data_fingerprint="0123456789abcdef0123",
        targets={"auroc": 0.85, "auprc": None}, time_budget_s=None, search_keys=("main_loss.gamma", "optim.lr"),
        rows=rows, baseline_planned=True, winner=winner, arms=arms,
        budgets={"stack": ArmBudget(trials=4, cpu_s=40.0, gpu_s=0.0), "baseline": ArmBudget(4, 22.0, 0.0)},
        curves={"stack": (math.nan, 0.8, 0.8, 0.9), "baseline": (0.7, 0.88, 0.88, 0.88)},
        spent={"budget.trials": 10.0, "budget.wall_s": 61.2, "budget.cpu_hours": 0.02, "budget.gpu_hours": 0.0,
               "budget.stack.trials": 4.0, "budget.stack.cpu_hours": 0.011, "budget.stack.wall_s": 20.0},
        parts=True, report=True)


def test_a_summary_survives_json_whole():
    s = _summary()
    text = s.to_json()
    doc = json.loads(text)  # strict JSON: NaN is written as {"nan": true}, never as a bare NaN
    assert doc["format"] == SUMMARY_FORMAT and doc["curves"]["stack"][0] == {"nan": True}
    back = JobSummary.from_json(text)
    assert back.to_json() == text
    assert math.isnan(back.curves["stack"][0]) and math.isnan(back.arms["baseline"].val[1])
    assert back.winner.macro("baseline", "auprc") == s.winner.macro("baseline", "auprc")
    assert back.rows == s.rows and back.budgets == s.budgets and back.targets == s.targets


def test_every_renderer_says_the_same_of_the_copy(tmp_path):
    s, back = _summary(), JobSummary.from_json(_summary().to_json())
    delivery = Delivery(note="MLflow: experiment 'x'", kept=3, refused=("trial_metrics of t (400)",), spool="/s")
    assert render_summary(back, delivery) == render_summary(s, delivery)
    assert render_best(back) == render_best(s)
    links = {"winner_link": "#/w", "report_link": "#/r"}
    assert describe(back, **links) == describe(s, **links)
    a = write_report(s, plots={}, summary="printed", out=tmp_path / "a.html").read_text()
    b = write_report(back, plots={}, summary="printed", out=tmp_path / "b.html").read_text()
    assert a == b


def test_what_the_summary_says_in_words():
    s = _summary()
    printed = render_summary(s)
    assert max(len(line) for line in printed.splitlines()) <= 100
    text = " ".join(printed.split())  # read as prose, whatever the wrapping at 100 columns
    assert "seed 2 of the config of trial a0b2c3d4, the best of its 2 training seeds on validation" in text
    assert "\n  baseline" in printed and "mean ± sd, 2 seeds" in text  # one seed: no ± row
    assert "targets (AUROC >= 0.85, validation): met by 1 of 4 trials" in text
    assert "results: /runs/sepsis/results.csv (experiment in s3://bucket/jobs/sepsis)" in text
    best = "\n".join(render_best(s))
    assert "targets (AUROC >= 0.85): met by 1 trials on validation (25%); on test: met" in best
    assert "the loss stack's winner raised test AUROC by 0.021 relative to logistic regression" in best
    md = describe(s, winner_link="#/w", report_link="#/r")
    assert "[stack confirmation 5 (c0ffe_00001)](#/w): seed 2, the best on validation of 2 training seeds" in md
    assert "`s3://bucket/data.csv`, 600 / 200 / 200 rows" in md


@pytest.mark.parametrize("doc", [{"format": "something-else"}, [], {"format": SUMMARY_FORMAT, "experiment": "x"}])
def test_a_document_that_is_no_summary_is_refused(doc):
    with pytest.raises(ValueError, match="losstune job summary"):
        JobSummary.from_dict(doc)


def test_best_reads_the_summary_a_job_wrote(tmp_path):
    """The artifact MLflow holds is the JSON the job wrote (read back through a real sqlite store)."""
    from mlflow import MlflowClient

    from tuner.cli.best import _summary as read_summary

    c = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    run = c.create_run(c.create_experiment("x", artifact_location=(tmp_path / "art").as_uri()))
    c.log_text(run.info.run_id, _summary().to_json(), "summary.json")
    got = read_summary(c, c.get_run(run.info.run_id))
    assert got is not None and got.to_json() == _summary().to_json()
    empty = c.create_run(c.get_experiment_by_name("x").experiment_id)
    assert read_summary(c, c.get_run(empty.info.run_id)) is None
    assert not list(Path(tmp_path).glob("losstune-best-*"))


def test_the_report_a_clinical_reviewer_reads(tmp_path):
    """report.html: the operating points with the counts they come from, the prevalence, a glossary, and
    the importances marked unreliable under the chart when the search had fewer than 20 trials."""
    import dataclasses

    from trainables.operating import at_threshold

    y = [1] * 10 + [0] * 90
    p = [0.9] * 8 + [0.1] * 2 + [0.5] * 9 + [0.05] * 81
    points = tuple(at_threshold(p, y, t, rule).to_dict() for rule, t in (("youden", 0.5), ("sensitivity_0.90", 0.1)))
    s = _summary()
    s = dataclasses.replace(s, winner=dataclasses.replace(s.winner, operating={"sepsis": points},
                                                          prevalence={"sepsis": 0.1}))
    png = tmp_path / "param_importances.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    page = write_report(s, plots={"importances": png}, summary=render_summary(s), out=tmp_path / "r.html").read_text()
    assert 'id="operating"' in page and "sepsis: prevalence 0.1000 on test (100 patients)" in page
    # at 0.5: 8 of 10 positives and 9 of 90 negatives flagged
    assert "<td>validation-chosen (Youden)</td><td>0.500</td><td>0.8000</td><td>0.9000</td><td>0.4706</td>" in page
    assert "8 / 9 / 81 / 2" in page and "17.0" in page
    assert 'id="glossary"' in page and "<dt>AUPRC</dt>" in page
    chart = page.index('alt="importances"')
    assert page.index("The parameter importances come from 4 trials", chart) > chart
    # the printed summary says it in a line, and the AUPRC beside its prevalence
    text = " ".join(render_summary(s).split())
    assert "at the validation-chosen threshold 0.500: sensitivity 0.80, specificity 0.90, PPV 0.47" in text
    assert "(prevalence 0.100)" in text
