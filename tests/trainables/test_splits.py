"""trainables/splits.py: seeded stratified splits of rows, and of groups (patients) that never share a split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainables.errors import UserError
from trainables.splits import stratified_group_split, stratified_split


def _raises(match: str):
    """A UserError whose one line contains ``match`` (a regex)."""
    return pytest.raises(UserError, match=match)


# --------------------------------------------------------------------------- stratified splits
def test_stratified_split_is_seeded_disjoint_and_keeps_prevalence():
    rng = np.random.default_rng(0)
    y = (rng.random((5000, 1)) < 0.02).astype(np.float32)
    a = stratified_split(y, val_frac=0.2, test_frac=0.2, seed=1)
    b = stratified_split(y, val_frac=0.2, test_frac=0.2, seed=1)
    c = stratified_split(y, val_frac=0.2, test_frac=0.2, seed=2)
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert not np.array_equal(a["test"], c["test"])
    rows = np.concatenate(list(a.values()))
    assert len(rows) == 5000 and len(np.unique(rows)) == 5000
    overall = y.mean()
    for s in a.values():
        assert abs(y[s].mean() - overall) < 0.002


def test_multilabel_split_spreads_every_labels_positives():
    rng = np.random.default_rng(0)
    y = np.stack([rng.random(3000) < p for p in (0.3, 0.05, 0.01)], axis=1).astype(np.float32)
    idx = stratified_split(y, val_frac=0.2, test_frac=0.2, seed=0)
    for j in range(3):
        for s in idx.values():
            assert abs(y[s, j].mean() - y[:, j].mean()) < 0.01


# --------------------------------------------------------------------------- grouped splits
def _split_checks(labels: np.ndarray, groups: np.ndarray, parts: dict[str, np.ndarray]) -> None:
    """Every row in exactly one split, sorted; no group in two splits."""
    assert set(parts) == {"train", "val", "test"}
    rows = np.concatenate(list(parts.values()))
    assert np.array_equal(np.sort(rows), np.arange(len(labels)))
    assert all(np.array_equal(p, np.sort(p)) for p in parts.values())
    seen = [set(groups[p].tolist()) for p in parts.values()]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


@st.composite
def _grouped_task(draw):
    n_groups = draw(st.integers(200, 500))
    k = draw(st.integers(1, 3))
    prevalences = [draw(st.floats(0.05, 0.5)) for _ in range(k)]
    val_frac = draw(st.sampled_from([0.1, 0.15, 0.2, 0.25]))
    test_frac = draw(st.sampled_from([0.1, 0.15, 0.2, 0.25]))
    data_seed, split_seed = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(data_seed)
    sizes = rng.integers(1, 9, size=n_groups)  # 1..8 rows per group
    groups = np.repeat(np.array([f"patient-{g}" for g in range(n_groups)]), sizes)
    groups = groups[rng.permutation(len(groups))]  # a group's rows are anywhere in the table
    labels = (rng.random((len(groups), k)) < np.array(prevalences)).astype(np.float32)
    return labels, groups, val_frac, test_frac, split_seed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_grouped_task())
def test_group_split_property(task):
    """No group in two splits, every row in one; each split's prevalence of every label is within
    0.02 + (largest group's rows) / (split's rows) of the whole's: a split can miss its share of
    positives by about one group (the granularity of moving whole patients), and 2 points cover
    groups positive for several labels, whose counts cannot all be met at once (measured: the
    excess over one group stayed below 0.01 over 3,000 random splits). Sizes within three groups of
    their fraction (measured: below two)."""
    labels, groups, val_frac, test_frac, seed = task
    parts = stratified_group_split(labels, groups, val_frac=val_frac, test_frac=test_frac, seed=seed)
    _split_checks(labels, groups, parts)
    largest = int(pd.Series(groups).value_counts().max())
    whole = labels.mean(axis=0)
    for name, frac in (("train", 1 - val_frac - test_frac), ("val", val_frac), ("test", test_frac)):
        rows = parts[name]
        tolerance = 0.02 + largest / len(rows)
        assert np.abs(labels[rows].mean(axis=0) - whole).max() <= tolerance, name
        assert abs(len(rows) - frac * len(labels)) <= 3 * largest, name


def test_group_split_against_stratified_group_kfold():
    """scikit-learn's StratifiedGroupKFold as an independent reference: both keep every patient in one
    split, and ours balances the prevalence at least about as well as its folds do."""
    from sklearn.model_selection import StratifiedGroupKFold

    rng = np.random.default_rng(11)
    sizes = rng.integers(1, 9, size=400)
    groups = np.repeat(np.arange(400), sizes).astype(str)
    # patients differ in risk, so labels cluster within a group as they do in real data
    risk = np.repeat(rng.beta(0.5, 4.0, size=400), sizes)
    y = (rng.random(len(groups)) < risk).astype(int)
    folds = list(StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0).split(np.zeros(len(y)), y, groups))
    ref = {"test": folds[0][1], "val": folds[1][1]}
    ref["train"] = np.setdiff1d(np.arange(len(y)), np.concatenate([ref["test"], ref["val"]]))
    ours = stratified_group_split(y, groups, val_frac=0.2, test_frac=0.2, seed=0)
    for parts in (ref, {k: np.sort(v) for k, v in ours.items()}):
        _split_checks(y, groups, {k: np.sort(v) for k, v in parts.items()})

    def worst(parts: dict[str, np.ndarray]) -> float:
        return max(abs(y[p].mean() - y.mean()) for p in parts.values())

    assert worst(ours) <= worst(ref) + 0.01, (worst(ours), worst(ref))


def test_group_split_is_seeded_and_checks_its_input():
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(100), 3).astype(str)
    y = (rng.random(300) < 0.2).astype(np.float32)
    a = stratified_group_split(y, groups, val_frac=0.2, test_frac=0.2, seed=1)
    b = stratified_group_split(y, groups, val_frac=0.2, test_frac=0.2, seed=1)
    c = stratified_group_split(y, groups, val_frac=0.2, test_frac=0.2, seed=2)
    assert all(np.array_equal(a[s], b[s]) for s in a) and not np.array_equal(a["test"], c["test"])
    with _raises(r"--val-frac and --test-frac must be in \(0, 1\) with a sum below 1"):
        stratified_group_split(y, groups, val_frac=0.5, test_frac=0.5, seed=0)
    with _raises(r"only 2 group\(s\)"):
        stratified_group_split(y[:6], np.array(["a", "a", "a", "b", "b", "b"]), val_frac=0.2, test_frac=0.2, seed=0)
    # one row per group: the same property as a row-level stratified split
    single = stratified_group_split(y, np.arange(300).astype(str), val_frac=0.2, test_frac=0.2, seed=0)
    assert {s: len(v) for s, v in single.items()} == {"train": 180, "val": 60, "test": 60}
    assert all(abs(y[v].mean() - y.mean()) <= 1 / 60 for v in single.values())
