"""Images → uint8 arrays with binary labels: MedMNIST archives, tables of image paths, synthetic
shapes, scikit-learn's digits (their patient-level split is ``trainables.splits.stratified_group_split``).

Every loader returns an ``ImageSet``: ``images`` uint8 [N, C, H, W] (C = 1 or 3), ``labels`` float32
[N, K] in {0, 1}, and what the caller needs for records and fingerprints. Every problem with the
input is a one-line ``UserError`` (what, where, how to fix), raised before the images are decoded
wherever it can be known without decoding (columns, labels, paths, extensions, missing files).

DICOM is read with pydicom rather than MONAI: pydicom is small and pure Python and does exactly
what is needed here (pixel data, rescale slope/intercept, window); MONAI would bring a large
framework and its dependency pins into a trainer that otherwise needs only torch, numpy and pandas.
Pillow (already present through matplotlib) decodes PNG and JPEG. Both are imported when first used.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch

from trainables.errors import UserError
from trainables.preprocess import parse_labels
from trainables.sources import file_digest
from trainables.splits import MAX_SEED
from trainables.synthetic import parse_options

__all__ = [
    "ImageSet",
    "IMAGE_FORMATS",
    "SYNTHETIC_IMAGE_TASKS",
    "load_medmnist",
    "load_image_table",
    "read_images",
    "as_model_input",
    "synthetic_images",
    "digits_task",
    "resize_images",
    "is_image_source",
]

IMAGE_FORMATS = (".png", ".jpg", ".jpeg", ".dcm")
SYNTHETIC_IMAGE_TASKS = {
    "rare": "binary, about 1:50: a faint disc on a noisy background (32x32, grayscale)",
    "screening": "multi-label (4 labels, up to 6), about 1:5 each: one shape per finding (disc, square, cross, ...)",
}
_MEDMNIST_KEYS = tuple(f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels"))
_SPLITS = ("train", "val", "test")
_SHAPES = ("disc", "square", "cross", "bar", "ring", "diagonal")
_MAX_FINDINGS = 200  # more distinct "findings" than this is a free-text column, not a findings list
_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass
class ImageSet:
    """Images and labels as loaded, before any split or training."""

    images: np.ndarray  # uint8 [N, C, H, W] (C = 1 or 3), contiguous
    labels: np.ndarray  # float32 [N, K] in {0, 1}
    label_names: list[str]
    groups: np.ndarray | None  # [N] group ids (patient ids) as strings, or None
    splits: dict[str, np.ndarray] | None  # the source's own train/val/test rows (MedMNIST), else None
    digest: bytes  # sha256 of the input (file bytes, or the canonical spec of a generated set)
    source: str  # canonical source string (for records)


# --------------------------------------------------------------------------- resizing
def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, C, H, W] → uint8 [N, C, size, size], bilinear with antialiasing (what Pillow does
    when it shrinks), computed on float and rounded back. Works through the set in chunks, so a
    large set is never held as float all at once."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"resize_images needs uint8 [N, C, H, W], got {images.dtype} {images.shape}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return np.ascontiguousarray(images)
    out = np.empty((n, c, size, size), dtype=np.uint8)
    chunk = max(1, (1 << 22) // max(1, c * max(h * w, size * size)))  # about 16 MB of float32 per step
    for start in range(0, n, chunk):
        x = torch.from_numpy(np.asarray(images[start:start + chunk], dtype=np.float32))
        y = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                            antialias=True)
        out[start:start + chunk] = y.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def _check_image_size(image_size: int | None) -> int | None:
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or not 1 <= image_size <= 4096:
        raise UserError(f"--image-size must be a whole number of pixels from 1 to 4096, got {image_size!r}")
    return int(image_size)


# --------------------------------------------------------------------------- MedMNIST
def load_medmnist(path: str | Path, *, image_size: int | None = None) -> ImageSet:
    """A MedMNIST archive (``{train,val,test}_images`` N×H×W[×C] uint8, ``{train,val,test}_labels``
    N×K of 0/1) → ``ImageSet`` with the file's own splits as row ranges of the concatenation.

    ``image_size`` resizes every image to image_size×image_size. Label names come from a
    ``label_names`` array in the file, else ``label_0 .. label_{K-1}``.
    """
    p = Path(path)
    size = _check_image_size(image_size)
    arrays = _read_medmnist(p)
    images, labels = [], []
    for split in _SPLITS:
        images.append(_medmnist_images(arrays[f"{split}_images"], p, split))
        labels.append(_medmnist_labels(arrays[f"{split}_labels"], p, split, len(images[-1])))
    _check_same_shapes(images, p, resized=size is not None)
    _check_binary(np.concatenate(labels), p)
    if size is not None:
        images = [resize_images(x, size) for x in images]
    k = labels[0].shape[1]
    names = _medmnist_label_names(arrays.get("label_names"), k, p)
    bounds = np.cumsum([0] + [len(x) for x in images])
    splits = {s: np.arange(bounds[i], bounds[i + 1], dtype=np.int64) for i, s in enumerate(_SPLITS)}
    return ImageSet(images=np.ascontiguousarray(np.concatenate(images)),
                    labels=np.concatenate(labels).astype(np.float32), label_names=names, groups=None,
                    splits=splits, digest=file_digest(p), source=str(path))


def _read_medmnist(p: Path) -> dict[str, np.ndarray]:
    if not p.is_file():
        raise UserError(f"MedMNIST file '{p}' does not exist; pass the .npz path (e.g. pneumoniamnist.npz)")
    try:
        z = np.load(p, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"'{p}' is not an .npz archive ({type(exc).__name__}); a MedMNIST file is the .npz that "
                        "medmnist downloads, saved with np.savez") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise UserError(f"'{p}' holds a single array, not an .npz archive of named arrays; a MedMNIST file has "
                        f"the keys {', '.join(_MEDMNIST_KEYS)}")
    with z:
        missing = [k for k in _MEDMNIST_KEYS if k not in z.files]
        if missing:
            raise UserError(f"'{p}' lacks the MedMNIST key(s) {', '.join(missing)}; expected "
                            f"{', '.join(_MEDMNIST_KEYS)}; found {', '.join(sorted(z.files)) or 'none'}")
        try:
            return {k: z[k] for k in (*_MEDMNIST_KEYS, "label_names") if k in z.files}
        except Exception as exc:  # object arrays need pickle, which is refused; a damaged member
            raise UserError(f"cannot read the arrays of '{p}' ({type(exc).__name__}: {_first_line(exc)}); "
                            "save plain numeric arrays with np.savez") from None


def _medmnist_images(x: np.ndarray, p: Path, split: str) -> np.ndarray:
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] not in (1, 3)):
        raise UserError(f"'{split}_images' in '{p}' is {x.dtype} with shape {x.shape}; expected uint8 N×H×W "
                        "(grayscale) or N×H×W×C with C = 1 or 3")
    if len(x) == 0:
        raise UserError(f"split '{split}' of '{p}' has no images; a MedMNIST file holds train, val and test images")
    return np.ascontiguousarray(x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2))


def _medmnist_labels(y: np.ndarray, p: Path, split: str, n_images: int) -> np.ndarray:
    if y.ndim not in (1, 2) or len(y) != n_images:
        raise UserError(f"'{split}_labels' in '{p}' has shape {y.shape} but '{split}_images' holds {n_images} "
                        f"images; expected {n_images} rows of labels (N or N×K)")
    return y.reshape(len(y), -1)


def _check_same_shapes(images: list[np.ndarray], p: Path, *, resized: bool) -> None:
    """Channels must agree across splits; sizes too unless every image is resized anyway."""
    first = images[0].shape[1:]
    for split, x in zip(_SPLITS[1:], images[1:]):
        if x.shape[1] != first[0] or (not resized and x.shape[1:] != first):
            raise UserError(f"images in '{p}' differ between splits: train is {first[0]}×{first[1]}×{first[2]} "
                            f"(C×H×W), {split} is {x.shape[1]}×{x.shape[2]}×{x.shape[3]}; pass --image-size for "
                            "sizes (channels must agree)")


def _check_binary(y: np.ndarray, p: Path) -> None:
    values = np.unique(y)
    if not np.isin(values, (0, 1)).all():
        shown = ", ".join(str(v) for v in values[:8].tolist()) + (", ..." if len(values) > 8 else "")
        raise UserError(f"labels in '{p}' hold the values {shown} (a multi-class task); losstune needs binary "
                        "labels per column: make one 0/1 column per class you care about (one-vs-rest) and save "
                        "them as an N×K array")


def _medmnist_label_names(names: np.ndarray | None, k: int, p: Path) -> list[str]:
    if names is None:
        return [f"label_{j}" for j in range(k)]
    out = [str(v) for v in np.asarray(names).reshape(-1).tolist()]
    if len(out) != k or len(set(out)) != k:
        raise UserError(f"'label_names' in '{p}' holds {len(out)} name(s) for {k} label column(s); give one "
                        "distinct name per column")
    return out


# --------------------------------------------------------------------------- tables of image paths
@dataclass(frozen=True)
class _Row:
    index: int  # 0-based row of the table after its header
    written: str  # the path as the table writes it
    path: Path  # resolved, inside the image root


def load_image_table(frame: pd.DataFrame, *, table: str, image_col: str, image_root: str | Path,
                     label_cols: list[str] | None = None, labels_from: str | None = None, label_sep: str = "|",
                     no_finding: str = "No Finding", group_col: str | None = None, image_size: int | None = None,
                     channels: int | None = None) -> ImageSet:
    """A table whose ``image_col`` holds paths relative to ``image_root`` (PNG, JPEG, DICOM) → ``ImageSet``.

    Labels are ``label_cols`` (0/1, true/false, yes/no) or, ChestX-ray14-style, ``labels_from``: a
    column of findings joined by ``label_sep`` where every distinct finding is a label (sorted) and
    ``no_finding`` means none. ``group_col`` (e.g. "Patient ID") gives ``groups`` for
    ``stratified_group_split``. ``channels`` None means 1 if every image is grayscale, else 3
    (grayscale images then repeat their channel). Images of different sizes need ``image_size``.
    Images are decoded in row order (a few at a time on threads); the first error named is the
    lowest row's. ``digest`` covers the columns used (their names and values) and every image's bytes.
    """
    size = _check_image_size(image_size)
    if channels not in (None, 1, 3):
        raise UserError(f"--channels must be 1 or 3, got {channels!r}")
    if len(frame) == 0:
        raise UserError(f"table '{table}' has no rows")
    frame = frame.reset_index(drop=True)  # rows are counted from 0 after the header, whatever the index
    for option, col in (("--image-col", image_col), ("--group-col", group_col)):
        if col is not None and col not in frame.columns:
            raise UserError(f"{option} '{col}' is not a column of '{table}'; columns are: {_shown_columns(frame)}")
    labels, names, used = _table_labels(frame, table=table, label_cols=label_cols, labels_from=labels_from,
                                        label_sep=label_sep, no_finding=no_finding)
    groups = _table_groups(frame, group_col, table)
    rows = _image_rows(frame[image_col], image_col=image_col, image_root=image_root, table=table)
    images, digests = _decode_all(rows, table=table, channels=channels, size=size)
    columns = [image_col, *used, *([group_col] if group_col else [])]
    return ImageSet(images=images, labels=labels, label_names=names, groups=groups, splits=None,
                    digest=_table_digest(frame, columns, digests), source=str(table))


def read_images(frame: pd.DataFrame, *, table: str, image_col: str, image_root: str | Path, channels: int,
                image_size: int) -> np.ndarray:
    """The images a table names, decoded as a trained model reads them (``predict``): ``channels``
    channels, every image resized to image_size×image_size; uint8 [N, C, S, S] in row order. The same
    checks as ``load_image_table`` (paths inside the root, files present and decodable)."""
    frame = frame.reset_index(drop=True)
    if image_col not in frame.columns:
        raise UserError(f"--image-col '{image_col}' is not a column of '{table}'; columns are: {_shown_columns(frame)}")
    rows = _image_rows(frame[image_col], image_col=image_col, image_root=image_root, table=table)
    images, _ = _decode_all(rows, table=table, channels=channels, size=_check_image_size(image_size))
    return images


def as_model_input(images: np.ndarray, *, channels: int, image_size: int) -> np.ndarray:
    """Images [N, H, W], [N, H, W, C] or [N, C, H, W] (uint8, C = 1 or 3) as a model of ``channels``
    channels at image_size×image_size reads them: grey repeated into RGB, RGB to luma (ITU-R 601,
    as Pillow's convert("L")), then resized."""
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise UserError(f"images must be uint8 N×H×W or N×H×W×C, got {x.dtype} with shape {x.shape}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.shape[1] not in (1, 3):
        raise UserError(f"images must have 1 or 3 channels, got shape {images.shape}")
    if channels == 3 and x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    elif channels == 1 and x.shape[1] == 3:
        luma = x[:, 0] * 0.299 + x[:, 1] * 0.587 + x[:, 2] * 0.114
        x = np.rint(luma).clip(0, 255).astype(np.uint8)[:, None]
    return resize_images(np.ascontiguousarray(x), image_size)


def _shown_columns(frame: pd.DataFrame) -> str:
    return ", ".join(map(str, frame.columns[:20])) + (" ..." if len(frame.columns) > 20 else "")


def _table_labels(frame: pd.DataFrame, *, table: str, label_cols: list[str] | None, labels_from: str | None,
                  label_sep: str, no_finding: str) -> tuple[np.ndarray, list[str], list[str]]:
    """(labels float32 [N, K], label names, the columns they were read from)."""
    if bool(label_cols) == bool(labels_from):
        raise UserError(f"name the labels of '{table}' one way: label columns (--label-col, 0/1 or yes/no) or one "
                        "column of findings (--labels-from, e.g. 'Finding Labels'), not both and not neither")
    if label_cols:
        missing = [c for c in label_cols if c not in frame.columns]
        if missing:
            raise UserError(f"label column '{missing[0]}' is not in '{table}'; columns are: {_shown_columns(frame)}")
        repeated = sorted({c for c in label_cols if label_cols.count(c) > 1})
        if repeated:
            raise UserError(f"--label-col '{repeated[0]}' is given more than once; name each label column once")
        y = np.stack([parse_labels(frame[c], name=str(c), source=table) for c in label_cols], axis=1)
        return y.astype(np.float32), [str(c) for c in label_cols], list(label_cols)
    if labels_from not in frame.columns:
        raise UserError(f"--labels-from '{labels_from}' is not a column of '{table}'; columns are: "
                        f"{_shown_columns(frame)}")
    if not label_sep:
        raise UserError("--label-sep must not be empty; ChestX-ray14 joins its findings with '|'")
    y, names = _findings(frame[labels_from], column=labels_from, table=table, sep=label_sep, no_finding=no_finding)
    return y, names, [labels_from]


def _findings(col: pd.Series, *, column: str, table: str, sep: str, no_finding: str) -> tuple[np.ndarray, list[str]]:
    """Findings joined by ``sep`` → one 0/1 column per distinct finding (sorted)."""
    text = col.astype(object).where(col.notna(), "").astype(str).str.strip()
    empty = np.flatnonzero((text == "").to_numpy())
    if len(empty):
        raise UserError(f"column '{column}' of '{table}' is empty in {len(empty)} row(s) (rows {_shown_rows(empty)}, "
                        f"counted from 0 after the header); write '{no_finding}' for an image without findings")
    per_row = [[f.strip() for f in v.split(sep) if f.strip() and f.strip() != no_finding] for v in text]
    names = sorted({f for found in per_row for f in found})
    if not names:
        raise UserError(f"column '{column}' of '{table}' names no finding besides '{no_finding}'; check --labels-from, "
                        f"--label-sep ('{sep}') and --no-finding")
    if len(names) > _MAX_FINDINGS:
        raise UserError(f"column '{column}' of '{table}' has {len(names)} distinct findings (limit {_MAX_FINDINGS}); "
                        f"is it a findings list joined by '{sep}'? check --labels-from and --label-sep")
    where = {n: j for j, n in enumerate(names)}
    y = np.zeros((len(text), len(names)), dtype=np.float32)
    for i, found in enumerate(per_row):
        y[i, [where[f] for f in found]] = 1.0
    always = [n for j, n in enumerate(names) if y[:, j].min() == 1]
    if always:
        raise UserError(f"finding '{always[0]}' in column '{column}' of '{table}' is present in all {len(y)} rows; "
                        "AUROC and AUPRC need images without it too")
    return y, names


def _table_groups(frame: pd.DataFrame, group_col: str | None, table: str) -> np.ndarray | None:
    if group_col is None:
        return None
    col = frame[group_col]
    missing = np.flatnonzero(col.isna().to_numpy() | (col.astype(str).str.strip() == "").to_numpy())
    if len(missing):
        raise UserError(f"--group-col '{group_col}' of '{table}' is empty in {len(missing)} row(s) (rows "
                        f"{_shown_rows(missing)}, counted from 0 after the header); every image needs its group "
                        "(patient) so that no patient is in two splits")
    return col.astype(str).str.strip().to_numpy(dtype=str)


def _image_rows(col: pd.Series, *, image_col: str, image_root: str | Path, table: str) -> list[_Row]:
    """Every row's image path, checked without decoding: present, inside the root, supported, a file."""
    root = Path(image_root).expanduser()
    if not root.is_dir():
        raise UserError(f"--image-root '{image_root}' is not a folder; it must hold the images that column "
                        f"'{image_col}' of '{table}' names")
    root = root.resolve()
    rows = []
    for i, value in enumerate(col.tolist()):
        written = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).strip()
        rows.append(_checked_row(i, written, root=root, image_col=image_col, table=table))
    return rows


def _checked_row(i: int, written: str, *, root: Path, image_col: str, table: str) -> _Row:
    where = f"row {i} of '{table}' (counted from 0 after the header)"
    if not written:
        raise UserError(f"column '{image_col}' is empty in {where}; every row needs an image path")
    # resolve() follows '..' and symbolic links, so the check sees where the file really is
    path = (root / written).resolve()
    if not path.is_relative_to(root):
        raise UserError(f"image path '{written}' in {where} leads outside --image-root '{root}'; paths must name "
                        "files inside the image root (no '..', no absolute paths elsewhere, no links out)")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise UserError(f"image '{written}' in {where} has an unsupported format '{suffix or '(none)'}'; "
                        f"supported: {', '.join(IMAGE_FORMATS)}")
    if not path.is_file():
        raise UserError(f"image file '{path}' named in {where} does not exist; check --image-root and column "
                        f"'{image_col}'")
    return _Row(i, written, path)


def _decode_all(rows: list[_Row], *, table: str, channels: int | None,
                size: int | None) -> tuple[np.ndarray, list[bytes]]:
    """Decode every row in order into one preallocated array; (images, per-image sha256 digests)."""
    from PIL import Image

    out: np.ndarray | None = None
    first: _Row | None = None
    digests: list[bytes] = []
    decode = partial(_decode_row, table=table, channels=channels, size=size)
    workers = min(8, os.cpu_count() or 1)
    # Pillow warns (rather than raises) between MAX_IMAGE_PIXELS and twice that: make it an error. The
    # filter list is process-wide, so the decoding threads see it too.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with contextlib.closing(_ordered_map(decode, rows, workers=workers)) as results:
            for row, (image, digest) in zip(rows, results):
                if out is None:
                    out, first = np.empty((len(rows), *image.shape), dtype=np.uint8), row
                elif image.shape[1:] != out.shape[2:]:
                    raise UserError(_size_message(first, out.shape[2:], row, image.shape[1:], table))
                if image.shape[0] > out.shape[1]:  # the first colour image: the grey ones so far repeat
                    out = np.repeat(out, 3, axis=1)
                out[row.index] = image
                digests.append(digest)
    assert out is not None  # the table has rows
    return out, digests


def _size_message(first: _Row | None, first_hw: tuple[int, ...], row: _Row, hw: tuple[int, ...], table: str) -> str:
    assert first is not None
    return (f"images in '{table}' differ in size: '{first.written}' (row {first.index}) is {first_hw[1]}x{first_hw[0]} "
            f"and '{row.written}' (row {row.index}) is {hw[1]}x{hw[0]} (width x height); pass --image-size N to "
            "resize every image to NxN")


def _ordered_map(fn: Callable[[_T], _R], items: Iterable[_T], *, workers: int) -> Iterator[_R]:
    """``map(fn, items)`` on a thread pool, results in order, with a bounded number in flight: the
    first exception raised is the earliest item's, and closing the iterator cancels the rest."""
    it = iter(items)
    if workers <= 1:
        yield from map(fn, it)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="losstune-images")
    pending: deque[Future[_R]] = deque(pool.submit(fn, item) for item in islice(it, 4 * workers))
    try:
        while pending:
            result = pending.popleft().result()
            for item in islice(it, 1):
                pending.append(pool.submit(fn, item))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _decode_row(row: _Row, *, table: str, channels: int | None, size: int | None) -> tuple[np.ndarray, bytes]:
    """One image → (uint8 [C, H, W], sha256 of the file's bytes); C follows ``channels`` (None: as stored)."""
    where = f"image '{row.written}' (row {row.index} of '{table}')"
    try:
        data = row.path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {where}: {type(exc).__name__}: {_first_line(exc)}; "
                        "check its permissions") from None
    if row.path.suffix.lower() == ".dcm":
        image = _channels(_decode_dicom(data, where), channels)
    else:
        image = _decode_pil(data, where, channels)
    if size is not None:
        image = resize_images(image[None], size)[0]
    return np.ascontiguousarray(image), hashlib.sha256(data).digest()


