"""AUROC, AUPRC (average precision), ECE per label and macro; the combined score; target attainment.

The combined score, the default metric a search maximises, is the mean of macro AUROC and macro
AUPRC: AUROC alone barely moves at 1:500 while AUPRC (chance level = prevalence) does, and AUPRC
alone is dominated by a handful of positives. Calibration is left out of this score: it is
reported, before and after post-hoc calibration fit on validation (calibration.py). Temperature
alone cannot undo the base-rate shift of focal loss with α, so Platt scaling (with an intercept)
is fit beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trainables.vocab import ALL_MET, EPOCH_REACHED, TARGET_METRICS, target_flag, targets_met

__all__ = ["classification_metrics", "combined_score", "calibration_errors", "expected_calibration_error",
           "binary_ece", "ece_bins", "binary_auroc", "binary_average_precision", "Targets", "TargetTracker",
           "ECE_BINS"]

ECE_BINS = 15


def ece_bins(p: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """The ECE's bin of each probability, torchmetrics' bucketing: [i / n, (i + 1) / n) is bin i, and
    p = 1 is alone in bin n, so there are n + 1 bins. The one binning of every ECE losstune reports
    (the metric here, the bootstrap in compare.py, the reliability curve in calibration.py)."""
    return np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1), p, side="right") - 1


def binary_ece(p: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE (L1) of P(y = 1) for [n] probabilities and 0/1 labels:

        ECE = sum over bins b of (n_b / n) * |mean(y in b) - mean(p in b)| = sum over b of |sum_b (y - p)| / n
    """
    sums = np.bincount(ece_bins(p, n_bins), weights=y - p, minlength=n_bins + 1)
    return float(np.abs(sums).sum() / len(p))


