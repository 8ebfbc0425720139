"""`losstune best` and `losstune export`: read a job back from MLflow alone.

Both work from any machine that reaches the tracking store: nothing here needs the experiment
folder, the data or Ray.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from search_spaces.spaces import Condition, SpaceSpec
from trainables.config import Config
from trainables.errors import UserError
from tuner.cluster.runtime import redact
from tuner.core.summary import SUMMARY_FILE, JobSummary
from tuner.present.tables import metric, side_by_side, table, value
from tuner.present.text import render_best
from tuner.present.verdict import bottom_line
from tuner.record.records import (
    CONFIG_TAG,
    SEARCH_SPACE_TAG,
    TRIAL_TAG,
    find_job,
    is_server,
    job_children,
    run_page,
    ui_base,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

__all__ = ["best_report", "export_config"]

# The job run's tag (or param) holding json.dumps(space.to_dict()): what was searched, as data.


def _client(uri: str) -> MlflowClient:
    """A client for commands that only read: the store must exist already (a read never creates
    one), and a server that stops answering fails in seconds, not after minutes of retries."""
    from mlflow import MlflowClient

    from tuner.record.records import check_reachable
    from tuner.record.stores import check_store, client_uri, mlflow_env

    check_store(uri, create=False)
    check_reachable(uri)
    mlflow_env(max_retries=1, timeout_s=5)
    return MlflowClient(client_uri(uri))


def _searched(job: Run) -> list[tuple[str, Condition | None]]:
    """The job's searched keys in suggestion order, each with the condition under which it exists,
    from the structured description the job run carries (``SEARCH_SPACE_TAG``). Display strings are
    never parsed back: a run without it shows no searched values."""
    text = job.data.tags.get(SEARCH_SPACE_TAG)
    if not text:
        return []
    try:
        space = SpaceSpec.from_dict(json.loads(text))
    except ValueError:  # damaged: the table of trials is still worth showing
        return []
    return [(p.name, p.condition) for p in space.params]


def _active(condition: Condition | None, params: dict[str, str]) -> bool:
    """Does a (conditional) searched key exist in this trial? Its parent's value is an MLflow param."""
    return condition is None or condition.holds_logged(params.get(condition.key))


def _name(job: Run) -> str:
    """The job's name (its run is named ``job NAME``; runs recorded before were named NAME)."""
    return job.data.tags.get("losstune.job", job.info.run_name)


def _label_cols(text: str | None) -> list[str]:
    """``data.label_cols`` as logged: a JSON list of names (empty when it is missing or damaged)."""
    try:
        labels = json.loads(text or "[]")
    except ValueError:
        return []
    return labels if isinstance(labels, list) and all(isinstance(c, str) for c in labels) else []


def _target(text: str | None) -> float | None:
    """A ``target.*`` param: a number, or none set (logged as str(None), or JSON null)."""
    return None if text in (None, "", "None", "null") else float(text)


def best_report(*, uri: str, experiment: str, job_run_id: str | None, top: int) -> str:
    """``losstune best``: a job's trials (from their MLflow runs, best first, with their searched
    values) and what the job concluded (from its ``summary.json``).

    Args:
        uri: the tracking store; experiment: where to look; job_run_id: a job's run id (the latest job
            when None); top: how many trials to list.

    Returns:
        The text to print.
    """
    c = _client(uri)
    job = find_job(c, experiment=experiment, job_run_id=job_run_id)
    everything = job_children(c, job)
    # the stack's search; the baseline arm and the confirmations are summarised from the job run below
    children = [r for r in everything if r.data.tags.get("losstune.arm", "stack") == "stack"
                and r.data.tags.get("losstune.phase", "search") == "search"]
    p = job.data.params
    searched = _searched(job)
    finished = [r for r in children if r.info.status != "RUNNING"]
    if not finished:
        raise UserError(f"job '{_name(job)}' ({job.info.run_id}) has no finished trial yet"
                        f"{' (it is still running)' if job.info.status == 'RUNNING' else ''}")
    rows = sorted(children, key=lambda r: -r.data.metrics.get("objective", -math.inf))
    lines = [f"job {_name(job)} (run {job.info.run_id}, {job.info.status}): "
             f"{len(children)} of {p.get('num_trials', '?')} trials, scenario {p.get('scenario')}, "
             f"metric {p.get('metric')}"]
    summary = _summary(c, job)
    if summary is not None and bottom_line(summary):  # the job's own sentence, as its summary opens
        lines.append(bottom_line(summary))
    header = ["#", "trial", "run", "status", "epochs", "objective", "val auroc", "val auprc", "val ece", "targets"]
    body = []
    for i, r in enumerate(rows[:top], 1):
        rm = r.data.metrics
        targets = "-" if "target.all_met" not in rm else ("met" if rm["target.all_met"] else "not met")
        body.append([str(i), r.data.tags.get(TRIAL_TAG, "?"), r.info.run_id[:12],
                     r.data.tags.get("losstune.status", r.info.status.lower()), str(int(rm.get("epoch", 0))),
                     metric(rm.get("objective")), metric(rm.get("best/val/auroc")), metric(rm.get("best/val/auprc")),
                     metric(rm.get("best/val/ece")), targets])
    lines.append(table(header, body))
    shown = rows[:min(top, 5)]
    if shown and searched:
        lines.append("\nsearched values:")
        lines.append(side_by_side([k for k, _ in searched], [
            (r.data.tags.get(TRIAL_TAG, "?"),
             [value(r.data.params.get(k, "")) if _active(cond, r.data.params) else ""
              for k, cond in searched])
            for r in shown]))
    if summary is not None:
        lines += render_best(summary)
    elif job.info.status != "RUNNING":
        lines.append(f"(job run {job.info.run_id} holds no {SUMMARY_FILE}: the job ended before it wrote its summary; "
                     "only its trials are shown)")
    if is_server(uri):  # where a person reads the same in MLflow's UI
        lines.append(f"MLflow: {run_page(ui_base(uri), job.info.experiment_id, job.info.run_id)}")
    return "\n".join(lines)


