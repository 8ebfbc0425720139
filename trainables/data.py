"""Tables and arrays → tensors: labels, preprocessing, seeded stratified splits, synthetic tasks.

Preprocessing (median imputation with missing-value indicators, one-hot for categoricals,
standardisation) is fit on the training split only and saved with the model. Splits are stratified
and seeded: train / validation (search, early stopping) / test (held out from the whole search).
Every problem with the input is a one-line ``UserError`` raised before any training.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from trainables.errors import UserError

__all__ = [
    "Split",
    "PreparedData",
    "SharedData",
    "Preprocessor",
    "SYNTHETIC_TASKS",
    "TABLE_FORMATS",
    "ARRAY_FORMATS",
    "prepare_data",
    "load_table",
    "parse_labels",
    "stratified_split",
    "synthetic_frame",
    "preprocessing_doc",
    "IMAGE_FORMAT",
]

TABLE_FORMATS = (".csv", ".tsv", ".parquet", ".pq")
ARRAY_FORMATS = (".npz", ".pt")
SYNTHETIC_TASKS = {
    "rare": "binary, about 1:50 positives, numeric + categorical + missing values",
    "screening": "multi-label (5 labels), about 1:5 each",
    "treatment": "binary, about 1:3, where calibration matters",
}
_TRUE = {"1", "1.0", "true", "t", "yes", "y"}
_FALSE = {"0", "0.0", "false", "f", "no", "n"}
_MAX_CATEGORIES = 200
_MAX_SEED = 2**32 - 1  # 32-bit seeds, as numpy's legacy seeding and Optuna take: one range for every seed
_KINDS = ("numeric", "boolean", "categorical")


@dataclass
class Split:
    x: Tensor  # [N, F] float32
    y: Tensor  # [N, K] float32 in {0, 1}

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class PreparedData:
    """Everything a trial reads: three splits of tensors plus what describes them."""

    train: Split
    val: Split
    test: Split
    feature_names: list[str]
    label_names: list[str]
    preprocessor: Preprocessor | None
    source: str
    fingerprint: str  # of the input (file bytes or synthetic spec) and the label columns
    split_fingerprint: str  # of the split indices
    split: dict[str, Any] = field(default_factory=dict)
    # images: per-channel mean and std of the training split, in [0, 1] units (the model normalises with them)
    image_stats: tuple[list[float], list[float]] | None = None

    @property
    def n_features(self) -> int:
        return self.train.x.shape[1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(F,) for a table's features, (C, H, W) for images."""
        return tuple(int(v) for v in self.train.x.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.train.x.dim() == 4

    @property
    def n_labels(self) -> int:
        return self.train.y.shape[1]

    def label_counts(self) -> tuple[Tensor, Tensor]:
        """Per-label (positives, negatives) in the training split."""
        pos = self.train.y.sum(dim=0)
        return pos, self.train.y.shape[0] - pos

    def prevalence(self, split: str = "train") -> list[float]:
        return getattr(self, split).y.mean(dim=0).tolist()

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "features": self.n_features,
            "labels": self.label_names,
            "rows": {s: len(getattr(self, s)) for s in ("train", "val", "test")},
            "positives": {s: getattr(self, s).y.sum(dim=0).int().tolist() for s in ("train", "val", "test")},
            "prevalence_train": [round(p, 5) for p in self.prevalence()],
            "fingerprint": self.fingerprint,
            "split_fingerprint": self.split_fingerprint,
        }


