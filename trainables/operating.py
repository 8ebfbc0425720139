"""Operating points: what a model does to patients at a decision threshold.

A threshold is chosen on the validation split and then applied, unchanged, to the held-out test
split, so that the test figures are what a hospital would see.
A patient is flagged when the model's calibrated probability is at least the threshold.

- ``sensitivity ≥ s``: the highest threshold whose validation sensitivity is at least ``s`` (the
  fewest alerts that still find that share of the positives);
- ``Youden``: the threshold that maximises sensitivity + specificity − 1 on validation (the
  "validation-chosen threshold" a model file keeps, and ``predict`` decides with by default).

At each: sensitivity (recall), specificity, PPV (precision), NPV and alerts per 100 patients, with
the four counts they come from.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["OperatingPoint", "SENSITIVITIES", "threshold_for_sensitivity", "youden_threshold", "at_threshold",
           "choose_thresholds", "operating_points"]

SENSITIVITIES = (0.80, 0.90)
YOUDEN = "youden"


def _rule_name(sensitivity: float) -> str:
    return f"sensitivity_{sensitivity:.2f}"


@dataclass(frozen=True)
class OperatingPoint:
    """One threshold on one split: the four counts and what they mean for patients."""

    rule: str  # how the threshold was chosen on validation: "youden" or "sensitivity_0.90"
    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def sensitivity(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float:
        return _ratio(self.tn, self.tn + self.fp)

    @property
    def ppv(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def npv(self) -> float:
        return _ratio(self.tn, self.tn + self.fn)

    @property
    def alerts_per_100(self) -> float:
        return _ratio(100 * (self.tp + self.fp), self.tp + self.fp + self.tn + self.fn)

    def to_dict(self) -> dict[str, float | int | str]:
        return {**asdict(self), "sensitivity": self.sensitivity, "specificity": self.specificity, "ppv": self.ppv,
                "npv": self.npv, "alerts_per_100": self.alerts_per_100}


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def _checked(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(p, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"`p` and `y` must be non-empty and of one length, got {p.shape} and {y.shape}")
    if not ((y == 0) | (y == 1)).all() or y.min() == y.max():
        raise ValueError("`y` must hold 0/1 labels with both classes")
    return p, y


def threshold_for_sensitivity(p: np.ndarray, y: np.ndarray, sensitivity: float) -> float:
    """The highest threshold t with sensitivity(p ≥ t) ≥ ``sensitivity``: the k-th highest positive
    score, k = ceil(sensitivity × positives)."""
    if not 0 < sensitivity <= 1:
        raise ValueError(f"`sensitivity` must be in (0, 1], got {sensitivity}")
    p, y = _checked(p, y)
    pos = np.sort(p[y == 1])[::-1]
    k = math.ceil(sensitivity * len(pos) - 1e-9)
    return float(pos[max(k, 1) - 1])


def youden_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """The threshold among the scores that maximises sensitivity + specificity − 1 (the highest of ties)."""
    p, y = _checked(p, y)
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    tp, fp = np.cumsum(ys), np.cumsum(1 - ys)
    last = np.r_[ps[1:] != ps[:-1], True]  # the end of each group of tied scores: one threshold each
    j = tp[last] / ys.sum() - fp[last] / (len(ys) - ys.sum())
    return float(ps[last][int(np.argmax(j))])


def at_threshold(p: np.ndarray, y: np.ndarray, threshold: float, rule: str) -> OperatingPoint:
    """The counts at ``threshold`` (flagged: p ≥ threshold)."""
    p, y = _checked(p, y)
    flagged = p >= threshold
    pos = y == 1
    return OperatingPoint(rule=rule, threshold=float(threshold), tp=int((flagged & pos).sum()),
                          fp=int((flagged & ~pos).sum()), tn=int((~flagged & ~pos).sum()),
                          fn=int((~flagged & pos).sum()))


def choose_thresholds(p: np.ndarray, y: np.ndarray,
                      sensitivities: tuple[float, ...] = SENSITIVITIES) -> dict[str, float]:
    """Per rule, the threshold chosen on these (validation) scores: Youden's, then one per sensitivity."""
    return {YOUDEN: youden_threshold(p, y),
            **{_rule_name(s): threshold_for_sensitivity(p, y, s) for s in sensitivities}}


def operating_points(val_p: np.ndarray, val_y: np.ndarray, test_p: np.ndarray, test_y: np.ndarray, *,
                     label_names: list[str] | None = None,
                     sensitivities: tuple[float, ...] = SENSITIVITIES) -> dict[str, list[OperatingPoint]]:
    """Per label, the thresholds chosen on validation and the test split's figures at each.

    Args:
        val_p, test_p: calibrated probabilities, [N] or [N, K].
        val_y, test_y: 0/1 labels of the same shapes.
        label_names: K names (default label_0…).
    """
    vp, vy = np.asarray(val_p).reshape(len(val_p), -1), np.asarray(val_y).reshape(len(val_y), -1)
    tp, ty = np.asarray(test_p).reshape(len(test_p), -1), np.asarray(test_y).reshape(len(test_y), -1)
    names = label_names or [f"label_{k}" for k in range(vp.shape[1])]
    out: dict[str, list[OperatingPoint]] = {}
    for k, name in enumerate(names):
        chosen = choose_thresholds(vp[:, k], vy[:, k], sensitivities)
        out[name] = [at_threshold(tp[:, k], ty[:, k], t, rule) for rule, t in chosen.items()]
    return out
