"""Loading, labels, preprocessing fit on train only, stratified splits, arrays, synthetic tasks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from trainables.data import Preprocessor, parse_labels, prepare_data, stratified_split
from trainables.errors import UserError


def _table(n=400, seed=0, prevalence=0.2):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "age": rng.normal(60, 10, n),
        "bmi": rng.normal(27, 4, n),
        "sex": rng.choice(["F", "M"], n),
        "site": rng.choice(["a", "b", "c"], n),
        "diabetic": rng.choice(["t", "f"], n),
    })
    df.loc[rng.random(n) < 0.1, "bmi"] = np.nan
    df.loc[rng.random(n) < 0.05, "site"] = None
    df["outcome"] = np.where(rng.random(n) < prevalence, "yes", "no")
    return df


def test_csv_with_categoricals_booleans_and_missing_values(tmp_path):
    p = tmp_path / "d.csv"
    _table().to_csv(p, index=False)
    data = prepare_data(p, ["outcome"])
    names = data.feature_names
    assert {"age", "bmi", "bmi__missing", "sex=F", "sex=M", "site=a", "site=b", "site=c", "site__missing",
            "diabetic"} == set(names)
    assert data.n_labels == 1 and torch.isfinite(data.train.x).all() and torch.isfinite(data.test.x).all()
    # standardised on the training split
    age = data.train.x[:, names.index("age")]
    assert abs(age.mean().item()) < 1e-5 and abs(age.std(unbiased=False).item() - 1) < 1e-4
    assert sum(len(s) for s in (data.train, data.val, data.test)) == 400


def test_preprocessing_is_fit_on_the_training_split_only():
    train = pd.DataFrame({"v": [1.0, 2.0, np.nan, 3.0], "c": ["x", "y", "x", None]})
    other = pd.DataFrame({"v": [1000.0, np.nan], "c": ["z", "y"]})
    pre = Preprocessor.fit(train)
    col = next(c for c in pre.columns if c["name"] == "v")
    assert col["median"] == 2.0  # the extreme 1000 in the other split never enters
    out = pre.transform(other)
    names = pre.feature_names
    assert names == ["v", "v__missing", "c=x", "c=y", "c__missing"]
    filled = (2.0 - col["mean"]) / col["std"]
    assert out[1, 0] == pytest.approx(filled) and out[1, 1] == 1.0
    assert out[0, 2] == 0 and out[0, 3] == 0  # unseen category 'z' → all zeros
    assert Preprocessor.from_dict(pre.to_dict()).transform(other).tolist() == out.tolist()


@pytest.mark.parametrize("values,expected", [
    (["yes", "no", "Yes", "NO"], [1, 0, 1, 0]),
    (["true", "false", "TRUE", "False"], [1, 0, 1, 0]),
    ([1, 0, 1, 0], [1, 0, 1, 0]),
    ([1.0, 0.0, 0.0, 1.0], [1, 0, 0, 1]),
    ([True, False, False, True], [1, 0, 0, 1]),
])
def test_label_spellings(values, expected):
    assert parse_labels(pd.Series(values), name="y", source="t").tolist() == expected


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


def test_arrays_npz_and_pt(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    y = np.stack([rng.random(300) < 0.3, rng.random(300) < 0.25], axis=1).astype(np.int64)
    np.savez(tmp_path / "f.npz", X=x, y=y, label_names=np.array(["a", "b"]))
    data = prepare_data(tmp_path / "f.npz")
    assert data.n_features == 5 and data.label_names == ["a", "b"]
    only_b = prepare_data(tmp_path / "f.npz", ["b"])
    assert only_b.label_names == ["b"]
    torch.save({"X": torch.tensor(x), "y": torch.tensor(y[:, 0])}, tmp_path / "f.pt")
    assert prepare_data(tmp_path / "f.pt").n_labels == 1


def test_parquet(tmp_path):
    p = tmp_path / "d.parquet"
    _table().to_parquet(p)
    assert prepare_data(p, ["outcome"]).n_features == 10


@pytest.mark.parametrize("task,labels,prevalence", [
    ("synthetic:rare", 1, 1 / 50), ("synthetic:screening", 5, 1 / 5), ("synthetic:treatment", 1, 1 / 3),
])
def test_synthetic_tasks_have_the_stated_prevalence(task, labels, prevalence):
    data = prepare_data(task)
    assert data.n_labels == labels
    for p in data.prevalence():
        assert p == pytest.approx(prevalence, rel=0.2)
    assert prepare_data(task).fingerprint == data.fingerprint
    assert prepare_data(task + "?seed=1").fingerprint != data.fingerprint


def test_same_input_same_fingerprints_other_split_seed_other_split(tmp_path):
    p = tmp_path / "d.csv"
    _table().to_csv(p, index=False)
    a, b = prepare_data(p, ["outcome"]), prepare_data(p, ["outcome"], split_seed=3)
    assert a.fingerprint == b.fingerprint and a.split_fingerprint != b.split_fingerprint


# ---------------------------------------------------------------- bad input: one clear line each
def _write(tmp_path, df, name="d.csv"):
    p = tmp_path / name
    df.to_csv(p, index=False)
    return p


@pytest.mark.parametrize("make,label,expected", [
    (lambda t: t / "missing.csv", "outcome", r"data file '.*missing\.csv' does not exist"),
    (lambda t: (t / "d.xlsx").write_text("x") and t / "d.xlsx", "outcome",
     r"unsupported format '\.xlsx'; supported: \.csv"),
    (lambda t: _write(t, _table()), "death", r"label column 'death' is not in .*; columns are: age, bmi"),
    (lambda t: _write(t, _table().assign(outcome=np.arange(400) % 3)), "outcome", r"3 distinct values \(0, 1, 2\)"),
    (lambda t: _write(t, _table().assign(outcome="no")), "outcome", r"only one class \(0 in all 400 rows\)"),
    (lambda t: _write(t, _table(prevalence=0.02)), "outcome",
     r"split '(val|test|train)' would hold \d positives of label 'outcome' \(minimum 5"),
    (lambda t: _write(t, _table().assign(lab=np.nan)), "outcome",
     r"feature column 'lab' .* has no values \(all missing\)"),
    (lambda t: _write(t, _table().assign(outcome=[None] + ["yes", "no"] * 199 + ["no"])), "outcome",
     r"1 missing values \(rows 0\)"),
])
def test_bad_input_is_one_clear_error(tmp_path, make, label, expected):
    with pytest.raises(UserError, match=expected) as err:
        prepare_data(make(tmp_path), [label])
    assert "\n" not in str(err.value)


def test_label_column_is_required_for_tables(tmp_path):
    with pytest.raises(UserError, match="--label-col"):
        prepare_data(_write(tmp_path, _table()))


def test_unknown_synthetic_task_lists_known_ones():
    with pytest.raises(UserError, match="synthetic:rare, synthetic:screening, synthetic:treatment"):
        prepare_data("synthetic:common")


def test_a_group_column_keeps_each_patients_rows_in_one_split(tmp_path):
    """--group-col on a table: no patient's rows in two splits, each split's prevalence close to the
    whole's (trainables/images.py states the bound: 0.02 + the largest group's share of the split),
    and the patient id is not a feature."""
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 6, size=400)
    patient = np.repeat([f"p{i}" for i in range(len(sizes))], sizes)
    n = len(patient)
    # `row` is a feature whose value names the row: each split's rows can be traced back to patients
    frame = pd.DataFrame({"row": np.arange(n, dtype=float), "patient": patient,
                          "outcome": (rng.random(n) < 0.15).astype(int)})
    frame.to_csv(tmp_path / "visits.csv", index=False)
    data = prepare_data(tmp_path / "visits.csv", ["outcome"], group_col="patient", split_seed=1)
    assert data.feature_names == ["row"] and data.split["groups"] == "patient"
    spec = data.preprocessor.columns[0]
    where: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        rows = np.rint(getattr(data, split).x[:, 0].numpy() * spec["std"] + spec["mean"]).astype(int)
        for r in rows:
            where.setdefault(patient[r], set()).add(split)
    assert all(len(s) == 1 for s in where.values()) and len(where) == len(sizes)
    whole = frame["outcome"].mean()
    for split in ("train", "val", "test"):
        part = getattr(data, split)
        assert abs(float(part.y.mean()) - whole) <= 0.02 + sizes.max() / len(part), split
