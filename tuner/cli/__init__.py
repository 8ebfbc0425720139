"""The `losstune` command line. User mistakes print one line and exit with status 2."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from trainables.errors import UserError
from trainables.vocab import SELECTABLE
from tuner.cli.predict import predict_command
from tuner.cli.submit import build_submit_command, jobs_group
from tuner.cli.sync import sync_command
from tuner.cli.trust import trust_command
from tuner.cli.ui import ui_command
from tuner.cluster.runtime import redact

if TYPE_CHECKING:
    from tuner.job.spec import DataSpec, OptionValue

__all__ = ["main", "cli"]

_DATA_HELP = ("CSV/TSV/Parquet table, .npz/.pt feature arrays (keys X, y), a synthetic task: "
              "synthetic:rare, synthetic:screening, synthetic:treatment (options: ?n=5000&prevalence=0.01); "
              "images: a MedMNIST .npz, a table of image paths (--image-col), synthetic-images:rare, "
              "synthetic-images:screening, or digits:D (scikit-learn's 8x8 scans, digit D against the rest).")


def _split_options(f):
    f = click.option("--label-sep", default="|", show_default=True,
                     help="What separates the findings of --labels-from.")(f)
    f = click.option("--labels-from", default=None, metavar="COL",
                     help="Images: one column of findings joined by --label-sep, every finding a label, "
                          "'No Finding' none (ChestX-ray14's 'Finding Labels').")(f)
    f = click.option("--image-size", type=int, default=None, metavar="PX",
                     help="Images: resize every image to PX x PX (needed when their sizes differ).")(f)
    f = click.option("--image-root", default=None, metavar="DIR",
                     help="Images: the folder --image-col's paths are relative to [default: the table's folder].")(f)
    f = click.option("--image-col", default=None, metavar="COL",
                     help="Images: the table column holding each image's path (PNG, JPEG or DICOM).")(f)
    f = click.option("--group-col", default=None, metavar="COL",
                     help="A patient id: the split keeps each patient's rows (images) together in one split.")(f)
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
@click.option("--allow-telemetry", is_flag=True,
              help="Let Ray and MLflow send their usage statistics (also: LOSSTUNE_ALLOW_TELEMETRY=1); "
                   "off by default, see the README's 'Privacy'.")
def cli(allow_telemetry: bool) -> None:
    """losstune: find (and honestly measure) the loss settings of a dual-head classifier for
    imbalanced medical data.

    \b
    Example:
      losstune train --data patients.csv --label-col outcome --set main_loss.gamma=3
    """
    from tuner.cluster.privacy import apply

    apply(allow=allow_telemetry)  # first, before any command imports MLflow or starts Ray


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
                  target_auroc: float | None, target_auprc: float | None, device: str, overwrite: bool,
                  quiet: bool, demo: bool, **data_options: OptionValue) -> None:
    """Train one config, evaluate it on the held-out test split, and save it.

    \b
    Examples:
      losstune train --demo
      losstune train --data patients.csv --label-col outcome --out runs/first
      losstune train --config winner.yaml --data patients.csv --label-col outcome
    """
    from tuner.job.train import run_train

    if demo:
        data_source = data_source or "synthetic:rare"
        overrides = ("optim.max_epochs=15", *overrides)
        compare_baseline = True if compare_baseline is None else compare_baseline
    if not data_source:
        raise UserError("--data is required (a table, feature arrays or synthetic:rare); or run --demo")
    run_train(config_path=config_path, data=_data_spec(data_source, label_cols, data_options), overrides=overrides,
              pretrained_ckpt=pretrained_ckpt, out=out, compare_baseline=bool(compare_baseline), device=device,
              target_auroc=target_auroc, target_auprc=target_auprc, overwrite=overwrite, quiet=quiet)


def _data_spec(source: str, label_cols: Sequence[str], options: dict[str, OptionValue]) -> DataSpec:
    """The data options of train and scenarios detect as a DataSpec (tune's come through its JobSpec);
    local paths absolute, as a job stores them."""
    from tuner.job.spec import DataSpec, JobSpec

    spec = DataSpec(source=source, label_cols=list(label_cols), **{**options, "drop_cols": list(options["drop_cols"])})
    return JobSpec(data=spec).absolute().data


@cli.command("tune")
@click.option("--job", "job_file", default=None, metavar="JOB.yaml",
              help="Run a saved job spec (a job folder's job.yaml, or --dry-run's output); "
                   "options given here override it.")
@click.option("--data", "data", default=None, metavar="PATH", help=_DATA_HELP)
@click.option("--label-col", "label_cols", multiple=True, metavar="NAME", help="Label column; repeatable.")
@click.option("--scenario", "--medical_scenario", "--preset", "scenario", default="auto", show_default=True,
              help="auto (detect from the labels), a preset name, or a preset YAML path (e.g. an exported winner).")
@click.option("--presets", "presets_dirs", multiple=True, metavar="DIR", help="A folder of your own presets.")
@click.option("--search-aux", is_flag=True, help="Also search the aux loss type (the 'all' space).")
@click.option("--search", "search", multiple=True, metavar="KEY=RANGE",
              help="Change a range, e.g. --search main_loss.gamma=[1,4]; repeatable.")
@click.option("--fix", "fix", multiple=True, metavar="KEY=VALUE",
              help="Fix a value, e.g. --fix teacher.ema_decay=0.999.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Change the preset before the ranges are built.")
@click.option("--num-trials", type=int, default=20, show_default=True,
              help="Trials in the job (trial 0 is the preset).")
@click.option("--max-epochs", "--max_epochs", "max_epochs", type=int, default=None,
              help="Epochs per trial (default: the preset's).")
@click.option("--metric", default=None, type=click.Choice(SELECTABLE),
              help="What the search maximises: the best validation value over a trial's epochs. val/score = "
                   "(AUROC + AUPRC) / 2; val/score_ece = val/score - ECE [default: the scenario's, else val/score].")
@click.option("--scheduler", default=None, type=click.Choice(["asha", "fifo"]),
              help="asha stops weak trials early; fifo runs every trial to the end "
                   "[default: asha; fifo with several --objectives].")
@click.option("--time-budget", "time_budget_s", type=float, default=None, metavar="SECONDS",
              help="Wall-clock cap of the search (Tune's time_budget_s); trials still running then are stopped.")
@click.option("--grace-period", type=int, default=3, show_default=True,
              help="ASHA: epochs before a trial can be stopped.")
@click.option("--reduction-factor", type=float, default=3.0, show_default=True, help="ASHA: keep 1/N at each rung.")
@click.option("--concurrency", type=int, default=None, help="Trials at once (default: as many as the resources allow).")
@click.option("--cpus-per-trial", type=float, default=1.0, show_default=True, help="CPUs each trial reserves.")
@click.option("--gpus-per-trial", type=float, default=0.0, show_default=True,
              help="GPUs each trial reserves; 0.5 shares one GPU by two.")
@click.option("--address", default=None, metavar="ADDR",
              help="Ray runtime: auto, host:port or ray://host:10001 (default: a local runtime on this machine).")
@click.option("--experiment", default=None, metavar="NAME",
              help="Job name, also the MLflow experiment "
                   "(default: job losstune-SCENARIO-TIME in MLflow experiment 'losstune').")
@click.option("--tracking-uri", default=None, metavar="URI",
              help="MLflow tracking store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
@click.option("--no-tracking", is_flag=True, help="Record nothing in MLflow.")
@click.option("--storage-path", default="losstune_results", show_default=True,
              help="Where the experiments live: a folder; on a runtime of several nodes a folder every node "
                   "mounts (--shared-storage) or s3://bucket/prefix, gs://bucket/prefix (S3-compatible stores "
                   "through AWS_ENDPOINT_URL_S3).")
@click.option("--shared-storage", is_flag=True,
              help="--storage-path is mounted on every node (NFS): allow it on a runtime of several nodes.")
@click.option("--target-auroc", "--target_auc", "target_auroc", type=float, default=None,
              help="Target validation AUROC.")
@click.option("--target-auprc", "--target_auprc", "target_auprc", type=float, default=None,
              help="Target validation AUPRC.")
@click.option("--stop-on-target", is_flag=True, help="End the job as soon as one trial reaches every target.")
@click.option("--max-failures", type=int, default=2, show_default=True, help="Retries of a trial whose worker dies.")
@click.option("--pretrained-ckpt", "--pretrained_ckpt", "pretrained_ckpt", default=None, metavar="PATH",
              help="Backbone weights every trial starts from (weights_only=True).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the Optuna sampler.")
@click.option("--sampler", default="tpe", show_default=True, type=click.Choice(["tpe", "random", "gp", "nsga2"]),
              help="Optuna's sampler: TPE, random search, a Gaussian process, or NSGA-II (several --objectives).")
@click.option("--objectives", default=None, metavar="M:DIR,M:DIR",
              help="Search 2 or 3 validation metrics at once and keep their Pareto front, e.g. "
                   "--objectives val/auroc:max,val/ece:min (the first, maximised, picks each trial's epoch; "
                   "metrics: val/auroc, val/auprc, val/ece, val/score, val/score_ece).")
@click.option("--select", default=None, metavar="RULE",
              help="With --objectives: how one model is chosen from the front, e.g. "
                   "--select \"val/auroc>=0.85, min val/ece\" (constraints, then one objective) [default: the knee, "
                   "the member nearest the best value of every objective].")
@click.option("--baseline-trials", type=int, default=None,
              help="Trials of the plain baseline arm (BCE, one head, no teacher) tuned in the same job "
                   "[default: --num-trials, so that both arms search alike; fewer is said beside the verdict].")
@click.option("--no-baseline", is_flag=True, help="No baseline arm: the job cannot say whether the loss stack helps.")
@click.option("--confirm-top", type=int, default=3, show_default=True,
              help="After the search, re-train each arm's top K configs with --confirm-seeds seeds (0: none).")
@click.option("--confirm-seeds", type=int, default=3, show_default=True,
              help="Training seeds per confirmed config, at most: the configs race (the better half gets each "
                   "next seed); the winner has the best mean validation score.")
@click.option("--resume", default=None, metavar="JOB",
              help="Continue an interrupted job: its name, folder or URI (other options are taken from it).")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Rows in the final table.")
@_split_options
@click.option("--dry-run", is_flag=True, help="Check everything, print the resolved job spec as YAML, start nothing.")
@click.option("--verbose", is_flag=True, help="Ray Tune's tables of trials and the workers' output instead of one "
                                             "progress line.")
@click.option("--demo", is_flag=True, help="A synthetic rare-disease job: 8 trials, an 8-trial baseline arm and "
                                          "both winners confirmed with 2 seeds: up to 20 trainings, about two "
                                          "minutes on 2 cores.")
@click.option("--demo-images", is_flag=True,
              help="An image job: synthetic 32-px images (a faint shape marks the positives, 1:33), the built-in cnn, "
                   "6 trials per arm, each winner confirmed with 2 seeds; a few minutes on 2 cores.")
@click.pass_context
def tune_command(ctx: click.Context, *, address: str | None, tracking_uri: str | None, no_tracking: bool,
                 storage_path: str, shared_storage: bool, resume: str | None, top: int, demo: bool, demo_images: bool,
                 job_file: str | None, dry_run: bool, verbose: bool,
                 **options: OptionValue) -> None:
    """Search the loss settings on Ray Tune with Optuna (TPE) and ASHA.

    Trial 0 runs the scenario preset; the others explore around it. At the end: the best trials
    (validation metrics, whether the targets were met) and results.csv in the experiment folder.

    \b
    Examples:
      losstune tune --demo
      losstune tune --demo-images
      losstune tune --data patients.csv --label-col outcome --num-trials 40 --target-auroc 0.85
      losstune tune --pretrained_ckpt ckpt.pt --medical_scenario auto --target_auc 0.90 --data icu.csv
      losstune tune --resume losstune-rare_disease_detection-20261128-101500
      losstune tune --job losstune_results/sepsis/job.yaml --experiment sepsis-again --seed 1
    """
    from click.core import ParameterSource

    from tuner.cluster.runtime import check_address
    from tuner.job.plan import job_inputs, open_job, plan_job
    from tuner.job.run import Tracking, finished, preflight
    from tuner.job.spec import JobSpec
    from tuner.record.records import DEFAULT_EXPERIMENT, check_reachable, creates_store, resolve_uri
    from tuner.record.stores import check_store

    check_address(address)  # its form, before any data is read
    if resume:
        job = open_job(resume, storage_path=storage_path)  # verified (tuner.core.seal) before anything is read
        if finished(job):
            _say_finished(job, tracking_uri)
        data, pretrained = job_inputs(job)
        tracking = None
        if job.tracking:  # the job was recorded in MLflow: keep recording it there
            uri = tracking_uri or job.tracking.get("uri") or os.environ.get("MLFLOW_TRACKING_URI")
            if not uri:
                raise UserError(f"job {job.experiment} was recorded in a tracking store whose URI holds credentials "
                                "(never written down); pass it again with --tracking-uri")
            check_store(uri, create=True)
            tracking = Tracking(uri, job.tracking["experiment"])
        preflight(job, address=address)
        if tracking is not None and not creates_store(tracking.uri):
            check_reachable(tracking.uri)
        click.echo(f"resuming job {job.experiment}: {job.spec.num_trials} trials, scenario {job.scenario}")
        _run_and_summarise(job, data, None, pretrained, address=address, resume=True, tracking=tracking, top=top,
                           shared_storage=shared_storage, verbose=verbose)
    given = {k: v for k, v in options.items() if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
    spec = JobSpec.from_command_line(options, given, job_file=job_file, demo=demo, demo_images=demo_images)
    tracking = None
    if not no_tracking:
        uri = resolve_uri(tracking_uri)
        check_store(uri, create=True)  # before the data is read
        tracking = Tracking(uri, spec.name or DEFAULT_EXPERIMENT)
    job, data, space, pretrained = plan_job(spec, storage_path)
    preflight(job, address=address)  # where it runs: address, resources, storage; nothing started or left
    head = _head(job, data, address)
    if job.pretrained_load:
        n = job.pretrained_load
        head.append(f"pretrained weights {spec.pretrained_ckpt}: {n['loaded']} tensors loaded into the backbone, "
                    f"{n['missing']} missing, {n['unexpected']} unexpected, {n['dropped']} dropped (its classifier)")
    if dry_run:  # every check passed; nothing was written and Ray never started
        searched = ", ".join(space.searched_keys()) or "nothing"
        resolved = job.spec.model_copy(update={"name": job.experiment})  # the scenario and metric it resolved to
        from tuner.present.tables import fit_width

        comments = "\n".join([*head, *fit_width([f"searched: {searched}"], width=98)]).splitlines()
        click.echo("".join(f"# {line}\n" for line in comments) + resolved.to_yaml(), nl=False)
        return
    if tracking is not None and not creates_store(tracking.uri):
        check_reachable(tracking.uri)  # a store that exists, or a server; a new one is made once Ray runs
    click.echo("\n".join(head))
    _run_and_summarise(job, data, space, pretrained, address=address, resume=False, tracking=tracking, top=top,
                       shared_storage=shared_storage, verbose=verbose)


def _head(job, data, address: str | None) -> list[str]:
    """The job's first lines: data, scenario and why, metric, and what it will train (``--dry-run`` too)."""
    from tuner.cluster.runtime import local_resources
    from tuner.core.summary import BASELINE
    from tuner.present.text import render_head

    spec = job.spec
    local = local_resources() if address in (None, "", "local") else None  # a cluster's is known once joined
    arms = 1 + (BASELINE in job.arms)
    return render_head(experiment=job.experiment, scenario=job.scenario,
                       reasons=job.detection["reasons"] if job.detection else None, metric_name=str(spec.metric),
                       source=str(data.source), rows=(len(data.train), len(data.val), len(data.test)),
                       backbone=job.base_config["model"]["backbone"], trainings=job.trainings(),
                       confirm=(spec.compare.confirm_top, spec.compare.confirm_seeds, arms),
                       slots=job.slots(local["CPU"], local["GPU"]) if local else None,
                       shape=data.input_shape if data.is_image else None, objectives=spec.objectives,
                       select=spec.select)


def _say_finished(job, tracking_uri: str | None) -> None:
    """``--resume`` of a job that has its winner: nothing runs again; records it still keeps are delivered."""
    from tuner.present.html import REPORT_FILE

    when = f" on {job.finished.replace('T', ' ')}" if job.finished else ""
    click.echo(f"job {job.experiment} finished{when}: nothing to resume (its report: {job.path / REPORT_FILE}; "
               f"run it again with `losstune tune --job {job.location}/job.yaml --experiment NEW_NAME`)")
    if job.tracking:
        from tuner.job.sync import RecordsRemain, sync_job

        report = sync_job(job.experiment, storage_path=job.storage_path, tracking_uri=tracking_uri)
        if report.delivered or report.problem:
            click.echo(report.text())
        if report.problem:
            raise RecordsRemain(report.problem)
    raise click.exceptions.Exit(0)


def _run_and_summarise(job, data, space, pretrained, *, address, resume, tracking, top, shared_storage,
                       verbose: bool) -> None:
    """Run the job and print its summary; the exit status says how it ended: 0 finished, 1 failed
    (no trial produced a model), 130 interrupted (with the command that continues it last)."""
    from tuner.job.outcome import format_summary
    from tuner.job.run import run_job

    try:
        outcome = run_job(job, data, space, pretrained, address=address, resume=resume, tracking=tracking,
                          shared_storage=shared_storage, verbose=int(verbose))
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, without a summary
        click.echo(f"losstune: interrupted; continue the job with: losstune tune --resume {job.location}", err=True)
        raise click.exceptions.Exit(130) from None
    click.echo(format_summary(outcome, top=top))
    raise click.exceptions.Exit(outcome.exit_code)


def _tracking_options(f):
    f = click.option("--tracking-uri", default=None, metavar="URI",
                     help="MLflow tracking store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")(f)
    f = click.option("--job", default=None, metavar="NAME",
                     help="The job's name, as `tune` printed it (its MLflow run id works too) "
                          "[default: the latest job].")(f)
    f = click.option("--experiment", default=None, metavar="NAME",
                     help="Look only in this MLflow experiment [default: every experiment].")(f)
    return f


@cli.command("best")
@_tracking_options
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Rows to show (at least 1).")
@click.option("--jobs", "list_only", is_flag=True, help="List the jobs (newest first) instead.")
@click.option("--pareto", is_flag=True, help="A job of several --objectives: its Pareto front instead (every member; "
                                            "`losstune export --trial ID` writes any of them).")
def best_command(experiment: str | None, job: str | None, tracking_uri: str | None, top: int, list_only: bool,
                 pareto: bool) -> None:
    """The best trials of the latest (or given) job, read from MLflow alone.

    \b
    Examples:
      losstune best
      losstune best --jobs
      losstune best --job sepsis --top 5 --tracking-uri http://mlflow.internal:5000
      losstune best --job sepsis --pareto
    """
    from tuner.cli.best import best_report, jobs_report, pareto_report
    from tuner.record.records import resolve_uri

    uri = resolve_uri(tracking_uri)
    if list_only:
        click.echo(jobs_report(uri=uri, experiment=experiment, top=top))
        return
    if pareto:
        click.echo(pareto_report(uri=uri, experiment=experiment, job_name=job))
        return
    click.echo(best_report(uri=uri, experiment=experiment, job_name=job, top=top))


@cli.command("export")
@_tracking_options
@click.option("--trial", default=None, metavar="ID",
              help="A trial id as the summary and `best` print it (its MLflow run id, or a unique start of "
                   "either, works too) [default: the job's winner].")
@click.option("--out", required=True, metavar="FILE.yaml", help="Where to write the config (a new file).")
@click.option("--overwrite", is_flag=True,
              help="Replace --out if it is a config losstune exported (never another file).")
def export_command(experiment: str | None, job: str | None, tracking_uri: str | None, trial: str | None,
                   out: str, overwrite: bool) -> None:
    """Write the winning (or a chosen) trial's config as a preset YAML with its provenance.

    `losstune train --config FILE` and `losstune tune --scenario FILE` accept it; the provenance
    block (job and trial run ids, data fingerprint, validation and test metrics, targets) is
    ignored when loading.

    \b
    Examples:
      losstune export --out winner.yaml && losstune train --config winner.yaml --data patients.csv --label-col outcome
      losstune export --job sepsis --trial 03c696ed --out second.yaml
    """
    from tuner.cli.best import export_config
    from tuner.record.records import resolve_uri

    click.echo(export_config(uri=resolve_uri(tracking_uri), experiment=experiment, job_name=job, trial_id=trial,
                             out=out, overwrite=overwrite))


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

    broken: dict[str, str] = {}
    rows = available_scenarios(list(presets_dirs), broken=broken)
    width = max(len(n) for n in rows)
    for name, sc in rows.items():
        c = sc.config
        aux = c.aux_loss.type
        main_desc = "bce" if c.main_loss.type == "bce" else f"focal a={c.main_loss.alpha} g={c.main_loss.gamma:g}"
        click.echo(f"{name:<{width}}  {main_desc}; aux {aux}; distill {c.distill.weight:g}; "
                   f"ema {c.teacher.ema_decay if c.teacher.enabled else 'off'} — {sc.description} [{sc.source}]")
    if broken:  # the good ones are listed; each broken file is named, and the exit status says so
        for reason in broken.values():
            click.echo(f"losstune: error: preset not listed: {reason}", err=True)
        raise click.exceptions.Exit(2)


@scenarios_group.command("show")
@click.argument("name")
@_presets_option
@click.option("--search", "search_items", multiple=True, metavar="KEY=RANGE",
              help="Change a range: --search main_loss.gamma=[1,4] "
                   "or --search optim.lr='{low: 1e-4, high: 1e-2, scale: log}'.")
@click.option("--fix", "fix_items", multiple=True, metavar="KEY=VALUE",
              help="Fix a value: --fix teacher.ema_decay=0.999.")
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
def scenarios_detect(data_source: str, label_cols: Sequence[str], **data_options: OptionValue) -> None:
    """Say which scenario `--scenario auto` picks for this data, and why (from the training split).

    \b
    Example:
      losstune scenarios detect --data patients.csv --label-col outcome
    """
    from search_spaces import detect_scenario

    data = _data_spec(data_source, label_cols, data_options).prepare()
    d = detect_scenario(data.train.y.numpy(), data.label_names)
    click.echo(f"scenario: {d.scenario}")
    for r in d.reasons:
        click.echo(f"  - {r}")


@cli.command("ablate")
@click.option("--job", "job", required=True, metavar="JOB", help="A finished job: its name, folder or URI.")
@click.option("--storage-path", default="losstune_results", show_default=True, help="Where JOB is looked up by name.")
@click.option("--seeds", type=int, default=3, show_default=True, help="Training seeds per variant (1..N).")
@click.option("--address", default=None, metavar="ADDR", help="Ray runtime, as for tune (default: a local one).")
@click.option("--verbose", is_flag=True, help="Ray Tune's tables and the workers' output instead of one progress line.")
def ablate_command(job: str, storage_path: str, seeds: int, address: str | None, verbose: bool) -> None:
    """What each technique of a job's winner contributes, and the design note's claims against it.

    Each technique the winner uses is switched off in turn (aux head, distillation, consistency,
    EMA teacher, adaptive weighting, focal loss), and all but focal loss at once; the winner and
    every variant are trained with the same seeds on the job's splits and compared on its test
    split with a paired bootstrap. Writes ablation.json into the job folder.

    \b
    Examples:
      losstune ablate --job losstune-rare_disease_detection-20261128-101500
      losstune ablate --job s3://bucket/losstune/sepsis --seeds 5 --address auto
    """
    from tuner.cluster.runtime import check_address
    from tuner.job.ablate import claims, run_ablation

    check_address(address)
    result = run_ablation(job, storage_path=storage_path, seeds=seeds, address=address, verbose=int(verbose))
    from tuner.job.plan import find_job_folder

    click.echo(result.text())
    click.echo(claims(find_job_folder(job, storage_path)[0], result))


cli.add_command(sync_command)
cli.add_command(trust_command)
cli.add_command(ui_command)
cli.add_command(predict_command)
cli.add_command(build_submit_command(tune_command))  # tune's options, kept in step with it
cli.add_command(jobs_group)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script: one line and exit status 2 for a user mistake."""
    try:
        # standalone_mode=False: click returns the status of click.exceptions.Exit instead of exiting
        status = cli.main(args=list(argv) if argv is not None else None, prog_name="losstune", standalone_mode=False)
    except UserError as exc:  # credentials never reach a terminal or a log, whatever the message quotes
        click.echo(f"losstune: error: {redact(str(exc))}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("losstune: interrupted", err=True)
        return 130
    except click.UsageError as exc:  # a bad option value: one line, like every other user mistake
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"losstune: error: {redact(' '.join(exc.format_message().split()))}{hint}", err=True)
        return 2
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("losstune: interrupted", err=True)
        return 130
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