def _tie_groups(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positives and negatives per group of equal scores, groups in ascending score order."""
    order = np.argsort(p, kind="stable")
    ps = p[order]
    group = np.cumsum(np.r_[False, ps[1:] != ps[:-1]])
    pos = np.bincount(group, weights=y[order].astype(np.float64))
    neg = np.bincount(group).astype(np.float64) - pos
    return pos, neg


def binary_auroc(p: np.ndarray, y: np.ndarray) -> float:
    """AUROC of [n] scores against 0/1 labels (both classes present), ties counted half: the
    Mann-Whitney statistic, equal to sklearn's ``roc_auc_score`` and torchmetrics' ``binary_auroc``.

    Computed here in numpy rather than with torchmetrics: importing torchmetrics imports torchvision and
    ``torch._dynamo`` (2.9 s), which every trial's fresh Ray worker paid before its first epoch."""
    pos, neg = _tie_groups(p, y)
    below = np.cumsum(neg) - neg  # negatives with a lower score than the group
    return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def binary_average_precision(p: np.ndarray, y: np.ndarray) -> float:
    """Average precision (AUPRC) of [n] scores against 0/1 labels: over the thresholds from the top,
    the recall gained at each times the precision there (sklearn's ``average_precision_score``, no
    interpolation; torchmetrics' ``binary_average_precision``)."""
    pos, neg = _tie_groups(p, y)
    pos, neg = pos[::-1], neg[::-1]
    tp = np.cumsum(pos)
    precision = tp / (tp + np.cumsum(neg))
    return float((pos * precision).sum() / pos.sum())


def combined_score(auroc: float, auprc: float) -> float:
    """0.5 * AUROC + 0.5 * AUPRC (both macro over labels)."""
    return 0.5 * auroc + 0.5 * auprc


def _as_2d(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    x = logits.detach().float().reshape(len(logits), -1)
    y = targets.detach().reshape(len(targets), -1).long()
    if x.shape != y.shape:
        raise ValueError(f"`logits` and `targets` must have the same shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    return x, y


def calibration_errors(logits: Tensor, targets: Tensor) -> list[float]:
    """Per label: the binary ECE (15 bins, L1, as torchmetrics defines it) of sigmoid(logits)."""
    x, y = _as_2d(logits, targets)
    p, t = torch.sigmoid(x).double().cpu().numpy(), y.double().cpu().numpy()
    return [binary_ece(p[:, k], t[:, k]) for k in range(x.shape[1])]


def expected_calibration_error(logits: Tensor, targets: Tensor) -> float:
    """Macro over labels of ``calibration_errors``."""
    values = calibration_errors(logits, targets)
    return sum(values) / len(values)


def classification_metrics(logits: Tensor, targets: Tensor, *, label_names: list[str] | None = None) -> dict[str, Any]:
    """Macro AUROC / AUPRC / ECE (15 bins, L1) and the score, plus per-label values for several labels.

    ``logits`` and ``targets`` are [N] or [N, K]. A label whose targets hold one class makes AUROC
    undefined: that is a ``ValueError`` (the data preflight stops it long before), never a 0.5.
    """
    x, y = _as_2d(logits, targets)
    names = label_names or [str(k) for k in range(x.shape[1])]
    per: dict[str, list[float]] = {"auroc": [], "auprc": []}
    for k in range(x.shape[1]):
        yk = y[:, k]
        if int(yk.min()) == int(yk.max()):
            raise ValueError(f"label '{names[k]}' has one class only in these targets: AUROC/AUPRC are undefined")
        # the probabilities in float32, as the model gives them (their ties are its ties); the sums in float64
        pk = torch.sigmoid(x[:, k]).cpu().numpy().astype(np.float64)
        tk = yk.cpu().numpy()
        per["auroc"].append(binary_auroc(pk, tk))
        per["auprc"].append(binary_average_precision(pk, tk))
    per["ece"] = calibration_errors(x, y)
    out: dict[str, Any] = {m: sum(v) / len(v) for m, v in per.items()}
    out["score"] = combined_score(out["auroc"], out["auprc"])
    out["score_ece"] = out["score"] - out["ece"]  # the score, less the calibration error (val/score_ece)
    if x.shape[1] > 1:
        for m, values in per.items():
            for name, v in zip(names, values):
                out[f"{m}.{name}"] = v
    return out


@dataclass(frozen=True)
class Targets:
    """Target validation AUROC and/or AUPRC (macro); None means no target for that metric."""

    auroc: float | None = None
    auprc: float | None = None

    def __post_init__(self) -> None:
        for name in ("auroc", "auprc"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and 0 < v <= 1):
                raise ValueError(f"target `{name}` must be in (0, 1], got {v!r}")

    @property
    def any(self) -> bool:
        return self.auroc is not None or self.auprc is not None

    def to_dict(self) -> dict[str, float | None]:
        return {"auroc": self.auroc, "auprc": self.auprc}


@dataclass
class TargetTracker:
    """Whether and when each target was reached on validation; ``all`` = every target in one epoch.

    Whether a target is met is ``vocab.targets_met``'s decision, the one the tuner uses too.
    """

    targets: Targets
    first: dict[str, int] = field(default_factory=dict)  # metric → first epoch reached; "all" too

    def update(self, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """Record the epoch's validation ``auroc``/``auprc``; returns ``flags()``."""
        for name, met in targets_met(metrics, self.targets.to_dict()).items():
            if met:
                self.first.setdefault(name, epoch)
        return self.flags()

    def flags(self) -> dict[str, Any]:
        """Report keys: target/auroc_met, target/auprc_met, target/all_met (0/1), target/epoch_reached (-1 if not)."""
        goals = self.targets.to_dict()
        out: dict[str, Any] = {target_flag(name): int(name in self.first) for name in TARGET_METRICS
                               if goals.get(name) is not None}
        if self.targets.any:
            out[ALL_MET] = int("all" in self.first)
            out[EPOCH_REACHED] = self.first.get("all", -1)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"first": dict(self.first)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first = {str(k): int(v) for k, v in state["first"].items()}
