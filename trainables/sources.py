"""Reading a source: tables (CSV, TSV, Parquet), feature arrays (``.npz``/``.pt``), remote copies
(``s3://``, ``gs://``, ``https://``) fetched to a local file, and the digests behind fingerprints."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from trainables.errors import UserError
from trainables.synthetic import SYNTHETIC_TASKS

__all__ = [
    "TABLE_FORMATS",
    "ARRAY_FORMATS",
    "REMOTE_SCHEMES",
    "load_table",
    "load_file",
    "is_remote",
    "object_store",
    "fetch_remote",
    "fingerprint",
    "file_digest",
]

TABLE_FORMATS = (".csv", ".tsv", ".parquet", ".pq")
ARRAY_FORMATS = (".npz", ".pt")


# --------------------------------------------------------------------------- tables and arrays
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


def load_file(p: Path, label_cols: list[str]) -> tuple[pd.DataFrame, list[str], bytes]:
    """A table or feature-array file → (frame with the label columns, label columns, digest of its bytes).
    The digest is taken in a thread while the file is parsed (hashlib lets go of the GIL)."""
    if not p.is_file():
        frame, label_cols = _load_file(p, label_cols)  # raises: load_table says what is wrong with the path
        return frame, label_cols, file_digest(p)
    with ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(file_digest, p)
        frame, label_cols = _load_file(p, label_cols)
        return frame, label_cols, digest.result()


def _load_file(p: Path, label_cols: list[str]) -> tuple[pd.DataFrame, list[str]]:
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
    return frame, label_cols


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


# --------------------------------------------------------------------------- remote sources
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


# --------------------------------------------------------------------------- digests
def fingerprint(*chunks: bytes) -> str:
    """16 hex digits identifying ``chunks``: the hash of each chunk's hash, in order."""
    h = hashlib.sha256()
    for c in chunks:
        h.update(hashlib.sha256(c).digest())
    return h.hexdigest()[:16]


def file_digest(p: Path) -> bytes:
    """sha256 of a file's bytes, read a megabyte at a time."""
    h = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()
