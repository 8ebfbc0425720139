"""Columns → features: a column's kind (numeric, yes/no, categorical), the ``Preprocessor`` fit on the
training rows (median imputation with missing-value indicators, one-hot, standardisation), the checks
of cells and of infinite values, and binary labels (``parse_labels``)."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import torch

from trainables.errors import UserError

__all__ = ["Preprocessor", "fit_transform", "parse_labels", "check_finite"]

_TRUE = {"1", "1.0", "true", "t", "yes", "y"}
_FALSE = {"0", "0.0", "false", "f", "no", "n"}
_MAX_CATEGORIES = 200
_KINDS = ("numeric", "boolean", "categorical")


class Preprocessor:
    """Per-column transforms fit on the training rows; JSON-serialisable (``to_dict``/``from_dict``)."""

    def __init__(self, columns: list[dict[str, Any]] | None = None) -> None:
        self.columns = columns or []

    @classmethod
    def fit(cls, frame: pd.DataFrame) -> Preprocessor:
        return cls([_fit_column(name, frame[name]) for name in frame.columns])

    @property
    def feature_names(self) -> list[str]:
        out: list[str] = []
        for c in self.columns:
            if c["kind"] == "categorical":
                out += [f"{c['name']}={v}" for v in c["categories"]]
            else:
                out.append(c["name"])
            if c["indicator"]:
                out.append(f"{c['name']}__missing")
        return out

    def unseen_levels(self, frame: pd.DataFrame) -> dict[str, dict[str, int]]:
        """Per categorical column of ``frame``: the levels the training rows never held, with their row
        counts (they become all-zero one-hot vectors, as a missing value does)."""
        out: dict[str, dict[str, int]] = {}
        for c in self.columns:
            if c["kind"] != "categorical" or c["name"] not in frame.columns:
                continue
            _, values = _column_kind(frame[c["name"]], forced="categorical")
            text = pd.Series(values, copy=False).dropna().astype(str)
            new = text[~text.isin(c["categories"])].value_counts()
            if len(new):
                out[c["name"]] = {str(k): int(v) for k, v in new.items()}
        return out

    def transform(self, frame: pd.DataFrame, *, strict: bool = False, source: str = "the data") -> np.ndarray:
        """Features of ``frame`` as a [rows, features] float32 array.

        ``strict`` (a table to predict on): a cell that holds something the column's kind cannot
        read — text or an infinite value in a numeric column, an unknown word in a yes/no column —
        is a ``UserError`` naming the column and the rows of ``source``, never a silent missing
        value. Training reads its own splits leniently: their columns were checked as a whole.
        """
        for c in self.columns:
            if c["name"] not in frame.columns:
                raise UserError(f"feature column '{c['name']}' is missing from the data the preprocessor is applied to")
        return _Layout([p for c in self.columns
                        for p in _column_parts(c, frame[c["name"]], strict=strict, source=source)]).fill(len(frame))

    def to_dict(self) -> dict[str, Any]:
        return {"format": "losstune-preprocessor-v1", "columns": self.columns}

    @classmethod
    def from_dict(cls, data: Any) -> Preprocessor:
        """The inverse of ``to_dict``. A document that is not one (another format, a column without
        its statistics) is a ``ValueError`` saying what is wrong; the caller names the file."""
        if not isinstance(data, dict) or data.get("format") != "losstune-preprocessor-v1":
            raise ValueError("not a losstune-preprocessor-v1 document")
        columns = data.get("columns")
        if not isinstance(columns, list) or not columns:
            raise ValueError("'columns' is missing, empty or not a list")
        for i, spec in enumerate(columns):
            problem = _spec_problem(spec)
            if problem:
                raise ValueError(f"column {i}: {problem}")
        names = [c["name"] for c in columns]
        if len(set(names)) != len(names):
            raise ValueError("a column name appears twice")
        return cls(columns)


def _fit_column(name: Any, s: pd.Series) -> dict[str, Any]:
    """One column's transform, fit on its training rows ``s``."""
    kind, values = _column_kind(s)
    spec: dict[str, Any] = {"name": str(name), "kind": kind}
    missing = values.isna()
    spec["indicator"] = bool(missing.any())
    if kind == "categorical":
        spec["categories"] = _categories(name, {str(v) for v in pd.unique(values[~missing])})
    else:
        spec.update(_statistics(_held_values(name, values.to_numpy(dtype="float64", na_value=np.nan))))
    return spec


