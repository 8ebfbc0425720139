"""Tables, arrays and images → tensors: ``prepare_data`` reads a source, splits it and preprocesses it
into ``PreparedData``, what every trial reads.

Preprocessing (median imputation with missing-value indicators, one-hot for categoricals,
standardisation) is fit on the training split only and saved with the model. Splits are stratified
and seeded: train / validation (search, early stopping) / test (held out from the whole search).
Every problem with the input is a one-line ``UserError`` raised before any training.

The parts, one module each: reading a source (``trainables.sources``), columns and labels
(``trainables.preprocess``), splits (``trainables.splits``), synthetic tables
(``trainables.synthetic``) and images (``trainables.images``); this module puts them together.
"""

from __future__ import annotations

import gc
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from trainables import images
from trainables.errors import UserError
from trainables.preprocess import Preprocessor, check_finite, fit_transform, parse_labels
from trainables.sources import fetch_remote, fingerprint, is_remote, load_file, load_table
from trainables.splits import MAX_SEED, check_positives, split_rows
from trainables.synthetic import synthetic_frame

__all__ = [
    "Split",
    "PreparedData",
    "SharedData",
    "prepare_data",
    "preprocessing_doc",
    "IMAGE_FORMAT",
]


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
    if not 0 <= split_seed <= MAX_SEED:
        raise UserError(f"--split-seed must be an integer in [0, {MAX_SEED}], got {split_seed}")
    label_cols = list(label_cols or [])
    src = str(source)
    split = dict(val_frac=val_frac, test_frac=test_frac, split_seed=split_seed, min_positives=min_positives)
    if image_col is not None or images.is_image_source(src):
        return _prepare_images(_load_images(src, label_cols, image_col=image_col, image_root=image_root,
                                            labels_from=labels_from, label_sep=label_sep, group_col=group_col,
                                            image_size=image_size), group_col=group_col, **split)
    for option, value in (("--labels-from", labels_from), ("--image-size", image_size), ("--image-root", image_root)):
        if value is not None:
            raise UserError(f"{option} is for images: a table of image paths needs --image-col COLUMN too")
    with _collector_paused():
        if src.startswith("synthetic:"):
            frame, default_labels, spec = synthetic_frame(src)
            if label_cols and sorted(label_cols) != sorted(default_labels):
                raise UserError(f"{src} has the label columns {', '.join(default_labels)}; drop --label-col or "
                                "name those")
            label_cols = label_cols or default_labels
            digest = spec.encode()
        else:
            with tempfile.TemporaryDirectory(prefix="losstune-data-") as tmp:  # a remote table's local copy
                p = fetch_remote(src, Path(tmp)) if is_remote(src) else Path(src)
                frame, label_cols, digest = load_file(p, label_cols)
        return _prepare_frame(frame, src, label_cols, digest, drop_cols=drop_cols, group_col=group_col, **split)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a table is read and prepared: the columns' many
    small objects set off full collections of every object the process holds (torch's, pandas'),
    each holding the GIL that the threads filling the arrays wait on. A million-row table: 8
    collections, 0.1 s, and 0.15-0.3 s of its 2.3 s (benchmarks/bench_scale.py). Nothing it makes is
    cyclic garbage worth collecting sooner; the collector runs again afterwards."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _load_images(src: str, label_cols: list[str], *, image_col: str | None, image_root: str | Path | None,
                 labels_from: str | None, label_sep: str, group_col: str | None, image_size: int | None) -> Any:
    """The ``ImageSet`` a source names (``trainables.images``)."""
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

    return dataclasses.replace(imgset, images=images.resize_images(imgset.images, size))


def _prepare_images(imgset: Any, *, val_frac: float, test_frac: float, split_seed: int, min_positives: int,
                    group_col: str | None) -> PreparedData:
    """Images as they are (uint8, normalised by the model); the source's own splits (MedMNIST), a
    patient-level split (``group_col``), or a stratified one; the training split's per-channel
    statistics for the model's input normalisation."""
    y, names, src = imgset.labels.astype(np.float32), list(imgset.label_names), imgset.source
    fixed = imgset.splits is not None
    idx = (dict(imgset.splits) if fixed
           else split_rows(y, imgset.groups, val_frac=val_frac, test_frac=test_frac, seed=split_seed))
    check_positives(y, idx, names, min_positives, src)
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
        fingerprint=fingerprint(imgset.digest, json.dumps(names).encode(),
                                json.dumps(list(imgset.images.shape[1:])).encode()),
        split_fingerprint=fingerprint(*(idx[s].astype(np.int64).tobytes() for s in ("train", "val", "test")),
                                      json.dumps(split_desc).encode()),
        split=split_desc, image_stats=(mean.tolist(), std.tolist()))


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
    check_finite(features, src)

    idx = split_rows(y, groups, val_frac=val_frac, test_frac=test_frac, seed=split_seed)
    check_positives(y, idx, [str(c) for c in label_cols], min_positives, src)
    pre, x = fit_transform(features, idx)

    def tensors(split: str) -> Split:
        return Split(torch.from_numpy(x[split]), torch.from_numpy(y[idx[split]]))

    split_desc = {"val_frac": val_frac, "test_frac": test_frac, "seed": split_seed,
                  **({"groups": group_col} if group_col else {})}
    return PreparedData(
        train=tensors("train"), val=tensors("val"), test=tensors("test"), feature_names=pre.feature_names,
        label_names=[str(c) for c in label_cols], preprocessor=pre, source=src,
        fingerprint=fingerprint(digest, json.dumps(list(map(str, label_cols))).encode(),
                                json.dumps(sorted(map(str, drop_cols))).encode()),
        split_fingerprint=fingerprint(*(idx[s].astype(np.int64).tobytes() for s in ("train", "val", "test")),
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
