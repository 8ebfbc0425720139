"""Metrics against sklearn and a hand-written ECE; target attainment; temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from trainables.calibration import expected_calibration_error, fit_temperature, temperature_report
from trainables.metrics import (
    Targets,
    TargetTracker,
    calibration_errors,
    classification_metrics,
    combined_score,
)


def _scores(n, k, seed, prevalence=0.1):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < prevalence).astype(np.float32)
    y[0], y[1] = 1, 0  # both classes in every label
    logits = rng.normal(size=(n, k)) + 1.5 * y
    return torch.tensor(logits, dtype=torch.float32), torch.tensor(y)


def ece_reference(p, y, bins=15):
    """Uniform bins on [0, 1] over P(y=1); sum over bins of |mean(y) - mean(p)| * share of samples."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += abs(y[m].mean() - p[m].mean()) * m.mean()
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 4])
def test_metrics_equal_sklearn(seed, k):
    logits, y = _scores(500, k, seed)
    got = classification_metrics(logits, y)
    p = torch.sigmoid(logits).numpy()
    auroc = np.mean([roc_auc_score(y[:, j], p[:, j]) for j in range(k)])
    auprc = np.mean([average_precision_score(y[:, j], p[:, j]) for j in range(k)])
    ece = np.mean([ece_reference(p[:, j], y[:, j].numpy()) for j in range(k)])
    assert got["auroc"] == pytest.approx(auroc, abs=1e-5)
    assert got["auprc"] == pytest.approx(auprc, abs=1e-5)
    assert got["ece"] == pytest.approx(ece, abs=1e-4)
    assert got["score"] == pytest.approx(combined_score(auroc, auprc), abs=1e-5)
    if k > 1:
        assert got["auroc.2"] == pytest.approx(roc_auc_score(y[:, 2], p[:, 2]), abs=1e-5)


def test_auprc_at_chance_is_the_prevalence_not_one_half():
    rng = np.random.default_rng(0)
    y = torch.tensor((rng.random(20000) < 0.02).astype(np.float32))
    got = classification_metrics(torch.tensor(rng.normal(size=20000), dtype=torch.float32), y)
    assert got["auroc"] == pytest.approx(0.5, abs=0.03)
    assert got["auprc"] == pytest.approx(0.02, abs=0.01)


def test_one_class_targets_fail_loudly():
    with pytest.raises(ValueError, match="one class"):
        classification_metrics(torch.randn(10), torch.zeros(10))


def test_target_tracker_records_first_epochs_and_all_met_needs_one_epoch():
    tracker = TargetTracker(Targets(auroc=0.8, auprc=0.5))
    assert tracker.update(1, {"auroc": 0.85, "auprc": 0.3}) == {
        "target/auroc_met": 1, "target/auprc_met": 0, "target/all_met": 0, "target/epoch_reached": -1}
    tracker.update(2, {"auroc": 0.7, "auprc": 0.6})  # each met once, never together
    assert tracker.flags()["target/all_met"] == 0
    flags = tracker.update(3, {"auroc": 0.81, "auprc": 0.55})
    assert flags["target/all_met"] == 1 and flags["target/epoch_reached"] == 3
    assert tracker.first == {"auroc": 1, "auprc": 2, "all": 3}


def test_targets_outside_unit_interval_are_refused():
    with pytest.raises(ValueError, match="auroc"):
        Targets(auroc=1.5)


def test_temperature_scaling_recovers_the_temperature_and_keeps_rankings():
    rng = np.random.default_rng(1)
    true_logit = rng.normal(scale=2.0, size=20000)
    y = torch.tensor((rng.random(20000) < 1 / (1 + np.exp(-true_logit))).astype(np.float32))
    overconfident = torch.tensor(true_logit * 3.0, dtype=torch.float32)  # a model whose logits are 3x too big
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(3.0, rel=0.05)
    before = expected_calibration_error(overconfident, y)
    after = expected_calibration_error(overconfident / t, y)
    assert after < before / 3
    rep = temperature_report(overconfident[:10000], y[:10000], overconfident[10000:], y[10000:])
    assert rep["test/ece_scaled"] < rep["test/ece"]
    assert classification_metrics(overconfident / t, y)["auroc"] == pytest.approx(
        classification_metrics(overconfident, y)["auroc"], abs=1e-6)


def test_one_ece_for_reports_and_calibration():
    logits, y = _scores(400, 3, 5)
    per = calibration_errors(logits, y)
    p = torch.sigmoid(logits).numpy()
    assert per == pytest.approx([ece_reference(p[:, j], y[:, j].numpy()) for j in range(3)], abs=1e-4)
    assert expected_calibration_error(logits, y) == pytest.approx(sum(per) / 3)
    assert classification_metrics(logits, y)["ece"] == expected_calibration_error(logits, y)


