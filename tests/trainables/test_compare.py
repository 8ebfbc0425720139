"""Paired bootstrap against plain loops over sklearn/torchmetrics, stratification, coverage, wording, errors."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from torchmetrics.functional.classification import binary_calibration_error

from trainables.compare import (
    METRICS,
    Lift,
    ScoreCache,
    _Scorer,
    bootstrap_draws,
    lift_sentence,
    paired_difference,
    paired_differences,
    seed_summary,
)
from trainables.metrics import calibration_errors, classification_metrics


def _two_models(n, k, seed, *, prevalence=0.15, ties=False):
    """Labels with both classes in every label, and two models' probabilities (rounded: many ties)."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < prevalence).astype(np.float64)
    y[:3], y[3:6] = 1, 0
    shared = rng.normal(size=(n, k))
    a = 1 / (1 + np.exp(-(shared + rng.normal(size=(n, k)) + 1.6 * y - 1.5)))
    b = 1 / (1 + np.exp(-(shared + rng.normal(size=(n, k)) + 1.2 * y - 1.0)))
    if ties:
        a, b = np.round(a, 2), np.round(b, 2)
    return y, a, b


def _ece(y, p):
    """torchmetrics' binary ECE (15 bins, L1), in float64 so that it can be compared to 1e-12."""
    return float(binary_calibration_error(torch.tensor(p, dtype=torch.float64), torch.tensor(y).long(), n_bins=15))


REFERENCE = {"auroc": roc_auc_score, "auprc": average_precision_score, "ece": _ece, "brier": brier_score_loss}


def _loop(y, a, b, draws, metric):
    """The interval the plain way: per draw and per label, the library metric of A minus B."""
    f = REFERENCE[metric]
    point = [f(y[:, j], a[:, j]) - f(y[:, j], b[:, j]) for j in range(y.shape[1])]
    diffs = np.array([[f(y[d, j], a[d, j]) - f(y[d, j], b[d, j]) for j in range(y.shape[1])] for d in draws])
    return np.array(point), diffs


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize(("k", "ties"), [(1, False), (1, True), (3, True)])
def test_interval_equals_a_plain_loop_over_the_same_draws(metric, k, ties):
    y, a, b = _two_models(300, k, seed=k + 7 * ties, ties=ties)
    draws = bootstrap_draws(y, n_resamples=200, seed=3)
    point, diffs = _loop(y, a, b, draws, metric)
    names = [f"l{j}" for j in range(k)]
    macro = paired_difference(y, a, b, metric=metric, draws=draws, label_names=names)
    assert macro.label == "macro" and macro.metric == metric and macro.n_resamples == 200
    assert macro.estimate == pytest.approx(point.mean(), abs=1e-12)
    lo, hi = np.percentile(diffs.mean(axis=1), [2.5, 97.5])
    assert (macro.low, macro.high) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    for j in range(k):
        one = paired_difference(y, a, b, metric=metric, draws=draws, label=j, label_names=names)
        lo, hi = np.percentile(diffs[:, j], [2.5, 97.5])
        assert one.label == f"l{j}"
        assert one.estimate == pytest.approx(point[j], abs=1e-12)
        assert (one.low, one.high) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))


@pytest.mark.parametrize("metric", ["auroc", "auprc"])
def test_draws_that_keep_the_counts_but_not_each_columns_row_give_the_library_values_too(metric):
    """bootstrap_draws keep each column's class, and a label's positives are then counted by column;
    other draws that keep the positive counts take the slower path, with the same numbers."""
    from trainables.compare import _columns_kept

    y, a, b = _two_models(300, 2, seed=11, ties=True)
    stratified = bootstrap_draws(y, n_resamples=60, seed=2)
    shuffled = stratified[:, np.random.default_rng(0).permutation(len(y))]  # rows moved to other columns
    assert _columns_kept(y, stratified) and not _columns_kept(y, shuffled)
    assert (y[shuffled].sum(axis=1) == y.sum(axis=0)).all()
    for draws in (stratified, shuffled):
        point, diffs = _loop(y, a, b, draws, metric)
        got = paired_difference(y, a, b, metric=metric, draws=draws)
        assert got.estimate == pytest.approx(point.mean(), abs=1e-12)
        lo, hi = np.percentile(diffs.mean(axis=1), [2.5, 97.5])
        assert (got.low, got.high) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))