def _check_pixels(width: int, height: int, where: str) -> None:
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise UserError(f"{where} has {width}x{height} pixels, more than Pillow's limit of {limit} "
                        "(a decompression bomb?); remove the row or store the image smaller")


def _decode_pil(data: bytes, where: str, channels: int | None) -> np.ndarray:
    from PIL import Image, ImageMode

    try:
        with Image.open(io.BytesIO(data)) as im:
            _check_pixels(im.width, im.height, where)
            im.load()  # decodes now: a truncated file raises here, not later
            grey = ImageMode.getmode(im.mode).basemode == "L"
            if grey and (im.mode.startswith("I") or im.mode == "F"):
                # 16-bit and float greys: Pillow's convert("L") clips them at 255, which turns 12-bit data
                # white; map the image's range instead, as a DICOM without a window.
                return _channels((_min_max(np.asarray(im, dtype=np.float64))[None], True), channels)
            want = channels or (1 if grey else 3)
            pixels = np.asarray(im.convert("L" if want == 1 else "RGB"))
    except UserError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"{where} is larger than Pillow's limit of {Image.MAX_IMAGE_PIXELS} pixels (a decompression "
                        "bomb?); remove the row or store the image smaller") from None
    except Exception as exc:  # truncated, not an image, a broken header
        raise UserError(f"cannot decode {where}: {type(exc).__name__}: {_first_line(exc)}; re-export the file or "
                        "remove the row") from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _channels(decoded: tuple[np.ndarray, bool], channels: int | None) -> np.ndarray:
    """(uint8 [C, H, W], is grey) → the channels asked for: grey repeats; colour → luma as Pillow's convert("L")."""
    image, grey = decoded
    if channels == 3 and image.shape[0] == 1:
        return np.repeat(image, 3, axis=0)
    if channels == 1 and image.shape[0] == 3:
        from PIL import Image

        return np.asarray(Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)), "RGB").convert("L"))[None]
    return image


