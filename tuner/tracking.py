"""MLflow as the record of every job. The driver owns every write; workers never see the URI.

Layout in MLflow (experiment ``--experiment``, default ``losstune``):

- one parent run per job (tag ``losstune.role = job``): the job's settings and searched ranges as
  params, at the end the number of trials, how many met every target, the attainment rate, the best
  trial's run id and metrics, the winner's held-out test metrics, plots and the winner's artifacts;
- one child run per trial (tag ``mlflow.parentRunId``, keyed by ``losstune.trial_id`` so a retried or
  resumed trial continues its own run): the full trial config as dotted params, per-epoch metrics,
  at the end ``best/val/*``, ``target.*`` and a status.

Credentials in a tracking URI (``http://user:secret@host``) are used to connect and nowhere else:
messages show the URI redacted, nothing stores it (resume takes it from --tracking-uri or
MLFLOW_TRACKING_URI again).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.errors import UserError
from tuner.runtime import redact

__all__ = ["DEFAULT_URI", "DEFAULT_EXPERIMENT", "resolve_uri", "check_reachable", "mlflow_env", "Store", "JobRecords",
           "find_job", "job_children", "metric_entities", "param_entities", "ROLE_TAG", "TRIAL_TAG", "CONFIG_TAG"]

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "losstune"
ROLE_TAG = "losstune.role"
TRIAL_TAG = "losstune.trial_id"
CONFIG_TAG = "losstune.config"  # the trial's full config as JSON: what `losstune export` writes out


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


@dataclass
class Store:
    """MLflow client calls with retries and backoff; failures are recorded, never raised.

    After a write fails every retry, the store stops waiting on the server for ``cooldown_s``:
    writes in that window fail fast and are recorded too, so a dead server never stalls the job.
    """

    uri: str
    retries: int = 3
    backoff_s: float = 0.5
    cooldown_s: float = 15.0
    incomplete: list[str] = field(default_factory=list)
    _down_until: float = 0.0
    _client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            mlflow_env(max_retries=0, timeout_s=10)
            self._client = MlflowClient(self.uri)
        return self._client

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if time.time() < self._down_until:
            self.incomplete.append(what)
            return None
        for attempt in range(self.retries):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if _permanent(exc):
                    self.incomplete.append(f"{what} ({type(exc).__name__})")
                    return None
                if attempt < self.retries - 1:
                    time.sleep(self.backoff_s * 2**attempt)
        self._down_until = time.time() + self.cooldown_s
        self.incomplete.append(what)
        return None


def _permanent(exc: Exception) -> bool:
    """Errors a retry cannot fix (a bad request, a param logged twice with another value)."""
    code = getattr(exc, "error_code", "")
    return code in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST")


def param_entities(d: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in d.items()]


def metric_entities(d: dict[str, Any], step: int = 0) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in d.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]


def _batched(client_call: Callable[..., Any], items: list[Any], size: int) -> Callable[[], None]:
    def run() -> None:
        for i in range(0, len(items), size):
            client_call(items[i:i + size])

    return run


def _artifact_location(uri: str) -> str | None:
    """For a sqlite store, artifacts live beside the database file (MLflow's own default is ./mlruns
    under whatever folder the command ran in); servers decide for themselves."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    return (db.parent.resolve() / "mlruns").as_uri()


class JobRecords:
    """The parent run of a job: created (or re-opened on resume) and completed by the driver."""

    def __init__(self, store: Store, experiment: str) -> None:
        self.store, self.experiment = store, experiment
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None

    def open(self, job: Any, *, ray_address: str, parent_run_id: str | None = None) -> str | None:
        c = self.store.client
        exp = c.get_experiment_by_name(self.experiment)
        self.experiment_id = exp.experiment_id if exp else c.create_experiment(
            self.experiment, artifact_location=_artifact_location(self.store.uri))
        if parent_run_id:
            self.parent_run_id = parent_run_id
            self.store.call("reopen the job run", c.update_run, parent_run_id, status="RUNNING")
            return parent_run_id
        from tuner import __version__

        tags = {ROLE_TAG: "job", "losstune.job": job.experiment, "losstune.version": __version__,
                "ray.address": redact(ray_address), "losstune.scenario": job.scenario}
        if job.detection:
            tags["losstune.detection"] = "; ".join(job.detection["reasons"])
        run = c.create_run(self.experiment_id, run_name=job.experiment, tags=tags)
        self.parent_run_id = run.info.run_id
        params = {
            "scenario": job.scenario, "scenario.requested": job.scenario_requested, "metric": job.metric,
            "num_trials": job.num_trials, "scheduler": job.scheduler["name"],
            "scheduler.grace_period": job.scheduler["grace_period"],
            "scheduler.reduction_factor": job.scheduler["reduction_factor"], "concurrency": job.concurrency,
            "resources.cpu": job.resources["cpu"], "resources.gpu": job.resources["gpu"], "seed": job.seed,
            "target.auroc": job.targets.get("auroc"), "target.auprc": job.targets.get("auprc"),
            "stop_on_target": job.stop_on_target, "max_failures": job.max_failures,
            "data.source": redact(job.data.get("source", "")), "data.label_cols": ",".join(job.data.get("label_cols", [])),
            "data.split": json.dumps({k: job.data.get(k) for k in ("val_frac", "test_frac", "split_seed")}),
            "data.fingerprint": job.data_fingerprint, "data.split_fingerprint": job.split_fingerprint,
            **{f"search.{k}": v for k, v in job.search_space.items()},
        }
        self.store.call("job params", _batched(lambda p: c.log_batch(self.parent_run_id, params=p), param_entities(params), 100))
        return self.parent_run_id

    def close(self, *, metrics: dict[str, Any], tags: dict[str, str], artifacts: dict[str, str],
              files: list[tuple[str, str]], status: str = "FINISHED") -> None:
        """Summary metrics and tags, text artifacts (name → text) and files ((artifact dir, local path))."""
        c, rid = self.store.client, self.parent_run_id
        from mlflow.entities import RunTag

        self.store.call("job summary metrics", _batched(lambda m: c.log_batch(rid, metrics=m), metric_entities(metrics), 500))
        self.store.call("job summary tags", c.log_batch, rid, tags=[RunTag(k, v[:8000]) for k, v in tags.items()])
        for name, text in artifacts.items():
            self.store.call(f"artifact {name}", c.log_text, rid, text, name)
        for dest, path in files:
            self.store.call(f"artifact {dest}", c.log_artifact, rid, path, dest)
        self.store.call("end the job run", c.set_terminated, rid, status)


# --------------------------------------------------------------------------- reading back
def find_job(client: Any, *, experiment: str, job_run_id: str | None) -> Any:
    """The parent run of the given job, or of the latest job in ``experiment``."""
    if job_run_id:
        try:
            run = client.get_run(job_run_id)
        except Exception:
            raise UserError(f"no MLflow run '{job_run_id}'; list the jobs with `losstune best --experiment NAME`") from None
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
