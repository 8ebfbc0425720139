"""Reference models: what plain logistic regression and gradient boosting reach on the same split.

    models = fit_reference_models(data, seed=0)
    for name, model in models.items():
        print(name, evaluate(model, data))              # test AUROC/AUPRC/ECE/Brier, per label and macro

A tuned loss stack is worth its search only if it beats these (METHODS.md, "What to expect,
honestly": on Framingham CHD, logistic regression alone reaches AUROC ~0.74). Both are fit on the
preprocessed training split alone, one binary model per label, so their test numbers are held out
exactly as the tuned model's are. The inputs are PreparedData's: median-imputed with missing-value
indicator columns, numeric columns standardised, categoricals one-hot. So no NaN reaches the
models (gradient boosting's native NaN handling goes unused; the indicators carry missingness).

For images the inputs are the pixels, each image averaged down to at most 16×16 per channel and
scaled to [0, 1] (``pixel_features``): logistic regression on pixels is what a statistician tries
first on small scans (the chest X-ray MedMNIST task reaches AUROC ~0.92 with it), and gradient
boosting gets the same pixels.

scikit-learn is imported when a model is fit, not with this module, so the trainer keeps working
where it is not installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from trainables.calibration import brier_scores
from trainables.data import PreparedData
from trainables.errors import UserError
from trainables.metrics import classification_metrics

__all__ = ["ReferenceModel", "REFERENCE_MODELS", "fit_reference_models", "evaluate", "pixel_features", "PIXEL_SIDE"]

REFERENCE_MODELS = ("logistic_regression", "gradient_boosting")
_SPLITS = ("train", "val", "test")
PIXEL_SIDE = 16  # images are averaged down to at most this many pixels a side for the reference models


def pixel_features(x: Any) -> np.ndarray:
    """Images [N, C, H, W] (uint8 or float) → [N, C·h·w] float64 in [0, 1], h, w ≤ ``PIXEL_SIDE``
    (area averaging); a table's features [N, F] as they are."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.dim() != 4:
        return t.detach().cpu().numpy().astype(np.float64)
    t = t.detach().cpu().float() / (255.0 if t.dtype == torch.uint8 else 1.0)
    h, w = t.shape[-2:]
    t = torch.nn.functional.adaptive_avg_pool2d(t, (min(h, PIXEL_SIDE), min(w, PIXEL_SIDE)))
    return t.reshape(len(t), -1).numpy().astype(np.float64)


def _estimator(name: str, seed: int) -> Any:
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise UserError("the reference models need scikit-learn, which is not installed; "
                        "install it with: pip install 'scikit-learn>=1.4'") from None
    if name == "logistic_regression":
        # sklearn's default L2 penalty (C = 1) and no class weights: the plain baseline that
        # imbalance corrections are measured against. lbfgs on standardised inputs converges well
        # within max_iter; the limit is there for one-hot columns of rare categories.
        return LogisticRegression(max_iter=5000, class_weight=None, random_state=seed)
    # sklearn's defaults; random_state fixes the internal split that early stopping uses past 10,000 rows.
    return HistGradientBoostingClassifier(random_state=seed)


@dataclass(frozen=True)
class ReferenceModel:
    """One fitted sklearn classifier per label; ``predict_proba`` gives [n, n_labels] P(y = 1)."""

    name: str
    estimators: tuple[Any, ...] = field(repr=False)
    label_names: tuple[str, ...]
    n_features: int

    @property
    def n_labels(self) -> int:
        return len(self.estimators)

    def _features(self, x: Any) -> np.ndarray:
        arr = pixel_features(x)
        if arr.ndim != 2 or arr.shape[1] != self.n_features:
            raise ValueError(f"`x` must be [n, {self.n_features}] (the preprocessed features the model was fit on), "
                             f"got shape {arr.shape}")
        return arr

    def logits(self, x: Any) -> np.ndarray:
        """[n, n_labels] log-odds of y = 1 (both estimators' decision_function is the logit)."""
        arr = self._features(x)
        return np.stack([np.asarray(est.decision_function(arr), dtype=np.float64) for est in self.estimators], axis=1)

    def predict_proba(self, x: Any) -> np.ndarray:
        """[n, n_labels] P(y = 1) per label."""
        arr = self._features(x)
        return np.stack([est.predict_proba(arr)[:, 1] for est in self.estimators], axis=1)


def fit_reference_models(data: PreparedData, *, seed: int = 0,
                         names: Sequence[str] = REFERENCE_MODELS) -> dict[str, ReferenceModel]:
    """Each of ``names`` fit on ``data.train`` alone, one seeded binary model per label."""
    if not isinstance(data, PreparedData):
        raise ValueError(f"`data` must be a PreparedData, got {type(data).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be an integer >= 0, got {seed!r}")
    unknown = [n for n in names if n not in REFERENCE_MODELS]
    if unknown or not names:
        raise ValueError(f"`names` must be a non-empty selection of {', '.join(REFERENCE_MODELS)}, got {list(names)!r}")
    x = pixel_features(data.train.x)
    y = data.train.y.detach().cpu().numpy()
    if not np.isfinite(x).all():
        raise ValueError("`data.train.x` has non-finite values; PreparedData's preprocessing imputes them, so "
                         "this data did not come through prepare_data")
    for j, label in enumerate(data.label_names):
        if y[:, j].min() == y[:, j].max():
            raise ValueError(f"label '{label}' has one class only in the training split: nothing to fit")
    out: dict[str, ReferenceModel] = {}
    for name in names:
        estimators = tuple(_estimator(name, int(seed)).fit(x, y[:, j].astype(np.int64)) for j in range(y.shape[1]))
        out[name] = ReferenceModel(name=name, estimators=estimators, label_names=tuple(data.label_names),
                                   n_features=x.shape[1])
    return out


def evaluate(model: ReferenceModel, data: PreparedData, *, split: str = "test") -> dict[str, float]:
    """AUROC, AUPRC, ECE (trainables.metrics, as the trainer reports them), the score, and the Brier
    score (trainables.calibration).

    Macro values under the metric's name; with several labels also ``<metric>.<label>``.
    """
    if split not in _SPLITS:
        raise ValueError(f"`split` must be one of {', '.join(_SPLITS)}, got {split!r}")
    if tuple(data.label_names) != model.label_names:
        raise ValueError(f"`model` was fit on the labels {list(model.label_names)}, but `data` has "
                         f"{list(data.label_names)}")
    part = getattr(data, split)
    logits = torch.from_numpy(model.logits(part.x))
    out: dict[str, float] = classification_metrics(logits, part.y, label_names=list(data.label_names))
    brier = brier_scores(model.predict_proba(part.x), part.y.detach().cpu().numpy().reshape(len(part.y), -1))
    out["brier"] = sum(brier) / len(brier)
    if len(brier) > 1:
        out.update({f"brier.{name}": float(v) for name, v in zip(data.label_names, brier)})
    return out
