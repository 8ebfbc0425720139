"""MLflow as the record of every job. The driver owns every write; workers never see the URI.

Layout in MLflow (experiment ``--experiment``, default ``losstune``):

- one parent run per job (tag ``losstune.role = job``): the job's settings and searched ranges as
  params, at the end the number of trials, how many met every target, the attainment rate, the best
  trial's run id and metrics, the winner's held-out test metrics, plots and the winner's artifacts;
- one child run per trial (tag ``mlflow.parentRunId``, keyed by ``losstune.trial_id`` so a retried or
  resumed trial continues its own run): the full trial config as dotted params, per-epoch metrics,
  at the end ``best/val/*``, ``target.*`` and a status.

Only the experiment and the job's run are created by direct calls (the job cannot start without
them); every other record goes through the job's spool (``tuner.spool``), so that a store that
stops answering mid-job loses nothing.

Credentials in a tracking URI (``http://user:secret@host``) are used to connect and nowhere else:
messages show the URI redacted, nothing stores it (resume takes it from --tracking-uri or
MLFLOW_TRACKING_URI again).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from trainables.errors import UserError
from tuner.runtime import redact
from tuner.spool import SPOOL_FILE, Courier, Delivery, Spool, metric_rows

__all__ = ["DEFAULT_URI", "DEFAULT_EXPERIMENT", "resolve_uri", "check_reachable", "mlflow_env", "client_for",
           "JobRecords", "find_job", "job_children", "ROLE_TAG", "TRIAL_TAG", "CONFIG_TAG", "SEARCH_SPACE_TAG"]

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "losstune"
ROLE_TAG = "losstune.role"
TRIAL_TAG = "losstune.trial_id"
CONFIG_TAG = "losstune.config"  # the trial's full config as JSON: what `losstune export` writes out
SEARCH_SPACE_TAG = "losstune.search_space"  # the job's search space, structured (SearchSpace.to_dict)


def resolve_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def mlflow_env(max_retries: int = 0, timeout_s: int = 5) -> dict[str, str | None]:
    """MLflow as a CLI wants it: its own HTTP retries capped (by default it backs off for minutes on
    a dead server), no run URLs printed, no INFO chatter. Returns the replaced settings."""
    # MLflow prints "View run ... at: <tracking URI>" when a run ends: that URL carries any credentials.
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    for name in ("mlflow", "alembic"):  # "Creating initial MLflow database tables..." is not news
        logging.getLogger(name).setLevel(logging.WARNING)
    old = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_s)
    return old


def _restore_env(old: dict[str, str | None]) -> None:
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def check_reachable(uri: str) -> None:
    """One quick request; an unreachable or refusing store is one line, before any compute."""
    from mlflow import MlflowClient

    old = mlflow_env()
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:  # connection refused, DNS, HTTP 4xx/5xx, a bad sqlite path
        first = redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise UserError(f"MLflow tracking store '{redact(uri)}' is unreachable ({first[:200]}); start the server, "
                        "fix --tracking-uri, or pass --no-tracking") from None
    finally:
        _restore_env(old)


def client_for(uri: str) -> Any:
    """An MLflow client that fails fast on a dead server: the spool, not MLflow, retries."""
    from mlflow import MlflowClient

    mlflow_env(max_retries=0, timeout_s=10)
    return MlflowClient(uri)


def _artifact_location(uri: str) -> str | None:
    """For a sqlite store, artifacts live beside the database file (MLflow's own default is ./mlruns
    under whatever folder the command ran in); servers decide for themselves."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    return (db.parent.resolve() / "mlruns").as_uri()


