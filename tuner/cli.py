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


@cli.group("scenarios")
def scenarios_group() -> None:
    """Scenario presets: list them, show one (and its search space), detect one from data."""


def _presets_option(f):
    return click.option("--presets", "presets_dirs", multiple=True, metavar="DIR",
                        help="A folder of your own preset YAML files (also: LOSSTUNE_PRESETS).")(f)


@scenarios_group.command("list")
@_presets_option
def scenarios_list(presets_dirs: Sequence[str]) -> None:
    """List the scenarios: built-in presets and your own.

    \b
    Example:
      losstune scenarios list --presets ./my_presets
    """
    from search_spaces import available_scenarios

    rows = available_scenarios(list(presets_dirs))
    width = max(len(n) for n in rows)
    for name, sc in rows.items():
        c = sc.config
        aux = c.aux_loss.type
        main_desc = "bce" if c.main_loss.type == "bce" else f"focal a={c.main_loss.alpha} g={c.main_loss.gamma:g}"
        click.echo(f"{name:<{width}}  {main_desc}; aux {aux}; distill {c.distill.weight:g}; "
                   f"ema {c.teacher.ema_decay if c.teacher.enabled else 'off'} — {sc.description} [{sc.source}]")


@scenarios_group.command("show")
@click.argument("name")
@_presets_option
@click.option("--search", "search_items", multiple=True, metavar="KEY=RANGE",
              help="Change a range: --search main_loss.gamma=[1,4] or --search optim.lr='{low: 1e-4, high: 1e-2, scale: log}'.")
@click.option("--fix", "fix_items", multiple=True, metavar="KEY=VALUE", help="Fix a value: --fix teacher.ema_decay=0.999.")
@click.option("--search-aux", is_flag=True, help="Also search the aux loss type (the 'all' space).")
def scenarios_show(name: str, presets_dirs: Sequence[str], search_items: Sequence[str], fix_items: Sequence[str],
                   search_aux: bool) -> None:
    """Print a scenario as a preset YAML: the config and its effective search ranges.

    The output is itself a preset file: save it, edit the config or the `search:` block, and pass
    the file as --scenario.

    \b
    Examples:
      losstune scenarios show rare_disease_detection
      losstune scenarios show treatment_response_prediction --search main_loss.gamma=[0.5,2] --fix optim.lr=0.001
    """
    import yaml

    from search_spaces import load_scenario, scenario_space
    from trainables.config import parse_overrides

    sc = load_scenario(name, extra_dirs=list(presets_dirs))
    space = scenario_space(sc, search_aux=search_aux, ranges=parse_overrides(search_items, option="--search"),
                           fixed=parse_overrides(fix_items, option="--fix"))
    doc = {"scenario": {"name": sc.name, "description": sc.description}, **space.base.to_dict(),
           "search": {**space.specs(), **space.fixed}}
    click.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)


@scenarios_group.command("detect")
@click.option("--data", "data_source", required=True, metavar="PATH", help=_DATA_HELP)
@click.option("--label-col", "label_cols", multiple=True, metavar="NAME", help="Label column; repeatable.")
@_split_options
def scenarios_detect(data_source: str, label_cols: Sequence[str], val_frac: float, test_frac: float, split_seed: int,
                     min_positives: int, drop_cols: Sequence[str]) -> None:
    """Say which scenario `--scenario auto` picks for this data, and why (from the training split).

    \b
    Example:
      losstune scenarios detect --data patients.csv --label-col outcome
    """
    from search_spaces import detect_scenario
    from trainables.data import prepare_data

    data = prepare_data(data_source, list(label_cols), val_frac=val_frac, test_frac=test_frac, split_seed=split_seed,
                        min_positives=min_positives, drop_cols=list(drop_cols))
    d = detect_scenario(data.train.y.numpy(), data.label_names)
    click.echo(f"scenario: {d.scenario}")
    for r in d.reasons:
        click.echo(f"  - {r}")


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
