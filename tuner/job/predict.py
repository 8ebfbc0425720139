"""`losstune predict`: probabilities per label from a trained or exported model, with the
preprocessing it was trained with and the calibration fit on its validation split applied.

A model folder holds ``config.yaml`` (the network's shape), ``model.pt`` (weights, feature and
label names, calibration; loaded with weights_only=True) and ``preprocessor.json`` — what
``losstune train --out DIR`` writes, what a job keeps in ``winner/`` of its folder, and what the
MLflow job run holds under ``winner/``.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from trainables.calibration import Calibration
from trainables.config import Config
from trainables.data import IMAGE_FORMAT
from trainables.errors import UserError
from trainables.images import as_model_input, read_images
from trainables.model import DualHeadModel, read_checkpoint
from trainables.preprocess import Preprocessor
from trainables.sources import ARRAY_FORMATS, TABLE_FORMATS, is_remote, load_table
from trainables.trainer import predict
from tuner.core.outputs import atomic_write, probe_writable

if TYPE_CHECKING:  # torch and pandas load only when a prediction is made: `--help` stays fast
    import numpy as np
    import pandas as pd

    from trainables.config import Config
    from trainables.preprocess import Preprocessor

__all__ = ["predict_table"]

MODEL_FILES = ("config.yaml", "model.pt", "preprocessor.json")


@contextmanager
def _model_folder(model: str | None, job: str | None, storage_path: str) -> Iterator[Path]:
    """The model folder to read: ``--model DIR``, or a finished job's ``winner/``, its files verified
    (``tuner.core.seal``: predictions come from the model the job wrote). A job in object storage that
    this machine did not run is read into a temporary folder, removed afterwards."""
    if (model is None) == (job is None):
        raise UserError("pass one of --model DIR (a folder from `losstune train --out`) or --job JOB")
    with tempfile.TemporaryDirectory(prefix="losstune-predict-") as tmp:
        if job is not None:
            from tuner.core.seal import check_file
            from tuner.job.plan import find_job_folder

            folder = find_job_folder(job, storage_path, fetch_into=Path(tmp), folders=("winner",))[0] / "winner"
            if not folder.is_dir():
                raise UserError(f"job '{job}' has no winner yet (no {folder}): it is unfinished, or it failed")
            for name in MODEL_FILES:
                if (folder / name).is_file():
                    check_file(folder / name)
        else:
            folder = Path(model)
        missing = [f for f in MODEL_FILES if not (folder / f).is_file()]
        if missing:
            raise UserError(f"--model '{folder}' is not a losstune model folder: {', '.join(missing)} missing "
                            "(train one with `losstune train --out DIR`)")
        yield folder


@dataclass
class _Model:
    folder: Path
    cfg: Config
    saved: dict[str, Any]
    prep: Preprocessor | None  # a table model's preprocessing
    image: dict[str, Any] | None = None  # an image model's input: {"channels": C, "image_size": [H, W]}


def _read_preprocessor(folder: Path) -> Preprocessor | dict[str, Any]:
    """preprocessor.json as a Preprocessor; anything else it holds is one line naming the file."""

    path = folder / "preprocessor.json"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"'{path}' cannot be read ({exc.strerror or exc}); check its permissions") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except ValueError as exc:  # not UTF-8, not JSON; an empty file too: `train` writes "{}" at least
        raise UserError(f"'{path}' is damaged ({type(exc).__name__}: {str(exc)[:120]}); write the model folder "
                        "again with `losstune train --out DIR`") from None
    if doc == {}:  # what `train` writes for a model trained on feature arrays
        raise UserError(f"the model in '{folder}' was trained on feature arrays, not on a table: there is no "
                        "preprocessing to apply to a table's columns")

    if isinstance(doc, dict) and doc.get("format") == IMAGE_FORMAT:
        size, channels = doc.get("image_size"), doc.get("channels")
        if channels not in (1, 3) or not (isinstance(size, list) and len(size) == 2 and size[0] == size[1]
                                          and isinstance(size[0], int) and size[0] > 0):
            raise UserError(f"'{path}' is damaged (an image model needs channels 1 or 3 and a square image_size); "
                            "write the model folder again with `losstune train --out DIR`")
        return {"channels": channels, "image_size": size}
    try:
        return Preprocessor.from_dict(doc)
    except ValueError as exc:
        raise UserError(f"'{path}' is damaged ({exc}); write the model folder again with "
                        "`losstune train --out DIR`") from None


def _load_model(folder: Path) -> _Model:
    """Everything in the model folder, read and checked before the table is."""

    cfg = Config.load(folder / "config.yaml")
    saved = read_checkpoint(folder / "model.pt")
    if not isinstance(saved, dict) or saved.get("format") != "losstune-model-v1":
        raise UserError(f"'{folder / 'model.pt'}' is not a losstune model file (format losstune-model-v1)")
    lacking = [k for k in ("model", "label_names", "feature_names") if k not in saved]
    if lacking:
        raise UserError(f"'{folder / 'model.pt'}' is damaged (no {', '.join(lacking)}); write the model folder "
                        "again with `losstune train --out DIR`")
    prep = _read_preprocessor(folder)
    if isinstance(prep, dict):
        return _Model(folder, cfg, saved, None, image=prep)
    return _Model(folder, cfg, saved, prep)


def _network(m: _Model, input_shape: tuple[int, ...]) -> DualHeadModel:
    """The trained network, its weights loaded; a model file that does not fit config.yaml is one line."""

    saved = m.saved
    model = DualHeadModel.from_config(m.cfg.model, input_shape=input_shape, n_labels=len(saved["label_names"]),
                                      aux_head=any(k.startswith("aux_head.") for k in saved["model"]))
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as exc:
        raise UserError(f"'{m.folder / 'model.pt'}' does not fit the network of config.yaml "
                        f"({str(exc).splitlines()[0][:160]})") from None
    return model


def _probabilities(m: _Model, model: DualHeadModel, x: np.ndarray, index: pd.Index | None) -> pd.DataFrame:
    """Calibrated probabilities (the model file's calibration), one column p_LABEL per label."""
    import numpy as np
    import pandas as pd
    import torch

    saved = m.saved
    logits = predict(model.main_path(), torch.from_numpy(x)).double()
    if saved.get("calibration"):
        probs = Calibration.from_dict(saved["calibration"]).apply(logits)
    else:  # a model file from before per-label calibration: its temperature
        probs = torch.sigmoid(logits / float(saved.get("temperature", 1.0))).numpy()
    return pd.DataFrame(np.asarray(probs).reshape(len(x), -1), columns=[f"p_{n}" for n in saved["label_names"]],
                        index=index)


def predict_images(m: _Model, images: np.ndarray, index: pd.Index | None = None) -> pd.DataFrame:
    """Probabilities for images (uint8 N×H×W[×C] or N×C×H×W), read as the model was trained: its
    channels, its image size; it normalises them itself."""

    assert m.image is not None
    size = m.image["image_size"][0]
    x = as_model_input(images, channels=m.image["channels"], image_size=size)
    return _probabilities(m, _network(m, x.shape[1:]), x, index)


def _predict(m: _Model, frame: pd.DataFrame, source: str) -> pd.DataFrame:
    import numpy as np

    if m.prep is None:
        raise UserError(f"the model in '{m.folder}' reads images: pass --image-col (a table of image paths) or an "
                        ".npz of images as --data")
    saved = m.saved
    # strict: a missing column, or a cell the model cannot read, is one line naming it
    x = m.prep.transform(frame, strict=True, source=source)
    for column, levels in m.prep.unseen_levels(frame).items():  # read as "none of the known levels"
        shown = ", ".join(f"'{k}' ({n} rows)" for k, n in list(levels.items())[:5])
        more = f" and {len(levels) - 5} more" if len(levels) > 5 else ""
        click.echo(f"losstune: warning: column '{column}' has levels never seen in training: {shown}{more}; "
                   "the model reads them as none of the known levels", err=True)
    if x.shape[1] != len(saved["feature_names"]):
        raise UserError(f"the data gives {x.shape[1]} features but the model was trained on "
                        f"{len(saved['feature_names'])}; is preprocessor.json from the same model?")
    return _probabilities(m, _network(m, (x.shape[1],)), np.asarray(x, dtype=np.float32), frame.index)


def predict_table(folder: Path, frame: pd.DataFrame, *, source: str = "the data") -> pd.DataFrame:
    """A DataFrame of calibrated probabilities, one column ``p_<label>`` per label, in row order."""
    return _predict(_load_model(folder), frame, source)


def _check_out(out: str | None) -> Path | None:
    """Everything about --out that can be known before any compute: never overwrite, never write
    into a missing folder, and the folder really takes a new file (a probe is created and removed)."""

    if out is None:
        return None
    target = Path(out)
    if target.exists():
        raise UserError(f"--out '{target}' already exists; choose another file (predictions never replace a file)")
    if target.parent.exists() and not target.parent.is_dir():
        raise UserError(f"--out '{target}' cannot be written: '{target.parent}' is a file, not a folder")
    if not target.parent.is_dir():
        raise UserError(f"--out '{target}' cannot be written: its folder '{target.parent}' does not exist")
    probe_writable(target, "--out", str(target))
    return target


def _table_path(data: str) -> Path:
    """--data as a local table. `train` also reads feature arrays, synthetic tasks and addresses
    (through prepare_data), so load_table's own messages would offer predict what it cannot read."""

    tables = ", ".join(TABLE_FORMATS)
    if data.startswith("synthetic:"):
        raise UserError(f"--data '{data}' is a synthetic task; predict reads a table file ({tables})")
    if is_remote(data):
        raise UserError(f"--data '{data.partition('://')[0]}://...' is an address; predict reads a local table file "
                        f"({tables}): copy it here first")
    p = Path(data)
    suffix = p.suffix.lower()
    if suffix == ".npz" and _npz_images(p) is not None:  # images for an image model
        return p
    if suffix in ARRAY_FORMATS:
        raise UserError(f"--data '{p}': predict reads tables ({tables}) or an .npz of images (key 'images'); "
                        f"'{suffix}' feature arrays are not supported by predict")
    if not p.exists():
        raise UserError(f"data file '{p}' does not exist; predict reads a table file ({tables})")
    if suffix not in TABLE_FORMATS:
        raise UserError(f"data file '{p}' has an unsupported format '{suffix or '(none)'}'; "
                        f"predict reads tables: {tables}")
    return p


def _npz_images(path: Path) -> str | None:
    """The key of the images in an .npz that holds some (``images``, else MedMNIST's ``test_images``)."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            return next((k for k in ("images", "test_images") if k in z.files), None)
    except Exception:  # not an archive: the table reader says what is wrong
        return None


def _read_input(m: _Model, path: Path, image_col: str | None, image_root: str | None) -> tuple[Any, Any]:
    """(images or a table, the rows' index) as the model needs them; a mismatch is one line."""
    import numpy as np

    if m.image is None:
        if path.suffix.lower() == ".npz" or image_col:
            raise UserError(f"the model in '{m.folder}' reads a table's columns, not images; pass the table as --data")
        frame = load_table(path)
        return frame, frame.index
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as z:
            images = z[_npz_images(path)]
        return images, None
    if not image_col:
        raise UserError(f"the model in '{m.folder}' reads images: name the column of image paths of '{path}' with "
                        "--image-col (and their folder with --image-root), or pass an .npz of images")

    frame = load_table(path)
    images = read_images(frame, table=str(path), image_col=image_col,
                         image_root=image_root if image_root is not None else path.parent,
                         channels=m.image["channels"], image_size=m.image["image_size"][0])
    return images, frame.index


RULES = ("youden", "sensitivity_0.80", "sensitivity_0.90")  # the thresholds a model file keeps (trainables.operating)


def _decision_rule(decide_at: str) -> str | float:
    """--decide-at: a rule whose threshold the model file keeps, or a probability in (0, 1)."""
    if decide_at in RULES:
        return decide_at
    try:
        value = float(decide_at)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise UserError(f"--decide-at must be one of {', '.join(RULES)} or a probability in (0, 1), "
                        f"got '{decide_at}'")
    return value


def _with_decisions(m: _Model, preds: pd.DataFrame, rule: str | float, *, asked: bool) -> pd.DataFrame:
    """A decision_LABEL column (1: flag the patient) beside each p_LABEL, at the rule's threshold."""
    kept = m.saved.get("thresholds") or {}
    for name in m.saved["label_names"]:
        t = rule if isinstance(rule, float) else kept.get(name, {}).get(rule)
        if t is None:
            if asked:
                raise UserError(f"the model in '{m.folder}' keeps no '{rule}' threshold (it was written before "
                                "losstune chose thresholds); pass --decide-at PROBABILITY")
            click.echo("losstune: note: this model file keeps no decision threshold (written before losstune chose "
                       "them): probabilities only; --decide-at PROBABILITY adds decisions", err=True)
            return preds
        preds[f"decision_{name}"] = (preds[f"p_{name}"] >= t).astype(int)
    return preds


def predict_files(*, model: str | None, job: str | None, storage_path: str, data: str, image_col: str | None,
                  image_root: str | None, out: str | None, decide_at: str = "youden",
                  decide_asked: bool = False) -> None:
    """``losstune predict``: every input checked before the model runs, then the predictions written to
    ``out`` (CSV) or printed: p_LABEL, and decision_LABEL at ``decide_at`` (a threshold the model file
    keeps, chosen on validation, or a probability)."""

    # cheapest first, and the table (possibly large) last: every mistake is found before any compute
    rule = _decision_rule(decide_at)
    target = _check_out(out)
    path = _table_path(data)
    with _model_folder(model, job, storage_path) as folder:
        loaded = _load_model(folder)
    rows, index = _read_input(loaded, path, image_col, image_root)
    if len(rows) == 0:
        raise UserError(f"data file '{data}' has no rows")
    preds = (predict_images(loaded, rows, index) if loaded.image is not None
             else _predict(loaded, rows, f"data file '{path}'"))
    preds = _with_decisions(loaded, preds, rule, asked=decide_asked)
    buf = io.StringIO()
    preds.to_csv(buf, index=False, float_format="%.6g")
    if target is None:
        click.echo(buf.getvalue(), nl=False)
    else:
        atomic_write(target, buf.getvalue())
        click.echo(f"wrote {target}: {len(preds)} rows, {preds.shape[1]} label(s) ({', '.join(preds.columns)})",
                   err=True)
