"""Every job's winner beside the reference models (fit on the same training split, evaluated on the
same test split), with its lift over each and a paired bootstrap interval, and its calibration fit on
validation; recorded in MLflow and in the saved model. Checked against sklearn fits made here."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

from tuner.job.outcome import format_summary
from tuner.job.plan import plan_job
from tuner.job.run import Tracking, run_job

pytestmark = pytest.mark.slow


def test_the_winner_is_compared_with_reference_models_and_recorded(small_job, tmp_path):
    uri = f"sqlite:///{tmp_path}/cmp.db"
    job, data, space, pretrained = plan_job(*small_job(num_trials=3, max_epochs=3, scheduler="fifo"))
    outcome = run_job(job, data, space, pretrained, address=None, verbose=0, tracking=Tracking(uri, "cmp"))
    w = outcome.winner
    assert set(w.references) == {"logistic_regression", "gradient_boosting"}

    # an independent logistic regression on the same training split gives the same test metrics
    x_train, y_train = data.train.x.numpy().astype(np.float64), data.train.y.numpy()[:, 0]
    x_test, y_test = data.test.x.numpy().astype(np.float64), data.test.y.numpy()[:, 0]
    lr = LogisticRegression(max_iter=5000).fit(x_train, y_train).predict_proba(x_test)[:, 1]
    ref = w.references["logistic_regression"]
    assert ref["auroc"] == pytest.approx(roc_auc_score(y_test, lr), abs=1e-4)
    assert ref["auprc"] == pytest.approx(average_precision_score(y_test, lr), abs=1e-4)

    # the lift is the winner's test metric minus the reference's, with an interval around it
    lifts = {(lift.metric, lift.label): lift for lift in w.lifts["logistic_regression"]}
    auroc = lifts[("auroc", "macro")]
    assert auroc.estimate == pytest.approx(w.holdout["test/auroc"] - ref["auroc"], abs=1e-5)
    assert auroc.low <= auroc.estimate <= auroc.high and auroc.n_resamples == 1000
    assert lifts[("ece", "macro")].estimate == pytest.approx(w.holdout["test/ece_calibrated"] - ref["ece"], abs=1e-5)

    # calibration fit on validation: never worse than none on the validation split it was fit on
    assert w.holdout["val/ece_calibrated"] <= w.holdout["val/ece"] + 1e-9
    assert w.calibration["labels"][0]["kind"] in ("platt", "temperature")

    text = format_summary(outcome)
    assert "reference models on the same test split" in text and "relative to logistic regression" in text

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("cmp").experiment_id
    run = c.search_runs([exp], filter_string="tags.`losstune.role` = 'job'")[0]
    m = run.data.metrics
    assert m["lift/logistic_regression/auroc"] == pytest.approx(auroc.estimate)
    assert m["lift/logistic_regression/auroc_low"] == pytest.approx(auroc.low)
    assert m["reference/gradient_boosting/test/auroc"] == pytest.approx(w.references["gradient_boosting"]["auroc"])
    assert "test/ece_calibrated" in m and "test/brier_calibrated" in m
    folder = Path(c.download_artifacts(run.info.run_id, "winner", str(tmp_path)))
    saved = json.loads((folder / "comparison.json").read_text())
    assert saved["lifts"]["logistic_regression"][0]["estimate"] == pytest.approx(auroc.estimate)
    model = torch.load(io.BytesIO((folder / "model.pt").read_bytes()), weights_only=True)
    assert model["calibration"] == w.calibration
