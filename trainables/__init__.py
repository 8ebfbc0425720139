"""losstune's trainer: the dual-head model, its losses, teacher, weighting, data and metrics.

Framework-free: torch, numpy, pandas, pyyaml and pydantic only (torchmetrics is the tests' reference). Ray
appears in ``trainables.tune_trainable`` alone, MLflow nowhere.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Config", "PreparedData", "prepare_data", "fit", "FitResult", "evaluate_holdout", "Targets", "UserError"]

# The public names, imported on first use (PEP 562): `import trainables.errors` or `trainables.vocab`
# (what every CLI command needs) must not pull torch and torchmetrics in, seconds before --help.
_HOME = {"Config": "config", "PreparedData": "data", "prepare_data": "data", "UserError": "errors",
         "Targets": "metrics", "FitResult": "trainer", "evaluate_holdout": "trainer", "fit": "trainer"}

if TYPE_CHECKING:
    from trainables.config import Config
    from trainables.data import PreparedData, prepare_data
    from trainables.errors import UserError
    from trainables.metrics import Targets
    from trainables.trainer import FitResult, evaluate_holdout, fit


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'trainables' has no attribute {name!r}")
    return getattr(importlib.import_module(f"trainables.{_HOME[name]}"), name)