def _held_values(name: Any, v: np.ndarray) -> np.ndarray:
    if len(v) and np.isnan(v).all():  # nothing to impute from: every feature it gave would be NaN
        raise UserError(f"feature column '{name}' has no values in the training split ({len(v)} rows, all missing); "
                        "drop it with --drop-col or fill it")
    return v


def _categories(name: Any, levels: set[str]) -> list[str]:
    if len(levels) > _MAX_CATEGORIES:
        raise UserError(f"column '{name}' has {len(levels)} categories in the training split "
                        f"(limit {_MAX_CATEGORIES}); is it an identifier? drop it with --drop-col")
    return sorted(levels)


def _statistics(v: np.ndarray) -> dict[str, float]:
    """Median (the imputed value), and mean and population standard deviation after imputation, as
    pandas computes them (``Series.median``, ``mean``, ``std(ddof=0)``: the order statistics' mean,
    a pairwise sum over the count, the two-pass variance): saved models carry these, and numpy's
    own kernels on one array do in half the time what pandas does with its masks and copies.
    ``v`` may be float32 (a Parquet column as read)."""
    missing = np.isnan(v)
    med = _median(v, len(v) - int(np.count_nonzero(missing)))
    filled = _imputed(v, missing, med)
    n = np.float64(len(v))
    avg = filled.sum(dtype=np.float64) / n
    np.subtract(avg, filled, out=filled)
    std = float(np.sqrt((filled**2).sum(dtype=np.float64) / n)) if len(v) else math.nan
    return {"median": med, "mean": float(avg) if len(v) else math.nan, "std": std if std > 1e-12 else 1.0}


def _median(v: np.ndarray, held: int) -> float:
    """``np.median`` of the ``held`` values of ``v`` that are not NaN, bit for bit, from one selection:
    NaN sorts last, so the middle order statistic of the held values is found without first
    copying them out, and the one below it is the largest value in front of it. (``np.median``
    selects both at once, which took 4.6 ms on 480,000 values where one selection takes 1 ms.)"""
    if held == 0:
        return math.nan
    k = held // 2
    part = np.partition(v, k)  # in v's own dtype: float32 orders its values as float64 does
    middle = part[k:k + 1] if held % 2 else np.array([part[:k].max(), part[k]])
    return float(np.mean(middle.astype(np.float64)))  # as np.median: the mean of the middle, in float64


Part = tuple[str, np.ndarray, int]  # ("values", a float32 or bool feature, 1) or ("codes", category codes, levels)


def _column_parts(spec: dict[str, Any], s: pd.Series, *, strict: bool = False, source: str = "the data") -> list[Part]:
    """A column's features as vectors over its rows: standardised values, or category codes (-1: a
    missing value or a level the training rows never held, all zeros), and the missing indicator."""
    if spec["kind"] == "categorical":
        # Each distinct value read as text once, not each cell.
        which, distinct = pd.factorize(s, use_na_sentinel=True)
        parts: list[Part] = [("codes", _level_codes(spec["categories"], which, distinct), len(spec["categories"]))]
        missing = which < 0
    else:
        _, values = _column_kind(s, forced=spec["kind"])
        if strict:
            _check_cells(s, values, spec, source)
        v = values.to_numpy(dtype="float64", na_value=np.nan)
        missing = np.isnan(v)
        parts = [("values", _standardised(v, missing, spec), 1)]
    return parts + _indicator(spec, missing)


def _level_codes(categories: list[str], which: np.ndarray, distinct: Any) -> np.ndarray:
    """Each row's index in ``categories`` from ``pd.factorize``'s codes and distinct values, each
    distinct value read as text once; -1 for a missing value or a level outside ``categories``."""
    index = {v: i for i, v in enumerate(categories)}
    return np.array([index.get(str(v), -1) for v in distinct] + [-1], dtype=np.int32)[which]  # NA (-1): the -1


def _imputed(v: np.ndarray, missing: np.ndarray, median: float) -> np.ndarray:
    """A float64 copy of ``v`` with ``median`` in its missing cells (float32 values are exact in float64,
    where the statistics are summed and the values scaled)."""
    out = v.astype(np.float64)
    np.copyto(out, median, where=missing)
    return out