@dataclass
class SharedData:
    """PreparedData as plain numpy arrays, for Ray's object store: trials map them zero-copy."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]

    @classmethod
    def from_prepared(cls, data: PreparedData, *, with_test: bool = False) -> SharedData:
        """Trials get the training and validation splits; the test split stays with the driver
        (held out from the whole search) unless ``with_test``."""
        arrays = {f"{s}_{t}": getattr(getattr(data, s), t).numpy()
                  for s in ("train", "val", "test") for t in ("x", "y")}
        if not with_test:
            arrays["test_x"], arrays["test_y"] = arrays["test_x"][:0], arrays["test_y"][:0]
        meta = {"feature_names": data.feature_names, "label_names": data.label_names, "source": data.source,
                "fingerprint": data.fingerprint, "split_fingerprint": data.split_fingerprint, "split": data.split,
                "image_stats": data.image_stats}
        return cls(arrays, meta)

    def to_prepared(self) -> PreparedData:
        """Tensors that view the arrays (read-only in the object store; training only reads them)."""
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t = {k: torch.from_numpy(v) for k, v in self.arrays.items()}
        m = self.meta
        return PreparedData(train=Split(t["train_x"], t["train_y"]), val=Split(t["val_x"], t["val_y"]),
                            test=Split(t["test_x"], t["test_y"]), feature_names=m["feature_names"],
                            label_names=m["label_names"], preprocessor=None, source=m["source"],
                            fingerprint=m["fingerprint"], split_fingerprint=m["split_fingerprint"], split=m["split"],
                            image_stats=m.get("image_stats"))


# --------------------------------------------------------------------------- preprocessing
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
                cats = sorted(values[~missing].astype(str).unique().tolist())
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
            _, values = _column_kind(frame[c["name"]], forced=c["kind"])
            if strict:
                _check_cells(frame[c["name"]], values, c, source)
            missing = values.isna().to_numpy()
            if c["kind"] == "categorical":
                # a level seen only outside the training rows, like a missing value, is all zeros
                text = values if isinstance(values.dtype, pd.StringDtype) else values.astype(str).to_numpy()
                codes = pd.Categorical(text, categories=c["categories"]).codes.astype(np.int64)
                codes[missing] = -1
                parts.append(("codes", codes, len(c["categories"])))
            else:
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


def _column_kind(s: pd.Series, forced: str | None = None) -> tuple[str, pd.Series]:
    """numeric | boolean (t/f, yes/no, true/false → 1/0) | categorical, with the values to use."""
    if forced == "categorical":
        return forced, _as_categories(s)
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
        return "categorical", _as_categories(s)
    present = present.astype(str).str.strip().str.lower()
    if forced == "boolean" or (forced is None and len(present) and present.isin(_TRUE | _FALSE).all()):
        lowered = s.astype(object).where(s.isna(), s.astype(str).str.strip().str.lower())
        return "boolean", lowered.map(lambda v: 1.0 if v in _TRUE
                                      else (0.0 if v in _FALSE else np.nan)).astype("float64")
    as_num = pd.to_numeric(s, errors="coerce")
    if forced == "numeric" or (forced is None and as_num[s.notna()].notna().all()):
        return "numeric", as_num.astype("float64")
    return "categorical", _as_categories(s)


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


# --------------------------------------------------------------------------- splits
def stratified_split(labels: np.ndarray, *, val_frac: float, test_frac: float, seed: int) -> dict[str, np.ndarray]:
    """Seeded stratified train/val/test row indices.

    Binary: strata are the two classes. Multi-label: a row's stratum is its rarest positive label
    (or 'no positive'), so every label's positives spread over the three splits.
    """
    y = labels.reshape(len(labels), -1)
    if y.shape[1] == 1:
        key = y[:, 0].astype(np.int64)
    else:
        order = np.argsort(y.mean(axis=0), kind="stable")  # rarest label first
        key = np.full(len(y), -1, dtype=np.int64)
        for j in order[::-1]:  # rarer labels overwrite commoner ones
            key[y[:, j] > 0.5] = j
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for k in np.unique(key):
        rows = rng.permutation(np.flatnonzero(key == k))
        n_test = int(round(len(rows) * test_frac))
        n_val = int(round(len(rows) * val_frac))
        parts["test"].append(rows[:n_test])
        parts["val"].append(rows[n_test:n_test + n_val])
        parts["train"].append(rows[n_test + n_val:])
    return {s: np.sort(np.concatenate(v)) for s, v in parts.items()}


# --------------------------------------------------------------------------- loading
def load_table(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise UserError(f"data file '{p}' does not exist; pass a CSV/Parquet/.npz/.pt path or a synthetic task "
                        f"({', '.join('synthetic:' + t for t in SYNTHETIC_TASKS)})")
    suffix = p.suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise UserError(f"data file '{p}' has an unsupported format '{suffix or '(none)'}'; "
                        f"supported: {', '.join(TABLE_FORMATS + ARRAY_FORMATS)}")
    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            names = [str(n) for n in pq.read_schema(p).names]
            _check_unique_columns(names, p)
            frame = pd.read_parquet(p)
        else:
            sep = "\t" if suffix == ".tsv" else ","
            # pandas renames a repeated header silently (age, age.1): read the header as written first.
            header = pd.read_csv(p, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False)
            _check_unique_columns([str(v) for v in header.iloc[0].tolist()] if len(header) else [], p)
            frame = pd.read_csv(p, sep=sep, low_memory=False)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot read data file '{p}' as {suffix[1:]}: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if frame.empty:
        raise UserError(f"data file '{p}' has no rows")
    return frame


def _check_unique_columns(names: list[str], p: Path) -> None:
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    dups = [f"'{n}' ({k} times)" for n, k in seen.items() if k > 1]
    if dups:
        raise UserError(f"data file '{p}' has duplicate column names: {', '.join(dups[:5])}; give every column its own "
                        "name (pandas would silently rename the copies)")


def _check_finite(features: pd.DataFrame, src: str) -> None:
    """Infinite values never reach training: name the column and the rows (a NaN is a missing value,
    an inf is a broken export or a division by zero upstream)."""
    for name in features.columns:
        kind, values = _column_kind(features[name])
        if kind == "categorical":
            continue
        bad = np.isinf(values.to_numpy(dtype="float64", na_value=np.nan))
        if bad.any():
            rows = np.flatnonzero(bad)
            shown = ", ".join(str(int(r)) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
            raise UserError(f"feature column '{name}' in {src} has {len(rows)} infinite value(s) (rows {shown}, "
                            "counted from 0 after the header); replace them with a number or leave the cells empty "
                            "(missing values are imputed)")


REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "https://", "http://")


def is_remote(source: str) -> bool:
    return source.startswith(REMOTE_SCHEMES)


def object_store(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path) of an ``s3://`` or ``gs://`` URI. An S3-compatible endpoint (MinIO,
    a local test server) comes from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, which pyarrow's
    own URI parsing does not read."""
    import os
    from urllib.parse import urlsplit

    from pyarrow import fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if uri.startswith("s3://") and endpoint:
        e = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        parts = urlsplit(uri)
        return fs.S3FileSystem(endpoint_override=e.netloc, scheme=e.scheme), f"{parts.netloc}{parts.path}"
    return fs.FileSystem.from_uri(uri)


