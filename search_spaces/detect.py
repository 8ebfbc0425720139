"""Automatic scenario detection from the training labels.

The rules, in order (documented in the README):

1. two or more label columns                      → ``multi_disease_screening``
2. one label with positives at 1:20 or rarer
   (negatives / positives >= 20)                  → ``rare_disease_detection``
3. otherwise (one label, commoner than 1:20)      → ``treatment_response_prediction``

The decision comes with the reasons and the statistics it used, so that ``auto`` is recorded as
what it resolved to and why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Detection", "detect_scenario", "RARE_RATIO"]

RARE_RATIO = 20.0  # negatives per positive at which one label counts as a rare disease


@dataclass(frozen=True)
class Detection:
    scenario: str
    reasons: tuple[str, ...]
    n_labels: int
    prevalence: tuple[float, ...]
    rarest_label: str
    rarest_ratio: float  # negatives per positive of the rarest label

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ratio_text(ratio: float) -> str:
    return f"1:{ratio:.1f}" if ratio < 100 else f"1:{ratio:.0f}"


def detect_scenario(labels: Any, label_names: list[str] | None = None) -> Detection:
    """Pick a scenario from a [N] or [N, K] array of 0/1 training labels."""
    y = np.asarray(labels, dtype=np.float64)
    y = y.reshape(len(y), -1)
    k = y.shape[1]
    names = list(label_names) if label_names else [f"label_{j}" for j in range(k)]
    if len(names) != k:
        raise ValueError(f"`label_names` has {len(names)} names for {k} label columns")
    pos = y.sum(axis=0)
    if (pos == 0).any() or (pos == len(y)).any():
        raise ValueError("every label needs positives and negatives to detect a scenario")
    ratios = (len(y) - pos) / pos
    prevalence = tuple(float(p) for p in pos / len(y))
    j = int(np.argmax(ratios))
    rarest = f"rarest label '{names[j]}' at {_ratio_text(ratios[j])} (prevalence {prevalence[j]:.4f})"
    if k >= 2:
        scenario = "multi_disease_screening"
        reasons = (f"{k} label columns: a multi-label task", rarest)
    elif ratios[0] >= RARE_RATIO:
        scenario = "rare_disease_detection"
        reasons = (f"one label with positives at {_ratio_text(ratios[0])}, at or rarer than 1:{RARE_RATIO:g}",)
    else:
        scenario = "treatment_response_prediction"
        reasons = (f"one label with positives at {_ratio_text(ratios[0])}, commoner than 1:{RARE_RATIO:g}",
                   "calibration-focused settings by default: probabilities drive the decision")
    return Detection(scenario=scenario, reasons=reasons, n_labels=k, prevalence=prevalence, rarest_label=names[j],
                     rarest_ratio=float(ratios[j]))