def _decode_dicom(data: bytes, where: str) -> tuple[np.ndarray, bool]:
    """A single-frame DICOM → (uint8 [C, H, W], is grey): rescale, then the window (or the range), to 0..255."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        height, width = int(ds.Rows), int(ds.Columns)
    except Exception as exc:
        raise UserError(f"cannot read {where} as DICOM: {type(exc).__name__}: {_first_line(exc)}; re-export the file "
                        "or remove the row") from None
    _check_pixels(width, height, where)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # e.g. a compressed transfer syntax without its decoder installed
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise UserError(f"cannot decode the pixels of {where} (transfer syntax {syntax}): {type(exc).__name__}: "
                        f"{_first_line(exc)}; store it uncompressed or install its pydicom decoder") from None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 3 and pixels.ndim == 3 and pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels.transpose(2, 0, 1)), False
    if samples != 1 or pixels.ndim != 2:
        raise UserError(f"{where} holds {samples} sample(s) per pixel with shape {pixels.shape}; losstune reads "
                        "single-frame greyscale DICOM (or 8-bit RGB): export one frame per file")
    slope, intercept = _dicom_number(ds, "RescaleSlope", 1.0), _dicom_number(ds, "RescaleIntercept", 0.0)
    values = pixels.astype(np.float64) * slope + intercept
    center, width_ = _dicom_number(ds, "WindowCenter", None), _dicom_number(ds, "WindowWidth", None)
    grey = _window(values, center, width_) if center is not None and width_ is not None else _min_max(values)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":  # 0 is white in MONOCHROME1
        grey = 255 - grey
    return grey[None], True


def _dicom_number(ds: Any, keyword: str, default: float | None) -> float | None:
    """A numeric attribute, the first value when it holds several (several windows: the first is the default)."""
    value = ds.get(keyword, None)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        value = value[0] if len(value) else None
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    return float(value)


def _window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's linear VOI window (PS3.3 C.11.2.1.2.1) onto 0..255: values at or below
    c - 0.5 - (w-1)/2 are 0, above c - 0.5 + (w-1)/2 are 255, linear between."""
    if width <= 1:  # the standard needs w >= 1; w = 1 is a threshold at c - 0.5
        return np.where(values > center - 0.5, 255, 0).astype(np.uint8)
    scaled = ((values - (center - 0.5)) / (width - 1) + 0.5).clip(0, 1) * 255
    return np.rint(scaled).astype(np.uint8)