def fetch_remote(uri: str, folder: Path) -> Path:
    """A table in object storage (``s3://``, ``gs://``, through ``pyarrow.fs``; an S3-compatible
    endpoint such as MinIO through ``AWS_ENDPOINT_URL_S3``) or on the web (``https://``), copied to
    ``folder`` so that it is read, checked and fingerprinted exactly like a local file (its bytes).
    Read on the driver only: trials get the prepared tensors through Ray's object store."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    shown = f"{parts.scheme}://{parts.hostname or ''}{parts.path}"  # never a query (signatures) or credentials
    name = Path(parts.path).name or "data"
    if Path(name).suffix.lower() not in TABLE_FORMATS + ARRAY_FORMATS:
        raise UserError(f"data '{shown}' has an unsupported format '{Path(name).suffix or '(none)'}'; "
                        f"supported: {', '.join(TABLE_FORMATS + ARRAY_FORMATS)}")
    target = folder / name
    try:
        if parts.scheme in ("http", "https"):
            import urllib.request

            with urllib.request.urlopen(uri, timeout=30) as r, target.open("wb") as f:  # noqa: S310 - http(s) only
                while block := r.read(1 << 20):
                    f.write(block)
        else:
            filesystem, path = object_store(uri)
            with filesystem.open_input_stream(path) as r, target.open("wb") as f:
                while block := r.read(1 << 20):
                    f.write(block)
    except Exception as exc:  # not found, denied, unreachable: one line, without credentials
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.replace(uri, shown)
        raise UserError(f"cannot read data '{shown}' ({type(exc).__name__}: {first[:200]}); check the address, "
                        "the credentials (AWS_*/GOOGLE_* environment) and, for an S3-compatible store, "
                        "AWS_ENDPOINT_URL_S3") from None
    return target


def _load_arrays(p: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None, list[str] | None]:
    try:
        if p.suffix.lower() == ".npz":
            with np.load(p, allow_pickle=False) as z:
                obj = {k: z[k] for k in z.files}
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read feature arrays from '{p}' ({type(exc).__name__}); expected keys X and y, "
                        "saved with np.savez or torch.save of a dict of tensors") from None
    if not isinstance(obj, dict):
        raise UserError(f"'{p}' must hold a mapping with keys X and y, got {type(obj).__name__}")
    x = next((obj[k] for k in ("X", "x", "features") if k in obj), None)
    y = next((obj[k] for k in ("y", "Y", "labels") if k in obj), None)
    if x is None or y is None:
        raise UserError(f"'{p}' must hold arrays 'X' (features) and 'y' (labels); found keys {sorted(obj)}")
    x = np.asarray(x.numpy() if isinstance(x, Tensor) else x, dtype=np.float64)
    y = np.asarray(y.numpy() if isinstance(y, Tensor) else y)
    if x.ndim != 2 or y.ndim not in (1, 2) or len(x) != len(y):
        raise UserError(f"'{p}': X must be [N, F] and y [N] or [N, K] with the same N; got {x.shape} and {y.shape}")
    names = lambda key: [str(v) for v in np.asarray(obj[key]).tolist()] if key in obj else None  # noqa: E731
    return x, y.reshape(len(y), -1), names("feature_names"), names("label_names")


def _fingerprint(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(hashlib.sha256(c).digest())
    return h.hexdigest()[:16]


def _file_digest(p: Path) -> bytes:
    h = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def prepare_data(source: str | Path, label_cols: list[str] | tuple[str, ...] | None = None, *,
                 val_frac: float = 0.2, test_frac: float = 0.2, split_seed: int = 0, min_positives: int = 5,
                 drop_cols: list[str] | tuple[str, ...] = (), group_col: str | None = None,
                 image_col: str | None = None, image_root: str | Path | None = None,
                 labels_from: str | None = None, label_sep: str = "|", image_size: int | None = None) -> PreparedData:
    """Load, split and preprocess. ``source`` is a table, an array file, ``synthetic:NAME[?k=v&...]``,
    or images: a MedMNIST ``.npz``, ``synthetic-images:NAME[?…]``, ``digits:D``, or a table whose
    ``image_col`` holds image paths under ``image_root`` (``trainables.images``). ``group_col`` (a
    patient id) keeps each group's rows in one split."""
    if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise UserError(f"--val-frac and --test-frac must be in (0, 1) with a sum below 1; "
                        f"got {val_frac} and {test_frac}")
    if min_positives < 1:
        raise UserError(f"--min-positives must be >= 1, got {min_positives}")
    if not 0 <= split_seed <= _MAX_SEED:
        raise UserError(f"--split-seed must be an integer in [0, {_MAX_SEED}], got {split_seed}")
    label_cols = list(label_cols or [])
    src = str(source)
    split = dict(val_frac=val_frac, test_frac=test_frac, split_seed=split_seed, min_positives=min_positives)
    from trainables import images

    if image_col is not None or images.is_image_source(src):
        return _prepare_images(_load_images(src, label_cols, image_col=image_col, image_root=image_root,
                                            labels_from=labels_from, label_sep=label_sep, group_col=group_col,
                                            image_size=image_size), group_col=group_col, **split)
    for option, value in (("--labels-from", labels_from), ("--image-size", image_size), ("--image-root", image_root)):
        if value is not None:
            raise UserError(f"{option} is for images: a table of image paths needs --image-col COLUMN too")
    if src.startswith("synthetic:"):
        frame, default_labels, spec = synthetic_frame(src)
        if label_cols and sorted(label_cols) != sorted(default_labels):
            raise UserError(f"{src} has the label columns {', '.join(default_labels)}; drop --label-col or name those")
        label_cols = label_cols or default_labels
        digest = spec.encode()
    else:
        with tempfile.TemporaryDirectory(prefix="losstune-data-") as tmp:  # a remote table's local copy
            p = fetch_remote(src, Path(tmp)) if is_remote(src) else Path(src)
            frame, label_cols, digest = _load_file(p, label_cols)
    return _prepare_frame(frame, src, label_cols, digest, drop_cols=drop_cols, group_col=group_col, **split)