def test_long_runs_of_one_class_in_score_order_change_no_draw():
    """Scores where whole stretches hold negatives only (or positives only), and ties across the
    classes: merging those stretches into one group each leaves every draw's AUROC and AUPRC as
    sklearn computes them."""
    n = 400
    y = np.zeros(n)
    y[[5, 6, 7, 100, 101, 250, 390, 391, 392, 393, 399]] = 1
    a = np.linspace(0, 1, n)  # runs of negatives between small runs of positives
    a[[100, 102]] = a[101]  # a tie of a positive and a negative
    b = np.round(np.random.default_rng(1).random(n), 1)  # few distinct scores: mixed groups
    draws = bootstrap_draws(y, n_resamples=40, seed=4)
    for metric in ("auroc", "auprc"):
        point, diffs = _loop(y[:, None], a[:, None], b[:, None], draws, metric)
        got = paired_difference(y, a, b, metric=metric, draws=draws)
        lo, hi = np.percentile(diffs[:, 0], [2.5, 97.5])
        assert got.estimate == pytest.approx(point[0], abs=1e-12)
        assert (got.low, got.high) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))


def test_all_at_once_equals_one_at_a_time_and_1d_equals_2d():
    y, a, b = _two_models(400, 3, seed=1)
    draws = bootstrap_draws(y, n_resamples=100)
    names = ["x", "y", "z"]
    lifts = paired_differences(torch.tensor(y), torch.tensor(a), b, draws=draws, label_names=names)
    assert len(lifts) == len(METRICS) * 4
    for lift in lifts:
        label = None if lift.label == "macro" else lift.label
        assert lift == paired_difference(y, a, b, metric=lift.metric, draws=draws, label=label, label_names=names)
    y1, a1, b1 = y[:, 0], a[:, 0], b[:, 0]
    d1 = bootstrap_draws(y1, n_resamples=100)
    assert paired_difference(y1, a1, b1, metric="auprc", draws=d1) == paired_difference(
        y1[:, None], a1[:, None], b1[:, None], metric="auprc", draws=d1)


def test_a_models_scores_kept_between_comparisons_give_the_same_lifts_and_score_it_once(monkeypatch):
    """A job compares its winner with three or four models on one set of draws: with a ScoreCache the
    winner is scored once, and every Lift is what the comparison alone gives, bit for bit."""
    import trainables.compare as C

    y, a, b = _two_models(400, 3, seed=2)
    _, c, _ = _two_models(400, 3, seed=3)
    draws, names = bootstrap_draws(y, n_resamples=200), ["x", "y", "z"]
    alone = [paired_differences(y, a, other, draws=draws, label_names=names) for other in (b, c, b)]
    made = []
    monkeypatch.setattr(C, "_Scorer", lambda *args, **kw: made.append(1) or _Scorer(*args, **kw))
    cache = ScoreCache()
    kept = [paired_differences(y, a, other, draws=draws, label_names=names, cache=cache) for other in (b, c, b)]
    assert kept == alone
    # per metric and label: the winner once, b once (its second comparison from the cache), c once
    assert len(made) == len(METRICS) * 3 * 3
    flipped = paired_differences(y, b, a, draws=draws, label_names=names, cache=cache)  # the order still counts
    assert [lf.estimate for lf in flipped] == [-lf.estimate for lf in alone[0]]


def test_a_model_scored_ahead_is_not_scored_again_and_gives_the_same_lifts(monkeypatch):
    """A job scores its reference models on the draws while trials still train (ScoreCache.add): their
    comparisons with the winner later score only the winner, and every Lift is the same, bit for bit;
    the full-set values are sklearn's."""
    import trainables.compare as C

    y, a, b = _two_models(400, 3, seed=4, ties=True)
    draws = bootstrap_draws(y, n_resamples=200)
    alone = paired_differences(y, a, b, draws=draws, metrics=("auroc", "brier"))
    cache = ScoreCache()
    cache.add(y, b, draws=draws, metrics=("auroc", "brier"))
    for j in range(3):
        full, per_draw = cache.get(b[:, j], "auroc", j, lambda: pytest.fail("b's AUROC was not kept"))
        assert full == pytest.approx(roc_auc_score(y[:, j], b[:, j]), abs=1e-12) and per_draw.shape == (200,)
        assert per_draw[0] == pytest.approx(roc_auc_score(y[draws[0], j], b[draws[0], j]), abs=1e-12)
    made = []
    monkeypatch.setattr(C, "_Scorer", lambda *args, **kw: made.append(1) or _Scorer(*args, **kw))
    assert paired_differences(y, a, b, draws=draws, metrics=("auroc", "brier"), cache=cache) == alone
    assert len(made) == 2 * 3  # a's two metrics on 3 labels; b's came from the cache
    with pytest.raises(ValueError, match="`metrics` must be a non-empty selection"):
        cache.add(y, b, draws=draws, metrics=("f1",))
    with pytest.raises(ValueError, match="`probs_a` must have the shape of `y`"):
        cache.add(y, b[:, :2], draws=draws)


