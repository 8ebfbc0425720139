"""`losstune best` and `losstune export`: read a job back from MLflow alone.

Both work from any machine that reaches the tracking store: nothing here needs the experiment
folder, the data or Ray.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from search_spaces.spaces import Condition, SpaceSpec
from trainables.config import Config
from trainables.errors import UserError
from tuner.cluster.runtime import redact
from tuner.present.tables import metric, side_by_side, table, value
from tuner.present.verdict import BOTTOM_LINE_TAG, BUDGETS_TAG, CONVERGENCE_TAG
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

__all__ = ["best_report", "export_config"]

# The job run's tag (or param) holding json.dumps(space.to_dict()): what was searched, as data.


def _client(uri: str) -> Any:
    """A client for commands that only read: the store must exist already (a read never creates
    one), and a server that stops answering fails in seconds, not after minutes of retries."""
    from mlflow import MlflowClient

    from tuner.record.records import check_reachable
    from tuner.record.stores import check_store, client_uri, mlflow_env

    check_store(uri, create=False)
    check_reachable(uri)
    mlflow_env(max_retries=1, timeout_s=5)
    return MlflowClient(client_uri(uri))


def _searched(job: Any) -> list[tuple[str, Condition | None]]:
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


def _name(job: Any) -> str:
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
    c = _client(uri)
    job = find_job(c, experiment=experiment, job_run_id=job_run_id)
    everything = job_children(c, job)
    # the stack's search; the baseline arm and the confirmations are summarised from the job run below
    children = [r for r in everything if r.data.tags.get("losstune.arm", "stack") == "stack"
                and r.data.tags.get("losstune.phase", "search") == "search"]
    p, m, t = job.data.params, job.data.metrics, job.data.tags
    searched = _searched(job)
    finished = [r for r in children if r.info.status != "RUNNING"]
    if not finished:
        raise UserError(f"job '{_name(job)}' ({job.info.run_id}) has no finished trial yet"
                        f"{' (it is still running)' if job.info.status == 'RUNNING' else ''}")
    rows = sorted(children, key=lambda r: -r.data.metrics.get("objective", -math.inf))
    lines = [f"job {_name(job)} (run {job.info.run_id}, {job.info.status}): "
             f"{len(children)} of {p.get('num_trials', '?')} trials, scenario {p.get('scenario')}, "
             f"metric {p.get('metric')}"]
    if t.get(BOTTOM_LINE_TAG):  # the job's own sentence, as its summary and MLflow description open
        lines.append(t[BOTTOM_LINE_TAG])
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
    if "test/auroc" in m:
        lines.append(f"\nwinner {t.get('losstune.best_trial_id', '?')} on the held-out test split: AUROC "
                     f"{m['test/auroc']:.4f}, AUPRC {m['test/auprc']:.4f}, ECE {m['test/ece']:.4f} -> "
                     f"{m.get('test/ece_scaled', math.nan):.4f} after temperature scaling")
    goals = {n: p[f"target.{n}"] for n in ("auroc", "auprc") if _target(p.get(f"target.{n}")) is not None}
    if goals:
        rate = m.get("target.attainment_rate")
        on_test = m.get("target.test_all_met")
        lines.append("targets (" + ", ".join(f"{n.upper()} >= {v}" for n, v in goals.items()) + "): met by "
                     f"{int(m.get('trials.met_all_targets', 0))} trials on validation"
                     + (f" ({rate:.0%})" if rate is not None else "")
                     + ("" if on_test is None else f"; on test: {'met' if on_test else 'NOT met'}"))
    lines += _arms_and_lifts(m)
    lines += ["  " + line for tag in (BUDGETS_TAG, CONVERGENCE_TAG) for line in t.get(tag, "").splitlines()]
    if "budget.trials" in m:
        lines.append(f"spent: {int(m['budget.trials'])} trials, {m.get('budget.wall_s', 0):.0f} s wall, "
                     f"{m.get('budget.cpu_hours', 0):.3f} CPU-hours, {m.get('budget.gpu_hours', 0):.3f} GPU-hours")
    if is_server(uri):  # where a person reads the same in MLflow's UI
        lines.append(f"MLflow: {run_page(ui_base(uri), job.info.experiment_id, job.info.run_id)}")
    return "\n".join(lines)


def _arms_and_lifts(m: dict[str, float]) -> list[str]:
    """The arms, the reference models and the lifts, as the job run's metrics hold them."""
    from trainables.compare import Lift, lift_sentence
    from tuner.present.verdict import COMPARED_NAMES

    def pm(key: str) -> str:
        sd = m.get(key.replace("_mean", "_sd"))
        return metric(m.get(key)) + ("" if sd is None else f" ± {sd:.4f}")

    lines = []
    arms = [a for a in ("stack", "baseline") if f"arm/{a}/test/auroc_mean" in m]
    if arms:
        rows = []
        for a in arms:
            if f"arm/{a}/deployed/test/auroc" in m:
                rows.append([f"  {a}: deployed", "", *(metric(m.get(f"arm/{a}/deployed/test/{k}"))
                                                       for k in ("auroc", "auprc", "ece_calibrated"))])
            rows.append(["    seed mean ± sd", str(int(m.get(f"arm/{a}/seeds", 1))), *(
                pm(f"arm/{a}/test/{k}_mean") for k in ("auroc", "auprc", "ece_calibrated"))])
        lines.append("\narms on the held-out test split (deployed: the config's seed best on validation; the seed "
                     "mean ± sd of its config):")
        lines.append(table(["  arm", "seeds", "test AUROC", "test AUPRC", "test ECE (calibrated)"], rows))
    refs = sorted({k.split("/")[1] for k in m if k.startswith("reference/")})
    if refs:
        lines.append("reference models on the same test split: " + "; ".join(
            f"{COMPARED_NAMES.get(n, n)} AUROC {metric(m.get(f'reference/{n}/test/auroc'))}, "
            f"AUPRC {metric(m.get(f'reference/{n}/test/auprc'))}" for n in refs))
    for name in ("baseline", "baseline_as_trained", *refs):
        for what in ("auroc", "auprc", "ece"):
            key = f"lift/{name}/{what}"
            if key in m:
                lift = Lift(estimate=m[key], low=m[f"{key}_low"], high=m[f"{key}_high"], metric=what, label="macro",
                            n_resamples=0)
                model_a = "the loss stack" if name == "baseline" else "the loss stack's winner"
                lines.append("  " + lift_sentence(lift, model_a=model_a, model_b=COMPARED_NAMES.get(name, name)))
    return lines


def export_config(*, uri: str, experiment: str, job_run_id: str | None, trial_run_id: str | None, out: str,
                  overwrite: bool = False) -> str:
    from tuner.core.outputs import check_out_file, write_file

    target = Path(out)
    check_out_file(target, overwrite=overwrite)
    c = _client(uri)
    job = find_job(c, experiment=experiment, job_run_id=job_run_id)
    if trial_run_id is None:
        trial_run_id = job.data.tags.get("losstune.best_trial_run_id") or None
        if trial_run_id is None:
            raise UserError(f"job '{_name(job)}' ({job.info.run_id}) has no finished trial to export yet")
    try:
        trial = c.get_run(trial_run_id)
    except Exception:
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
