"""Operating points against sklearn: the confusion matrix at each stated threshold, the thresholds
against a brute-force search over every score on validation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, roc_curve

from trainables.operating import (
    at_threshold,
    choose_thresholds,
    operating_points,
    threshold_for_sensitivity,
    youden_threshold,
)


def _scores(n: int, prevalence: float, seed: int, *, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    y[:2] = (1, 0)  # both classes, whatever the draw
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.8 * y - 2.5)))
    return (np.round(p, 2) if ties else p), y


@pytest.mark.parametrize("prevalence,ties", [(0.2, False), (0.02, False), (0.08, True)])
def test_operating_points_match_sklearns_confusion_matrix(prevalence, ties):
    vp, vy = _scores(3000, prevalence, 1, ties=ties)
    tp_, ty = _scores(2000, prevalence, 2, ties=ties)
    [(name, points)] = operating_points(vp, vy, tp_, ty, label_names=["outcome"]).items()
    assert name == "outcome" and [pt.rule for pt in points] == ["youden", "sensitivity_0.80", "sensitivity_0.90"]
    for pt in points:
        tn, fp, fn, tp = confusion_matrix(ty, (tp_ >= pt.threshold).astype(int), labels=[0, 1]).ravel()
        assert (pt.tp, pt.fp, pt.tn, pt.fn) == (tp, fp, tn, fn)
        assert pt.sensitivity == pytest.approx(tp / (tp + fn))
        assert pt.specificity == pytest.approx(tn / (tn + fp))
        assert pt.ppv == pytest.approx(tp / (tp + fp))
        assert pt.npv == pytest.approx(tn / (tn + fn))
        assert pt.alerts_per_100 == pytest.approx(100 * (tp + fp) / len(ty))


@pytest.mark.parametrize("ties", [False, True])
def test_thresholds_are_the_ones_a_brute_force_search_finds_on_validation(ties):
    p, y = _scores(1500, 0.1, 3, ties=ties)
    candidates = np.unique(p)
    sens = np.array([(p[y == 1] >= t).mean() for t in candidates])
    spec = np.array([(p[y == 0] < t).mean() for t in candidates])
    for s in (0.8, 0.9, 1.0):
        t = threshold_for_sensitivity(p, y, s)
        assert t == candidates[sens >= s - 1e-12].max()  # the highest threshold that reaches s
    j = sens + spec - 1
    assert youden_threshold(p, y) == candidates[j == j.max()].max()
    fpr, tpr, _ = roc_curve(y, p)  # the same optimum as sklearn's ROC curve says
    best = at_threshold(p, y, youden_threshold(p, y), "youden")
    assert best.sensitivity + best.specificity - 1 == pytest.approx((tpr - fpr).max())


def test_several_labels_each_get_their_own_thresholds():
    a, ya = _scores(800, 0.1, 4)
    b, yb = _scores(800, 0.3, 5)
    vp, vy = np.stack([a, b], 1), np.stack([ya, yb], 1)
    out = operating_points(vp, vy, vp, vy, label_names=["sepsis", "aki"])
    assert list(out) == ["sepsis", "aki"]
    assert out["aki"][0].threshold == choose_thresholds(b, yb)["youden"]


@pytest.mark.parametrize("y,message", [(np.zeros(10), "both classes"), (np.full(10, 2.0), "0/1 labels")])
def test_labels_without_both_classes_are_refused(y, message):
    with pytest.raises(ValueError, match=message):
        youden_threshold(np.linspace(0, 1, 10), y)
