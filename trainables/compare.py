"""Is model A better than model B on the held-out test set? Paired, stratified bootstrap intervals.

    draws = bootstrap_draws(test_y)                      # once per test set; every pair of models reuses them
    lift = paired_difference(test_y, probs_a, probs_b, metric="auroc", draws=draws)
    print(lift_sentence(lift))

Each draw resamples the test rows with replacement within strata (binary: positives and negatives
apart; multi-label: rows with the same label pattern), so every draw keeps each label's positive
count and AUROC/AUPRC stay defined. Both models are scored on the same draw and the 2.5th and
97.5th percentiles of the per-draw differences A - B are the 95% interval (METHODS.md, "Comparing
two models on one test set").

The metrics equal trainables.metrics' ones (sklearn's definitions), computed here in float64 numpy for all
draws at once instead of one call per draw (1,000 draws x 4 metrics on 5,000 rows take about a
second rather than minutes): a draw is a multiset of rows, so the rows' order by score, fixed once,
gives every draw's ranking without sorting it again.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainables.metrics import ECE_BINS, ece_bins

__all__ = ["Lift", "METRICS", "LOWER_IS_BETTER", "bootstrap_draws", "paired_difference", "paired_differences",
           "ScoreCache", "lift_sentence", "interval_words", "printed", "signed", "PRINTED_DECIMALS", "seed_summary"]

METRICS = ("auroc", "auprc", "ece", "brier")
LOWER_IS_BETTER = frozenset({"ece", "brier"})
MACRO = "macro"
_DISPLAY = {"auroc": "AUROC", "auprc": "AUPRC", "ece": "ECE", "brier": "Brier score"}
_MINUS = "\u2212"
# Bounds the [chunk, n] count matrices to ~32 MB whatever the test set's size.
_CELLS_PER_CHUNK = 1 << 22


@dataclass(frozen=True)
class Lift:
    """metric(A) - metric(B): on the whole test set, and the 95% paired-bootstrap interval."""

    estimate: float
    low: float  # 2.5th percentile of the per-draw differences
    high: float  # 97.5th percentile
    metric: str
    label: str  # a label's name, or 'macro' (mean over labels within each draw; for one label, that label)
    n_resamples: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "metric": self.metric,
                "label": self.label, "n_resamples": self.n_resamples}


# --------------------------------------------------------------------------- draws
def bootstrap_draws(y: Any, *, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """[n_resamples, n] test-row indices, resampled with replacement within strata; seeded.

    A stratum is a row's label pattern: for binary labels the class, for multi-label the tuple of
    its labels, so every draw keeps each stratum's size and therefore each label's positive count.
    Column j of every draw holds a row from row j's stratum.
    """
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"`n_resamples` must be an integer >= 1, got {n_resamples!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"`seed` must be an integer, got {seed!r}")
    labels = _labels(y, "y")
    _, stratum = np.unique(labels, axis=0, return_inverse=True)
    stratum = stratum.reshape(-1)
    rng = np.random.default_rng(seed)
    draws = np.empty((int(n_resamples), len(labels)), dtype=np.int64)
    for s in range(int(stratum.max()) + 1):
        rows = np.flatnonzero(stratum == s)
        draws[:, rows] = rows[rng.integers(0, len(rows), size=(int(n_resamples), len(rows)))]
    return draws


# --------------------------------------------------------------------------- differences
def paired_difference(y: Any, probs_a: Any, probs_b: Any, *, metric: str, draws: np.ndarray,
                      label: int | str | None = None, label_names: Sequence[str] | None = None) -> Lift:
    """metric(A) - metric(B) with its 95% interval over ``draws`` (from ``bootstrap_draws(y)``).

    ``y``, ``probs_a``, ``probs_b``: [n] or [n, K] (numpy or torch); probabilities of y = 1 in [0, 1].
    ``metric``: one of METRICS (for 'ece' and 'brier' lower is better; see LOWER_IS_BETTER).
    ``label``: a label's index or name, or None for the macro (mean over labels within each draw).
    """
    labels, a, b, names, kept = _check_inputs(y, probs_a, probs_b, draws=draws, label_names=label_names)
    if metric not in METRICS:
        raise ValueError(f"`metric` must be one of {', '.join(METRICS)}, got {metric!r}")
    if label is None:
        columns = list(range(labels.shape[1]))
    else:
        columns = [_label_index(label, names)]
    point, per_draw = _differences(labels[:, columns], a[:, columns], b[:, columns], metric, draws, kept)
    name = MACRO if label is None else names[columns[0]]
    return _lift(point.mean(), per_draw.mean(axis=1), metric, name)


class ScoreCache:
    """One model's metric on the full test set and on every draw, kept for the next comparison with
    the same labels and ``draws``: a job compares its winner with three or four other models on one set
    of draws, and scored the winner again for each. Keyed by the scores' bytes, the metric and the
    label; hand one cache to the comparisons of one (labels, draws) pair only."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, str, int], tuple[float, np.ndarray]] = {}

    def add(self, y: Any, probs: Any, *, draws: np.ndarray, metrics: Sequence[str] = METRICS) -> None:
        """Scores one model (``probs``) on the full test set and on every draw, for each of ``metrics``
        and each label, ahead of its comparisons (a job's reference models, while trials still train)."""
        labels, p, _, _, kept = _check_inputs(y, probs, probs, draws=draws, label_names=None)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown or not metrics:
            raise ValueError(f"`metrics` must be a non-empty selection of {', '.join(METRICS)}, got {list(metrics)!r}")
        for metric in metrics:
            for j in range(labels.shape[1]):
                self.get(p[:, j], metric, j, lambda m=metric, c=j: _model_values(labels, p[:, c], c, m, draws, kept))

    def get(self, p: np.ndarray, metric: str, j: int,
            compute: Callable[[], tuple[float, np.ndarray]]) -> tuple[float, np.ndarray]:
        key = (hashlib.sha256(np.ascontiguousarray(p).tobytes()).hexdigest(), metric, j)
        if key not in self._values:
            self._values[key] = compute()
        return self._values[key]