def test_target_tracker_never_counts_nan_and_reports_only_set_targets():
    tracker = TargetTracker(Targets(auprc=0.4))
    assert tracker.update(1, {"auroc": 0.99, "auprc": float("nan")}) == {
        "target/auprc_met": 0, "target/all_met": 0, "target/epoch_reached": -1}
    assert tracker.update(2, {"auroc": 0.5, "auprc": 0.4})["target/epoch_reached"] == 2
    assert TargetTracker(Targets()).update(1, {"auroc": 1.0, "auprc": 1.0}) == {}


def test_score_ece_is_the_score_less_the_calibration_error():
    from torchmetrics.functional.classification import binary_calibration_error

    from trainables.metrics import classification_metrics

    rng = np.random.default_rng(7)
    y = (rng.random(2000) < 0.15).astype(np.float32)
    logits = torch.tensor(rng.normal(size=2000) + 1.5 * y - 1.0, dtype=torch.float32)
    out = classification_metrics(logits, torch.tensor(y))
    p = torch.sigmoid(logits).numpy()
    score = 0.5 * roc_auc_score(y, p) + 0.5 * average_precision_score(y, p)
    ece = float(binary_calibration_error(torch.sigmoid(logits), torch.tensor(y).long(), n_bins=15, norm="l1"))
    assert out["score_ece"] == pytest.approx(score - ece, abs=1e-5)


@pytest.mark.parametrize("case", ["rare", "balanced", "saturated", "on_edges"])
def test_the_one_ece_binning_matches_torchmetrics(case):
    """ece_bins is the binning of every ECE losstune reports; torchmetrics' binary ECE is the reference,
    including p = 1 exactly (a bin of its own there) and probabilities on the bin edges."""
    from torchmetrics.functional.classification import binary_calibration_error

    from trainables.calibration import reliability_curve
    from trainables.metrics import ece_bins

    rng = np.random.default_rng(len(case))
    n = 3000
    y = (rng.random(n) < (0.5 if case == "balanced" else 0.03)).astype(np.float32)
    logits = rng.normal(size=n) * 2 + 2.0 * y - 2.0
    if case == "saturated":  # sigmoid gives exactly 1.0 and 0.0 in float32
        logits[:200], logits[200:400] = 40.0, -120.0
    if case == "on_edges":  # probabilities exactly on i/15
        p_edges = np.float32(rng.integers(0, 16, size=n) / 15)
        logits = np.log(p_edges / (1 - p_edges + 1e-30) + 1e-30)
    x = torch.tensor(logits, dtype=torch.float32)
    p = torch.sigmoid(x)
    want = float(binary_calibration_error(p, torch.tensor(y).long(), n_bins=15, norm="l1"))
    assert calibration_errors(x, torch.tensor(y))[0] == pytest.approx(want, abs=1e-6)
    bins = ece_bins(p.double().numpy())
    assert bins.min() >= 0 and bins.max() <= 15
    assert ((bins == 15) == (p.numpy() == 1.0)).all()  # p = 1 alone in the last bin, as torchmetrics
    curve = reliability_curve(p.double().numpy(), y)  # the curve folds p = 1 into its 15th point
    assert curve.count.sum() == n and len(curve.count) == 15


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_auroc_and_average_precision_match_sklearn_and_torchmetrics(seed, ties):
    """The trainer's AUROC and AUPRC (numpy, ties counted as sklearn counts them) against sklearn and
    torchmetrics, on scores with and without ties (rounded to 2 decimals: many ties)."""
    from torchmetrics.functional.classification import binary_auroc as tm_auroc
    from torchmetrics.functional.classification import binary_average_precision as tm_ap

    from trainables.metrics import binary_auroc, binary_average_precision

    rng = np.random.default_rng(seed)
    y = (rng.random(400) < 0.1).astype(np.int64)
    p = np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1)
    if ties:
        p = np.round(p, 2)
    assert binary_auroc(p, y) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert binary_average_precision(p, y) == pytest.approx(average_precision_score(y, p), abs=1e-12)
    pt, yt = torch.tensor(p, dtype=torch.float64), torch.tensor(y)
    # torchmetrics returns float32: equal to its 7 digits
    assert binary_auroc(p, y) == pytest.approx(float(tm_auroc(pt, yt)), abs=1e-6)
    assert binary_average_precision(p, y) == pytest.approx(float(tm_ap(pt, yt)), abs=1e-6)


def test_a_trials_worker_does_not_import_torchmetrics():
    """What a fresh Ray worker imports for a trial: torchmetrics would add torchvision and torch._dynamo
    (about 3 s per worker, before the trial's first epoch)."""
    import subprocess
    import sys

    code = ("import sys, trainables.tune_trainable, trainables.trainer, trainables.calibration; "
            "print(sorted(m for m in ('torchmetrics', 'torchvision', 'torch._dynamo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