def _standardised(v: np.ndarray, missing: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    out = _imputed(v, missing, spec["median"])
    out -= spec["mean"]
    out /= spec["std"]
    return out.astype(np.float32)


_BLOCK = 4096  # rows filled at a time: a block of the output stays in the cache (2048: 12% slower)


class _Layout:
    """Where ``parts`` go in the [rows, features] float32 array, and ``fill``, which builds it for
    some of their rows a block of rows at a time: adjacent dense features gathered and written as
    one slice, one-hot features by index. Writing whole columns into a row-major array would touch
    every cache line once per feature; holding the columns as blocks and concatenating them, the
    features twice."""

    def __init__(self, parts: list[Part]) -> None:
        self.dense: list[tuple[int, list[np.ndarray]]] = []  # (first column, adjacent dense features)
        self.onehot: list[tuple[int, np.ndarray]] = []
        at = 0
        for kind, vec, width in parts:
            if kind == "codes":
                self.onehot.append((at, vec))
            elif self.dense and self.dense[-1][0] + len(self.dense[-1][1]) == at:
                self.dense[-1][1].append(vec)
            else:
                self.dense.append((at, [vec]))
            at += width
        self.width = at

    def fill(self, n_rows: int, rows: np.ndarray | None = None) -> np.ndarray:
        """The array of ``rows`` of the vectors (the first ``n_rows`` when None), its blocks filled by
        two threads (numpy's copies let go of the GIL)."""
        # torch's allocator, not numpy's: numpy advises huge pages for a large array, and a kernel
        # that compacts memory to find them on first touch took 3.2 s instead of 0.9 s to fill the
        # training split of a million-row table (benchmarks/bench_scale.py, this machine kind).
        # Not zeroed up front: each block is zeroed just before it is filled, while it is in the cache,
        # instead of one more pass over the whole array.
        out = torch.empty((n_rows, self.width), dtype=torch.float32).numpy()

        def fill_blocks(starts: range) -> None:
            for start in starts:
                stop = min(start + _BLOCK, n_rows)
                take = slice(start, stop) if rows is None else rows[start:stop]
                block = out[start:stop]
                block.fill(0)
                for first, vecs in self.dense:
                    block[:, first:first + len(vecs)] = np.stack([v[take] for v in vecs], axis=1)
                # The ones by their offsets in the block's memory: numpy's 1-d indexing took 60% of the
                # time of its (row, column) indexing here.
                flat, row_at = block.reshape(-1), np.arange(stop - start, dtype=np.int64) * self.width
                for first, codes in self.onehot:
                    c = codes[take]
                    held = np.flatnonzero(c >= 0)
                    flat[row_at[held] + (first + c[held])] = 1.0

        halves = [range(0, n_rows, 2 * _BLOCK), range(_BLOCK, n_rows, 2 * _BLOCK)]
        if n_rows <= _BLOCK:
            fill_blocks(halves[0])
        else:
            with ThreadPoolExecutor(max_workers=2) as pool:
                list(pool.map(fill_blocks, halves))
        return out


def fit_transform(frame: pd.DataFrame, rows: dict[str, np.ndarray], *, fit_on: str = "train"
                  ) -> tuple[Preprocessor, dict[str, np.ndarray]]:
    """``Preprocessor.fit(frame.iloc[rows[fit_on]])`` and its ``transform`` of each ``rows`` split,
    the same arrays bit for bit, reading each column once: its kind, categories and statistics
    from the training rows' values, its features over all rows, then each split's rows taken while
    its array is filled (no copy of the table per split)."""
    specs: list[dict[str, Any]] = []
    parts: list[Part] = []
    columns = [(name, frame[name]) for name in frame.columns]
    with ThreadPoolExecutor(max_workers=2) as pool:  # numpy's and pandas' kernels let go of the GIL
        fits = list(pool.map(lambda column: _fit_column_once(*column, rows[fit_on]), columns))
    for fitted in fits:
        if fitted is None:  # a column of mixed objects: read as before, split by split
            pre = Preprocessor.fit(frame.iloc[rows[fit_on]])
            return pre, {k: pre.transform(frame.iloc[r]) for k, r in rows.items()}
        specs.append(fitted[0])
        parts += fitted[1]
    layout = _Layout(parts)
    return Preprocessor(specs), {k: layout.fill(len(r), r) for k, r in rows.items()}


def _fit_column_once(name: Any, s: pd.Series, train: np.ndarray) -> tuple[dict[str, Any], list[Part]] | None:
    """``_fit_column(name, s.iloc[train])`` and the column's parts over all rows, from one reading of
    the whole column: a text column's kind depends only on which distinct values the training rows
    hold. None for a categorical column whose distinct values are not all text (1 and 1.0 are one
    level to pandas; which one is kept depends on the rows read first)."""
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
        kind = "boolean" if pd.api.types.is_bool_dtype(s) else "numeric"
    else:
        codes, uniques = pd.factorize(s, use_na_sentinel=True)
        seen = np.flatnonzero(np.bincount(codes[train] + 1, minlength=len(uniques) + 1)) - 1  # -1: missing
        held = uniques.take(seen[seen >= 0])
        kind, _ = _column_kind(pd.Series(held))
        if kind == "categorical":
            levels = list(held)
            if not all(isinstance(v, str) for v in levels):
                return None
            spec = {"name": str(name), "kind": kind, "indicator": bool(len(seen) and seen[0] < 0),
                    "categories": _categories(name, set(levels))}
            level = _level_codes(spec["categories"], codes, uniques)
            return spec, [("codes", level, len(spec["categories"]))] + _indicator(spec, codes < 0)
    if kind == "numeric" and isinstance(s.dtype, np.dtype) and s.dtype in (np.float32, np.float64):
        v = s.to_numpy()  # as it is: no float64 copy of a float32 column (Parquet's), a view of the frame
    else:
        _, values = _column_kind(s, forced=kind)
        v = values.to_numpy(dtype="float64", na_value=np.nan)
    fit_rows = _held_values(name, v[train])
    missing = np.isnan(v)
    spec = {"name": str(name), "kind": kind, "indicator": bool(np.isnan(fit_rows).any()),
            **_statistics(fit_rows)}
    return spec, [("values", _standardised(v, missing, spec), 1)] + _indicator(spec, missing)


def _indicator(spec: dict[str, Any], missing: np.ndarray) -> list[Part]:
    return [("values", missing, 1)] if spec["indicator"] else []  # bool: a quarter of float32's memory


def _spec_problem(spec: Any) -> str | None:
    """What keeps one saved column from being applied (``transform`` indexes these keys), or None."""
    if not isinstance(spec, dict):
        return f"a {type(spec).__name__}, not a mapping"
    if not isinstance(spec.get("name"), str) or spec.get("kind") not in _KINDS:
        return f"needs a 'name' and a 'kind' ({', '.join(_KINDS)})"
    if not isinstance(spec.get("indicator"), bool):
        return "needs 'indicator' (true or false)"
    if spec["kind"] == "categorical":
        cats = spec.get("categories")
        if not isinstance(cats, list) or not all(isinstance(v, str) for v in cats) or len(set(cats)) != len(cats):
            return "needs 'categories', a list of distinct texts"
        return None
    stats = [spec.get(k) for k in ("median", "mean", "std")]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in stats):
        return "needs finite numbers 'median', 'mean' and 'std'"
    return None if stats[2] > 0 else "needs 'std' above 0"