def paired_differences(y: Any, probs_a: Any, probs_b: Any, *, draws: np.ndarray,
                       metrics: Sequence[str] = METRICS, label_names: Sequence[str] | None = None,
                       cache: ScoreCache | None = None) -> list[Lift]:
    """Every metric's macro Lift and, with several labels, each label's; each label is scored once.
    ``cache``: a model's scores kept between comparisons on the same labels and ``draws``."""
    labels, a, b, names, kept = _check_inputs(y, probs_a, probs_b, draws=draws, label_names=label_names)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"`metrics` must be a non-empty selection of {', '.join(METRICS)}, got {list(metrics)!r}")
    out: list[Lift] = []
    for metric in metrics:
        point, per_draw = _differences(labels, a, b, metric, draws, kept, cache=cache)
        out.append(_lift(point.mean(), per_draw.mean(axis=1), metric, MACRO))
        if labels.shape[1] > 1:
            out += [_lift(point[k], per_draw[:, k], metric, names[k]) for k in range(labels.shape[1])]
    return out


def _lift(point: float, diffs: np.ndarray, metric: str, label: str) -> Lift:
    low, high = np.percentile(diffs, [2.5, 97.5])
    return Lift(estimate=float(point), low=float(low), high=float(high), metric=metric, label=label,
                n_resamples=len(diffs))


