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
from pathlib import Path
from typing import Any

import click

from trainables.errors import UserError

__all__ = ["predict_command", "predict_table"]

MODEL_FILES = ("config.yaml", "model.pt", "preprocessor.json")


def _model_folder(model: str | None, job: str | None, storage_path: str) -> Path:
    if (model is None) == (job is None):
        raise UserError("pass one of --model DIR (a folder from `losstune train --out`) or --job JOB")
    if job is not None:
        from tuner.plan import find_job_folder

        folder = find_job_folder(job, storage_path)[0] / "winner"
        if not folder.is_dir():
            raise UserError(f"job '{job}' has no winner yet (no {folder}): it is unfinished, or it failed")
    else:
        folder = Path(model)
    missing = [f for f in MODEL_FILES if not (folder / f).is_file()]
    if missing:
        raise UserError(f"--model '{folder}' is not a losstune model folder: {', '.join(missing)} missing "
                        "(train one with `losstune train --out DIR`)")
    return folder


def predict_table(folder: Path, frame: Any) -> Any:
    """A DataFrame of calibrated probabilities, one column ``p_<label>`` per label, in row order."""
    import numpy as np
    import pandas as pd
    import torch

    from trainables.calibration import Calibration
    from trainables.config import Config
    from trainables.data import Preprocessor
    from trainables.model import DualHeadModel, read_checkpoint
    from trainables.trainer import predict

    cfg = Config.load(folder / "config.yaml")
    saved = read_checkpoint(folder / "model.pt")
    if not isinstance(saved, dict) or saved.get("format") != "losstune-model-v1":
        raise UserError(f"'{folder / 'model.pt'}' is not a losstune model file (format losstune-model-v1)")
    doc = json.loads((folder / "preprocessor.json").read_text(encoding="utf-8") or "{}")
    if doc == {}:
        raise UserError(f"the model in '{folder}' was trained on feature arrays, not on a table: there is no "
                        "preprocessing to apply to a table's columns")
    try:
        prep = Preprocessor.from_dict(doc)
    except (ValueError, KeyError) as exc:
        raise UserError(f"'{folder / 'preprocessor.json'}' is damaged ({exc})") from None
    labels = list(saved["label_names"])
    x = prep.transform(frame)  # a missing feature column: one line naming it
    if x.shape[1] != len(saved["feature_names"]):
        raise UserError(f"the data gives {x.shape[1]} features but the model was trained on "
                        f"{len(saved['feature_names'])}; is preprocessor.json from the same model?")
    model = DualHeadModel.from_config(cfg.model, in_features=x.shape[1], n_labels=len(labels),
                                      aux_head=any(k.startswith("aux_head.") for k in saved["model"]))
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as exc:
        raise UserError(f"'{folder / 'model.pt'}' does not fit the network of config.yaml "
                        f"({str(exc).splitlines()[0][:160]})") from None
    logits = predict(model.main_path(), torch.from_numpy(np.asarray(x, dtype=np.float32))).double()
    if saved.get("calibration"):
        cal = Calibration.from_dict(saved["calibration"])
        probs = cal.apply(logits)
    else:  # a model file from before per-label calibration: its temperature
        probs = torch.sigmoid(logits / float(saved.get("temperature", 1.0))).numpy()
    return pd.DataFrame(np.asarray(probs).reshape(len(frame), -1), columns=[f"p_{name}" for name in labels],
                        index=frame.index)


@click.command("predict")
@click.option("--model", "model", default=None, metavar="DIR",
              help="A model folder (config.yaml, model.pt, preprocessor.json), e.g. from `losstune train --out`.")
@click.option("--job", "job", default=None, metavar="JOB",
              help="A finished job (name, folder or URI): its winner.")
@click.option("--storage-path", default="losstune_results", show_default=True,
              help="Where JOB is looked up by name.")
@click.option("--data", "data", required=True, metavar="FILE", help="A CSV or Parquet table with the feature columns.")
@click.option("--out", "out", default=None, metavar="FILE", help="Write the predictions here (CSV) [default: stdout].")
def predict_command(model: str | None, job: str | None, storage_path: str, data: str, out: str | None) -> None:
    """Calibrated probabilities per label for the rows of a table.

    The table needs the feature columns the model was trained on (others, such as an ID or the
    label, are ignored); the output has one column p_LABEL per label, in the rows' order.

    \b
    Examples:
      losstune predict --model runs/sepsis --data new_patients.csv --out preds.csv
      losstune predict --job sepsis-2026 --data new_patients.parquet
    """
    from trainables.data import load_table
    from tuner.outputs import atomic_write

    folder = _model_folder(model, job, storage_path)
    target = Path(out) if out else None
    if target is not None:  # before any compute: never overwrite, never write into a missing folder
        if target.exists():
            raise UserError(f"--out '{target}' already exists; choose another file (predictions never replace a file)")
        if not target.parent.is_dir():
            raise UserError(f"--out '{target}' cannot be written: its folder '{target.parent}' does not exist")
    frame = load_table(data)
    if len(frame) == 0:
        raise UserError(f"data file '{data}' has no rows")
    preds = predict_table(folder, frame)
    buf = io.StringIO()
    preds.to_csv(buf, index=False, float_format="%.6g")
    if target is None:
        click.echo(buf.getvalue(), nl=False)
    else:
        atomic_write(target, buf.getvalue())
        click.echo(f"wrote {target}: {len(preds)} rows, {preds.shape[1]} label(s) ({', '.join(preds.columns)})",
                   err=True)
