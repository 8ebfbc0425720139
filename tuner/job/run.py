"""Running a job on Ray Tune: connect (or start) the runtime, run or restore the Tuner with Optuna
and ASHA, turn Ctrl-C into a clean stop, evaluate the winner on the held-out split, and keep the
MLflow records (``tuner.record.records``, through the job's spool)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from search_spaces import SearchSpace, SpaceSpec
from trainables.data import PreparedData, SharedData, preprocessing_doc
from trainables.errors import UserError
from trainables.tune_trainable import TrialInputs, train_trial
from trainables.vocab import EPOCH_REACHED, JobState, Status, mlflow_key
from tuner import __version__
from tuner.cluster.runtime import (
    Runtime,
    check_resources,
    check_storage,
    connect,
    local_resources,
    probe_address,
    redact,
)
from tuner.core.layout import job_run_name
from tuner.core.seal import sealed_write
from tuner.core.summary import BASELINE, STACK, SUMMARY_FILE
from tuner.job.arms import ArmRunner, mark_front, slot_key
from tuner.job.interrupts import Interrupts
from tuner.job.launch import (
    RunSpec,
    fit_run,
    make_tuner,
    pending_trials,
    quiet_tune,
    reporter,
    scheduler,
    searcher,
    target_stopper,
    trial_numbers_callback,
)
from tuner.job.outcome import (
    RESULTS_FILE,
    TrialRow,
    TuneOutcome,
    met_by,
    rows_from_grid,
    summarize,
    write_results_csv,
)
from tuner.job.plan import ARMS_FILE, TuneJob
from tuner.job.winner import comparison_metrics, make_provenance, winner_yaml
from tuner.present.html import REPORT_FILE, write_report
from tuner.present.markdown import data_summary, describe, running_note, verdict
from tuner.present.plots import (
    arms_convergence_plot,
    example_images_plot,
    job_plots,
    pareto_plot,
    plots_in,
    reliability_plot,
)
from tuner.present.progress import Progress
from tuner.present.text import render_summary
from tuner.present.verdict import findings
from tuner.record.deliverer import Deliverer
from tuner.record.records import (
    NOTE_TAG,
    PARETO_TAG,
    ROLE_TAG,
    SEARCH_SPACE_TAG,
    JobRecords,
    Tracking,
    check_reachable,
    run_link,
)
from tuner.record.spool import BEST_TRIAL_RUN_ID, SPOOL_FILE, SPOOL_FILES_DIR, Spool

__all__ = ["Tracking", "run_job", "preflight", "finished", "provenance"]


def run_job(job: TuneJob, data: PreparedData, space: SearchSpace | None, pretrained: dict | None, *,
            address: str | None, resume: bool = False, trainable: Callable | None = None,
            callbacks: Sequence[Any] = (), verbose: int = 0, tracking: Tracking | None = None,
            shared_storage: bool = False) -> TuneOutcome:
    """Run (or, with ``resume``, continue) a job on Ray Tune, evaluate the winner on the held-out
    test split, record everything in MLflow (``tracking``) and summarise the trials. On a runtime of
    several nodes the experiment folder must be on storage every node reaches (``shared_storage``
    declares a local path to be such a mount). ``verbose`` 0: one live line (``tuner.present.progress``);
    1: Ray Tune's tables and the workers' output."""
    with quiet_tune(verbose=verbose):
        return _run(job, data, space, pretrained, address=address, resume=resume, trainable=trainable,
                    callbacks=callbacks, verbose=verbose, tracking=tracking, shared_storage=shared_storage)


def _run(job: TuneJob, data: PreparedData, space: SearchSpace | None, pretrained: dict | None, *,
         address: str | None, resume: bool, trainable: Callable | None, callbacks: Sequence[Any], verbose: int,
         tracking: Tracking | None, shared_storage: bool) -> TuneOutcome:
    from ray import tune

    started = time.time()
    storage = job.storage
    if resume and not tune.Tuner.can_restore(storage.ray_path(job.experiment), storage_filesystem=storage.fs):
        raise UserError(f"job '{job.experiment}' at {job.location} has no Ray Tune state to resume "
                        "(it never started its first trial?)")
    preflight(job, address=address)
    runtime = connect(address, log_to_driver=verbose > 0)
    try:
        check_resources(runtime, cpus=job.resources["cpu"], gpus=job.resources["gpu"])
        check_storage(runtime, job.storage_path, shared=shared_storage)
        records = _open_records(job, tracking, runtime.address, resume=resume, data=data)
        if records is not None and not resume:  # on resume, Tune unpickles the job's callback
            from tuner.record.callback import TrialSpooler

            callbacks = [*callbacks, TrialSpooler(base_config=job.base_config, spool_path=str(records.spool_path))]
        spec = job.spec
        inputs = TrialInputs(data=SharedData.from_prepared(data), base_config=job.base_config,
                             targets=spec.targets.goals(), pretrained=pretrained, select=spec.metric,
                             threads=job.threads)
        fn = tune.with_parameters(tune.with_resources(trainable or train_trial, job.resources), inputs=inputs)
        run = RunSpec(parts=(job.experiment,), num_samples=spec.num_trials, scheduler=scheduler(job),
                      concurrency=spec.resources.concurrency, time_budget_s=spec.time_budget_s,
                      max_failures=spec.resources.max_failures,
                      stop=target_stopper() if spec.targets.stop_on_target else None,
                      reporter=reporter(job.searched, spec.metric), verbose=verbose,
                      callbacks=[trial_numbers_callback(job.path), *callbacks])
        if not resume:
            job.save()
            run.searcher = searcher(job, space, spec.seed)
            run.share = (slot_key(job), STACK)  # while the baseline arm searches beside it (tuner.job.slots)
        # on resume, Interrupts filters the log lines of restoring trials that never reported
        tuner = make_tuner(fn, storage, run, before_restore=Interrupts)
        if resume:
            job.save()
        ahead = job.slots(runtime.resources.get("CPU", 0.0), runtime.resources.get("GPU", 0.0))
        with pending_trials(ahead), \
                Interrupts(runtime=runtime, resume_command=f"losstune tune --resume {job.location}") as interrupts:
            # The records the trials spool are sent while they train, by a thread the job run owns.
            shown = Progress(parts=job.trainings()) if not verbose else nullcontext()
            with Deliverer(records, lookup_first=resume) if records is not None else nullcontext(), shown:
                arms = ArmRunner(job, data, inputs, trainable=trainable, records=records, verbose=verbose,
                                 interrupts=interrupts, slots=ahead)
                searched_at = time.time()
                with arms.beside_the_stack():  # the baseline arm's search shares the workers from the start
                    grid = fit_run(tuner, storage, run)
                    outcome = TuneOutcome(job=job, rows=rows_from_grid(grid, job, job.searched),
                                          stopped_on_target=met_by(grid, job))
                    outcome.wall_by_part["stack"] = time.time() - searched_at
                    if outcome.state is JobState.FAILED:  # no stack model: nothing to compare a baseline with
                        arms.stop_beside()
                    else:
                        arms.stack_searched()
                outcome.runtime_cpus = float(runtime.resources.get("CPU", 0.0))
                if spec.objectives:  # the front, and the members --select ranks (none: no model is selected)
                    mark_front(outcome.rows, spec.objective_list)
                    outcome.selected = [r.trial_id for r in arms.top_of(STACK, outcome.rows, len(outcome.rows))]
                if outcome.state not in (JobState.FAILED, JobState.NO_SELECTION):
                    arms.run(outcome)  # the baseline arm, then each arm's top configs with fresh seeds
            outcome.wall_s, outcome.interrupted = time.time() - started, interrupts.received
            _add_earlier_runs(outcome)
            # What is left takes seconds and needs no trial: a signal now lets it finish (a second one stops it).
            interrupts.finishing = True
            write_results_csv(outcome)
            # The test split is for the final winners of a finished search only: never for an interrupted one.
            if outcome.state in (JobState.FINISHED, JobState.STOPPED_ON_TARGET):
                arms.evaluate(outcome)
            outcome.data = data_summary(data)
            outcome.summary = summarize(outcome)  # what the summary, MLflow, report.html and `best` say
            if outcome.winner is not None:
                _write_winner(outcome, data)
                _write_report(outcome, data)
            if records is not None:  # the spool keeps whatever could not be delivered yet
                _close_records(records, outcome, data, within_s=tracking.final_retry_s if tracking else 15.0)
            if outcome.state in (JobState.FINISHED, JobState.STOPPED_ON_TARGET) and outcome.winner is not None:
                job.finished = time.strftime("%Y-%m-%dT%H:%M:%S")
                job.save()  # a finished job is not resumed: `--resume` says so (and its folder is published)
            else:
                job.save()  # the job's second save point: its results, winner, report and spool, copied once
        return outcome
    finally:
        runtime.shutdown()


def _add_earlier_runs(outcome: TuneOutcome) -> None:
    """A resumed job's time is its runs' together: what this run spent plus what the job file says the
    earlier ones did; the job file then keeps the sum for the next run."""
    job = outcome.job
    earlier = job.spent_s
    outcome.wall_by_part = {part: s + earlier.get(part, 0.0)
                            for part, s in {**dict.fromkeys(earlier, 0.0), **outcome.wall_by_part}.items()
                            if part != "total"}
    outcome.wall_s += earlier.get("total", 0.0)
    job.spent_s = {**outcome.wall_by_part, "total": outcome.wall_s}


def finished(job: TuneJob) -> bool:
    """Whether the job ended with a winner: its job file says so, or (a kill that landed after the
    job's summary was spooled) its MLflow spool does."""
    if job.finished:
        return True

    path = job.path / SPOOL_FILE
    if not path.is_file():
        return False
    spool = Spool(path)
    try:
        return spool.closed() == "FINISHED"
    finally:
        spool.close()


def preflight(job: TuneJob, *, address: str | None) -> None:
    """What is known about where the job will run without starting Ray or leaving anything behind: the
    address answers, a local runtime has the CPUs and GPUs a trial asks for, the storage takes files
    (a probe is written and removed). ``tune --dry-run`` runs it too."""

    probe_address(address)
    if address in (None, "", "local"):
        check_resources(Runtime("local", True, local_resources()), cpus=job.resources["cpu"], gpus=job.resources["gpu"])
    job.storage.check_writable()


def _open_records(job: TuneJob, tracking: Tracking | None, ray_address: str, *, resume: bool,
                  data: PreparedData | None = None) -> JobRecords | None:
    if tracking is None:
        return None

    check_reachable(tracking.uri)  # a new sqlite store is made here, once Ray and the resources are known good

    # On resume, opening replays what earlier runs of the job kept in its spool, before any trial.
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException
    from sqlalchemy.exc import SQLAlchemyError

    records = JobRecords(tracking.uri, tracking.experiment, job.path)
    if resume:
        run: dict[str, Any] = {"run_name": "", "tags": {}, "params": {},
                               "parent_run_id": job.tracking.get("parent_run_id")}
    else:
        run = {"run_name": job_run_name(job.experiment), "tags": _job_tags(job, ray_address, data),
               "params": _job_params(job)}
    try:
        records.open(**run, data=data)
    except (MlflowException, RequestException, SQLAlchemyError, OSError) as exc:  # the store's answer, not a bug
        raise UserError(f"cannot open the MLflow records of job '{job.experiment}' in experiment "
                        f"'{tracking.experiment}': {redact(str(exc).splitlines()[0])[:200]}") from None
    job.tracking = {"experiment": tracking.experiment, "experiment_id": records.experiment_id,
                    "parent_run_id": records.parent_run_id}
    if "@" not in tracking.uri:  # a URI with credentials is never written down
        job.tracking["uri"] = tracking.uri
    return records


def _job_tags(job: TuneJob, ray_address: str, data: PreparedData | None) -> dict[str, str]:
    """The job run's tags: its role, version and scenario, the structured search space (for `best` and
    `export`: a tag, as params are cut at 6000 characters) and the description while it runs."""

    tags = {ROLE_TAG: "job", "losstune.job": job.experiment, "losstune.version": __version__,
            "ray.address": redact(ray_address), "losstune.scenario": job.scenario}
    if job.detection:
        tags["losstune.detection"] = "; ".join(job.detection["reasons"])
    tags[SEARCH_SPACE_TAG] = json.dumps(job.space_spec, separators=(",", ":"))
    spec = job.spec
    tags[NOTE_TAG] = running_note(scenario=job.scenario, reasons=job.detection["reasons"] if job.detection else None,
                                  num_trials=spec.num_trials, metric=str(spec.metric), goals=spec.targets.goals(),
                                  location=job.location, experiment=job.experiment, data_summary=data_summary(data))
    return tags


def _job_params(job: TuneJob) -> dict[str, Any]:
    """The job run's parameters: what was asked for, the data and its split, the search space and the spec."""
    spec = job.spec
    goals = spec.targets.goals()
    return {
        "scenario": job.scenario, "scenario.requested": spec.scenario, "metric": spec.metric,
        "num_trials": spec.num_trials, "scheduler": spec.scheduler_name,
        "scheduler.grace_period": spec.scheduler.grace_period,
        "scheduler.reduction_factor": spec.scheduler.reduction_factor, "concurrency": spec.resources.concurrency,
        "resources.cpu": job.resources["cpu"], "resources.gpu": job.resources["gpu"], "seed": spec.seed,
        "target.auroc": goals.get("auroc"), "target.auprc": goals.get("auprc"),
        "stop_on_target": spec.targets.stop_on_target, "max_failures": spec.resources.max_failures,
        "data.source": redact(spec.data.source),
        "data.label_cols": json.dumps(list(job.spec.data.label_cols)),
        "data.split": json.dumps({k: getattr(job.spec.data, k) for k in ("val_frac", "test_frac", "split_seed")}),
        "data.fingerprint": job.data_fingerprint, "data.split_fingerprint": job.split_fingerprint,
        **{f"pretrained.{k}": v for k, v in job.pretrained_load.items()},  # tensors loaded, missing, unexpected
        **{f"search.{k}": v for k, v in job.search_space.items()},
        # the spec as given, flat: `losstune tune --job` re-runs it (job.yaml in the job folder holds it too)
        **{f"spec.{k}": v if isinstance(v, (str, int, float, bool, type(None))) else json.dumps(v)
           for k, v in job.spec.flat().items()},
    }


def _job_metrics(outcome: TuneOutcome, best: TrialRow | None) -> dict[str, Any]:
    """The job run's metrics: trial counts, targets, what it spent, the best trial on validation, the
    winner on test with its comparisons, and each arm's deployed model and seed mean ± sd. A NaN (the
    sd of one seed) is left out: MLflow would show it as a value."""
    rows, winner, met = outcome.rows, outcome.winner, outcome.met_all_targets
    metrics: dict[str, Any] = {
        "trials.count": len(rows), "trials.failed": sum(r.status == Status.FAILED for r in rows),
        "trials.diverged": sum(r.status == Status.DIVERGED for r in rows), "trials.met_all_targets": len(met),
        **({"pareto.front_size": sum(r.pareto for r in rows)} if outcome.job.spec.objectives else {}),
        "target.attainment_rate": len(met) / len(rows) if rows else 0.0, **outcome.spent(),
    }
    if best is not None:
        metrics.update({"best.objective": best.objective, "best.epoch": best.best_epoch,
                        **{f"best/{k}": v for k, v in best.metrics.items() if v is not None}})
    if winner is not None:
        metrics.update({k: v for k, v in winner.holdout.items()
                        if k.startswith("test/") or k in ("temperature", "val/ece_scaled", "val/ece_calibrated")})
        metrics.update(winner.targets_test)
        metrics.update(comparison_metrics(winner))
    for arm, final in outcome.confirmed.items():
        metrics.update({f"arm/{arm}/val/score_mean": final.val[0], f"arm/{arm}/val/score_sd": final.val[1],
                        f"arm/{arm}/seeds": float(len(final.seeds)),
                        **{f"arm/{arm}/deployed/test/{m}": v for m, v in final.deployed.items()}})
        for m, (mean, sd) in final.test.items():
            metrics.update({f"arm/{arm}/test/{m}_mean": mean, f"arm/{arm}/test/{m}_sd": sd})
    return {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}


def _close_records(records: JobRecords, outcome: TuneOutcome, data: PreparedData, *, within_s: float) -> None:
    """The job's summary on its parent run: counts, the best trial, the winner on test, plots, artifacts.

    It goes through the job's spool like every other record: the artifact files are written into
    the spool's files folder first, and the best trial's run id (which may not exist yet while the
    store is down) is filled in when the record is delivered."""

    job, rows, best, winner = outcome.job, outcome.rows, outcome.deployed, outcome.winner
    metrics = _job_metrics(outcome, best)
    # the job run's description in MLflow's UI: the verdict, the winner, what it spent, how to rerun it
    summary = outcome.summary or summarize(outcome)
    try:
        note = describe(summary, winner_link=run_link(str(records.experiment_id), BEST_TRIAL_RUN_ID),
                        report_link=run_link(str(records.experiment_id), str(records.parent_run_id), REPORT_FILE))
    except (KeyError, ValueError, TypeError) as exc:  # words about the records must never cost the records
        logging.getLogger(__name__).warning("losstune: cannot write the job's description: %s", exc)
        note = f"**{verdict(summary)}**"
    tags = {"losstune.status": outcome.state.value, NOTE_TAG: note, **findings(summary)}
    texts: dict[str, str] = {"results.csv": (job.path / RESULTS_FILE).read_text(encoding="utf-8"),
                             SUMMARY_FILE: summary.to_json()}  # what `losstune best` reads back
    files_dir = f"{SPOOL_FILES_DIR}/close-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    folder = job.path / files_dir
    folder.mkdir(parents=True, exist_ok=True)
    files: list[tuple[str, str]] = []  # (artifact folder, file relative to the job folder)
    if best is not None and outcome.state is JobState.NO_SELECTION:
        best = None  # the job chose no model: `export` without --trial must not pick one for the user
    if best is not None:
        tags["losstune.best_trial_id"] = best.trial_id
    if winner is not None:
        prov = provenance(job, best, trial_run_id=BEST_TRIAL_RUN_ID, job_run_id=records.parent_run_id,
                          test=winner.holdout)
        prov["calibration"] = winner.calibration  # what the saved model.pt applies too
        texts["winner/config.yaml"] = winner_yaml(winner.config, scenario=job.scenario, provenance=prov)
        if winner.references:
            texts["winner/comparison.json"] = json.dumps(
                {"references": winner.references,
                 "lifts": {name: [lift.to_dict() for lift in lifts] for name, lifts in winner.lifts.items()}},
                indent=1)
        (folder / "model.pt").write_bytes(winner.model_bytes)
        files.append(("winner", f"{files_dir}/model.pt"))
        if data.preprocessor is not None or data.is_image:
            (folder / "preprocessor.json").write_text(json.dumps(preprocessing_doc(data), indent=1))
            files.append(("winner", f"{files_dir}/preprocessor.json"))
    if outcome.confirmed:
        texts[ARMS_FILE] = json.dumps({arm: final.to_dict() for arm, final in outcome.confirmed.items()}, indent=1,
                                        default=str)
    if outcome.report:  # its plots are made already: the same files go to MLflow
        (folder / "plots").mkdir(parents=True, exist_ok=True)
        pngs = [Path(shutil.copy2(p, folder / "plots" / Path(p).name)) for p in outcome.plots.values()]
        texts[REPORT_FILE] = Path(outcome.report).read_text(encoding="utf-8")
    else:
        pngs = job_plots(rows, metric=job.spec.metric, targets=job.spec.targets.goals(), out=folder / "plots",
                         params=SpaceSpec.from_dict(job.space_spec).params)
    files += [("plots", f"{files_dir}/plots/{png.name}") for png in pngs]
    files = [(dest, rel, hashlib.sha256((job.path / rel).read_bytes()).hexdigest()) for dest, rel in files]
    several = bool(job.spec.objectives)  # the front is known only now: its trials' runs are tagged
    result, spool = records.close(metrics=metrics, tags=tags, texts=texts, files=files, files_dir=files_dir,
                                  best_trial=best.trial_id if best is not None else None,
                                  status=outcome.state.mlflow_status, within_s=within_s,
                                  trial_tags={r.trial_id: {PARETO_TAG: str(r.pareto).lower()}
                                              for r in rows} if several else None)
    outcome.records_kept = result.remaining
    outcome.records_refused = [*spool.refused().values()]
    outcome.spool_path = str(spool.path)
    outcome.tracking_note = records.note()  # on a server: the address of the job run's page


def _write_winner(outcome: TuneOutcome, data: PreparedData) -> None:
    """The winner in the job's folder, ``winner/``: what `losstune predict --job` and `train --config` read."""

    job, w = outcome.job, outcome.winner
    row = outcome.deployed
    prov = provenance(job, row, trial_run_id="", job_run_id=job.tracking.get("parent_run_id", ""), test=w.holdout)
    prov["calibration"] = w.calibration
    folder = job.path / "winner"
    folder.mkdir(exist_ok=True)
    # signed: `predict --job` and `ablate` act on them (tuner.core.seal)
    sealed_write(folder / "config.yaml", winner_yaml(w.config, scenario=job.scenario, provenance=prov))
    sealed_write(folder / "model.pt", w.model_bytes)
    sealed_write(folder / "preprocessor.json",
                 json.dumps(preprocessing_doc(data), indent=1))
    if outcome.confirmed:  # each arm's winner on test: what `losstune ablate` sets its claims against
        sealed_write(job.path / ARMS_FILE, json.dumps({arm: f.to_dict() for arm, f in outcome.confirmed.items()},
                                                      indent=1, default=str))


def _write_report(outcome: TuneOutcome, data: PreparedData) -> None:
    """The job's plots (in its folder, ``plots/``) and ``report.html`` beside them."""

    job, w = outcome.job, outcome.winner
    out = job.path / "plots"
    job_plots(outcome.rows, metric=job.spec.metric, targets=job.spec.targets.goals(), out=out,
              params=SpaceSpec.from_dict(job.space_spec).params)
    reliability_plot(data.test.y.numpy(), w.test_raw_probs, w.test_probs, out, label_names=data.label_names)
    s = outcome.summary or summarize(outcome)
    arms_convergence_plot({arm: list(curve) for arm, curve in s.curves.items()}, job.spec.metric, out)
    if job.spec.objectives:  # the trials in each pair of objectives, the front drawn, the two winners marked
        base = outcome.confirmed.get(BASELINE)
        pareto_plot(outcome.rows, job.spec.objectives, out, selected=s.selected[0] if s.selected else None,
                    baseline=base.best_seed_row.metrics if base is not None and base.best_seed_row else None,
                    baseline_rows=outcome.arm_rows.get(BASELINE, ()))
    if data.is_image:  # a few training images per label (the held-out ones stay out of the report)
        example_images_plot(data.train.x.numpy(), data.train.y.numpy(), data.label_names, out)
    plots = plots_in(out)
    outcome.plots = {k: str(v) for k, v in plots.items()}
    # kept beside the report, so that `losstune ablate` can write the report again with its findings
    sealed_write(job.path / SUMMARY_FILE, s.to_json())
    outcome.report = str(write_report(s, plots=plots, summary=render_summary(s), out=job.path / REPORT_FILE))


def provenance(job: TuneJob, row: TrialRow | None, *, trial_run_id: str, job_run_id: str,
               test: dict[str, Any] | None) -> dict[str, Any]:
    """Where a winner comes from, for its ``config.yaml``: the job and runs, the data and split
    fingerprints, the validation metrics at its best epoch, the targets and flags, and ``test``."""
    data = {**job.spec.data.model_dump(mode="json"), "fingerprint": job.data_fingerprint,
            "split_fingerprint": job.split_fingerprint}
    validation = {**{k.removeprefix("val/"): v for k, v in (row.metrics if row else {}).items()},
                  "best_epoch": row.best_epoch if row else None}
    flags = {mlflow_key(k): v for k, v in (row.targets if row else {}).items() if k != EPOCH_REACHED}
    return make_provenance(job=job.experiment, job_run_id=job_run_id, threads=job.threads,
                           trial_id=row.trial_id if row else "",
                           trial_run_id=trial_run_id, data=data, validation=validation,
                           targets=job.spec.targets.goals(), target_flags=flags, test=test)