def test_point_estimates_match_the_projects_metrics():
    """The same AUROC/AUPRC/ECE the trainer reports (torchmetrics, float32 logits)."""
    y, a, b = _two_models(1000, 2, seed=5)
    draws = bootstrap_draws(y, n_resamples=10)
    logit = lambda p: torch.tensor(np.log(p / (1 - p)), dtype=torch.float32)  # noqa: E731
    ma, mb = classification_metrics(logit(a), torch.tensor(y)), classification_metrics(logit(b), torch.tensor(y))
    for metric in ("auroc", "auprc", "ece"):
        got = paired_difference(y, a, b, metric=metric, draws=draws)
        assert got.estimate == pytest.approx(ma[metric] - mb[metric], abs=1e-5)
    per_label = paired_difference(y, a, b, metric="ece", draws=draws, label=1)
    want = calibration_errors(logit(a), torch.tensor(y))[1] - calibration_errors(logit(b), torch.tensor(y))[1]
    assert per_label.estimate == pytest.approx(want, abs=1e-5)


def test_draws_keep_every_stratum_size():
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.04).astype(np.float32)
    y[0] = 1
    draws = bootstrap_draws(torch.tensor(y), n_resamples=300, seed=11)
    assert draws.shape == (300, 500) and draws.dtype == np.int64
    assert (y[draws].sum(axis=1) == y.sum()).all()
    assert (y[draws] == y[None, :]).all()  # column j always holds a row of row j's class
    assert len(np.unique(draws)) > 400  # resampled, not the identity
    ym = (rng.random((800, 4)) < [0.05, 0.2, 0.4, 0.6]).astype(np.float64)
    ym[0], ym[1] = 1, 0
    dm = bootstrap_draws(ym, n_resamples=300, seed=11)
    assert (ym[dm].sum(axis=1) == ym.sum(axis=0)).all()  # per-label positive counts, every draw
    patterns = lambda m: sorted(map(tuple, m.tolist()))  # noqa: E731
    assert all(patterns(ym[d]) == patterns(ym) for d in dm[:20])  # every label pattern keeps its size


def test_draws_are_seeded():
    y = np.r_[np.ones(30), np.zeros(70)]
    assert (bootstrap_draws(y, seed=4) == bootstrap_draws(y, seed=4)).all()
    assert not (bootstrap_draws(y, seed=4) == bootstrap_draws(y, seed=5)).all()
    assert bootstrap_draws(y).shape == (1000, 100)  # B = 1,000 by default


def test_coverage_of_a_known_auroc_difference():
    """Binormal models with correlated scores: AUROC = Phi(d / sqrt 2) exactly, so the true paired
    difference is known. Every simulation draws a fresh stratified test set (as the project's test
    split is stratified); the 95% interval must cover the truth in 92-98% of them."""
    n_pos, n_neg, n_sims, n_resamples = 180, 420, 1000, 500
    d_a, d_b, shared = 1.19, 0.95, 0.5
    truth = norm.cdf(d_a / math.sqrt(2)) - norm.cdf(d_b / math.sqrt(2))  # 0.800 - 0.749
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    draws = bootstrap_draws(y, n_resamples=n_resamples, seed=0)
    rng = np.random.default_rng(2024)
    covered, widths = 0, []
    for _ in range(n_sims):
        z = rng.normal(size=len(y))  # what both models see alike: their errors are correlated, as paired data are
        s_a = math.sqrt(shared) * z + math.sqrt(1 - shared) * rng.normal(size=len(y)) + d_a * y
        s_b = math.sqrt(shared) * z + math.sqrt(1 - shared) * rng.normal(size=len(y)) + d_b * y
        lift = paired_difference(y, 1 / (1 + np.exp(-s_a)), 1 / (1 + np.exp(-s_b)), metric="auroc", draws=draws)
        covered += lift.low <= truth <= lift.high
        widths.append(lift.high - lift.low)
    coverage = covered / n_sims
    print(f"coverage {coverage:.3f} over {n_sims} simulations, mean width {np.mean(widths):.4f}")
    assert 0.92 <= coverage <= 0.98


