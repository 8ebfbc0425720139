"""`losstune best` and `losstune export`: read a job back from MLflow alone.

Both work from any machine that reaches the tracking store: nothing here needs the experiment
folder, the data or Ray.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from search_spaces.spaces import Condition, SpaceSpec
from trainables.config import Config
from trainables.errors import UserError
from trainables.vocab import JobState
from tuner.cluster.runtime import redact
from tuner.core.summary import SUMMARY_FILE, JobSummary
from tuner.present.tables import fit_width, metric, side_by_side, table, value
from tuner.present.text import render_best, score_note
from tuner.present.verdict import bottom_line
from tuner.record.records import (
    CONFIG_TAG,
    PARETO_TAG,
    SEARCH_SPACE_TAG,
    TRIAL_TAG,
    find_job,
    is_server,
    job_children,
    list_jobs,
    run_page,
    ui_base,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

__all__ = ["best_report", "pareto_report", "export_config"]

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


def jobs_report(*, uri: str, experiment: str | None, top: int) -> str:
    """``losstune best --jobs``: the jobs of the store (or of one experiment), newest first: name,
    status, start, scenario, trials, experiment; the name is what ``--job`` takes."""
    c = _client(uri)
    jobs = list_jobs(c, experiment=experiment, max_results=max(top, 50))
    if not jobs:
        return "no losstune job here yet; run `losstune tune --demo`"
    names = {e.experiment_id: e.name for e in c.search_experiments(max_results=1000)}
    rows = [[_name(j), j.info.status.lower(), time.strftime("%Y-%m-%d %H:%M", time.localtime(j.info.start_time / 1000)),
             j.data.params.get("scenario", "?"), j.data.params.get("num_trials", "?"),
             names.get(j.info.experiment_id, j.info.experiment_id)] for j in jobs]
    return table(["job", "status", "started", "scenario", "trials", "experiment"], rows)


def best_report(*, uri: str, experiment: str | None, job_name: str | None, top: int) -> str:
    """``losstune best``: a job's trials (from their MLflow runs, best first, with their searched
    values) and what the job concluded (from its ``summary.json``).

    Args:
        uri: the tracking store; experiment: where to look (None: everywhere); job_name: a job's name or
            its run id (the latest job when None); top: how many trials to list.

    Returns:
        The text to print.
    """
    c = _client(uri)
    job = find_job(c, experiment=experiment, job=job_name)
    # the stack's search; the baseline arm and the confirmations are summarised from the job run below
    children = _stack_search(c, job)
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
    header = ["#", "trial id", "status", "epochs", "score", "val auroc", "val auprc", "val ece", "targets"]
    body = []
    for i, r in enumerate(rows[:top], 1):
        rm = r.data.metrics
        targets = "-" if "target.all_met" not in rm else ("met" if rm["target.all_met"] else "not met")
        body.append([str(i), r.data.tags.get(TRIAL_TAG, "?"),
                     r.data.tags.get("losstune.status", r.info.status.lower()), str(int(rm.get("epoch", 0))),
                     metric(rm.get("objective")), metric(rm.get("best/val/auroc")), metric(rm.get("best/val/auprc")),
                     metric(rm.get("best/val/ece")), targets])
    lines.append(table(header, body))
    lines.append(score_note(p.get("metric", "val/score")))
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
    return "\n".join(fit_width(lines))


def pareto_report(*, uri: str, experiment: str | None, job_name: str | None) -> str:
    """``losstune best --pareto``: the Pareto front of a job of several objectives, from its trial runs
    (tagged ``losstune.pareto``) and their validation values; the member the job selected first (its
    ``summary.json`` ranks them)."""
    c = _client(uri)
    job = find_job(c, experiment=experiment, job=job_name)
    p = job.data.params
    try:
        objectives = [str(o) for o in json.loads(p.get("spec.objectives", "[]"))]
    except ValueError:
        objectives = []
    if len(objectives) < 2:
        raise UserError(f"job '{_name(job)}' searched one objective ({p.get('metric', '?')}): it has no Pareto front; "
                        "`losstune best` lists its trials (a job with --objectives has one)")
    runs = _stack_search(c, job)
    front = [r for r in runs if r.data.tags.get(PARETO_TAG) == "true"]
    if not front:
        raise UserError(f"job '{_name(job)}' ({job.info.run_id}, {job.info.status.lower()}) has no front recorded yet: "
                        "its trials are tagged when the job ends")
    summary = _summary(c, job)
    order = {tid: i for i, tid in enumerate(summary.selected if summary is not None else ())}
    front.sort(key=lambda r: (order.get(r.data.tags.get(TRIAL_TAG, ""), len(order)),
                              -r.data.metrics.get("objective", -math.inf)))
    metrics = [o.rsplit(":", 1)[0] for o in objectives]
    rule = p.get("spec.select") or ""
    body = [[r.data.tags.get(TRIAL_TAG, "?") + (" >" if order.get(r.data.tags.get(TRIAL_TAG, "")) == 0 else ""),
             r.data.tags.get("losstune.status", r.info.status.lower()), str(int(r.data.metrics.get("epoch", 0))),
             *[metric(r.data.metrics.get(f"best/{m}")) for m in metrics],
             "yes" if r.data.tags.get(TRIAL_TAG, "") in order else "no"] for r in front]
    lines = [f"job {_name(job)} (run {job.info.run_id}, {job.info.status}): the Pareto front of "
             f"{', '.join(objectives)} on validation, {len(front)} of {len(runs)} trials (each at its epoch best "
             f"for {metrics[0]})",
             table(["trial id", "status", "epochs", *[m.removeprefix("val/") for m in metrics],
                    "meets --select" if rule else "ranked"], body),
             f"> the member the job selected ({'--select ' + repr(rule) if rule else 'the knee'}); "
             f"write any member's config: losstune export --job {_name(job)} --trial ID --out config.yaml"]
    if summary is not None and summary.job_state is JobState.NO_SELECTION:
        lines.append(f"no member met --select {rule!r}: the job selected no model")
    return "\n".join(fit_width(lines))


def _stack_search(client: MlflowClient, job: Run) -> list[Run]:
    """The runs of the job's stack search (not the baseline arm's, not the confirmations')."""
    return [r for r in job_children(client, job) if r.data.tags.get("losstune.arm", "stack") == "stack"
            and r.data.tags.get("losstune.phase", "search") == "search"]


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


