"""The `losstune` command line. User mistakes print one line and exit with status 2."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from trainables.errors import UserError

__all__ = ["main", "cli"]

_DATA_HELP = ("CSV/TSV/Parquet table, .npz/.pt feature arrays (keys X, y), or a synthetic task: "
              "synthetic:rare, synthetic:screening, synthetic:treatment (options: ?n=5000&prevalence=0.01).")


def _split_options(f):
    f = click.option("--drop-col", "drop_cols", multiple=True, metavar="NAME",
                     help="A column that is not a feature (an identifier, a date); repeatable.")(f)
    f = click.option("--min-positives", type=int, default=5, show_default=True,
                     help="Fewest positives (and negatives) of each label every split must hold.")(f)
    f = click.option("--split-seed", type=int, default=0, show_default=True, help="Seed of the stratified split.")(f)
    f = click.option("--test-frac", type=float, default=0.2, show_default=True,
                     help="Share of rows held out for the final test.")(f)
    f = click.option("--val-frac", type=float, default=0.2, show_default=True,
                     help="Share of rows for validation (model selection, early stopping).")(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="losstune")
def cli() -> None:
    """losstune: find (and honestly measure) the loss settings of a dual-head classifier for
    imbalanced medical data.

    \b
    Example:
      losstune train --data patients.csv --label-col outcome --set main_loss.gamma=3
    """


@cli.command("train")
@click.option("--config", "config_path", type=str, default=None, metavar="FILE.yaml",
              help="Trial config (a scenario preset or an exported winner). Default: the built-in config.")
@click.option("--data", "data_source", type=str, default=None, metavar="PATH", help=_DATA_HELP)
@click.option("--label-col", "label_cols", multiple=True, metavar="NAME",
              help="Label column; repeat for multi-label data.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value by dotted path, e.g. --set main_loss.gamma=3; repeatable.")
@click.option("--pretrained-ckpt", "--pretrained_ckpt", "pretrained_ckpt", type=str, default=None, metavar="PATH",
              help="Backbone weights to start from (a state_dict; loaded with weights_only=True).")
@click.option("--out", type=str, default=None, metavar="DIR",
              help="Where config.yaml, metrics.json, preprocessor.json and model.pt go. Default: runs/train-TIME.")
@click.option("--baseline/--no-baseline", "compare_baseline", default=None,
              help="Also train the plain BCE single-head arm on the same splits and compare on test "
                   "(default: on with --demo, off otherwise).")
@click.option("--target-auroc", "--target_auc", "target_auroc", type=float, default=None,
              help="Target AUROC: the result says whether validation and test reach it.")
@click.option("--target-auprc", "--target_auprc", "target_auprc", type=float, default=None, help="Target AUPRC.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@_split_options
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out folder.")
@click.option("--quiet", is_flag=True, help="No line per epoch.")
@click.option("--demo", is_flag=True, help="Train on synthetic:rare (1:50) with the default config and the baseline.")
def train_command(config_path: str | None, data_source: str | None, label_cols: Sequence[str], overrides: Sequence[str],
                  pretrained_ckpt: str | None, out: str | None, compare_baseline: bool | None,
                  target_auroc: float | None, target_auprc: float | None, device: str, val_frac: float,
                  test_frac: float, split_seed: int, min_positives: int, drop_cols: Sequence[str], overwrite: bool,
                  quiet: bool, demo: bool) -> None:
    """Train one config, evaluate it on the held-out test split, and save it.

    \b
    Examples:
      losstune train --demo
      losstune train --data patients.csv --label-col outcome --out runs/first
      losstune train --config winner.yaml --data patients.csv --label-col outcome
    """
    from tuner.train_cmd import run_train

    if demo:
        data_source = data_source or "synthetic:rare"
        overrides = ("optim.max_epochs=15", *overrides)
        compare_baseline = True if compare_baseline is None else compare_baseline
    if not data_source:
        raise UserError("--data is required (a table, feature arrays or synthetic:rare); or run --demo")
    run_train(config_path=config_path, data_source=data_source, label_cols=label_cols, overrides=overrides,
              pretrained_ckpt=pretrained_ckpt, out=out, compare_baseline=bool(compare_baseline), device=device,
              val_frac=val_frac, test_frac=test_frac, split_seed=split_seed, min_positives=min_positives,
              drop_cols=drop_cols, target_auroc=target_auroc, target_auprc=target_auprc, overwrite=overwrite,
              quiet=quiet)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script: one line and exit status 2 for a user mistake."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="losstune", standalone_mode=False)
    except UserError as exc:
        click.echo(f"losstune: error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("losstune: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("losstune: interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
