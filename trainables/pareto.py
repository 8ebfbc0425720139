"""Several objectives at once: which trials are non-dominated, the knee of the front, its hypervolume, and
choosing one model from it by rules a person can read.

Objectives are written ``metric:direction`` (``val/auroc:max,val/ece:min``). Internally every objective
is turned into one to maximise (a minimised one changes sign), so that "a dominates b" is: a is at least
as good as b on every objective and better on one. A trial with a missing (NaN) objective is never on
the front and never chosen.

- **Front**: the non-dominated trials (a plain pairwise comparison: fronts here have tens of points).
- **Knee**: each objective min-max normalised over the front (0 the front's worst, 1 its best); the knee
  is the member nearest (Euclidean) to the ideal point where every objective is at its best, ties to
  the earlier trial. With one member, that member; an objective on which the front does not vary counts
  as 1 for every member.
- **Hypervolume**: the measure of the region dominated by the front and bounded by a reference point
  that is worse than every point on every objective (exact, by slicing along one objective).
- **One epoch per trial**: a trial's point is its values at the epoch best for the *first* objective
  (the checkpoint it keeps: ``best/val/*`` in its reports). Each metric's own best would mix epochs,
  and describe a model that never existed; so the first objective must be one the trainer selects
  its best epoch on (a maximised ``--metric`` choice). (METHODS.md, shared and read-only here, has no
  section for several objectives; this paragraph and the README's "Several objectives" state the rule.)
- **Selection** (``--select``): ``"val/auroc>=0.85, val/auprc>=0.3, min val/ece"``: constraints (``>=``,
  ``<=``, ``>``, ``<``) that a front member must meet, then at most one ``min METRIC`` / ``max METRIC``
  among those that meet them; without one, the knee of those that meet them. No member meets the
  constraints: nothing is chosen (the caller says so).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Objective", "parse_objectives", "non_dominated", "knee", "hypervolume", "Selection", "parse_select",
           "rank", "select"]

DIRECTIONS = ("max", "min")


@dataclass(frozen=True)
class Objective:
    """One objective: a reported metric and whether it is maximised or minimised."""

    metric: str
    direction: str  # "max" or "min"

    @property
    def sign(self) -> float:
        return 1.0 if self.direction == "max" else -1.0

    def __str__(self) -> str:
        return f"{self.metric}:{self.direction}"


def parse_objectives(text: str, *, allowed: Sequence[str] | None = None) -> list[Objective]:
    """``"val/auroc:max,val/ece:min"`` → objectives; 2 or 3 of them, each named once.

    Raises:
        ValueError: a message naming the part that is wrong and what is allowed.
    """
    parts = [p.strip() for p in text.split(",") if p.strip()]
    out: list[Objective] = []
    for part in parts:
        metric, _, direction = part.rpartition(":")
        if not metric or direction not in DIRECTIONS:
            raise ValueError(f"objective '{part}' must be METRIC:max or METRIC:min (e.g. val/auroc:max)")
        if allowed is not None and metric not in allowed:
            raise ValueError(f"objective '{part}': {metric} is not one of {', '.join(allowed)}")
        if any(o.metric == metric for o in out):
            raise ValueError(f"objective {metric} is named twice")
        out.append(Objective(metric, direction))
    if not 2 <= len(out) <= 3:
        raise ValueError(f"--objectives takes 2 or 3 objectives, got {len(out)} ('{text}')")
    return out


def _oriented(values: np.ndarray, objectives: Sequence[Objective]) -> np.ndarray:
    """[n, m] values → the same with every objective to be maximised."""
    v = np.asarray(values, dtype=np.float64).reshape(-1, len(objectives))
    return v * np.array([o.sign for o in objectives])


def non_dominated(values: np.ndarray, objectives: Sequence[Objective]) -> np.ndarray:
    """A boolean mask over the rows of ``values`` [n, m]: True where no other row dominates it."""
    v = _oriented(values, objectives)
    valid = ~np.isnan(v).any(axis=1)
    mask = valid.copy()
    for i in np.flatnonzero(valid):
        others = v[valid]
        dominated = ((others >= v[i]).all(axis=1) & (others > v[i]).any(axis=1)).any()
        mask[i] = not dominated
    return mask


def knee(values: np.ndarray, objectives: Sequence[Objective]) -> int | None:
    """The index (into ``values``) of the front's knee (the module says how); None without a front."""
    v = _oriented(values, objectives)
    front = np.flatnonzero(non_dominated(values, objectives))
    if len(front) == 0:
        return None
    return int(front[int(np.argmin(_ideal_distance(v[front])))])


def _ideal_distance(f: np.ndarray) -> np.ndarray:
    """Each row's distance to the ideal point of ``f`` (oriented to maximise), every objective min-max
    normalised over the rows; an objective on which the rows do not vary counts as 1 for each."""
    lo, hi = f.min(axis=0), f.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    normalised = np.where(hi > lo, (f - lo) / span, 1.0)
    return np.sqrt(((1.0 - normalised) ** 2).sum(axis=1))