def _load_images(src: str, label_cols: list[str], *, image_col: str | None, image_root: str | Path | None,
                 labels_from: str | None, label_sep: str, group_col: str | None, image_size: int | None) -> Any:
    """The ``ImageSet`` a source names (``trainables.images``)."""
    from trainables import images

    if image_col is None:
        if label_cols or labels_from or group_col:
            what = "--label-col" if label_cols else "--labels-from" if labels_from else "--group-col"
            raise UserError(f"{what} is for a table of image paths (--image-col); {src} carries its own labels")
        if src.startswith("synthetic-images"):
            out = images.synthetic_images(src)
        elif src.startswith("digits"):
            out = images.digits_task(src)
        else:
            out = images.load_medmnist(src, image_size=image_size)
        return out if image_size is None or src.endswith(".npz") else _resized(out, image_size)
    if label_cols and labels_from:
        raise UserError("--label-col and --labels-from both name the labels; pass one of them")
    if not label_cols and not labels_from:
        raise UserError("name the labels of the image table: --label-col COLUMN (0/1, yes/no) or --labels-from "
                        "COLUMN with findings joined by --label-sep (e.g. 'Finding Labels')")
    with tempfile.TemporaryDirectory(prefix="losstune-data-") as tmp:
        p = fetch_remote(src, Path(tmp)) if is_remote(src) else Path(src)
        frame = load_table(p)
    root = Path(image_root) if image_root is not None else p.parent
    return images.load_image_table(frame, table=src, image_col=image_col, image_root=root,
                                   label_cols=label_cols or None, labels_from=labels_from, label_sep=label_sep,
                                   group_col=group_col, image_size=image_size)


