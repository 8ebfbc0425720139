"""prepare_data: tables and arrays loaded, preprocessed and split, fingerprints, bad input, group columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from trainables.data import prepare_data
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


def test_a_group_column_keeps_each_patients_rows_in_one_split(tmp_path):
    """--group-col on a table: no patient's rows in two splits, each split's prevalence close to the
    whole's (trainables/splits.py states the bound: 0.02 + the largest group's share of the split),
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


# ---------------------------------------------------------------------------- pinned arrays
def _pinned_table(n: int = 600) -> pd.DataFrame:
    """Columns of every kind the preprocessor reads, made by arithmetic (no random generator, whose
    streams may change across numpy versions)."""
    i = np.arange(n)
    return pd.DataFrame({
        "age": 40 + (i * 37 % 50) + (i % 7) / 10,
        "visits": i * 13 % 12,
        "lab": np.where(i % 9 == 0, np.nan, np.exp((i * 29 % 100) / 40)),
        "flag": np.array(["Yes", "no", "YES", "n", None], dtype=object)[i * 7 % 5],
        "smoker": (i * 11 % 3) == 0,
        "ward": np.array(["icu", "med", "surg", "onc", "peds", None], dtype=object)[i * 5 % 6],
        "grade": np.array(["1", "2", "3", "x"])[i * 3 % 4],
        "sepsis": ((i * 17 % 10) == 0).astype(int),
        "death": np.where((i * 23 % 13) == 0, "yes", "no"),
    })


def _digest(data) -> str:
    import hashlib
    import json

    h = hashlib.sha256()
    for s in ("train", "val", "test"):
        for t in ("x", "y"):
            a = getattr(getattr(data, s), t).numpy()
            h.update(f"{a.shape}{a.dtype}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
    h.update(json.dumps(data.preprocessor.to_dict(), sort_keys=True).encode())
    return h.hexdigest()


# The arrays and the preprocessor of prepare_data as they were before it was made faster (issue 24),
# bit for bit: a change of speed must not change one value.
PINNED = "39f7e043ab7859410db4cf17110599cf576e52d15db65eb9a3bdfbbe345a0c3c"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_the_arrays_of_a_mixed_table_are_pinned_bit_for_bit(tmp_path, suffix):
    p = tmp_path / f"t{suffix}"
    df = _pinned_table()
    df.to_csv(p, index=False) if suffix == ".csv" else df.to_parquet(p)
    data = prepare_data(p, ["sepsis", "death"])
    assert data.feature_names[:7] == ["age", "visits", "lab", "lab__missing", "flag", "flag__missing", "smoker"]
    assert [len(data.train), len(data.val), len(data.test)] == [360, 120, 120]
    assert _digest(data) == PINNED


def _float32_table(n: int = 601) -> pd.DataFrame:
    """Parquet keeps float32 columns as float32 (a CSV is read as float64): ties, missing values, an
    odd and an even number of held training values, both signs of zero."""
    i = np.arange(n)
    return pd.DataFrame({
        "dose": np.where(i % 4 == 0, np.nan, np.round((i * 31 % 97) / 7, 2)).astype(np.float32),
        "ratio": np.where(i % 5 == 1, np.nan, ((i * 7 % 11) - 5) / 3).astype(np.float32),
        "zero": np.where(i % 3 == 0, -0.0, np.where(i % 3 == 1, 0.0, np.nan)).astype(np.float32),
        "count": (i * 3 % 17).astype(np.float32),
        "ward": np.array(["icu", "med", None], dtype=object)[i % 3],
        "sepsis": ((i * 17 % 10) == 0).astype(int),
    })


# As PINNED, for float32 columns, whose statistics are read from their float32 values since issue 24.
PINNED_FLOAT32 = {0: "fe0b1262b6477a9f76d75a771573d020b023b82c721087f49fcf1c9cd07500b9",
                  1: "b1174b2fb7ecb993164e5be53b98f7cb55209377b49cd92cc61630dc43ae58a6"}


@pytest.mark.parametrize("split_seed", [0, 1])
def test_the_arrays_of_a_float32_table_are_pinned_bit_for_bit(tmp_path, split_seed):
    p = tmp_path / "t.parquet"
    _float32_table().to_parquet(p)
    assert pd.read_parquet(p)["dose"].dtype == np.float32
    data = prepare_data(p, ["sepsis"], split_seed=split_seed)
    assert _digest(data) == PINNED_FLOAT32[split_seed]


def test_the_garbage_collector_waits_while_a_table_is_prepared_and_is_restored(tmp_path, monkeypatch):
    """Full collections of every object the process holds stalled the threads that fill the arrays
    (issue 24): the collector is off while the table is read and its arrays filled, and back as it
    was afterwards, after an error too."""
    import gc

    import trainables.data as data_module
    from trainables.errors import UserError

    p = tmp_path / "t.csv"
    _pinned_table().to_csv(p, index=False)
    seen: dict[str, bool] = {}
    for name in ("load_file", "fit_transform"):
        real = getattr(data_module, name)
        monkeypatch.setattr(data_module, name, lambda *a, _real=real, _name=name, **k: (
            seen.__setitem__(_name, gc.isenabled()), _real(*a, **k))[1])
    try:
        data = prepare_data(p, ["sepsis", "death"])
        assert seen == {"load_file": False, "fit_transform": False} and gc.isenabled()
        assert _digest(data) == PINNED
        with pytest.raises(UserError, match="label column 'nope'"):
            prepare_data(p, ["nope"])
        assert gc.isenabled()
        gc.disable()
        prepare_data(p, ["sepsis", "death"])
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()