def _min_max(values: np.ndarray) -> np.ndarray:
    """The image's own range onto 0..255 (a constant image is black)."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - lo) / (hi - lo) * 255).astype(np.uint8)


def _table_digest(frame: pd.DataFrame, columns: list[str], image_digests: list[bytes]) -> bytes:
    h = hashlib.sha256(b"losstune-image-table-v1")
    cells = frame[columns].astype(object).where(frame[columns].notna(), None).astype(str).to_numpy().tolist()
    h.update(hashlib.sha256(json.dumps([list(map(str, columns)), cells]).encode()).digest())
    for d in image_digests:
        h.update(d)
    return h.digest()


# --------------------------------------------------------------------------- synthetic images
def synthetic_images(spec: str) -> ImageSet:
    """``synthetic-images:NAME[?n=..&size=..&prevalence=..&labels=..&seed=..&difficulty=..&channels=..]``.

    Shapes whose presence is the label, on a noisy background with a random brightness and
    gradient. ``rare``: one label (a disc), prevalence 0.02 by default. ``screening``: ``labels``
    labels (default 4), each its own shape (disc, square, cross, bar, ring, diagonal), present
    independently. Exactly round(n × prevalence) images hold each shape, so the prevalence is the
    one asked for up to 1/n. ``difficulty`` (0..1) lowers the contrast and shrinks the shapes.
    The same spec gives the same images (numpy's default_rng).
    """
    name, opts, canonical = _parse_synthetic(spec)
    n, size, channels = int(opts["n"]), int(opts["size"]), int(opts["channels"])
    k = int(opts.get("labels", 1))
    rng = np.random.default_rng([int(opts["seed"]), sorted(SYNTHETIC_IMAGE_TASKS).index(name)])
    labels = np.zeros((n, k), dtype=np.float32)
    positives = min(max(1, round(n * opts["prevalence"])), n - 1)
    for j in range(k):
        labels[rng.permutation(n)[:positives], j] = 1.0
    images = _background(rng, n, channels, size)
    difficulty = opts["difficulty"]
    contrast = 80.0 - 55.0 * difficulty
    radius = size * (0.2 - 0.1 * difficulty)
    for j in range(k):
        _draw(images, np.flatnonzero(labels[:, j]), _SHAPES[j], rng, radius=radius, contrast=contrast)
    names = ["finding"] if name == "rare" else list(_SHAPES[:k])
    return ImageSet(images=np.clip(np.rint(images), 0, 255).astype(np.uint8), labels=labels, label_names=names,
                    groups=None, splits=None, digest=hashlib.sha256(canonical.encode()).digest(), source=canonical)


def _parse_synthetic(spec: str) -> tuple[str, dict[str, float], str]:
    name, _, query = spec.removeprefix("synthetic-images:").partition("?")
    if name not in SYNTHETIC_IMAGE_TASKS:
        raise UserError(f"unknown synthetic image task '{name}'; "
                        f"known: {', '.join('synthetic-images:' + t for t in SYNTHETIC_IMAGE_TASKS)}")
    opts: dict[str, float] = {"n": 4000, "size": 32, "prevalence": 0.02 if name == "rare" else 0.2}
    if name == "screening":
        opts["labels"] = 4
    opts.update(seed=0, difficulty=0.5, channels=1)
    parse_options(spec, query, opts)
    whole = [k for k in ("n", "size", "labels", "seed", "channels") if k in opts and opts[k] != int(opts[k])]
    if whole:
        raise UserError(f"{spec}: option '{whole[0]}' must be a whole number, got {opts[whole[0]]:g}")
    if not (opts["n"] >= 100 and 16 <= opts["size"] <= 256 and 0 < opts["prevalence"] < 0.5
            and 1 <= opts.get("labels", 1) <= len(_SHAPES) and 0 <= opts["seed"] <= MAX_SEED
            and 0 <= opts["difficulty"] <= 1 and opts["channels"] in (1, 3)):
        raise UserError(f"{spec}: need n >= 100, 16 <= size <= 256, 0 < prevalence < 0.5"
                        f"{f', 1 <= labels <= {len(_SHAPES)}' if 'labels' in opts else ''}, "
                        f"0 <= seed <= {MAX_SEED}, 0 <= difficulty <= 1 and channels 1 or 3")
    shown = {k: (f"{v:g}" if k in ("prevalence", "difficulty") else str(int(v))) for k, v in opts.items()}
    return name, opts, f"synthetic-images:{name}?" + "&".join(f"{k}={v}" for k, v in shown.items())


def _background(rng: np.random.Generator, n: int, channels: int, size: int) -> np.ndarray:
    """float32 [N, C, size, size]: grey level 90 ± 6, a gradient of up to ±12 across the image, noise σ 16."""
    level = 90.0 + rng.uniform(-6, 6, size=n)
    slope_y, slope_x = rng.uniform(-12, 12, size=(2, n))
    coord = (np.arange(size) - (size - 1) / 2) / size
    images = rng.normal(0.0, 16.0, size=(n, channels, size, size)).astype(np.float32)
    images += (level[:, None, None] + slope_y[:, None, None] * coord[None, :, None]
               + slope_x[:, None, None] * coord[None, None, :]).astype(np.float32)[:, None]
    return images


def _draw(images: np.ndarray, rows: np.ndarray, shape: str, rng: np.random.Generator, *, radius: float,
          contrast: float) -> None:
    """Add ``shape`` (brighter by ``contrast``) at a random place and scale to each image of ``rows``."""
    size = images.shape[-1]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    radii = radius * rng.uniform(0.8, 1.2, size=len(rows))
    spots = rng.random((len(rows), 2))
    reach = 1.6 if shape == "bar" else 1.0  # the bar is longer than its radius
    for i, r, spot in zip(rows, radii, spots):
        margin = math.ceil(reach * r) + 1
        cy, cx = margin + spot * max(size - 1 - 2 * margin, 0)
        images[i, :, _shape_mask(shape, yy - cy, xx - cx, r)] += contrast


def _shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    stroke = max(r / 3, 0.8)  # half-width of the strokes of a cross, a bar, a ring, a diagonal
    ady, adx = np.abs(dy), np.abs(dx)
    if shape == "disc":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return (ady <= 0.85 * r) & (adx <= 0.85 * r)
    if shape == "cross":
        return ((ady <= stroke) & (adx <= r)) | ((adx <= stroke) & (ady <= r))
    if shape == "bar":
        return (ady <= stroke) & (adx <= 1.6 * r)
    if shape == "ring":
        d = np.sqrt(dy**2 + dx**2)
        return (d <= r) & (d >= r - 1.5 * stroke)
    return (np.abs(dy - dx) <= 1.4 * stroke) & (ady <= r) & (adx <= r)  # diagonal


# --------------------------------------------------------------------------- digits
def digits_task(spec: str) -> ImageSet:
    """``digits:D``: scikit-learn's bundled 1,797 8×8 digit scans (no download), one digit D against
    the other nine (about 1:9). Pixels 0..16 are scaled to 0..255."""
    from sklearn.datasets import load_digits

    name, _, digit = spec.partition(":")
    if name != "digits" or len(digit) != 1 or not digit.isdigit():
        raise UserError(f"'{spec}' does not name a digit; write digits:D with D from 0 to 9 (that digit against "
                        "the other nine), e.g. digits:3")
    bunch = load_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255 / 16)).clip(0, 255).astype(np.uint8)
    labels = (np.asarray(bunch.target) == int(digit)).astype(np.float32)[:, None]
    images = np.ascontiguousarray(images[:, None])
    canonical = f"digits:{digit}"
    digest = hashlib.sha256(canonical.encode() + images.tobytes() + labels.tobytes()).digest()
    return ImageSet(images=images, labels=labels, label_names=[f"digit_{digit}"], groups=None, splits=None,
                    digest=digest, source=canonical)


# --------------------------------------------------------------------------- sources
def is_image_source(source: str) -> bool:
    """Whether ``source`` names images: ``synthetic-images:...``, ``digits:...`` (or the bare names,
    so that their loaders explain what is missing), or a local ``.npz`` with MedMNIST's
    ``train_images``. Cheap: an archive's member names are read, never its arrays."""
    s = str(source)
    if s.startswith(("synthetic-images:", "digits:")) or s in ("synthetic-images", "digits"):
        return True
    if not s.lower().endswith(".npz") or not Path(s).is_file():
        return False
    try:
        with np.load(s, allow_pickle=False) as z:
            return "train_images" in z.files
    except Exception:  # not an archive (or a single array): the table/array loader says what is wrong
        return False


# --------------------------------------------------------------------------- helpers
def _shown_rows(rows: np.ndarray) -> str:
    return ", ".join(str(int(r)) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