def _resized(imgset: Any, size: int) -> Any:
    import dataclasses

    from trainables import images

    return dataclasses.replace(imgset, images=images.resize_images(imgset.images, size))


def _check_positives(y: np.ndarray, idx: dict[str, np.ndarray], label_names: list[str], min_positives: int,
                     src: str) -> None:
    """Every split holds at least ``min_positives`` positives and negatives of every label."""
    for split_name, rows in idx.items():
        for j, lab in enumerate(label_names):
            pos = int(y[rows, j].sum())
            neg = len(rows) - pos
            if min(pos, neg) < min_positives:
                what = "positives" if pos < neg else "negatives"
                raise UserError(
                    f"split '{split_name}' would hold {min(pos, neg)} {what} of label '{lab}' "
                    f"(minimum {min_positives}; "
                    f"{int(y[:, j].sum())} positives in all {len(y)} rows of {src}); use more data, "
                    "larger --val-frac/--test-frac, or a lower --min-positives"
                )


def _split_rows(y: np.ndarray, groups: np.ndarray | None, *, val_frac: float, test_frac: float,
                seed: int) -> dict[str, np.ndarray]:
    if groups is None:
        return stratified_split(y, val_frac=val_frac, test_frac=test_frac, seed=seed)
    from trainables.images import stratified_group_split

    return stratified_group_split(y, groups, val_frac=val_frac, test_frac=test_frac, seed=seed)