def find_trial(client: MlflowClient, job: Run, trial_id: str) -> Run:
    """The job's trial run that ``trial_id`` names: its trial id as the summary and ``best`` print it
    (``03c696ed``, ``c6b4a_00001``), its MLflow run id, or a unique start of either."""
    runs = [r for r in job_children(client, job) if CONFIG_TAG in r.data.tags]
    for exact in (lambda r: r.data.tags.get(TRIAL_TAG) == trial_id, lambda r: r.info.run_id == trial_id):
        found = [r for r in runs if exact(r)]
        if len(found) == 1:
            return found[0]
    found = [r for r in runs if r.data.tags.get(TRIAL_TAG, "").startswith(trial_id)
             or r.info.run_id.startswith(trial_id)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(f"job '{_name(job)}' has no trial '{trial_id}'; pick a trial id from `losstune best --job "
                        f"{_name(job)}`")
    ids = ", ".join(sorted(r.data.tags.get(TRIAL_TAG, r.info.run_id) for r in found)[:6])
    raise UserError(f"'{trial_id}' names {len(found)} trials of job '{_name(job)}' ({ids}); give more of the id")


def export_config(*, uri: str, experiment: str | None, job_name: str | None, trial_id: str | None, out: str,
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
    job = find_job(c, experiment=experiment, job=job_name)
    if trial_id is None:
        trial_id = job.data.tags.get("losstune.best_trial_run_id") or None
        if trial_id is None and job.data.tags.get("losstune.status") == JobState.NO_SELECTION.value:
            raise UserError(f"job '{_name(job)}' selected no model (no member of its Pareto front met --select); "
                            f"pick one: `losstune best --job {_name(job)} --pareto`, then --trial ID")
        if trial_id is None:
            raise UserError(f"job '{_name(job)}' ({job.info.run_id}) has no finished trial to export yet")
    trial = find_trial(c, job, trial_id)
    config = Config.from_dict(json.loads(trial.data.tags[CONFIG_TAG]), source=f"trial run {trial.info.run_id}")
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
