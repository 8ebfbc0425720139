"""losstune's trainer: the dual-head model, its losses, teacher, weighting, data and metrics.

Framework-free: torch, torchmetrics, numpy, pandas, pyyaml and pydantic only. Ray appears in
``trainables.tune_trainable`` alone, MLflow nowhere.
"""

from __future__ import annotations

from trainables.config import Config
from trainables.data import PreparedData, prepare_data
from trainables.errors import UserError
from trainables.metrics import Targets
from trainables.trainer import FitResult, evaluate_holdout, fit

__all__ = ["Config", "PreparedData", "prepare_data", "fit", "FitResult", "evaluate_holdout", "Targets", "UserError"]