def _prepare_images(imgset: Any, *, val_frac: float, test_frac: float, split_seed: int, min_positives: int,
                    group_col: str | None) -> PreparedData:
    """Images as they are (uint8, normalised by the model); the source's own splits (MedMNIST), a
    patient-level split (``group_col``), or a stratified one; the training split's per-channel
    statistics for the model's input normalisation."""
    y, names, src = imgset.labels.astype(np.float32), list(imgset.label_names), imgset.source
    fixed = imgset.splits is not None
    idx = (dict(imgset.splits) if fixed
           else _split_rows(y, imgset.groups, val_frac=val_frac, test_frac=test_frac, seed=split_seed))
    _check_positives(y, idx, names, min_positives, src)
    train = imgset.images[idx["train"]]
    per_channel = train.transpose(1, 0, 2, 3).reshape(train.shape[1], -1)
    mean = per_channel.mean(axis=1, dtype=np.float64) / 255
    std = np.maximum(per_channel.std(axis=1, dtype=np.float64) / 255, 1e-3)  # a blank channel divides by 1e-3

    def tensors(rows: np.ndarray) -> Split:
        return Split(torch.from_numpy(np.ascontiguousarray(imgset.images[rows])), torch.from_numpy(y[rows]))

    split_desc = ({"fixed": "the file's own splits"} if fixed
                  else {"val_frac": val_frac, "test_frac": test_frac, "seed": split_seed,
                        **({"groups": group_col} if group_col else {})})
    return PreparedData(
        train=tensors(idx["train"]), val=tensors(idx["val"]), test=tensors(idx["test"]), feature_names=[],
        label_names=names, preprocessor=None, source=src,
        # the input's bytes, the labels, and the shape the images were read at (--image-size)
        fingerprint=_fingerprint(imgset.digest, json.dumps(names).encode(),
                                 json.dumps(list(imgset.images.shape[1:])).encode()),
        split_fingerprint=_fingerprint(*(idx[s].astype(np.int64).tobytes() for s in ("train", "val", "test")),
                                       json.dumps(split_desc).encode()),
        split=split_desc, image_stats=(mean.tolist(), std.tolist()))


def _load_file(p: Path, label_cols: list[str]) -> tuple[pd.DataFrame, list[str], bytes]:
    """A table or feature-array file → (frame with the label columns, label columns, digest of its bytes)."""
    if p.suffix.lower() in ARRAY_FORMATS and p.exists():
        x, y_raw, fnames, lnames = _load_arrays(p)
        lnames = lnames or ([f"label_{i}" for i in range(y_raw.shape[1])] if y_raw.shape[1] > 1 else ["label"])
        fnames = fnames or [f"f{i}" for i in range(x.shape[1])]
        frame = pd.DataFrame(x, columns=fnames)
        for j, n in enumerate(lnames):
            frame[n] = y_raw[:, j]
        if label_cols:
            unknown = [c for c in label_cols if c not in lnames]
            if unknown:
                raise UserError(f"label column(s) {', '.join(unknown)} not in '{p}'; "
                                f"its labels are {', '.join(lnames)}")
            frame = frame.drop(columns=[c for c in lnames if c not in label_cols])
        label_cols = label_cols or lnames
    else:
        frame = load_table(p)
        if not label_cols:
            raise UserError(f"name the label column(s) of '{p}' with --label-col; columns are: "
                            f"{', '.join(map(str, frame.columns[:20]))}{' ...' if len(frame.columns) > 20 else ''}")
    return frame, label_cols, _file_digest(p)


