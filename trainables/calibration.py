"""Post-hoc temperature scaling (Guo et al. 2017) fit on validation logits.

One temperature T for all labels minimises the validation BCE of logits / T. Scaling by a positive
constant keeps every ranking, so AUROC and AUPRC are unchanged; only calibration (ECE) moves.
"""

from __future__ import annotations

import math
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from trainables.metrics import expected_calibration_error

# expected_calibration_error is metrics' own, re-exported: one ECE for training reports and post-hoc scaling.
__all__ = ["fit_temperature", "expected_calibration_error", "temperature_report"]


def fit_temperature(logits: Tensor, targets: Tensor, *, lo: float = 0.05, hi: float = 20.0, iters: int = 80) -> float:
    """The T in [lo, hi] minimising BCE(logits / T, targets), by golden-section search on log T.

    The NLL of a rescaled logit is unimodal in the scale, and a 1-D search has no optimiser state
    and no learning rate to get wrong.
    """
    x = logits.detach().double().reshape(-1)
    y = targets.detach().double().reshape(-1)

    def nll(log_t: float) -> float:
        return float(F.binary_cross_entropy_with_logits(x / math.exp(log_t), y))

    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    return math.exp((a + b) / 2)


def temperature_report(val_logits: Tensor, val_targets: Tensor, test_logits: Tensor,
                       test_targets: Tensor) -> dict[str, Any]:
    """Fit T on validation; ECE on test before and after scaling."""
    t = fit_temperature(val_logits, val_targets)
    return {
        "temperature": t,
        "test/ece": expected_calibration_error(test_logits, test_targets),
        "test/ece_scaled": expected_calibration_error(test_logits / t, test_targets),
        "val/ece": expected_calibration_error(val_logits, val_targets),
        "val/ece_scaled": expected_calibration_error(val_logits / t, val_targets),
    }