# --------------------------------------------------------------------------- wording
def _lift(estimate, low, high, metric="auroc", label="macro"):
    return Lift(estimate=estimate, low=low, high=high, metric=metric, label=label, n_resamples=1000)


@pytest.mark.parametrize(("lift", "words"), [
    (_lift(0.004, -0.021, 0.030),
     ["the loss stack raised test AUROC by 0.004", "(difference +0.004, 95% CI \u22120.021 to +0.030)",
      "no evidence that it helps on this data"]),
    (_lift(0.031, 0.012, 0.050), ["raised test AUROC by 0.031", "CI +0.012 to +0.050", "it helps on this data"]),
    (_lift(-0.004, -0.030, 0.021),
     ["lowered test AUROC by 0.004", "(difference \u22120.004,", "no evidence either way on this data",
      "favours the plain baseline"]),
    (_lift(-0.031, -0.050, -0.012), ["lowered test AUROC by 0.031", "it hurts on this data"]),
    (_lift(-0.031, -0.052, -0.011, metric="ece"),
     ["lowered test ECE by 0.031", "(difference \u22120.031, 95% CI \u22120.052 to \u22120.011)", "better calibrated"]),
    (_lift(0.020, 0.005, 0.040, metric="ece"), ["raised test ECE by 0.020", "worse calibrated"]),
    (_lift(-0.010, -0.030, 0.010, metric="ece"), ["lowered test ECE", "no evidence that it helps on this data"]),
    (_lift(0.010, -0.010, 0.030, metric="ece"), ["raised test ECE", "no evidence either way"]),
    (_lift(-0.010, -0.020, -0.001, metric="brier"), ["lowered test Brier score by 0.010", "more accurate"]),
    (_lift(0.040, 0.010, 0.070, metric="auprc", label="finding_2"),
     ["raised test AUPRC of label 'finding_2' by 0.040", "it helps"]),
    # The estimate and the interval on opposite sides of 0 (a skewed bootstrap): no claim either way.
    (_lift(-0.0002, 0.0001, 0.010),
     ["left test AUROC where the plain baseline has it, to three decimals", "(difference 0.000, 95% CI 0.000 to",
      "no evidence either way"]),
])
def test_lift_sentence_wording(lift, words):
    text = lift_sentence(lift)
    for w in words:
        assert w in text, text
    verdict = text.rpartition(": ")[2]
    assert verdict.startswith(("no evidence", "it helps", "it hurts", "better calibrated", "worse calibrated",
                               "more accurate", "less accurate")), text


# METHODS.md, "Words": an effect is claimed only when the interval is on one side of zero at the printed
# precision (three decimals); the fixed numbers below sit on either side of that edge.
@pytest.mark.parametrize(("estimate", "low", "high", "metric", "printed_ci", "words"), [
    (0.013, 0.0004, 0.025, "auroc", "95% CI 0.000 to +0.025", "no evidence that it helps on this data"),
    (0.013, 0.0, 0.025, "auroc", "95% CI 0.000 to +0.025", "no evidence that it helps on this data"),
    (0.013, 0.0006, 0.025, "auroc", "95% CI +0.001 to +0.025", "it helps on this data"),
    (0.013, 0.001, 0.025, "auprc", "95% CI +0.001 to +0.025", "it helps on this data"),
    (-0.013, -0.025, -0.0004, "auroc", "95% CI \u22120.025 to 0.000", "no evidence either way on this data, and "
                                                                       "the estimate favours the plain baseline"),
    (-0.013, -0.025, -0.0006, "auroc", "95% CI \u22120.025 to \u22120.001", "it hurts on this data"),
    (-0.013, -0.025, -0.0004, "ece", "95% CI \u22120.025 to 0.000", "no evidence that it helps on this data"),
    (-0.013, -0.025, -0.0006, "ece", "95% CI \u22120.025 to \u22120.001", "better calibrated"),
    (0.013, 0.0004, 0.025, "brier", "95% CI 0.000 to +0.025", "no evidence either way on this data, and the "
                                                               "estimate favours the plain baseline"),
])
def test_words_follow_the_interval_at_the_printed_precision(estimate, low, high, metric, printed_ci, words):
    text = lift_sentence(_lift(estimate, low, high, metric=metric))
    assert printed_ci in text and text.endswith(f": {words}"), text


