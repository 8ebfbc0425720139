"""Post-hoc calibration fit on validation logits: temperature (Guo et al. 2017) and Platt scaling (Platt 1999).

Temperature divides the logits by one T > 0; Platt maps them to a z + b. Both keep every ranking
when the slope is positive, so AUROC and AUPRC are unchanged and only calibration (ECE, Brier)
moves. Temperature cannot move the predicted base rate: focal loss with alpha shifts it, and the
shift survives temperature scaling (test ECE 0.22-0.35 on a clinical table, METHODS.md), so Platt's
intercept is needed. ``choose_calibration`` fits both per label and keeps the one with the lower
validation NLL; ``calibration_report`` gives ECE and Brier before and after on another split.

Shapes: logits and labels are [N] (one label) or [N, K]. Fitted parameters come back as floats for
[N] input and as arrays of shape [K] for [N, K]. Every fit runs in float64 with L-BFGS (torch's;
scipy is not a dependency of the project). Inputs may be numpy arrays or torch tensors; outputs
are numpy float64 arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from trainables.errors import UserError
from trainables.metrics import ECE_BINS, ece_bins, expected_calibration_error
from trainables.optim import without_compiler

# expected_calibration_error is metrics' own, re-exported: one ECE for training reports and post-hoc calibration.
__all__ = [
    "fit_temperature", "fit_platt", "platt_targets", "PlattFit", "Calibration", "choose_calibration",
    "brier_scores", "brier_score", "reliability_curve", "ReliabilityCurve", "calibration_report",
    "temperature_report", "expected_calibration_error", "CALIBRATION_KINDS", "CALIBRATION_FORMAT",
]

ArrayLike = np.ndarray | Tensor | list | tuple

CALIBRATION_KINDS: tuple[str, ...] = ("temperature", "platt", "none")
CALIBRATION_FORMAT = "losstune-calibration-v1"
# The parameters each kind carries, in the order to_dict writes them.
_PARAMS: dict[str, tuple[str, ...]] = {"temperature": ("temperature",), "platt": ("a", "b"), "none": ()}

# L-BFGS runs in float64, so the stopping tolerances sit far below float32's: near the optimum the
# NLL changes by ~1e-14 per step while the parameters still move by ~1e-7, so only the gradient stops it.
_MAX_ITER = 500
_TOL_GRAD = 1e-10
_TOL_CHANGE = 1e-20
# Where a temperature is clipped; reached only by degenerate logits (see _temperature_1d).
_T_LO, _T_HI = 0.05, 20.0


# --------------------------------------------------------------------------- input checks
def _numpy(values: ArrayLike, name: str) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().double().numpy()
    try:
        out = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be numeric (a numpy array or a torch tensor), "
                         f"got {type(values).__name__}") from None
    return out


def _check_labels(t: np.ndarray) -> None:
    outside = (t != 0) & (t != 1)
    if outside.any():
        raise ValueError(f"`y` must hold only 0 and 1, got {float(t[outside][0])!r}")


def _checked(values: ArrayLike, y: ArrayLike, *, name: str, probabilities: bool = False,
             both_classes: bool = False) -> tuple[np.ndarray, np.ndarray, bool]:
    """(values as [N, K] float64, y as [N, K] float64, whether the input was 1-D): every argument check is here."""
    x, t = _numpy(values, name), _numpy(y, "y")
    if x.ndim not in (1, 2) or x.shape[0] == 0 or (x.ndim == 2 and x.shape[1] == 0):
        raise ValueError(f"`{name}` must have shape [N] or [N, K] with N, K >= 1, got shape {x.shape}")
    if t.shape != x.shape:
        raise ValueError(f"`{name}` and `y` must have the same shape, got {x.shape} and {t.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"`{name}` must be finite, got {int((~np.isfinite(x)).sum())} NaN or infinite values")
    if probabilities and ((x < 0) | (x > 1)).any():
        bad = float(x[(x < 0) | (x > 1)][0])
        raise ValueError(f"`{name}` must be probabilities in [0, 1], got {bad!r}")
    _check_labels(t)
    one_d = x.ndim == 1
    x, t = x.reshape(len(x), -1), t.reshape(len(t), -1)
    if both_classes:
        for k in range(t.shape[1]):
            positives = int(t[:, k].sum())
            if positives in (0, len(t)):
                raise ValueError(f"`y` must hold both classes in every label to fit a calibration; label {k} has "
                                 f"{positives} positives out of {len(t)}")
    return x, t, one_d


def _per_label(values: np.ndarray, one_d: bool) -> float | np.ndarray:
    return float(values[0]) if one_d else values


def _nll(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean BCE of sigmoid(logits) against 0/1 labels, float64, stable for large |logits|."""
    return float(np.mean(np.logaddexp(0.0, logits) - y * logits))