def _held(raw: pd.Series) -> np.ndarray:
    """Cells that hold something: an empty (or blank) cell is a missing value, imputed as in training."""
    held = raw.notna().to_numpy()
    if pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_bool_dtype(raw):
        return held
    return held & (raw.astype(str).str.strip() != "").to_numpy()


def _shown_rows(rows: np.ndarray) -> str:
    return ", ".join(str(int(r)) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")


def _check_cells(raw: pd.Series, values: pd.Series, spec: dict[str, Any], source: str) -> None:
    """The checks training makes, for a column whose kind the model fixed: training would have made
    a column with such cells categorical or refused it, so the model cannot read them."""
    kind, name = spec["kind"], spec["name"]
    if kind == "categorical":
        return  # a level never seen in training is all zeros, like a missing value
    v = values.to_numpy(dtype="float64", na_value=np.nan)
    where = "counted from 0 after the header"
    fix = "correct those cells or leave them empty (missing values are imputed)"
    if kind == "boolean":
        unread = np.flatnonzero(_held(raw) & (v != 0) & (v != 1))  # NaN here is an unknown word
        if len(unread):
            raise UserError(f"feature column '{name}' in {source} has {len(unread)} value(s) that are not yes/no "
                            f"(rows {_shown_rows(unread)}, {where}); the model reads '{name}' as yes/no "
                            f"(1/0, true/false, t/f, yes/no or y/n, any case): {fix}")
        return
    unread = np.flatnonzero(_held(raw) & np.isnan(v))
    if len(unread):
        raise UserError(f"feature column '{name}' in {source} has {len(unread)} value(s) that are not numbers "
                        f"(rows {_shown_rows(unread)}, {where}); the model reads '{name}' as numeric: {fix}")
    infinite = np.flatnonzero(np.isinf(v))
    if len(infinite):
        raise UserError(f"feature column '{name}' in {source} has {len(infinite)} infinite value(s) "
                        f"(rows {_shown_rows(infinite)}, {where}); replace them with a number or leave the cells "
                        "empty (missing values are imputed)")


def _as_categories(s: pd.Series) -> pd.Series:
    """Values of a categorical column: text columns as they are (missing is NA), others as objects
    with None for missing (converting a million-row text column to objects costs seconds)."""
    return s if isinstance(s.dtype, pd.StringDtype) else s.astype(object).where(s.notna(), None)


def _column_kind(s: pd.Series, forced: str | None = None, *, categories: bool = True) -> tuple[str, pd.Series]:
    """numeric | boolean (t/f, yes/no, true/false → 1/0) | categorical, with the values to use (a
    categorical column's values as they are when not ``categories``: a caller that skips them)."""
    if forced == "categorical":
        return forced, _as_categories(s) if categories else s
    if pd.api.types.is_bool_dtype(s):
        return "boolean", s.astype("float64")
    if pd.api.types.is_numeric_dtype(s):
        return forced or "numeric", s.astype("float64")
    # A text column is categorical as soon as one value is neither a boolean word nor a number: look
    # at the first few values before parsing a whole column of category names (the slow part of a
    # million-row table), found among its first rows unless those are mostly empty.
    window = s.iloc[:4096].dropna()
    head = (window if len(window) >= 256 or len(s) <= 4096 else s.dropna()).iloc[:256]
    head = head.astype(str).str.strip().str.lower()
    if (forced is None and len(head) and not head.isin(_TRUE | _FALSE).all()
            and pd.to_numeric(head, errors="coerce").isna().any()):
        return "categorical", _as_categories(s) if categories else s
    present = s.dropna().astype(str).str.strip().str.lower()
    if forced == "boolean" or (forced is None and len(present) and present.isin(_TRUE | _FALSE).all()):
        lowered = s.astype(object).where(s.isna(), s.astype(str).str.strip().str.lower())
        return "boolean", lowered.map(lambda v: 1.0 if v in _TRUE
                                      else (0.0 if v in _FALSE else np.nan)).astype("float64")
    as_num = pd.to_numeric(s, errors="coerce")
    if forced == "numeric" or (forced is None and as_num[s.notna()].notna().all()):
        return "numeric", as_num.astype("float64")
    return "categorical", _as_categories(s) if categories else s



def check_finite(features: pd.DataFrame, src: str) -> None:
    """Infinite values never reach training: name the column and the rows (a NaN is a missing value,
    an inf is a broken export or a division by zero upstream)."""
    for name in features.columns:
        s = features[name]
        if isinstance(s.dtype, np.dtype) and s.dtype.kind == "f":  # as it is: no float64 copy of a million rows
            bad = np.isinf(s.to_numpy())
        else:
            kind, values = _column_kind(s, categories=False)
            if kind == "categorical":
                continue
            bad = np.isinf(values.to_numpy(dtype="float64", na_value=np.nan))
        if bad.any():
            rows = np.flatnonzero(bad)
            shown = ", ".join(str(int(r)) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
            raise UserError(f"feature column '{name}' in {src} has {len(rows)} infinite value(s) (rows {shown}, "
                            "counted from 0 after the header); replace them with a number or leave the cells empty "
                            "(missing values are imputed)")


# --------------------------------------------------------------------------- labels
def parse_labels(s: pd.Series, *, name: str, source: str) -> np.ndarray:
    """0/1, true/false or yes/no (any case) → float32 {0, 1}; anything else is a ``UserError``."""
    missing = s.isna()
    if missing.any():
        rows = ", ".join(str(i) for i in s.index[missing][:5])
        raise UserError(
            f"label column '{name}' in {source} has {int(missing.sum())} missing values (rows {rows}); "
            "drop those rows or fill them"
        )
    if pd.api.types.is_bool_dtype(s):
        out = s.to_numpy().astype(np.float32)
    elif pd.api.types.is_numeric_dtype(s) and np.isin(s.to_numpy(), (0, 1)).all():
        out = (s.to_numpy() == 1).astype(np.float32)  # 0/1 as numbers: no text to read (a million-row column)
    else:
        text = s.astype(str).str.strip().str.lower()
        distinct = sorted(text.unique().tolist())
        if len(distinct) > 2 or not set(distinct) <= (_TRUE | _FALSE):
            shown = ", ".join(distinct[:6]) + (", ..." if len(distinct) > 6 else "")
            raise UserError(
                f"label column '{name}' in {source} has {len(distinct)} distinct values ({shown}); "
                "labels must be binary: 0/1, true/false or yes/no (one column per label for multi-label)"
            )
        out = text.isin(_TRUE).to_numpy().astype(np.float32)
    if out.min() == out.max():
        raise UserError(
            f"label column '{name}' in {source} has only one class ({int(out[0])} in all {len(out)} rows); "
            "AUROC and AUPRC need both positives and negatives"
        )
    return out
