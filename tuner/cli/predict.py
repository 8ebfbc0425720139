"""`losstune predict`: the command line; ``tuner.job.predict`` loads the model and predicts."""

from __future__ import annotations

import click

__all__ = ["predict_command"]


@click.command("predict")
@click.option("--model", "model", default=None, metavar="DIR",
              help="A model folder (config.yaml, model.pt, preprocessor.json), e.g. from `losstune train --out`.")
@click.option("--job", "job", default=None, metavar="JOB",
              help="A finished job (name, folder or URI): its winner.")
@click.option("--storage-path", default="losstune_results", show_default=True,
              help="Where JOB is looked up by name.")
@click.option("--data", "data", required=True, metavar="FILE",
              help="A CSV or Parquet table with the feature columns; for an image model, a table of image paths "
                   "(--image-col) or an .npz holding 'images' (N x H x W[x C] uint8).")
@click.option("--image-col", default=None, metavar="COL", help="Images: the column of image paths in --data.")
@click.option("--image-root", default=None, metavar="DIR",
              help="Images: the folder the paths are relative to [default: the table's folder].")
@click.option("--out", "out", default=None, metavar="FILE", help="Write the predictions here (CSV) [default: stdout].")
@click.option("--decide-at", default="youden", show_default=True, metavar="RULE",
              help="The threshold of the decision_LABEL column: youden (chosen on validation), sensitivity_0.80, "
                   "sensitivity_0.90 (the highest thresholds that found that share of validation positives), or "
                   "a probability such as 0.3.")
@click.pass_context
def predict_command(ctx: click.Context, model: str | None, job: str | None, storage_path: str, data: str,
                    image_col: str | None, image_root: str | None, out: str | None, decide_at: str) -> None:
    """Calibrated probabilities per label for the rows of a table, or for images.

    The table needs the feature columns the model was trained on (others, such as an ID or the
    label, are ignored); an image model reads each image at the size and channels it was trained
    with. The output has one column p_LABEL per label, in the rows' (images') order, and a
    decision_LABEL column (1: flag) at the threshold chosen on validation (--decide-at).

    \b
    Examples:
      losstune predict --model runs/sepsis --data new_patients.csv --out preds.csv
      losstune predict --job sepsis-2026 --data new_patients.parquet
      losstune predict --job cxr-2026 --data new_films.csv --image-col path --image-root /data/films
    """
    from click.core import ParameterSource

    from tuner.job.predict import predict_files

    predict_files(model=model, job=job, storage_path=storage_path, data=data, image_col=image_col,
                  image_root=image_root, out=out, decide_at=decide_at,
                  decide_asked=ctx.get_parameter_source("decide_at") is not ParameterSource.DEFAULT)