def _summary(client: MlflowClient, job: Run) -> JobSummary | None:
    """The job's summary as its run holds it (``summary.json``); None while the job runs, or when the
    file is missing or damaged (then only the trials are shown)."""
    with tempfile.TemporaryDirectory(prefix="losstune-best-") as tmp:
        try:
            path = client.download_artifacts(job.info.run_id, SUMMARY_FILE, tmp)
        except Exception:  # MLflow raises its own and the artifact store's errors: no summary to show
            return None
        try:
            return JobSummary.from_json(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None


def export_config(*, uri: str, experiment: str, job_run_id: str | None, trial_run_id: str | None, out: str,
                  overwrite: bool = False) -> str:
    """``losstune export``: a trial's whole config (the job's winner by default) as a YAML file that
    ``losstune train --config`` reproduces, with its provenance (job, data fingerprint, validation and
    test metrics, targets).

    Returns:
        The line to print.
    """
    from tuner.core.outputs import check_out_file, write_file

    target = Path(out)
    check_out_file(target, overwrite=overwrite)
    c = _client(uri)
    job = find_job(c, experiment=experiment, job_run_id=job_run_id)
    if trial_run_id is None:
        trial_run_id = job.data.tags.get("losstune.best_trial_run_id") or None
        if trial_run_id is None:
            raise UserError(f"job '{_name(job)}' ({job.info.run_id}) has no finished trial to export yet")
    from mlflow.exceptions import MlflowException

    try:
        trial = c.get_run(trial_run_id)
    except MlflowException:  # no such run, or an id of the wrong form
        raise UserError(f"no MLflow run '{trial_run_id}'; pick one from `losstune best`") from None
    if trial.data.tags.get("mlflow.parentRunId") != job.info.run_id or CONFIG_TAG not in trial.data.tags:
        raise UserError(f"run '{trial_run_id}' is not a trial of job '{_name(job)}' ({job.info.run_id})")
    config = Config.from_dict(json.loads(trial.data.tags[CONFIG_TAG]), source=f"trial run {trial_run_id}")
    from tuner.job.plan import trial_threads
    from tuner.job.winner import make_provenance, winner_yaml

    p, jm, tm = job.data.params, job.data.metrics, trial.data.metrics
    data = {"source": p.get("data.source"), "label_cols": _label_cols(p.get("data.label_cols")),
            **json.loads(p.get("data.split", "{}")), "fingerprint": p.get("data.fingerprint"),
            "split_fingerprint": p.get("data.split_fingerprint")}
    targets = {n: _target(p.get(f"target.{n}")) for n in ("auroc", "auprc")}
    is_winner = trial.info.run_id == job.data.tags.get("losstune.best_trial_run_id")
    test = {k: v for k, v in jm.items() if k.startswith("test/") or k == "temperature"} if is_winner else None
    prov = make_provenance(
        job=_name(job), job_run_id=job.info.run_id,
        trial_id=trial.data.tags.get(TRIAL_TAG, ""), trial_run_id=trial.info.run_id, data=data,
        validation={**{k.removeprefix("best/val/"): v for k, v in tm.items() if k.startswith("best/val/")},
                    "best_epoch": int(tm["best/epoch"]) if "best/epoch" in tm else None},
        targets=targets, target_flags={k: int(v) for k, v in tm.items() if k.startswith("target.")}, test=test,
        threads=trial_threads(float(p.get("resources.cpu", 1))))
    text = winner_yaml(config, scenario=p.get("scenario", "custom"), provenance=prov)
    write_file(target, text, overwrite=overwrite)
    return f"wrote {target}: trial {prov['trial_id']} of job {prov['job']} (run {trial.info.run_id}) from {redact(uri)}"