class JobRecords:
    """The parent run of a job, and the spool (``tuner.spool``) that every record of the job goes
    through: created (or re-opened on resume) and completed by the driver."""

    def __init__(self, uri: str, experiment: str, job_path: str | Path) -> None:
        self.uri, self.experiment = uri, experiment
        self.spool_path = Path(job_path) / SPOOL_FILE
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = client_for(self.uri)
        return self._client

    def courier(self, spool: Spool, *, lookup_first: bool) -> Courier:
        return Courier(spool, self.uri, experiment_id=str(self.experiment_id), parent_run_id=str(self.parent_run_id),
                       lookup_first=lookup_first)

    def open(self, job: Any, *, ray_address: str, parent_run_id: str | None = None) -> str:
        """The experiment and the job's run must exist before any trial starts (the trials' runs are
        its children), so these calls are direct and their failure is the caller's error. The
        rest goes through the spool; on resume, what an earlier run of the job kept is replayed."""
        c = self.client
        exp = c.get_experiment_by_name(self.experiment)
        self.experiment_id = exp.experiment_id if exp else c.create_experiment(
            self.experiment, artifact_location=_artifact_location(self.uri))
        if parent_run_id:
            self.parent_run_id = parent_run_id
            record: dict[str, Any] = {"kind": "job_status", "status": "RUNNING"}
        else:
            from tuner import __version__

            tags = {ROLE_TAG: "job", "losstune.job": job.experiment, "losstune.version": __version__,
                    "ray.address": redact(ray_address), "losstune.scenario": job.scenario}
            if job.detection:
                tags["losstune.detection"] = "; ".join(job.detection["reasons"])
            # structured, for `best` and `export` (a tag: params are cut at 6000 characters)
            tags[SEARCH_SPACE_TAG] = json.dumps(job.space_spec, separators=(",", ":"))
            self.parent_run_id = c.create_run(self.experiment_id, run_name=job.experiment, tags=tags).info.run_id
            record = {"kind": "job_params", "params": {k: str(v) for k, v in _job_params(job).items()}}
        spool = Spool(self.spool_path)
        try:
            spool.append(record)
            self.courier(spool, lookup_first=bool(parent_run_id)).deliver(wait_s=5.0)
        finally:
            spool.close()
        return self.parent_run_id

    def close(self, *, metrics: dict[str, Any], tags: dict[str, str], texts: dict[str, str],
              files: list[tuple[str, str]], files_dir: str, best_trial: str | None, status: str = "FINISHED",
              within_s: float = 15.0) -> tuple[Delivery, Spool]:
        """The job's summary as one spooled record: metrics and tags, text artifacts (name → text,
        where BEST_TRIAL_RUN_ID stands for the best trial's run id), files ((artifact dir, path
        relative to the job folder) inside ``files_dir``). Then everything pending is delivered,
        waiting up to ``within_s`` for a store that does not answer; what remains stays spooled."""
        spool = Spool(self.spool_path)
        try:
            spool.append({"kind": "job_close", "metrics": metric_rows(metrics, 0), "tags": tags, "texts": texts,
                          "files": [list(f) for f in files], "files_dir": files_dir, "best_trial": best_trial,
                          "status": status})
            # The job's writer thread has stopped; a new process (sync) may not know every run.
            result = self.courier(spool, lookup_first=True).deliver_within(within_s)
        finally:
            spool.close()
        return result, spool


def _job_params(job: Any) -> dict[str, Any]:
    return {
        "scenario": job.scenario, "scenario.requested": job.scenario_requested, "metric": job.metric,
        "num_trials": job.num_trials, "scheduler": job.scheduler["name"],
        "scheduler.grace_period": job.scheduler["grace_period"],
        "scheduler.reduction_factor": job.scheduler["reduction_factor"], "concurrency": job.concurrency,
        "resources.cpu": job.resources["cpu"], "resources.gpu": job.resources["gpu"], "seed": job.seed,
        "target.auroc": job.targets.get("auroc"), "target.auprc": job.targets.get("auprc"),
        "stop_on_target": job.stop_on_target, "max_failures": job.max_failures,
        "data.source": redact(job.data.get("source", "")),
        "data.label_cols": json.dumps(list(job.data.get("label_cols", []))),
        "data.split": json.dumps({k: job.data.get(k) for k in ("val_frac", "test_frac", "split_seed")}),
        "data.fingerprint": job.data_fingerprint, "data.split_fingerprint": job.split_fingerprint,
        **{f"search.{k}": v for k, v in job.search_space.items()},
        # the spec as given, flat: `losstune tune --job` re-runs it (job.yaml in the job folder holds it too)
        **{f"spec.{k}": v if isinstance(v, (str, int, float, bool, type(None))) else json.dumps(v)
           for k, v in job.spec.flat().items()},
    }


# --------------------------------------------------------------------------- reading back
def find_job(client: Any, *, experiment: str, job_run_id: str | None) -> Any:
    """The parent run of the given job, or of the latest job in ``experiment``."""
    if job_run_id:
        try:
            run = client.get_run(job_run_id)
        except Exception:
            raise UserError(f"no MLflow run '{job_run_id}'; "
                            "list the jobs with `losstune best --experiment NAME`") from None
        if run.data.tags.get(ROLE_TAG) != "job":
            raise UserError(f"MLflow run '{job_run_id}' is not a losstune job (a trial run? pass its job's run id)")
        return run
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments(max_results=50)]
        raise UserError(f"no MLflow experiment '{experiment}'; experiments here: {', '.join(names) or 'none'}")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'job'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise UserError(f"MLflow experiment '{experiment}' holds no losstune job")
    return runs[0]


def job_children(client: Any, job_run: Any) -> list[Any]:
    return client.search_runs([job_run.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{job_run.info.run_id}'", max_results=5000)
