"""Columns → features: a column's kind (numeric, yes/no, categorical), the ``Preprocessor`` fit on the
training rows (median imputation with missing-value indicators, one-hot, standardisation), the checks
of cells and of infinite values, and binary labels (``parse_labels``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from trainables.errors import UserError

__all__ = ["Preprocessor", "parse_labels", "check_finite"]

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
        cols: list[dict[str, Any]] = []
        for name in frame.columns:
            s = frame[name]
            kind, values = _column_kind(s)
            spec: dict[str, Any] = {"name": str(name), "kind": kind}
            missing = values.isna()
            spec["indicator"] = bool(missing.any())
            if kind == "categorical":
                cats = sorted({str(v) for v in pd.unique(values[~missing])})  # distinct values first, then text
                if len(cats) > _MAX_CATEGORIES:
                    raise UserError(
                        f"column '{name}' has {len(cats)} categories in the training split (limit {_MAX_CATEGORIES}); "
                        "is it an identifier? drop it with --drop-col"
                    )
                spec["categories"] = cats
            else:
                v = values.astype("float64")
                med = float(v.median())
                filled = v.fillna(med)
                std = float(filled.std(ddof=0))
                spec.update(median=med, mean=float(filled.mean()), std=std if std > 1e-12 else 1.0)
            cols.append(spec)
        return cls(cols)

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
        # Each column becomes a vector (values, or category codes), then one preallocated [rows,
        # features] array is filled: the dense columns a block of rows at a time, the one-hot ones by
        # index. A million-row table would otherwise hold its features twice (blocks, then their
        # concatenation), and writing whole columns into a row-major array touches every cache line
        # once per feature.
        parts: list[tuple[str, np.ndarray, int]] = []  # (kind, vector, width)
        for c in self.columns:
            if c["name"] not in frame.columns:
                raise UserError(f"feature column '{c['name']}' is missing from the data the preprocessor is applied to")
            if c["kind"] == "categorical":
                # Each distinct value read as text once, not each cell; a level seen only outside the
                # training rows, like a missing value, is all zeros.
                missing = frame[c["name"]].isna().to_numpy()
                which, distinct = pd.factorize(frame[c["name"]], use_na_sentinel=True)
                index = {v: i for i, v in enumerate(c["categories"])}
                codes = np.array([index.get(str(v), -1) for v in distinct] + [-1], dtype=np.int64)[which]  # NA: -1
                parts.append(("codes", codes, len(c["categories"])))
            else:
                _, values = _column_kind(frame[c["name"]], forced=c["kind"])
                if strict:
                    _check_cells(frame[c["name"]], values, c, source)
                missing = values.isna().to_numpy()
                v = pd.to_numeric(values, errors="coerce").astype("float64").fillna(c["median"]).to_numpy()
                parts.append(("values", ((v - c["mean"]) / c["std"]).astype(np.float32), 1))
            if c["indicator"]:
                parts.append(("values", missing.astype(np.float32), 1))
        out = np.zeros((len(frame), sum(w for _, _, w in parts)), dtype=np.float32)
        starts = np.cumsum([0] + [w for _, _, w in parts[:-1]])
        dense = [(at, vec) for at, (kind, vec, _) in zip(starts, parts, strict=True) if kind == "values"]
        cols, vecs = np.array([at for at, _ in dense], dtype=np.int64), [vec for _, vec in dense]
        for start in range(0, len(frame) if vecs else 0, 2048):  # a block of rows stays in the cache
            stop = start + 2048
            out[start:stop, cols] = np.stack([v[start:stop] for v in vecs], axis=1)
        for at, (kind, codes, _) in zip(starts, parts, strict=True):
            if kind == "codes":
                rows = np.flatnonzero(codes >= 0)
                out[rows, at + codes[rows]] = 1.0
        return out

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
    present = s.dropna()
    # A text column is categorical as soon as one value is neither a boolean word nor a number: look
    # at the first few values before parsing a whole column of category names (the slow part of a
    # million-row table).
    head = present.iloc[:256].astype(str).str.strip().str.lower()
    if (forced is None and len(head) and not head.isin(_TRUE | _FALSE).all()
            and pd.to_numeric(head, errors="coerce").isna().any()):
        return "categorical", _as_categories(s) if categories else s
    present = present.astype(str).str.strip().str.lower()
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
        kind, values = _column_kind(features[name], categories=False)
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
