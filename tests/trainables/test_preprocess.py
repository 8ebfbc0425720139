"""trainables/preprocess.py: the preprocessing fit on the training rows only, label spellings."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from trainables.preprocess import Preprocessor, parse_labels


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


# ---------------------------------------------------------------------------- one reading of each column
def _awkward_table(n: int, seed: int) -> pd.DataFrame:
    """Every column kind, and the cases where reading a column once for all rows could go wrong."""
    rng = np.random.default_rng(seed)
    numtext = rng.choice(["1.5", "2", "3e1", None, "-4"], n).astype(object)
    numtext[-3:] = "n/a"  # text only in the last rows: numeric where those are not training rows
    late = rng.choice(["a", "b", None], n).astype(object)
    late[-5:] = "seen_late"  # a level that may appear outside the training rows only
    obj = rng.choice(["u", "v", "5", None], n).astype(object)
    obj[-1] = 5  # the number 5 where the training rows wrote the text '5'
    nan_late = np.arange(n, dtype=np.float64)
    nan_late[-2:] = np.nan  # missing only outside the training rows: no indicator
    mostly_missing = np.full(n, np.nan)
    mostly_missing[[3, 50, 51, 52, -2, -1]] = [1.0, 2.0, 2.0, 3.0, 7.0, 7.0]
    return pd.DataFrame({
        "f64": np.where(rng.random(n) < .2, np.nan, rng.normal(60, 10, n).round(2)),
        "f32": rng.normal(size=n).astype(np.float32),
        "int": rng.integers(0, 5, n),
        "nullable": pd.array(np.where(rng.random(n) < .3, None, rng.integers(0, 9, n)), dtype="Int64"),
        "bool": rng.random(n) < .4,
        "words": rng.choice(["yes", "no", "Y", "n", None], n),
        "numtext": numtext,
        "site": pd.Series(rng.choice(["a", "b", " c", None] + [f"x{k}" for k in range(20)], n), dtype="str"),
        "obj": obj,
        "nan_late": nan_late,
        "late": late,
        "mostly_missing": mostly_missing,
    })


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reading_each_column_once_gives_the_arrays_of_fitting_and_transforming_each_split(seed):
    from trainables.preprocess import _fit_column_once, fit_transform

    frame = _awkward_table(400, seed)
    order = np.random.default_rng(seed + 10).permutation(len(frame) - 5)  # the last 5 rows never train
    last = np.arange(len(frame) - 5, len(frame))
    rows = {"train": np.sort(order[:240]), "val": np.concatenate([order[240:320], last[:2]]),  # val shuffled
            "test": np.sort(np.concatenate([order[320:], last[2:]]))}
    assert all(_fit_column_once(n, frame[n], rows["train"]) is not None for n in frame.columns)  # no fallback
    pre, arrays = fit_transform(frame, rows)
    reference = Preprocessor.fit(frame.iloc[rows["train"]])  # the way it was done, split by split
    assert json.dumps(pre.to_dict()) == json.dumps(reference.to_dict())
    for split, r in rows.items():
        expected = reference.transform(frame.iloc[r])
        assert arrays[split].dtype == np.float32 and arrays[split].flags.c_contiguous
        assert arrays[split].tobytes() == expected.tobytes(), split


def test_a_column_of_mixed_objects_is_read_split_by_split():
    from trainables.preprocess import fit_transform

    # 1 and 1.0 are one level to pandas: which one names it depends on the rows read first
    frame = pd.DataFrame({"mixed": pd.Series([1, 1.0, "a", "b"] * 25, dtype=object), "v": np.arange(100.0)})
    i = np.arange(100)
    rows = {"train": i[(i % 4 == 1) | (i % 4 == 2)], "val": i[i % 4 == 0], "test": i[i % 4 == 3]}
    pre, arrays = fit_transform(frame, rows)
    reference = Preprocessor.fit(frame.iloc[rows["train"]])
    assert json.dumps(pre.to_dict()) == json.dumps(reference.to_dict())
    assert pre.columns[0]["categories"] == ["1.0", "a"]
    for split, r in rows.items():
        assert arrays[split].tobytes() == reference.transform(frame.iloc[r]).tobytes()


def test_column_statistics_are_pandas_own_to_the_last_bit():
    from trainables.preprocess import _statistics

    rng = np.random.default_rng(3)
    for case in range(200):
        n = int(rng.integers(1, 3000))
        v = rng.normal(rng.normal() * 100, abs(rng.normal()) * 10 + 1e-3, n)
        if case % 3 == 0:
            v = np.round(v, int(rng.integers(0, 4)))  # ties for the median
        v[rng.random(n) < rng.random() * 0.9] = np.nan
        if case % 2:  # a float32 column (Parquet's) is read as it is, its statistics those of its float64 values
            v = v.astype(np.float32)
        s = pd.Series(v.astype(np.float64))
        median = float(s.median())
        filled = s.fillna(median)
        got = _statistics(v)
        assert (got["median"], got["mean"]) == (median, float(filled.mean())), case
        assert got["std"] == (float(filled.std(ddof=0)) if float(filled.std(ddof=0)) > 1e-12 else 1.0), case
        assert got["median"] == float(np.median(v[~np.isnan(v)].astype(np.float64))) or not s.notna().any(), case
    nothing = _statistics(np.full(4, np.nan))
    assert np.isnan(nothing["median"]) and np.isnan(nothing["mean"]) and nothing["std"] == 1.0


@pytest.mark.parametrize("column", [
    np.array([1.0, np.inf, 2.0], dtype=np.float32),
    np.array([1.0, 2.0, -np.inf]),
    np.array(["1", "inf", "2"], dtype=object),
])
def test_an_infinite_value_is_found_in_every_numeric_column_kind(column):
    from trainables.errors import UserError
    from trainables.preprocess import check_finite

    with pytest.raises(UserError, match="'v' in t.csv has 1 infinite value"):
        check_finite(pd.DataFrame({"v": column}), "t.csv")


def test_a_column_with_no_value_in_the_training_rows_is_refused_before_training():
    from trainables.errors import UserError
    from trainables.preprocess import fit_transform

    frame = pd.DataFrame({"v": [np.nan] * 8 + [1.0, 2.0], "w": np.arange(10.0)})
    rows = {"train": np.arange(8), "val": np.array([8]), "test": np.array([9])}
    for fit in (lambda: fit_transform(frame, rows), lambda: Preprocessor.fit(frame.iloc[:8])):
        with pytest.raises(UserError, match="'v' has no values in the training split \\(8 rows, all missing\\)"):
            fit()


@pytest.mark.parametrize("take", ["all rows", "shuffled rows"])
def test_the_feature_array_is_filled_as_written_column_by_column(take):
    from trainables.preprocess import _BLOCK, _Layout

    # Several blocks (two threads fill them in turn) and a partial last one, against the plain
    # column-by-column reference: dense features, a missing indicator, one-hot codes with -1 (none).
    n = 3 * _BLOCK + 17
    rng = np.random.default_rng(4)
    values, other = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
    missing = rng.random(n) < 0.3
    codes, codes2 = rng.integers(-1, 4, size=n).astype(np.int32), rng.integers(-1, 2, size=n).astype(np.int32)
    parts = [("values", values, 1), ("values", missing, 1), ("codes", codes, 4), ("values", other, 1),
             ("codes", codes2, 2)]
    rows = None if take == "all rows" else rng.permutation(n)[: n - 100]
    r = np.arange(n) if rows is None else rows
    expected = np.zeros((len(r), 9), dtype=np.float32)
    expected[:, 0], expected[:, 1], expected[:, 6] = values[r], missing[r], other[r]
    for first, c, width in ((2, codes, 4), (7, codes2, 2)):
        for level in range(width):
            expected[:, first + level] = c[r] == level
    got = _Layout(parts).fill(len(r), rows)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert got.tobytes() == expected.tobytes()
