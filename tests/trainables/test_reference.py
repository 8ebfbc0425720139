"""Reference models: Bayes-optimal on a linear truth, boosting wins on an interaction, training split only."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from threadpoolctl import threadpool_limits

from trainables.data import PreparedData, Split
from trainables.errors import UserError
from trainables.reference import REFERENCE_MODELS, ReferenceModel, evaluate, fit_reference_models


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    """Gradient boosting's OpenMP threads spin-wait: on a loaded 2-core test machine a 1,200-row fit
    took 7-19 s with 2 threads and 0.7 s with 1. The fitted models are the same either way."""
    with threadpool_limits(1, user_api="openmp"):
        yield


def _prepared(x, y, *, n_train, n_val, labels=("outcome",)):
    """PreparedData over ready-made features: rows [0, n_train) train, the next n_val validation, the rest test."""
    y = y.reshape(len(y), -1)

    def split(rows):
        return Split(torch.tensor(x[rows], dtype=torch.float32), torch.tensor(y[rows], dtype=torch.float32))

    return PreparedData(train=split(slice(0, n_train)), val=split(slice(n_train, n_train + n_val)),
                        test=split(slice(n_train + n_val, len(x))), feature_names=[f"x{i}" for i in range(x.shape[1])],
                        label_names=list(labels), preprocessor=None, source="test", fingerprint="-",
                        split_fingerprint="-")


def _bernoulli(rng, logit):
    return (rng.random(len(logit)) < 1 / (1 + np.exp(-logit))).astype(np.float64)


def test_logistic_regression_reaches_the_bayes_optimal_auroc_of_a_linear_truth():
    rng = np.random.default_rng(0)
    n_train, n_test = 20000, 20000
    x = rng.normal(size=(n_train + n_test, 6))
    w = np.array([1.2, -1.0, 0.8, 0.5, 0.0, 0.0])
    logit = x @ w - 1.5
    y = _bernoulli(rng, logit)
    data = _prepared(x, y, n_train=n_train, n_val=0)
    lr = fit_reference_models(data, seed=0, names=["logistic_regression"])["logistic_regression"]
    test_y = y[n_train:]
    oracle = roc_auc_score(test_y, logit[n_train:])  # the true logit ranks as well as anything can
    got = evaluate(lr, data)
    assert got["auroc"] == pytest.approx(roc_auc_score(test_y, lr.predict_proba(data.test.x)[:, 0]), abs=1e-5)
    assert abs(got["auroc"] - oracle) < 0.003, (got["auroc"], oracle)
    est = lr.estimators[0]
    np.testing.assert_allclose(est.coef_[0], w, atol=0.06)  # and it is the generating model
    assert est.intercept_[0] == pytest.approx(-1.5, abs=0.06)


def test_gradient_boosting_beats_logistic_regression_on_an_interaction():
    rng = np.random.default_rng(1)
    n_train, n_test = 6000, 4000
    x = rng.normal(size=(n_train + n_test, 5))
    y = _bernoulli(rng, 3.0 * x[:, 0] * x[:, 1])  # XOR-like: no linear signal at all
    data = _prepared(x, y, n_train=n_train, n_val=0)
    models = fit_reference_models(data, seed=0)
    assert set(models) == set(REFERENCE_MODELS)
    lr, gb = evaluate(models["logistic_regression"], data), evaluate(models["gradient_boosting"], data)
    oracle = roc_auc_score(y[n_train:], x[n_train:, 0] * x[n_train:, 1])
    assert lr["auroc"] < 0.56
    assert gb["auroc"] > 0.8 and gb["auroc"] > oracle - 0.06, (gb["auroc"], oracle)
    assert gb["auprc"] > lr["auprc"] + 0.2 and gb["brier"] < lr["brier"] - 0.05


def test_fitting_reads_the_training_split_only(easy_binary):
    data = easy_binary
    assert torch.isfinite(data.train.x).all()  # PreparedData imputes: the models never see a NaN
    base = fit_reference_models(data, seed=0)
    # Everything but the training split replaced: other labels, other validation features.
    changed = PreparedData(train=data.train, val=Split(torch.randn_like(data.val.x), 1 - data.val.y),
                           test=Split(data.test.x, 1 - data.test.y), feature_names=data.feature_names,
                           label_names=data.label_names, preprocessor=None, source="changed",
                           fingerprint="-", split_fingerprint="-")
    again = fit_reference_models(changed, seed=0)
    # Other training labels must move the fit: the comparison above can tell a difference.
    shuffled = torch.from_numpy(np.random.default_rng(0).permutation(data.train.y.numpy()))
    moved = fit_reference_models(PreparedData(train=Split(data.train.x, shuffled), val=data.val, test=data.test,
                                              feature_names=data.feature_names, label_names=data.label_names,
                                              preprocessor=None, source="moved", fingerprint="-",
                                              split_fingerprint="-"), seed=0)
    for name in REFERENCE_MODELS:
        p = base[name].predict_proba(data.test.x)
        assert np.array_equal(p, again[name].predict_proba(data.test.x)), name
        assert np.array_equal(p, fit_reference_models(data, seed=0)[name].predict_proba(data.test.x)), name  # seeded
        assert not np.allclose(p, moved[name].predict_proba(data.test.x), atol=1e-3), name
    assert evaluate(base["logistic_regression"], data)["auroc"] > 0.75  # a strong signal, learnt


def test_multilabel_gives_one_column_per_label(easy_multilabel):
    data = easy_multilabel
    models = fit_reference_models(data, seed=0)
    y = data.test.y.numpy()
    for name, model in models.items():
        p = model.predict_proba(data.test.x)
        assert p.shape == (len(data.test), data.n_labels) == (len(data.test), 5)
        assert np.allclose(1 / (1 + np.exp(-model.logits(data.test.x))), p, atol=1e-12)
        got = evaluate(model, data)
        for j, label in enumerate(data.label_names):
            assert got[f"auroc.{label}"] == pytest.approx(roc_auc_score(y[:, j], p[:, j]), abs=1e-5), name
            assert got[f"auprc.{label}"] == pytest.approx(average_precision_score(y[:, j], p[:, j]), abs=1e-5), name
            assert got[f"brier.{label}"] == pytest.approx(brier_score_loss(y[:, j], p[:, j]), abs=1e-12), name
        assert got["auroc"] == pytest.approx(np.mean([roc_auc_score(y[:, j], p[:, j]) for j in range(5)]), abs=1e-5)
        assert got["brier"] == pytest.approx(np.mean((p - y) ** 2), abs=1e-12)
        assert {"ece", "auprc", "score"} <= set(got)
    # Each column is its own label's model: the same as a logistic regression fit on that label alone.
    x = data.train.x.numpy().astype(np.float64)
    alone = LogisticRegression(max_iter=5000).fit(x, data.train.y[:, 3].numpy().astype(int))
    np.testing.assert_allclose(models["logistic_regression"].predict_proba(data.test.x)[:, 3],
                               alone.predict_proba(data.test.x.numpy().astype(np.float64))[:, 1], atol=1e-10)


def test_bad_arguments(easy_binary, monkeypatch):
    data = easy_binary
    with pytest.raises(ValueError, match=r"`names` must be a non-empty selection of logistic_regression, "
                                         r"gradient_boosting, got \['svm'\]"):
        fit_reference_models(data, names=["svm"])
    with pytest.raises(ValueError, match=r"`seed` must be an integer >= 0, got -1"):
        fit_reference_models(data, seed=-1)
    model = fit_reference_models(data, names=["logistic_regression"])["logistic_regression"]
    assert isinstance(model, ReferenceModel) and model.n_labels == 1
    with pytest.raises(ValueError, match=r"`split` must be one of train, val, test, got 'holdout'"):
        evaluate(model, data, split="holdout")
    with pytest.raises(ValueError, match=rf"`x` must be \[n, {data.n_features}\] .*got shape \(4, 3\)"):
        model.predict_proba(np.zeros((4, 3)))
    monkeypatch.setitem(sys.modules, "sklearn.ensemble", None)  # as if scikit-learn were not installed
    with pytest.raises(UserError, match="need scikit-learn"):
        fit_reference_models(data)


def test_importing_the_module_does_not_need_sklearn():
    code = "import sys; sys.modules['sklearn'] = None; import trainables.reference, trainables.compare"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