def _prepare_frame(frame: pd.DataFrame, src: str, label_cols: list[str], digest: bytes, *, val_frac: float,
                   test_frac: float, split_seed: int, min_positives: int,
                   drop_cols: list[str] | tuple[str, ...], group_col: str | None = None) -> PreparedData:
    """Labels, features, checks, the stratified split and the preprocessing fit on its training rows."""
    repeated = sorted({c for c in label_cols if label_cols.count(c) > 1})
    if repeated:
        raise UserError(f"--label-col '{repeated[0]}' is given more than once; name each label column once")
    missing_cols = [c for c in label_cols if c not in frame.columns]
    if missing_cols:
        raise UserError(f"label column '{missing_cols[0]}' is not in {src}; columns are: "
                        f"{', '.join(map(str, frame.columns[:20]))}{' ...' if len(frame.columns) > 20 else ''}")
    bad_drop = [c for c in drop_cols if c not in frame.columns]
    if bad_drop:
        raise UserError(f"--drop-col '{bad_drop[0]}' is not a column of {src}")
    dropped_labels = [c for c in drop_cols if c in label_cols]
    if dropped_labels:
        raise UserError(f"--drop-col '{dropped_labels[0]}' is a label column (--label-col); a column is either a label "
                        "or dropped, not both")
    groups = None
    if group_col is not None:  # an identifier of the patient: it splits the rows, it is not a feature
        if group_col not in frame.columns:
            raise UserError(f"--group-col '{group_col}' is not a column of {src}; columns are: "
                            f"{', '.join(map(str, frame.columns[:20]))}{' ...' if len(frame.columns) > 20 else ''}")
        if group_col in label_cols:
            raise UserError(f"--group-col '{group_col}' is a label column; name the column of patient ids")
        if frame[group_col].isna().any():
            rows = ", ".join(str(i) for i in np.flatnonzero(frame[group_col].isna().to_numpy())[:5])
            raise UserError(f"--group-col '{group_col}' in {src} has missing values (rows {rows}); every row needs "
                            "its group (patient id)")
        groups = frame[group_col].astype(str).to_numpy()
        drop_cols = [*drop_cols, group_col] if group_col not in drop_cols else list(drop_cols)
    y = np.stack([parse_labels(frame[c], name=c, source=src) for c in label_cols], axis=1)
    features = frame.drop(columns=list(label_cols) + list(drop_cols))
    if features.shape[1] == 0:
        raise UserError(f"{src} has no feature columns besides the label column(s)")
    empty = [c for c in features.columns if features[c].isna().all()]
    if empty:
        raise UserError(f"feature column '{empty[0]}' in {src} has no values (all missing); "
                        "drop it with --drop-col or fill it")
    _check_finite(features, src)

    idx = _split_rows(y, groups, val_frac=val_frac, test_frac=test_frac, seed=split_seed)
    _check_positives(y, idx, [str(c) for c in label_cols], min_positives, src)
    pre = Preprocessor.fit(features.iloc[idx["train"]])

    def tensors(rows: np.ndarray) -> Split:
        return Split(torch.from_numpy(pre.transform(features.iloc[rows])), torch.from_numpy(y[rows]))

    split_desc = {"val_frac": val_frac, "test_frac": test_frac, "seed": split_seed,
                  **({"groups": group_col} if group_col else {})}
    return PreparedData(
        train=tensors(idx["train"]), val=tensors(idx["val"]), test=tensors(idx["test"]),
        feature_names=pre.feature_names, label_names=[str(c) for c in label_cols], preprocessor=pre, source=src,
        fingerprint=_fingerprint(digest, json.dumps(list(map(str, label_cols))).encode(),
                                 json.dumps(sorted(map(str, drop_cols))).encode()),
        split_fingerprint=_fingerprint(*(idx[s].astype(np.int64).tobytes() for s in ("train", "val", "test")),
                                       json.dumps(split_desc).encode()),
        split=split_desc,
    )


def preprocessing_doc(data: PreparedData) -> dict[str, Any]:
    """What a saved model needs to read new inputs the way it was trained (``preprocessor.json``): a
    table's preprocessor; for images their shape (the model normalises them itself); ``{}`` for
    feature arrays, which are used as they are."""
    if data.is_image:
        c, h, w = data.input_shape
        return {"format": IMAGE_FORMAT, "channels": c, "image_size": [h, w]}
    return data.preprocessor.to_dict() if data.preprocessor is not None else {}


IMAGE_FORMAT = "losstune-images-v1"