def hypervolume(values: np.ndarray, objectives: Sequence[Objective], reference: Sequence[float]) -> float:
    """The hypervolume of the front of ``values`` against ``reference`` (in the objectives' own units and
    directions: for ``val/ece:min`` the reference is a large ECE). Points not strictly better than the
    reference on every objective add nothing."""
    v = _oriented(values, objectives)
    ref = np.asarray(reference, dtype=np.float64) * np.array([o.sign for o in objectives])
    v = v[~np.isnan(v).any(axis=1)]
    v = v[(v > ref).all(axis=1)]
    return _volume(v - ref) if len(v) else 0.0


def _volume(points: np.ndarray) -> float:
    """The measure of the union of the boxes [0, p] (every p > 0), by slicing along the last axis."""
    if points.shape[1] == 1:
        return float(points[:, 0].max())
    order = np.argsort(-points[:, -1], kind="stable")
    pts = points[order]
    total, levels = 0.0, list(pts[:, -1]) + [0.0]
    for k in range(len(pts)):  # between the k-th and the next height, the boxes of the k+1 tallest count
        height = levels[k] - levels[k + 1]
        if height > 0:
            total += height * _volume(pts[:k + 1, :-1])
    return total


@dataclass(frozen=True)
class Selection:
    """A parsed ``--select``: constraints, then one objective to optimise (None: the knee)."""

    constraints: tuple[tuple[str, str, float], ...]  # (metric, operator, value)
    optimise: tuple[str, str] | None  # (direction, metric)

    def meets(self, row: dict[str, float]) -> bool:
        for metric, op, value in self.constraints:
            got = row.get(metric, math.nan)
            if not (isinstance(got, (int, float)) and not math.isnan(got) and _OPS[op](got, value)):
                return False
        return True


_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le, ">": operator.gt,
                                                   "<": operator.lt}
_CONSTRAINT = re.compile(r"^(?P<metric>[\w/.]+)\s*(?P<op>>=|<=|>|<)\s*(?P<value>[-+]?[\d.]+(?:[eE][-+]?\d+)?)$")
_OPTIMISE = re.compile(r"^(?P<direction>min|max)\s+(?P<metric>[\w/.]+)$")


def parse_select(text: str) -> Selection:
    """``"val/auroc>=0.85, min val/ece"`` → a Selection; '' is the knee of the whole front.

    Raises:
        ValueError: the part that is not a constraint or an objective, and the forms allowed.
    """
    constraints: list[tuple[str, str, float]] = []
    optimise: tuple[str, str] | None = None
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        c, o = _CONSTRAINT.match(part), _OPTIMISE.match(part)
        if c:
            constraints.append((c["metric"], c["op"], float(c["value"])))
        elif o and optimise is None:
            optimise = (o["direction"], o["metric"])
        elif o:
            raise ValueError(f"--select takes one 'min METRIC' or 'max METRIC', got a second: '{part}'")
        else:
            raise ValueError(f"--select part '{part}' is neither a constraint (val/auroc>=0.85) nor an objective "
                             "(min val/ece)")
    return Selection(tuple(constraints), optimise)


def rank(rows: Sequence[dict[str, float]], objectives: Sequence[Objective], selection: Selection) -> list[int]:
    """The front members of ``rows`` (each a trial's metrics) that meet the constraints, in the order the
    rule prefers them: by the one objective it names, else by distance to the ideal point (the knee
    first; the front of those that meet the constraints, normalised as ``knee`` does). Ties go to the
    earlier row; empty when no member meets the constraints."""
    values = np.array([[r.get(o.metric, math.nan) for o in objectives] for r in rows], dtype=np.float64)
    front = [int(i) for i in np.flatnonzero(non_dominated(values, objectives)) if selection.meets(rows[i])]
    if not front:
        return []
    if selection.optimise is None:
        distance = _ideal_distance(_oriented(values[front], objectives))
        return [front[k] for k in np.argsort(distance, kind="stable")]
    direction, metric = selection.optimise
    sign = 1.0 if direction == "max" else -1.0
    scored = [(-sign * rows[i][metric], i) for i in front
              if isinstance(rows[i].get(metric), (int, float)) and not math.isnan(rows[i][metric])]
    return [i for _, i in sorted(scored)]  # the best first; of equals, the earliest


def select(rows: Sequence[dict[str, float]], objectives: Sequence[Objective], selection: Selection) -> int | None:
    """The index of the chosen front member of ``rows`` (each a trial's metrics), or None when no member
    meets the constraints. Only front members are chosen; ties go to the earlier row."""
    ranked = rank(rows, objectives, selection)
    return ranked[0] if ranked else None