_LBFGS = without_compiler(torch.optim.LBFGS, "_LBFGS")  # a job's driver, without 1.1 s of import at its first fit


def _lbfgs(params: list[Tensor], loss: Callable[[], Tensor]) -> None:
    opt = _LBFGS(params, lr=1.0, max_iter=_MAX_ITER, tolerance_grad=_TOL_GRAD, tolerance_change=_TOL_CHANGE,
                 history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    opt.step(closure)


# --------------------------------------------------------------------------- temperature
def _temperature_1d(z: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    # The NLL is convex in u = 1 / T, so its optimum over u > 0 is at an end exactly when the slope
    # there says so; L-BFGS would otherwise walk log T towards infinity until max_iter.
    if np.mean((0.5 - y) * z) >= 0:  # d NLL / du at u = 0: no positive u beats p = 1/2 (ranking reversed)
        return hi
    if (z[y == 1] >= 0).all() and (z[y == 0] <= 0).all():  # the sign of z separates the classes: u -> infinity
        return lo
    x, t = torch.from_numpy(z), torch.from_numpy(y)
    # log T keeps T > 0 without a constraint the optimiser could step across.
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    _lbfgs([log_t], lambda: F.binary_cross_entropy_with_logits(x * torch.exp(-log_t), t))
    value = float(torch.exp(log_t.detach()))
    # Unimodal in T (convex in 1 / T), so clipping the free optimum gives the optimum on [lo, hi].
    return min(max(value, lo), hi) if math.isfinite(value) else hi


def fit_temperature(logits: ArrayLike, y: ArrayLike, *, lo: float = _T_LO, hi: float = _T_HI) -> float | np.ndarray:
    """The T > 0 minimising the validation NLL of sigmoid(logits / T), one per label.

    ``logits`` and ``y`` are [N] (returns a float) or [N, K] (returns an array of K temperatures).
    T is clipped to [lo, hi]; the bounds are only reached by degenerate logits: ``hi`` where no
    positive scale beats p = 1/2 (the ranking is reversed), ``lo`` where the sign of the logits
    separates the classes.
    """
    if not (0 < lo < hi < math.inf):
        raise ValueError(f"`lo` and `hi` must satisfy 0 < lo < hi < inf, got lo={lo!r}, hi={hi!r}")
    z, t, one_d = _checked(logits, y, name="logits", both_classes=True)
    temps = np.array([_temperature_1d(z[:, k], t[:, k], lo, hi) for k in range(z.shape[1])])
    return _per_label(temps, one_d)


# --------------------------------------------------------------------------- Platt
def platt_targets(y: ArrayLike) -> np.ndarray:
    """Platt's smoothed targets per label: (N+ + 1) / (N+ + 2) for positives, 1 / (N- + 2) for negatives.

    They stop a fit on few positives from pushing probabilities to 0 and 1 (Platt 1999).
    """
    t = _numpy(y, "y")
    if t.ndim not in (1, 2) or t.shape[0] == 0:
        raise ValueError(f"`y` must have shape [N] or [N, K] with N >= 1, got shape {t.shape}")
    _check_labels(t)
    t2 = t.reshape(len(t), -1)
    n_pos = t2.sum(axis=0)
    n_neg = len(t2) - n_pos
    out = np.where(t2 == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    return out.reshape(t.shape)


class PlattFit(NamedTuple):
    """Slope ``a`` and intercept ``b`` of sigmoid(a z + b), floats for [N] input, arrays [K] for [N, K].

    ``fell_back[k]`` is True where Platt's fit had a <= 0, which would reverse the ranking; that
    label holds the temperature fit instead (a = 1 / T, b = 0).
    """

    a: float | np.ndarray
    b: float | np.ndarray
    fell_back: tuple[bool, ...]


def _platt_1d(z: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    x, t = torch.from_numpy(z), torch.from_numpy(target)
    a = torch.ones((), dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    _lbfgs([a, b], lambda: F.binary_cross_entropy_with_logits(a * x + b, t))
    return float(a.detach()), float(b.detach())


def fit_platt(logits: ArrayLike, y: ArrayLike, *, smoothed: bool = True) -> PlattFit:
    """Per label, the (a, b) minimising the validation NLL of sigmoid(a * logits + b), from (1, 0).

    ``smoothed`` fits Platt's smoothed targets (``platt_targets``) instead of the 0/1 labels. Without
    them, a label whose logits separate the classes has no finite optimum: a ``ValueError``. A fit
    with a <= 0 falls back to temperature for that label (see ``PlattFit``).
    """
    if not isinstance(smoothed, bool):
        raise ValueError(f"`smoothed` must be True or False, got {smoothed!r}")
    z, t, one_d = _checked(logits, y, name="logits", both_classes=True)
    target = platt_targets(t) if smoothed else t
    a, b, fell_back = np.empty(z.shape[1]), np.empty(z.shape[1]), []
    for k in range(z.shape[1]):
        pos, neg = z[t[:, k] == 1, k], z[t[:, k] == 0, k]
        if not smoothed and (neg.max() <= pos.min() or pos.max() <= neg.min()):
            raise ValueError(f"label {k}: the logits separate the classes, so Platt's fit on 0/1 labels has no "
                             f"finite optimum (a -> +-infinity); use smoothed=True")
        a[k], b[k] = _platt_1d(z[:, k], target[:, k])
        fell_back.append(not (a[k] > 0 and math.isfinite(a[k]) and math.isfinite(b[k])))
        if fell_back[-1]:
            a[k], b[k] = 1.0 / _temperature_1d(z[:, k], t[:, k], _T_LO, _T_HI), 0.0
    return PlattFit(a=_per_label(a, one_d), b=_per_label(b, one_d), fell_back=tuple(fell_back))


# --------------------------------------------------------------------------- the fitted calibration
def _label_problem(k: int, kind: Any, params: Any, note: Any) -> str | None:
    """What is wrong with label k's entry, or None: the one check behind the constructor and from_dict."""
    if kind not in _PARAMS:
        return f"labels[{k}].kind must be one of {', '.join(CALIBRATION_KINDS)}; got {kind!r}"
    if not isinstance(params, Mapping):
        return f"labels[{k}].params must be a mapping, got {type(params).__name__}"
    want = _PARAMS[kind]
    if set(params) != set(want):
        names = ", ".join(want) or "no parameters"
        return f"labels[{k}].params for kind '{kind}' must hold exactly {names}; got {sorted(map(str, params))}"
    for name in want:
        v = params[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"labels[{k}].params.{name} must be a finite number, got {v!r}"
    # A zero or negative scale would reverse or erase the ranking, which calibration must never do.
    for name in ("temperature", "a"):
        if name in params and params[name] <= 0:
            return (f"labels[{k}].params.{name} must be > 0 (a non-positive value reverses the ranking); "
                    f"got {params[name]!r}")
    if not isinstance(note, str):
        return f"labels[{k}].note must be a string, got {type(note).__name__}"
    return None


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """One calibration map per label: 'temperature' {temperature}, 'platt' {a, b} or 'none' {}.

    ``notes[k]`` says why label k got its kind (the validation NLLs compared, a Platt fall-back);
    ``apply`` and ``apply_logits`` take [N] (one label) or [N, K] logits, numpy or torch, and return
    numpy float64 of the same shape.
    """

    kinds: tuple[str, ...]
    params: tuple[dict[str, float], ...]
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        kinds, params = tuple(self.kinds), tuple(dict(p) if isinstance(p, Mapping) else p for p in self.params)
        notes = tuple(self.notes) or ("",) * len(kinds)
        if not kinds or len(params) != len(kinds) or len(notes) != len(kinds):
            raise ValueError(f"`kinds`, `params` and `notes` must have one entry per label (at least one), got "
                             f"{len(kinds)}, {len(params)} and {len(notes)}")
        for k, (kind, p, note) in enumerate(zip(kinds, params, notes)):
            problem = _label_problem(k, kind, p, note)
            if problem:
                raise ValueError(problem)
        object.__setattr__(self, "kinds", kinds)
        object.__setattr__(self, "params", tuple({n: float(p[n]) for n in _PARAMS[kind]} for kind, p in
                                                 zip(kinds, params)))
        object.__setattr__(self, "notes", notes)

    @property
    def n_labels(self) -> int:
        return len(self.kinds)

    @classmethod
    def identity(cls, n_labels: int = 1) -> Calibration:
        return cls(kinds=("none",) * n_labels, params=({},) * n_labels)

    @classmethod
    def from_temperature(cls, temperature: float | np.ndarray | list[float]) -> Calibration:
        temps = np.atleast_1d(np.asarray(temperature, dtype=np.float64))
        return cls(kinds=("temperature",) * len(temps), params=tuple({"temperature": float(t)} for t in temps))

    @classmethod
    def from_platt(cls, fit: PlattFit) -> Calibration:
        """Platt per label; a label that fell back becomes 'temperature' (T = 1 / a) with a note saying so."""
        a, b = np.atleast_1d(fit.a), np.atleast_1d(fit.b)
        kinds, params, notes = [], [], []
        for ak, bk, back in zip(a, b, fit.fell_back):
            if back:
                kinds.append("temperature")
                params.append({"temperature": 1.0 / float(ak)})
                notes.append("Platt's fit had slope a <= 0, which would reverse the ranking: temperature instead")
            else:
                kinds.append("platt")
                params.append({"a": float(ak), "b": float(bk)})
                notes.append("")
        return cls(kinds=tuple(kinds), params=tuple(params), notes=tuple(notes))

    def slopes_intercepts(self) -> tuple[np.ndarray, np.ndarray]:
        """Every kind as sigmoid(a z + b): temperature is a = 1 / T, b = 0; none is a = 1, b = 0."""
        a = np.array([1.0 / p["temperature"] if kind == "temperature" else p.get("a", 1.0)
                      for kind, p in zip(self.kinds, self.params)])
        b = np.array([p.get("b", 0.0) for p in self.params])
        return a, b

    def apply_logits(self, logits: ArrayLike) -> np.ndarray:
        """Calibrated logits a z + b per label (float64; their sigmoid is ``apply``)."""
        z = _numpy(logits, "logits")
        k = 1 if z.ndim == 1 else (z.shape[1] if z.ndim == 2 else -1)
        if k != self.n_labels:
            raise ValueError(f"`logits` must have shape [N, {self.n_labels}]"
                             f"{' or [N]' if self.n_labels == 1 else ''} for this calibration, got {z.shape}")
        a, b = self.slopes_intercepts()
        out = z.reshape(len(z), -1) * a + b
        return out.reshape(z.shape)

    def apply(self, logits: ArrayLike) -> np.ndarray:
        """Calibrated probabilities sigmoid(a z + b), numpy float64, the shape of ``logits``."""
        x = self.apply_logits(logits)
        # sigmoid written as 0.5 * (1 + tanh(x / 2)) never overflows in exp for large |x|.
        return 0.5 * (1.0 + np.tanh(0.5 * x))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: {"format", "labels": [{"kind", "params", "note"}, ...]}."""
        return {"format": CALIBRATION_FORMAT,
                "labels": [{"kind": kind, "params": dict(p), "note": note}
                           for kind, p, note in zip(self.kinds, self.params, self.notes)]}

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        """The inverse of ``to_dict``; a malformed document is a one-line ``UserError`` naming the field."""
        where = "calibration"
        if not isinstance(data, Mapping):
            raise UserError(f"{where}: must be a mapping with 'format' and 'labels', got {type(data).__name__}")
        unknown = sorted(set(map(str, data)) - {"format", "labels"})
        if unknown:
            raise UserError(f"{where}: unknown key(s) {unknown}; allowed: format, labels")
        if data.get("format") != CALIBRATION_FORMAT:
            raise UserError(f"{where}: format must be '{CALIBRATION_FORMAT}', got {data.get('format')!r}")
        labels = data.get("labels")
        if not isinstance(labels, list) or not labels:
            raise UserError(f"{where}: labels must be a non-empty list, got {labels!r}")
        kinds, params, notes = [], [], []
        for k, entry in enumerate(labels):
            if not isinstance(entry, Mapping):
                raise UserError(f"{where}: labels[{k}] must be a mapping with kind, params and note, "
                                f"got {type(entry).__name__}")
            extra = sorted(set(map(str, entry)) - {"kind", "params", "note"})
            if extra:
                raise UserError(f"{where}: labels[{k}] has unknown key(s) {extra}; allowed: kind, params, note")
            kind, p, note = entry.get("kind"), entry.get("params", {}), entry.get("note", "")
            problem = _label_problem(k, kind, p, note)
            if problem:
                raise UserError(f"{where}: {problem}")
            kinds.append(kind)
            params.append(p)
            notes.append(note)
        return cls(kinds=tuple(kinds), params=tuple(params), notes=tuple(notes))


def choose_calibration(val_logits: ArrayLike, val_y: ArrayLike, *, smoothed: bool = True) -> Calibration:
    """Per label, temperature or Platt, whichever has the lower validation NLL (METHODS.md).

    Both are scored by the NLL against the 0/1 labels, not Platt's smoothed targets, so the two fits
    are judged by the same yardstick; a tie goes to temperature, the map with fewer parameters.
    """
    z, t, _ = _checked(val_logits, val_y, name="val_logits", both_classes=True)
    temps = np.atleast_1d(fit_temperature(z, t))
    platt = Calibration.from_platt(fit_platt(z, t, smoothed=smoothed))
    a, b = platt.slopes_intercepts()
    kinds, params, notes = [], [], []
    for k in range(z.shape[1]):
        nll_t, nll_p = _nll(z[:, k] / temps[k], t[:, k]), _nll(a[k] * z[:, k] + b[k], t[:, k])
        if platt.kinds[k] == "platt" and nll_p < nll_t:
            kinds.append("platt")
            params.append(platt.params[k])
        else:
            kinds.append("temperature")
            params.append({"temperature": float(temps[k])})
        why = platt.notes[k] or f"{kinds[-1]}: the lower validation NLL"
        notes.append(f"{why} (temperature {nll_t:.6g}, platt {nll_p:.6g})")
    return Calibration(kinds=tuple(kinds), params=tuple(params), notes=tuple(notes))


# --------------------------------------------------------------------------- scores and curves
def brier_scores(probs: ArrayLike, y: ArrayLike) -> list[float]:
    """Per label: mean over samples of (p - y)^2."""
    p, t, _ = _checked(probs, y, name="probs", probabilities=True)
    return [float(v) for v in np.mean((p - t) ** 2, axis=0)]


def brier_score(probs: ArrayLike, y: ArrayLike) -> float:
    """Macro over labels of ``brier_scores``."""
    values = brier_scores(probs, y)
    return sum(values) / len(values)


class ReliabilityCurve(NamedTuple):
    """Per equal-width bin of P(y=1): mean predicted probability, observed frequency of y = 1, count.

    Shapes [n_bins] for [N] input, [K, n_bins] for [N, K]; empty bins have NaN means and count 0.
    """

    mean_predicted: np.ndarray
    observed: np.ndarray
    count: np.ndarray


def reliability_curve(probs: ArrayLike, y: ArrayLike, n_bins: int = ECE_BINS) -> ReliabilityCurve:
    """The bins torchmetrics' ECE uses: [i / n, (i + 1) / n), except that p = 1 joins the last bin.

    torchmetrics gives p exactly 1.0 a bin of its own; here it belongs to the last bin, so that the
    curve has n_bins points. sum |observed - mean_predicted| * count / N is the ECE otherwise.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"`n_bins` must be an integer >= 1, got {n_bins!r}")
    p, t, one_d = _checked(probs, y, name="probs", probabilities=True)
    idx = np.minimum(ece_bins(p, n_bins), n_bins - 1)
    shape = (p.shape[1], n_bins)
    count, sum_p, sum_y = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    for k in range(p.shape[1]):
        count[k] = np.bincount(idx[:, k], minlength=n_bins)
        sum_p[k] = np.bincount(idx[:, k], weights=p[:, k], minlength=n_bins)
        sum_y[k] = np.bincount(idx[:, k], weights=t[:, k], minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p, observed = sum_p / count, sum_y / count
    curve = ReliabilityCurve(mean_predicted=mean_p, observed=observed, count=count.astype(np.int64))
    return ReliabilityCurve(*(a[0] for a in curve)) if one_d else curve


# --------------------------------------------------------------------------- reports
def calibration_report(cal: Calibration, test_logits: ArrayLike, test_y: ArrayLike, *,
                       label_names: list[str] | None = None) -> dict[str, Any]:
    """ECE (metrics' own: 15 bins, L1, macro) and Brier (macro) before and after ``cal`` on one split.

    Keys: ece_before, ece_after, brier_before, brier_after and, per label for several labels,
    the same with ``.<label name>`` appended; ``kinds`` lists each label's calibration kind.
    """
    z, t, _ = _checked(test_logits, test_y, name="test_logits")
    if z.shape[1] != cal.n_labels:
        raise ValueError(f"`test_logits` must have {cal.n_labels} label(s) for this calibration, got {z.shape[1]}")
    names = label_names or [str(k) for k in range(z.shape[1])]
    if len(names) != z.shape[1]:
        raise ValueError(f"`label_names` must name {z.shape[1]} label(s), got {len(names)}")
    after = cal.apply_logits(z)
    y_t = torch.from_numpy(t)
    per: dict[str, list[float]] = {}
    for suffix, logits in (("before", z), ("after", after)):
        per[f"ece_{suffix}"] = [expected_calibration_error(torch.from_numpy(logits[:, k]), y_t[:, k])
                                for k in range(z.shape[1])]
        per[f"brier_{suffix}"] = brier_scores(0.5 * (1.0 + np.tanh(0.5 * logits)), t)
    out: dict[str, Any] = {m: sum(v) / len(v) for m, v in per.items()}
    if z.shape[1] > 1:
        for m, values in per.items():
            out.update({f"{m}.{name}": v for name, v in zip(names, values)})
    out["kinds"] = list(cal.kinds)
    return out


def temperature_report(val_logits: Tensor, val_targets: Tensor, test_logits: Tensor,
                       test_targets: Tensor) -> dict[str, Any]:
    """One temperature shared by all labels, fit on validation; ECE before and after on both splits.

    The trainer's holdout keys (``temperature``, ``test/ece_scaled``) predate per-label calibration,
    so the shared T is kept here; ``choose_calibration`` is the per-label fit with an intercept.
    """
    t = float(fit_temperature(val_logits.detach().reshape(-1), val_targets.detach().reshape(-1)))
    return {
        "temperature": t,
        "test/ece": expected_calibration_error(test_logits, test_targets),
        "test/ece_scaled": expected_calibration_error(test_logits / t, test_targets),
        "val/ece": expected_calibration_error(val_logits, val_targets),
        "val/ece_scaled": expected_calibration_error(val_logits / t, val_targets),
    }