def _differences(labels: np.ndarray, a: np.ndarray, b: np.ndarray, metric: str, draws: np.ndarray,
                 kept: bool = False, *, cache: ScoreCache | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per label: the full-set difference [K] and the per-draw differences [B, K]. ``kept``: column j
    of every draw holds a row with row j's labels (``bootstrap_draws``), so a label's positives in
    any draw are the same columns."""
    k = labels.shape[1]

    def side(p: np.ndarray, j: int) -> tuple[float, np.ndarray]:
        def values() -> tuple[float, np.ndarray]:
            return _model_values(labels, p[:, j], j, metric, draws, kept)

        return values() if cache is None else cache.get(p[:, j], metric, j, values)

    point, per_draw = np.empty(k), np.empty((len(draws), k))
    for j in range(k):
        (pa, da), (pb, db) = side(a, j), side(b, j)
        point[j], per_draw[:, j] = pa - pb, da - db
    return point, per_draw


def _model_values(labels: np.ndarray, p: np.ndarray, j: int, metric: str, draws: np.ndarray,
                  kept: bool) -> tuple[float, np.ndarray]:
    """One model's metric on label j (its scores ``p`` [n]): the full set, and each draw [B]."""
    n = labels.shape[0]
    step = max(1, _CELLS_PER_CHUNK // n)
    score = _Scorer(metric, labels[:, j], p, positives=np.flatnonzero(labels[:, j] == 1) if kept else None)
    return float(score(np.arange(n)[None, :])[0]), np.concatenate(
        [score(draws[i:i + step]) for i in range(0, len(draws), step)])


class _Scorer:
    """One label's metric for one model, evaluated on many draws at once.

    What depends on the scores alone (their order, tie groups, ECE bins) is computed once here; a
    draw then costs a gather and a bincount over its rows.
    """

    def __init__(self, metric: str, y: np.ndarray, p: np.ndarray, *, positives: np.ndarray | None = None) -> None:
        self.metric, self.y, self.positives = metric, y, positives
        if metric == "brier":
            self.row_value = (p - y) ** 2
        elif metric == "ece":
            # Per bin, share * |mean(y) - mean(p)| = |sum(y - p)| / n, so one sum per bin suffices.
            self.n_groups = ECE_BINS + 1
            self.group = ece_bins(p)
            self.row_value = y - p
        else:
            # Tied scores form one group, as they form one threshold in sklearn's curves.
            order = np.argsort(p, kind="stable")
            ps = p[order]
            group_sorted = np.cumsum(np.r_[False, ps[1:] != ps[:-1]])
            group_sorted = _merged_runs(group_sorted, y[order], positives_too=metric == "auroc")
            self.group = np.empty(len(p), dtype=np.int64)
            self.group[order] = group_sorted
            self.n_groups = int(group_sorted[-1]) + 1

    def _per_group(self, rows: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
        """[b, groups]: sum of ``weights`` (or the count) of each draw's rows in each group."""
        index = self.group[rows]
        index += (np.arange(len(rows), dtype=np.int64) * self.n_groups)[:, None]
        flat = np.bincount(index.ravel(), weights=None if weights is None else weights.ravel(),
                           minlength=len(rows) * self.n_groups)
        return flat.reshape(len(rows), self.n_groups).astype(np.float64, copy=False)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """The metric on each draw [b, n] of row indices → [b]."""
        n = rows.shape[1]
        if self.metric == "brier":
            return self.row_value[rows].sum(axis=1) / n
        if self.metric == "ece":
            return np.abs(self._per_group(rows, self.row_value[rows])).sum(axis=1) / n
        # [b, groups], ascending scores: the positive columns counted (the same in every stratified
        # draw), or each row's label summed, a float weight per cell and five times slower
        pos = (self._per_group(rows[:, self.positives], None) if self.positives is not None
               else self._per_group(rows, self.y[rows]))
        neg = self._per_group(rows, None) - pos
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
        if self.metric == "auroc":
            # Mann-Whitney: a positive beats the negatives of lower groups and ties half of its own group's.
            below = np.cumsum(neg, axis=1) - neg
            return (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
        # Average precision: over thresholds from the top, recall gained there x precision there.
        pos, neg = pos[:, ::-1], neg[:, ::-1]
        tp = np.cumsum(pos, axis=1)
        predicted = tp + np.cumsum(neg, axis=1)
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        return (pos * precision).sum(axis=1) / n_pos


def _merged_runs(group_sorted: np.ndarray, y_sorted: np.ndarray, *, positives_too: bool) -> np.ndarray:
    """Ascending tie groups → fewer groups with the same metric on every draw: adjacent groups of
    negatives only merged into one (no positive sits between them, so every later count is the same
    and each adds nothing to either metric), and for AUROC adjacent groups of positives only as well
    (each beats the same negatives and ties none); a group holding both stays alone. AUROC's counts
    stay exact (integers and halves); average precision loses terms that were zero, which can move
    the last bit of its sum. A draw then costs about twice the positives' groups, not all of them."""
    n_scores = int(group_sorted[-1]) + 1
    has_pos = np.bincount(group_sorted, weights=y_sorted, minlength=n_scores) > 0
    has_neg = np.bincount(group_sorted, weights=1 - y_sorted, minlength=n_scores) > 0
    kind = np.where(has_pos & has_neg, 2, has_pos.astype(np.int64))  # 0 negatives, 1 positives, 2 both
    alone = kind[1:] == 2 if positives_too else kind[1:] != 0
    starts = np.r_[False, (kind[1:] != kind[:-1]) | alone]
    return np.cumsum(starts)[group_sorted]


# --------------------------------------------------------------------------- validation
def _as_numpy(v: Any, name: str) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor, without importing torch for numpy callers
        v = v.detach().cpu().numpy()
    try:
        return np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a numeric array, got {type(v).__name__}") from None


def _labels(y: Any, name: str) -> np.ndarray:
    """[n] or [n, K] of 0/1 → [n, K] float64, each label with both classes."""
    labels = _as_numpy(y, name)
    if labels.ndim not in (1, 2) or labels.shape[0] == 0 or labels.size == 0:
        raise ValueError(f"`{name}` must be a non-empty [n] or [n, K] array of 0/1 labels, "
                         f"got shape {labels.shape}")
    labels = labels.reshape(len(labels), -1)
    if not np.isin(labels, (0.0, 1.0)).all():
        bad = np.unique(labels[~np.isin(labels, (0.0, 1.0))])[:5].tolist()
        raise ValueError(f"`{name}` must hold only 0 and 1, got values such as {bad}")
    for j in range(labels.shape[1]):
        if labels[:, j].min() == labels[:, j].max():
            raise ValueError(f"`{name}` label {j} has one class only ({int(labels[0, j])} in all {len(labels)} rows): "
                             "AUROC/AUPRC are undefined and a bootstrap cannot compare models on it")
    return labels


def _check_inputs(y: Any, probs_a: Any, probs_b: Any, *, draws: Any,
                  label_names: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    labels = _labels(y, "y")
    probs = []
    for name, v in (("probs_a", probs_a), ("probs_b", probs_b)):
        p = _as_numpy(v, name)
        if p.ndim not in (1, 2) or p.reshape(len(p), -1).shape != labels.shape:
            raise ValueError(f"`{name}` must have the shape of `y` ({labels.shape[0]} rows, {labels.shape[1]} "
                             f"label(s)), got shape {p.shape}")
        p = p.reshape(labels.shape)
        if not (np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1):
            raise ValueError(f"`{name}` must hold probabilities in [0, 1] (apply a sigmoid to logits), got values "
                             f"from {np.nanmin(p):.4g} to {np.nanmax(p):.4g}"
                             f"{' and non-finite ones' if not np.isfinite(p).all() else ''}")
        probs.append(p)
    d = np.asarray(draws)
    if d.ndim != 2 or d.shape[0] < 1 or d.shape[1] != labels.shape[0] or not np.issubdtype(d.dtype, np.integer):
        raise ValueError(f"`draws` must be a [n_resamples, {labels.shape[0]}] integer array from "
                         f"bootstrap_draws(y), got {d.dtype} with shape {d.shape}")
    if d.min() < 0 or d.max() >= labels.shape[0]:
        raise ValueError(f"`draws` must index rows 0..{labels.shape[0] - 1} of `y`, got indices from {d.min()} "
                         f"to {d.max()}")
    # Draws made for another test set of the same length pass the checks above; their positive counts do not.
    kept = _columns_kept(labels, d)
    if not kept and not (labels[d].sum(axis=1) == labels.sum(axis=0)).all():
        raise ValueError("`draws` do not keep the positive count of every label of `y`: make them with "
                         "bootstrap_draws(y) for this very test set")
    if label_names is None:
        names = [str(j) for j in range(labels.shape[1])]
    else:
        names = [str(v) for v in label_names]
        if len(names) != labels.shape[1]:
            raise ValueError(f"`label_names` must name the {labels.shape[1]} label(s) of `y`, got {len(names)}: "
                             f"{names[:6]}")
    return labels, probs[0], probs[1], names, kept


def _columns_kept(labels: np.ndarray, draws: np.ndarray) -> bool:
    """Whether column j of every draw holds a row with row j's labels, as ``bootstrap_draws`` makes
    them (then every draw keeps each label's positive count, too)."""
    if labels.shape[1] <= 62:  # each row's label pattern as one integer
        code = labels.astype(np.int64) @ (np.int64(1) << np.arange(labels.shape[1], dtype=np.int64))
        return bool((code[draws] == code[None, :]).all())
    return all((labels[draws, j] == labels[None, :, j]).all() for j in range(labels.shape[1]))


def _label_index(label: int | str, names: list[str]) -> int:
    if isinstance(label, str) and label in names:
        return names.index(label)
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= label < len(names):
        return int(label)
    raise ValueError(f"`label` must be None (macro), an index 0..{len(names) - 1} or one of "
                     f"{', '.join(names[:10])}, got {label!r}")


# --------------------------------------------------------------------------- reporting
PRINTED_DECIMALS = 3  # differences and their intervals are printed, and judged, at this precision


def printed(v: float) -> float:
    """``v`` as the reports print it (three decimals): the value the words are judged on."""
    return float(f"{v:.{PRINTED_DECIMALS}f}") + 0.0  # + 0.0: no negative zero


def signed(v: float) -> str:
    """+0.004 / \u22120.021 (a typographic minus); a value that prints as zero is 0.000, unsigned."""
    p = printed(v)
    return ("+" if p > 0 else _MINUS if p < 0 else "") + f"{abs(p):.{PRINTED_DECIMALS}f}"


def interval_words(lift: Lift, *, model_b: str = "the plain baseline") -> str:
    """What a difference A − B and its interval say, in words (METHODS.md, "Words"): an effect is
    claimed only when the whole interval is on one side of zero *at the printed precision*, so an
    interval printed as +0.000 to +0.025 does not say "it helps", and the estimate agrees with it.
    For ECE and Brier score lower is better."""
    sign = -1.0 if lift.metric in LOWER_IS_BETTER else 1.0
    est, low, high = (sign * printed(v) for v in (lift.estimate, lift.low, lift.high))
    if sign < 0:
        low, high = high, low  # on the good-is-positive scale the bounds swap
    if est > 0 and low > 0:
        return {"ece": "better calibrated", "brier": "more accurate probabilities"}.get(lift.metric,
                                                                                       "it helps on this data")
    if est < 0 and high < 0:
        return {"ece": "worse calibrated", "brier": "less accurate probabilities"}.get(lift.metric,
                                                                                      "it hurts on this data")
    if est > 0:
        return "no evidence that it helps on this data"
    if est == 0:
        return "no evidence either way on this data"
    return f"no evidence either way on this data, and the estimate favours {model_b}"


def lift_sentence(lift: Lift, *, model_a: str = "the loss stack", model_b: str = "the plain baseline") -> str:
    """One plain sentence: which way A moved the metric against B, by how much, and what the interval
    says (``interval_words``)."""
    if lift.metric not in METRICS:
        raise ValueError(f"`lift.metric` must be one of {', '.join(METRICS)}, got {lift.metric!r}")
    for name, v in (("model_a", model_a), ("model_b", model_b)):
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"`{name}` must be a non-empty string, got {v!r}")
    what = f"test {_DISPLAY[lift.metric]}" + ("" if lift.label == MACRO else f" of label '{lift.label}'")
    interval = f"(difference {signed(lift.estimate)}, 95% CI {signed(lift.low)} to {signed(lift.high)})"
    est = printed(lift.estimate)
    if est > 0:
        moved = f"raised {what} by {est:.3f} relative to {model_b}"
    elif est < 0:
        moved = f"lowered {what} by {-est:.3f} relative to {model_b}"
    else:
        moved = f"left {what} where {model_b} has it, to three decimals"
    return f"{model_a} {moved} {interval}: {interval_words(lift, model_b=model_b)}"


# --------------------------------------------------------------------------- seeds
def seed_summary(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sd with ddof=1) of one config's metric across training seeds; pick winners by the mean.

    A NaN (a seed that produced no model, or a metric it could not have) is left out. With one value
    left the sd is NaN (one seed has no spread), with none both are NaN: the caller shows what is there.

    Args:
        values: the metric, one value per seed.

    Returns:
        (mean, sample standard deviation).

    Example:
        >>> seed_summary([0.70, 0.74, float("nan")])  # doctest: +ELLIPSIS
        (0.72, 0.0282...)
    """
    v = _as_numpy(values, "values").reshape(-1)
    if np.isinf(v).any():
        raise ValueError(f"`values` must be finite (NaN for a seed without a value), got {v.tolist()}")
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return math.nan, math.nan
    mean = float(v.mean())
    if len(v) == 1:
        return mean, math.nan
    return mean, math.sqrt(float(((v - mean) ** 2).sum()) / (len(v) - 1))
