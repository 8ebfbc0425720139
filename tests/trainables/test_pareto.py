"""The front, its knee and its hypervolume on points whose answers are worked out by hand, and against
a plain double loop and Optuna's hypervolume on random fronts; --objectives and --select parsing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from optuna._hypervolume import compute_hypervolume  # Optuna's exact (WFG) hypervolume, for minimisation

from trainables.pareto import (
    Objective,
    hypervolume,
    knee,
    non_dominated,
    parse_objectives,
    parse_select,
    rank,
    select,
)

MAX2 = [Objective("a", "max"), Objective("b", "max")]
AUROC_ECE = [Objective("val/auroc", "max"), Objective("val/ece", "min")]


def _dominated_by_loop(values: np.ndarray, signs: list[float]) -> list[bool]:
    """The reference: a plain double loop, as the issue asks."""
    out = []
    for i, p in enumerate(values):
        if any(math.isnan(x) for x in p):
            out.append(False)
            continue
        beaten = False
        for j, q in enumerate(values):
            if i == j or any(math.isnan(x) for x in q):
                continue
            if all(s * qq >= s * pp for s, pp, qq in zip(signs, p, q)) and any(
                    s * qq > s * pp for s, pp, qq in zip(signs, p, q)):
                beaten = True
        out.append(not beaten)
    return out


def test_a_front_of_known_points():
    values = np.array([[1, 3], [2, 2], [3, 1], [1, 1], [2, 2]], dtype=float)  # the last ties the second
    assert non_dominated(values, MAX2).tolist() == [True, True, True, False, True]
    # boxes [0,1]x[0,3], [0,2]x[0,2], [0,3]x[0,1]: columns of height 3, 2 and 1
    assert hypervolume(values, MAX2, [0, 0]) == pytest.approx(6.0)
    # normalised over the front, (2, 2) is (0.5, 0.5): 0.707 from the ideal (1, 1); the extremes are 1 away
    assert knee(values, MAX2) == 1


def test_a_front_of_auroc_and_ece_worked_by_hand():
    values = np.array([[0.80, 0.05], [0.85, 0.10], [0.90, 0.20], [0.82, 0.15], [math.nan, 0.01]])
    mask = non_dominated(values, AUROC_ECE)
    assert mask.tolist() == [True, True, True, False, False]  # (0.82, 0.15) is beaten by (0.85, 0.10)
    # against (AUROC 0.5, ECE 0.3): widths 0.3, 0.05, 0.05 at heights 0.25, 0.2, 0.1
    assert hypervolume(values, AUROC_ECE, [0.5, 0.3]) == pytest.approx(0.3 * 0.25 + 0.05 * 0.2 + 0.05 * 0.1)
    assert knee(values, AUROC_ECE) == 1


@pytest.mark.parametrize("points,expected", [
    ([[1, 1, 1]], 1.0),
    ([[2, 1, 1], [1, 2, 1]], 3.0),  # 2 + 2 − 1
    ([[2, 1, 1], [1, 2, 1], [1, 1, 2]], 4.0),  # 2 + 2 + 2 − 1 − 1 − 1 + 1
])
def test_three_objectives_by_inclusion_exclusion(points, expected):
    objectives = [Objective(x, "max") for x in "abc"]
    assert hypervolume(np.array(points, dtype=float), objectives, [0, 0, 0]) == pytest.approx(expected)


@pytest.mark.parametrize("m,seed", [(2, 0), (2, 1), (3, 2), (3, 3)])
def test_random_fronts_against_a_double_loop_and_optuna(m, seed):
    rng = np.random.default_rng(seed)
    objectives = [Objective(f"o{k}", "max" if k % 2 == 0 else "min") for k in range(m)]
    signs = [o.sign for o in objectives]
    values = rng.random((40, m))
    values[3, 1] = math.nan
    assert non_dominated(values, objectives).tolist() == _dominated_by_loop(values, signs)
    reference = [-0.1 if s > 0 else 1.1 for s in signs]
    finite = values[~np.isnan(values).any(axis=1)]
    losses = -finite * np.array(signs)  # Optuna minimises
    want = compute_hypervolume(losses, -np.array(reference) * np.array(signs))
    assert hypervolume(values, objectives, reference) == pytest.approx(want, rel=1e-12)


def test_parse_objectives_and_its_mistakes():
    assert parse_objectives("val/auroc:max, val/ece:min") == AUROC_ECE
    for text, message in (("val/auroc:max", "2 or 3"), ("val/auroc:up,val/ece:min", "METRIC:max or METRIC:min"),
                          ("val/auroc:max,val/auroc:min", "named twice"),
                          ("a:max,b:max,c:max,d:max", "2 or 3")):
        with pytest.raises(ValueError, match=message):
            parse_objectives(text)
    with pytest.raises(ValueError, match="is not one of val/auroc, val/ece"):
        parse_objectives("val/auroc:max,val/brier:min", allowed=["val/auroc", "val/ece"])


def test_select_by_constraints_then_one_objective_or_the_knee():
    rows = [{"val/auroc": 0.80, "val/ece": 0.05}, {"val/auroc": 0.85, "val/ece": 0.10},
            {"val/auroc": 0.90, "val/ece": 0.20}, {"val/auroc": 0.82, "val/ece": 0.15}]
    assert select(rows, AUROC_ECE, parse_select("val/auroc>=0.85, min val/ece")) == 1
    assert select(rows, AUROC_ECE, parse_select("max val/auroc")) == 2
    assert select(rows, AUROC_ECE, parse_select("")) == 1  # the knee of the whole front
    assert select(rows, AUROC_ECE, parse_select("val/ece<0.12")) == 0  # the knee of (0.80, 0.05), (0.85, 0.10)
    assert select(rows, AUROC_ECE, parse_select("val/auroc>=0.95")) is None  # nobody meets it
    assert select(rows, AUROC_ECE, parse_select("val/ece<=0.15, max val/ece")) == 1  # only front members


def test_rank_orders_the_members_that_meet_the_rule_as_it_prefers_them():
    rows = [{"val/auroc": 0.80, "val/ece": 0.05}, {"val/auroc": 0.85, "val/ece": 0.10},
            {"val/auroc": 0.90, "val/ece": 0.20}, {"val/auroc": 0.82, "val/ece": 0.15},
            {"val/auroc": 0.88, "val/ece": 0.14}]
    # front: 0, 1, 4, 2. Normalised over it (AUROC 0.80..0.90, ECE 0.20..0.05), distances to (1, 1) by hand:
    # 0: (0, 1) → 1; 1: (0.5, 0.667) → 0.601; 4: (0.8, 0.4) → 0.632; 2: (1, 0) → 1 (ties keep row order)
    assert rank(rows, AUROC_ECE, parse_select("")) == [1, 4, 0, 2]
    assert rank(rows, AUROC_ECE, parse_select("min val/ece")) == [0, 1, 4, 2]
    assert rank(rows, AUROC_ECE, parse_select("val/auroc>0.84, max val/auroc")) == [2, 4, 1]
    assert rank(rows, AUROC_ECE, parse_select("val/auroc>=0.95")) == []


@pytest.mark.parametrize("text,message", [("val/auroc=>0.8", "neither a constraint"),
                                          ("min val/ece, max val/auroc", "one 'min METRIC'")])
def test_select_mistakes_are_one_line(text, message):
    with pytest.raises(ValueError, match=message):
        parse_select(text)