def test_lift_sentence_names_the_models():
    text = lift_sentence(_lift(0.02, 0.01, 0.03), model_a="focal + EMA", model_b="BCE")
    assert text.startswith("focal + EMA raised test AUROC by 0.020 relative to BCE")


def test_seed_summary_is_mean_and_sample_sd():
    values = [0.71, 0.74, 0.69, 0.73]
    mean, sd = seed_summary(values)
    assert mean == pytest.approx(statistics.mean(values), abs=1e-15)
    assert sd == pytest.approx(statistics.stdev(values), abs=1e-15)  # ddof = 1
    assert seed_summary(np.array([0.5, 0.5])) == (0.5, 0.0)
    # a seed without a value (NaN) is left out; one value has no spread; none, no mean either
    assert seed_summary([math.nan, *values]) == (mean, sd)
    one = seed_summary([0.7, math.nan])
    assert one[0] == 0.7 and math.isnan(one[1])
    assert all(math.isnan(x) for x in seed_summary([math.nan]))


# --------------------------------------------------------------------------- bad arguments
def test_bad_arguments_fail_with_clear_messages():
    y, a, b = _two_models(100, 1, seed=0)
    draws = bootstrap_draws(y, n_resamples=20)
    with pytest.raises(ValueError, match=r"`probs_b` must have the shape of `y` \(100 rows, 1 label\(s\)\), got "
                                         r"shape \(99, 1\)"):
        paired_difference(y, a, b[:99], metric="auroc", draws=draws)
    with pytest.raises(ValueError, match=r"`metric` must be one of auroc, auprc, ece, brier, got 'accuracy'"):
        paired_difference(y, a, b, metric="accuracy", draws=draws)
    with pytest.raises(ValueError, match=r"`y` label 0 has one class only \(0 in all 100 rows\)"):
        paired_difference(np.zeros(100), a, b, metric="auroc", draws=draws)
    with pytest.raises(ValueError, match="one class only"):
        bootstrap_draws(np.ones(50))
    with pytest.raises(ValueError, match=r"`y` must hold only 0 and 1, got values such as \[2.0\]"):
        bootstrap_draws(np.r_[0, 1, 2])
    with pytest.raises(ValueError, match=r"`probs_a` must hold probabilities in \[0, 1\] \(apply a sigmoid"):
        paired_difference(y, a * 3 - 1, b, metric="brier", draws=draws)
    with pytest.raises(ValueError, match=r"`draws` must be a \[n_resamples, 100\] integer array"):
        paired_difference(y, a, b, metric="auroc", draws=draws[:, :50])
    other = bootstrap_draws(np.roll(y, 1), n_resamples=20)  # another test set of the same length
    with pytest.raises(ValueError, match="make them with bootstrap_draws"):
        paired_difference(y, a, b, metric="auroc", draws=other)
    with pytest.raises(ValueError, match=r"`label` must be None \(macro\), an index 0..0 or one of 0, got 5"):
        paired_difference(y, a, b, metric="auroc", draws=draws, label=5)
    with pytest.raises(ValueError, match=r"`label_names` must name the 1 label\(s\) of `y`, got 2"):
        paired_difference(y, a, b, metric="auroc", draws=draws, label_names=["a", "b"])
    with pytest.raises(ValueError, match=r"`metrics` must be a non-empty selection of auroc, auprc, ece, brier"):
        paired_differences(y, a, b, draws=draws, metrics=["auroc", "f1"])
    with pytest.raises(ValueError, match=r"`n_resamples` must be an integer >= 1, got 0"):
        bootstrap_draws(y, n_resamples=0)
    with pytest.raises(ValueError, match=r"`seed` must be an integer, got 1.5"):
        bootstrap_draws(y, seed=1.5)
    with pytest.raises(ValueError, match=r"`values` must be finite \(NaN for a seed without a value\), got \[0.7, "):
        seed_summary([0.7, math.inf])
    with pytest.raises(ValueError, match=r"`lift.metric` must be one of"):
        lift_sentence(_lift(0.1, 0.0, 0.2, metric="f1"))
