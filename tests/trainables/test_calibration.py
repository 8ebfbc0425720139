"""Post-hoc calibration against independent references: sklearn's logistic regression, closed-form
optima of tiny problems, hand-written loops for Brier and the reliability curve, torchmetrics' ECE."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from torchmetrics.functional.classification import binary_calibration_error

from trainables.calibration import (
    Calibration,
    brier_score,
    brier_scores,
    calibration_report,
    choose_calibration,
    fit_platt,
    fit_temperature,
    platt_targets,
    reliability_curve,
)
from trainables.errors import UserError
from trainables.metrics import expected_calibration_error


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def bernoulli(rng, logit):
    return (rng.random(np.shape(logit)) < sigmoid(logit)).astype(np.float64)


def logistic_reference(z, y, *, intercept=True, weights=None):
    """Unpenalised maximum likelihood by sklearn: (slope, intercept)."""
    lr = LogisticRegression(C=np.inf, fit_intercept=intercept, tol=1e-12, max_iter=10_000)
    lr.fit(z.reshape(-1, 1), y, sample_weight=weights)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0]) if intercept else 0.0


def ece_torchmetrics(p, y):
    return float(binary_calibration_error(torch.tensor(p), torch.tensor(y).long(), n_bins=15, norm="l1"))


# --------------------------------------------------------------------------- the fits recover known maps
def test_platt_recovers_a_known_slope_and_intercept_and_matches_sklearn():
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 2.0, 50_000)
    y = bernoulli(rng, 0.6 * z - 1.3)
    fit = fit_platt(z, y, smoothed=False)
    assert fit.fell_back == (False,)
    assert isinstance(fit.a, float) and isinstance(fit.b, float)
    # sampling error of the MLE at n = 50k is about 0.006 on a and 0.015 on b
    assert fit.a == pytest.approx(0.6, abs=0.03)
    assert fit.b == pytest.approx(-1.3, abs=0.06)
    a_ref, b_ref = logistic_reference(z, y)
    assert fit.a == pytest.approx(a_ref, abs=1e-3)
    assert fit.b == pytest.approx(b_ref, abs=1e-3)


def test_smoothed_platt_matches_sklearn_on_the_targets_written_as_sample_weights():
    rng = np.random.default_rng(1)
    z = rng.normal(0.0, 1.5, 3000)
    y = bernoulli(rng, 1.1 * z - 2.5)
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))  # Platt 1999, written out here
    # A soft target t is one sample labelled 1 with weight t plus one labelled 0 with weight 1 - t.
    a_ref, b_ref = logistic_reference(np.r_[z, z], np.r_[np.ones_like(z), np.zeros_like(z)], weights=np.r_[t, 1 - t])
    fit = fit_platt(z, y)
    assert fit.a == pytest.approx(a_ref, abs=1e-4)
    assert fit.b == pytest.approx(b_ref, abs=1e-4)


def test_temperature_recovers_a_known_temperature_and_matches_sklearn():
    rng = np.random.default_rng(2)
    true_logit = rng.normal(0.0, 1.5, 50_000)
    y = bernoulli(rng, true_logit)
    z = torch.tensor(true_logit * 2.5, dtype=torch.float32)  # logits 2.5x too large, as a float32 tensor
    t = fit_temperature(z, torch.tensor(y, dtype=torch.float32))
    assert isinstance(t, float)
    assert t == pytest.approx(2.5, rel=0.03)
    slope, _ = logistic_reference(z.double().numpy(), y, intercept=False)  # the MLE of 1 / T
    assert 1 / t == pytest.approx(slope, rel=1e-4)


def test_temperature_is_the_grid_minimum_and_degenerate_logits_reach_the_bounds():
    rng = np.random.default_rng(10)
    z = rng.normal(0.0, 3.0, 2000)
    y = bernoulli(rng, 0.4 * z + 0.3)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 20_001))
    nll = [np.mean(np.logaddexp(0, z / t) - y * z / t) for t in grid]
    assert fit_temperature(z, y) == pytest.approx(grid[int(np.argmin(nll))], rel=1e-3)
    separated = np.array([-2.0, -0.5, 0.0, 0.3, 1.0])
    labels = np.array([0.0, 0.0, 1.0, 1.0, 1.0])
    assert fit_temperature(separated, labels) == 0.05  # the NLL falls as T -> 0
    assert fit_temperature(-separated, labels, hi=7.0) == 7.0  # reversed: no T beats p = 1/2
    with pytest.raises(ValueError, match="label 0: the logits separate the classes"):
        fit_platt(separated, labels, smoothed=False)
    fit = fit_platt(separated, labels)  # smoothed targets keep the optimum finite
    assert fit.fell_back == (False,) and 0 < fit.a < 50


def test_multi_label_fits_are_per_label():
    rng = np.random.default_rng(3)
    z = rng.normal(0.0, 2.0, (4000, 3))
    y = np.stack([bernoulli(rng, z[:, 0] / 2.0), bernoulli(rng, z[:, 1] * 0.5 - 1.0), bernoulli(rng, z[:, 2])], 1)
    temps = fit_temperature(z, y)
    assert isinstance(temps, np.ndarray) and temps.shape == (3,)
    assert temps == pytest.approx([fit_temperature(z[:, k], y[:, k]) for k in range(3)], rel=1e-9)
    fit = fit_platt(z, y)
    assert fit.a.shape == fit.b.shape == (3,) and fit.fell_back == (False, False, False)
    for k in range(3):
        one = fit_platt(z[:, k], y[:, k])
        assert (fit.a[k], fit.b[k]) == pytest.approx((one.a, one.b), rel=1e-9)
    cal = choose_calibration(z, y)
    assert cal.n_labels == 3 and cal.apply(z).shape == (4000, 3)


# --------------------------------------------------------------------------- METHODS.md: shifted logits
def test_a_shifted_base_rate_needs_platt_temperature_alone_cannot_fix_it():
    """Focal loss with alpha shifts the logits; one temperature only rescales them (METHODS.md)."""
    rng = np.random.default_rng(4)

    def split(n):
        true_logit = rng.normal(-3.0, 1.5, n)  # prevalence about 1:10
        return 1.2 * true_logit + 1.5, bernoulli(rng, true_logit)

    (z_val, y_val), (z_test, y_test) = split(20_000), split(20_000)
    assert 0.07 < y_test.mean() < 0.12
    cal = choose_calibration(z_val, y_val)
    assert cal.kinds == ("platt",)
    temperature_only = Calibration.from_temperature(fit_temperature(z_val, y_val))

    def test_ece(c):
        return ece_torchmetrics(c.apply(z_test), y_test)

    assert test_ece(Calibration.identity()) > 0.05
    assert test_ece(temperature_only) > 0.05
    assert test_ece(cal) <= 0.05
    for c in (cal, temperature_only):
        assert roc_auc_score(y_test, c.apply(z_test)) == pytest.approx(roc_auc_score(y_test, z_test), abs=1e-12)
    report = calibration_report(cal, z_test, y_test)
    assert report["ece_after"] <= 0.05 < report["ece_before"]
    assert report["brier_after"] < report["brier_before"]


def test_choose_calibration_picks_the_lower_validation_nll_per_label():
    rng = np.random.default_rng(5)
    true_logit = rng.normal(-1.0, 1.5, (6000, 2))
    y = bernoulli(rng, true_logit)
    z = np.stack([true_logit[:, 0] * 2.0, true_logit[:, 1] + 2.0], 1)  # label 0 only scaled, label 1 shifted
    cal = choose_calibration(z, y)

    def nll(logits, t):
        p = sigmoid(logits)
        return -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))

    temps, fit = fit_temperature(z, y), fit_platt(z, y)
    for k in range(2):
        by_temperature = nll(z[:, k] / temps[k], y[:, k])
        by_platt = nll(fit.a[k] * z[:, k] + fit.b[k], y[:, k])
        assert cal.kinds[k] == ("platt" if by_platt < by_temperature else "temperature")
        assert "validation NLL" in cal.notes[k] or "lower" in cal.notes[k]
    assert cal.kinds[1] == "platt"  # a shift of 2 is far beyond what smoothing can cost


def test_a_reversed_ranking_falls_back_to_temperature_and_says_so():
    rng = np.random.default_rng(6)
    z = rng.normal(0.0, 1.0, (3000, 2))
    y = np.stack([bernoulli(rng, z[:, 0]), bernoulli(rng, -1.5 * z[:, 1])], 1)
    fit = fit_platt(z, y)
    assert fit.fell_back == (False, True)
    assert fit.a[1] > 0 and fit.b[1] == 0.0
    cal = choose_calibration(z, y)
    assert cal.kinds[1] == "temperature" and "reverse" in cal.notes[1]
    for k in range(2):
        assert roc_auc_score(y[:, k], cal.apply(z)[:, k]) == pytest.approx(roc_auc_score(y[:, k], z[:, k]), abs=1e-12)


# --------------------------------------------------------------------------- Platt's smoothed targets
def test_platt_targets_are_exactly_platts():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0], [0, 0]], dtype=float)
    # label 0: N+ = 2, N- = 3; label 1: N+ = 1, N- = 4
    want = np.array([[3 / 4, 1 / 6], [3 / 4, 1 / 6], [1 / 5, 2 / 3], [1 / 5, 1 / 6], [1 / 5, 1 / 6]])
    np.testing.assert_array_equal(platt_targets(y), want)
    np.testing.assert_array_equal(platt_targets(y[:, 1]), want[:, 1])


@pytest.mark.parametrize(("z", "y", "a", "b"), [
    # Two distinct logits: the fit can meet both smoothed targets exactly, so the optimum solves
    # sigmoid(a z_i + b) = target_i in closed form.
    # y = [1, 1, 0]: targets 3/4 and 1/3: a + b = ln 3, -a + b = -ln 2
    ([1.0, 1.0, -1.0], [1, 1, 0], (math.log(3) + math.log(2)) / 2, (math.log(3) - math.log(2)) / 2),
    # y = [1, 0, 0, 0]: targets 2/3 and 1/5: a + b = ln 2, -a + b = -ln 4
    ([1.0, -1.0, -1.0, -1.0], [1, 0, 0, 0], 1.5 * math.log(2), -0.5 * math.log(2)),
    # y = [1, 0] at z = 2 and 0: targets 2/3 and 1/3: 2a + b = ln 2, b = -ln 2
    ([2.0, 0.0], [1, 0], math.log(2), -math.log(2)),
])
def test_smoothed_fit_reaches_the_closed_form_optimum(z, y, a, b):
    fit = fit_platt(np.array(z), np.array(y, dtype=float))
    assert (fit.a, fit.b) == pytest.approx((a, b), abs=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smoothing_makes_a_fit_on_five_positives_less_extreme(seed):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(5), np.zeros(200)]
    z = rng.normal(0.0, 1.0, 205) + 1.5 * y
    smoothed, hard = fit_platt(z, y), fit_platt(z, y, smoothed=False)
    assert abs(smoothed.b) < abs(hard.b)
    assert smoothed.a < hard.a
    p_s, p_h = sigmoid(smoothed.a * z + smoothed.b), sigmoid(hard.a * z + hard.b)
    assert p_h.min() < p_s.min() and p_s.max() < p_h.max()


# --------------------------------------------------------------------------- Brier and the reliability curve
def test_brier_against_a_loop():
    rng = np.random.default_rng(7)
    p, y = rng.random((300, 3)), (rng.random((300, 3)) < 0.3).astype(float)
    per = []
    for k in range(3):
        total = 0.0
        for i in range(300):
            total += (p[i, k] - y[i, k]) ** 2
        per.append(total / 300)
    assert brier_scores(p, y) == pytest.approx(per, rel=1e-12)
    assert brier_score(p, y) == pytest.approx(sum(per) / 3, rel=1e-12)
    assert brier_score(p[:, 0], y[:, 0]) == pytest.approx(per[0], rel=1e-12)
    assert brier_score(torch.tensor(p), torch.tensor(y)) == pytest.approx(sum(per) / 3, rel=1e-12)


def reliability_loop(p, y, bins):
    mean_p, observed, count = [], [], []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i in range(len(p)) if lo <= p[i] < hi or (b == bins - 1 and p[i] == 1.0)]
        count.append(len(members))
        mean_p.append(sum(p[i] for i in members) / len(members) if members else math.nan)
        observed.append(sum(y[i] for i in members) / len(members) if members else math.nan)
    return np.array(mean_p), np.array(observed), np.array(count)


@pytest.mark.parametrize("bins", [15, 4])
def test_reliability_curve_against_a_loop_and_torchmetrics_ece(bins):
    rng = np.random.default_rng(8)
    p = rng.beta(0.5, 2.0, (500, 2))
    p[:3, 0] = [0.0, 1.0, 0.5]  # the ends and a bin edge
    y = (rng.random((500, 2)) < p).astype(float)
    curve = reliability_curve(p, y, n_bins=bins)
    assert curve.mean_predicted.shape == curve.observed.shape == curve.count.shape == (2, bins)
    for k in range(2):
        mean_p, observed, count = reliability_loop(p[:, k], y[:, k], bins)
        np.testing.assert_allclose(curve.mean_predicted[k], mean_p, rtol=1e-12)
        np.testing.assert_allclose(curve.observed[k], observed, rtol=1e-12)
        np.testing.assert_array_equal(curve.count[k], count)
    one = reliability_curve(p[:, 1], y[:, 1], n_bins=bins)
    assert one.count.shape == (bins,)
    np.testing.assert_array_equal(one.count, curve.count[1])
    # torchmetrics gives p == 1.0 a bin of its own, so compare on label 1, which has no p == 1.0
    filled = one.count > 0
    ece = np.sum(np.abs(one.observed - one.mean_predicted)[filled] * one.count[filled]) / 500
    assert ece == pytest.approx(float(binary_calibration_error(torch.tensor(p[:, 1]), torch.tensor(y[:, 1]).long(),
                                                               n_bins=bins, norm="l1")), abs=1e-6)


def test_report_reuses_the_project_ece_and_names_labels():
    rng = np.random.default_rng(9)
    z = rng.normal(-1.0, 2.0, (3000, 2))
    y = bernoulli(rng, 0.5 * z - 0.5)
    cal = choose_calibration(z[:1500], y[:1500])
    rep = calibration_report(cal, z[1500:], y[1500:], label_names=["mi", "stroke"])
    ece_before = expected_calibration_error(torch.tensor(z[1500:]), torch.tensor(y[1500:]))
    assert rep["ece_before"] == pytest.approx(ece_before)
    p_after = cal.apply(z[1500:])
    per_after = [ece_torchmetrics(p_after[:, k], y[1500:, k]) for k in range(2)]
    assert [rep["ece_after.mi"], rep["ece_after.stroke"]] == pytest.approx(per_after, abs=1e-6)
    assert rep["ece_after"] == pytest.approx(sum(per_after) / 2, abs=1e-6)
    assert rep["brier_after.stroke"] == pytest.approx(np.mean((p_after[:, 1] - y[1500:, 1]) ** 2))
    assert rep["kinds"] == list(cal.kinds)
    assert rep["ece_after"] < rep["ece_before"]


# --------------------------------------------------------------------------- serialisation
def test_to_dict_from_dict_round_trip_through_json():
    cal = Calibration(kinds=("platt", "temperature", "none"),
                      params=({"a": 0.8, "b": -1.25}, {"temperature": 1.7}, {}), notes=("x", "", ""))
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal
    z = np.array([[0.3, -2.0, 4.0], [-1.0, 1.0, 0.0]])
    np.testing.assert_array_equal(back.apply(z), cal.apply(z))
    np.testing.assert_allclose(cal.apply(z), sigmoid(z * [0.8, 1 / 1.7, 1.0] + [-1.25, 0.0, 0.0]), rtol=1e-12)
    with pytest.raises(ValueError, match=r"shape \[N, 3\]"):
        cal.apply(z[:, :2])


GOOD = {"format": "losstune-calibration-v1", "labels": [{"kind": "platt", "params": {"a": 1.0, "b": 0.0}, "note": ""}]}


def _with(**label):
    return {**GOOD, "labels": [{**GOOD["labels"][0], **label}]}


@pytest.mark.parametrize(("data", "field"), [
    ([1, 2], "mapping"),
    ({**GOOD, "format": "v0"}, "format"),
    ({**GOOD, "extra": 1}, "extra"),
    ({**GOOD, "labels": []}, "labels"),
    ({**GOOD, "labels": ["platt"]}, r"labels\[0\]"),
    (_with(kind="isotonic"), r"labels\[0\]\.kind"),
    (_with(params={"a": 1.0}), r"labels\[0\]\.params"),
    (_with(params={"a": "1", "b": 0.0}), r"labels\[0\]\.params\.a"),
    (_with(params={"a": -0.5, "b": 0.0}), r"labels\[0\]\.params\.a must be > 0"),
    (_with(kind="temperature", params={"temperature": 0}), r"labels\[0\]\.params\.temperature must be > 0"),
    (_with(params={"a": float("nan"), "b": 0.0}), r"labels\[0\]\.params\.a must be a finite number"),
    (_with(note=3), r"labels\[0\]\.note"),
])
def test_a_malformed_dict_is_one_line_naming_the_field(data, field):
    with pytest.raises(UserError, match=field) as info:
        Calibration.from_dict(data)
    assert "\n" not in str(info.value) and str(info.value).startswith("calibration: ")


# --------------------------------------------------------------------------- bad arguments
Z, Y = np.array([0.1, -0.4, 2.0, 0.7]), np.array([1.0, 0.0, 1.0, 0.0])


@pytest.mark.parametrize(("call", "message"), [
    (lambda: fit_platt(Z, Y[:3]), r"`logits` and `y` must have the same shape"),
    (lambda: fit_temperature(Z.reshape(2, 2), Y), r"same shape"),
    (lambda: fit_platt(Z, np.array([1.0, 0.0, 0.5, 0.0])), r"`y` must hold only 0 and 1, got 0.5"),
    (lambda: fit_temperature(Z, np.zeros(4)), r"both classes .* label 0 has 0 positives out of 4"),
    (lambda: choose_calibration(np.c_[Z, Z], np.c_[Y, np.ones(4)]), r"label 1 has 4 positives out of 4"),
    (lambda: fit_platt(np.array([0.1, np.nan, 0.0, 1.0]), Y), r"`logits` must be finite"),
    (lambda: fit_platt(Z, Y, smoothed="yes"), r"`smoothed` must be True or False"),
    (lambda: fit_temperature(Z, Y, lo=2.0, hi=1.0), r"0 < lo < hi"),
    (lambda: fit_platt(np.zeros((0,)), np.zeros((0,))), r"shape \[N\] or \[N, K\]"),
    (lambda: brier_score(Z, Y), r"`probs` must be probabilities in \[0, 1\], got -0.4"),
    (lambda: reliability_curve(np.full(4, 0.5), Y, n_bins=0), r"`n_bins` must be an integer >= 1, got 0"),
    (lambda: calibration_report(Calibration.identity(2), Z, Y), r"2 label\(s\)"),
    (lambda: Calibration(kinds=("platt",), params=({"a": 1.0, "b": 0.0}, {})), r"one entry per label"),
])
def test_bad_arguments_are_clear_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