# --------------------------------------------------------------------------- synthetic tasks
def synthetic_frame(spec: str) -> tuple[pd.DataFrame, list[str], str]:
    """``synthetic:NAME[?n=..&seed=..&prevalence=..&features=..&signal=..]`` → (frame, labels, canonical spec).

    The tasks have a learnable signal (a few strong features, one interaction, a categorical and a
    boolean effect) and missing values, so they exercise the whole preprocessing path.
    """
    name, _, query = spec.removeprefix("synthetic:").partition("?")
    if name not in SYNTHETIC_TASKS:
        raise UserError(f"unknown synthetic task '{name}'; "
                        f"known: {', '.join('synthetic:' + t for t in SYNTHETIC_TASKS)}")
    defaults = {"rare": (10000, 1 / 50, 16), "screening": (4000, 1 / 5, 16), "treatment": (4000, 1 / 3, 12)}[name]
    opts: dict[str, float] = {"n": defaults[0], "prevalence": defaults[1], "features": defaults[2], "seed": 0,
                              "signal": 1.0}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in opts:
            raise UserError(f"{spec}: unknown option '{key}'; options are {', '.join(opts)}")
        try:
            opts[key] = float(value)
        except ValueError:
            raise UserError(f"{spec}: option '{key}' must be a number, got '{value}'") from None
    n, prev, n_feat, seed = int(opts["n"]), opts["prevalence"], int(opts["features"]), int(opts["seed"])
    strength = opts["signal"]
    if n < 100 or not 0 < prev < 0.5 or n_feat < 6 or not 0 < strength <= 10:
        raise UserError(f"{spec}: need n >= 100, 0 < prevalence < 0.5, features >= 6 and 0 < signal <= 10")
    rng = np.random.default_rng([seed, sorted(SYNTHETIC_TASKS).index(name)])
    x = rng.standard_normal((n, n_feat))
    site = rng.choice(np.array(["north", "south", "east", "west"]), size=n, p=[0.4, 0.3, 0.2, 0.1])
    smoker = rng.random(n) < 0.3
    site_effect = pd.Series(site).map({"north": 0.0, "south": 0.4, "east": -0.4, "west": 0.8}).to_numpy()

    def signal(w_scale: float, shift: int = 0) -> np.ndarray:
        w = np.zeros(n_feat)
        w_scale *= strength
        w[(np.arange(5) + shift) % n_feat] = np.array([1.2, -1.0, 0.8, 0.7, -0.6]) * w_scale
        return x @ w + 0.6 * w_scale * x[:, shift % n_feat] * x[:, (shift + 1) % n_feat] + site_effect + 0.7 * smoker

    if name == "screening":
        logits = np.stack([signal(1.4, shift=2 * k) for k in range(5)], axis=1)
        labels = [f"finding_{k}" for k in range(5)]
    else:
        logits = signal(1.6 if name == "rare" else 0.9)[:, None]
        labels = ["outcome"]
    y = np.empty_like(logits)
    for j in range(logits.shape[1]):
        b = _intercept_for(logits[:, j], prev)
        y[:, j] = rng.random(n) < 1 / (1 + np.exp(-(logits[:, j] + b)))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(n_feat)])
    for col in ("x2", "x5", "x9"):
        if col in frame:
            frame.loc[rng.random(n) < 0.08, col] = np.nan  # missing completely at random
    frame["site"] = site
    frame["smoker"] = np.where(smoker, "t", "f")
    frame.loc[rng.random(n) < 0.03, "smoker"] = None
    for j, lab in enumerate(labels):
        frame[lab] = y[:, j].astype(int)
    canonical = f"synthetic:{name}?n={n}&prevalence={prev:g}&features={n_feat}&seed={seed}&signal={strength:g}"
    return frame, labels, canonical


def _intercept_for(logit: np.ndarray, prevalence: float) -> float:
    """The intercept b with mean(sigmoid(logit + b)) = prevalence (bisection; the mean is monotone in b)."""
    lo, hi = -50.0, 50.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if np.mean(1 / (1 + np.exp(-(logit + mid)))) < prevalence:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2 if math.isfinite(lo + hi) else 0.0
