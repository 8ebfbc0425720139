"""MLflow as the record of every job. The driver owns every write; workers never see the URI.

Layout in MLflow (experiment ``--experiment``, default ``losstune``):

- one parent run per job, named ``job NAME`` (tag ``losstune.role = job``): the job's settings and
  searched ranges as params, the data as MLflow datasets (train, validation, test: name, digest,
  source, schema and row counts, never rows), at the end the number of trials, how many met every
  target, the attainment rate, the best trial's run id and metrics, the winner's held-out test
  metrics, plots and the winner's artifacts;
- one child run per trial, named ``trial 3 (ab12cd34)`` (tag ``mlflow.parentRunId``, keyed by
  ``losstune.trial_id`` so a retried or resumed trial continues its own run): the full trial config
  as dotted params, the train and validation datasets, per-epoch metrics, at the end ``best/val/*``,
  ``target.*`` and a status.

What a person reads in MLflow's UI is said in words too: the experiment declares its kind
(``mlflow.experimentKind``, so that the UI knows it holds model training, not GenAI traces), and each
run's description (``mlflow.note.content``, Markdown) is its verdict: for the job, whether the targets
were met on the held-out test split, the winner's metrics, what the job cost and the command that
runs it again; for a trial, how it ended, its best epoch and whether it met the targets. MLflow
3.17's UI opens on its GenAI pages unless the address says ``workflowType=machine_learning``, so
every address losstune prints says it (:func:`run_page`).

Only the experiment and the job's run are created by direct calls (the job cannot start without
them); every other record goes through the job's spool (``tuner.record.spool``), so that a store that
stops answering mid-job loses nothing.

Credentials in a tracking URI (``http://user:secret@host``) are used to connect and nowhere else:
messages show the URI redacted, nothing stores it (resume takes it from --tracking-uri or
MLFLOW_TRACKING_URI again).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from trainables.errors import UserError
from tuner.cluster.runtime import redact
from tuner.core.layout import CONFIG_TAG, NOTE_TAG, PARETO_TAG, ROLE_TAG, SEARCH_SPACE_TAG, TRIAL_TAG
from tuner.record.spool import SPOOL_FILE, Courier, Delivery, Spool, metric_rows
from tuner.record.stores import client_for, client_uri, creating_store, mlflow_env, restore_env, sqlite_path

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from trainables.data import PreparedData

__all__ = ["DEFAULT_URI", "DEFAULT_EXPERIMENT", "resolve_uri", "check_reachable", "creates_store",
           "JobRecords", "Tracking", "find_job", "list_jobs", "latest_job", "job_children", "ROLE_TAG", "TRIAL_TAG",
           "CONFIG_TAG", "SEARCH_SPACE_TAG", "NOTE_TAG", "PARETO_TAG", "EXPERIMENT_KIND_TAG", "EXPERIMENT_KIND",
           "UI_MODE", "is_server", "ui_base", "experiment_page", "run_page", "run_link", "dataset_records"]

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "losstune"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # the UI's "model training" kind (its other: genai_development)
# MLflow 3.17's UI keeps its mode in the browser (localStorage, GenAI by default); the address overrides it.
UI_MODE = "workflowType=machine_learning"
_SPLITS = (("train", "train"), ("val", "validation"), ("test", "test"))  # PreparedData split → MLflow context


# --------------------------------------------------------------------------- addresses in the UI
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")  # an MLflow run id


def is_server(uri: str) -> bool:
    """Whether ``uri`` is a tracking server (http/https) rather than a database."""
    return uri.startswith(("http://", "https://"))


def ui_base(uri: str) -> str:
    """The address of a tracking server's UI: its URI without credentials (which a browser would
    have to ask for anyway, and which are never printed), query or fragment."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def run_link(experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """A run's page (or one of its artifacts) inside the UI, relative: what a description links to."""
    tail = f"/artifactPath/{artifact}" if artifact else ""
    return f"#/experiments/{experiment_id}/runs/{run_id}{tail}?{UI_MODE}"


def run_page(base: str, experiment_id: str, run_id: str) -> str:
    """The address of a run's page in MLflow's UI (machine-learning mode)."""
    return f"{base}/{run_link(experiment_id, run_id)}"


def experiment_page(base: str, experiment_id: str | None) -> str:
    """The experiment's table of runs (or, with no experiment, the list of experiments)."""
    if experiment_id is None:
        return f"{base}/#/experiments?{UI_MODE}"
    return f"{base}/#/experiments/{experiment_id}/runs?{UI_MODE}"


# --------------------------------------------------------------------------- the data as MLflow datasets
def dataset_records(data: PreparedData) -> list[dict[str, Any]]:
    """The job's splits as MLflow datasets (``mlflow.entities.Dataset`` fields, JSON as MLflow stores
    them): what the data is, never a row of it. One per split, each with its context, because MLflow
    keeps one dataset per (name, digest): the splits differ in their rows, so in their names. The
    digest is losstune's data fingerprint followed by the split's, so that a re-split of the same
    data is a dataset of its own, with its own row counts."""
    source = str(data.source)
    base = source.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or source
    source_type, source_json = _dataset_source(source)
    columns: list[dict[str, Any]] = []
    if data.is_image:  # MLflow's tensor dataset schema: the images' size and channels, never their pixels
        c, h, w = data.input_shape
        features = [{"name": "image", "type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": [-1, c, h, w]}}]
        targets = [{"name": "labels", "type": "tensor",
                    "tensor-spec": {"dtype": "float32", "shape": [-1, len(data.label_names)]}}]
        schema = json.dumps({"mlflow_tensorspec": {"features": json.dumps(features), "targets": json.dumps(targets)}})
    else:
        if data.preprocessor is not None:  # the table's columns as losstune reads them
            columns = [{"name": c["name"], "type": "string" if c["kind"] == "categorical" else "double",
                        "required": not c["indicator"]} for c in data.preprocessor.columns]
        else:
            columns = [{"name": n, "type": "float", "required": True} for n in data.feature_names]
        columns += [{"name": n, "type": "long", "required": True} for n in data.label_names]  # labels, as 0/1
        schema = json.dumps({"mlflow_colspec": columns})
    out = []
    for attr, context in _SPLITS:
        split = getattr(data, attr)
        positives = split.y.sum(dim=0).int().tolist()
        profile: dict[str, Any] = {"num_rows": len(split)}
        if data.is_image:
            c, h, w = data.input_shape
            profile.update({"num_images": len(split), "image_size": f"{h}x{w}", "channels": c})
        else:
            profile["num_features"] = int(data.n_features)
        for name, pos in list(zip(data.label_names, positives))[:20]:
            profile[f"positives.{name}"] = int(pos)
            profile[f"prevalence.{name}"] = round(pos / max(len(split), 1), 5)
        out.append({"name": f"{base}/{context}", "digest": f"{data.fingerprint}.{data.split_fingerprint}"[:36],
                    "source_type": source_type, "source": source_json, "schema": schema,
                    "profile": json.dumps(profile), "context": context})
    return out


def _dataset_source(source: str) -> tuple[str, str]:
    """MLflow's source type and source JSON for a losstune data source (credentials never kept)."""
    if source.startswith("synthetic:"):
        return "code", json.dumps({"tags": {"losstune.synthetic": source}})
    if source.startswith(("http://", "https://")):  # a signed URL's query is a credential
        return "http", json.dumps({"url": redact(source.split("?", 1)[0])})
    scheme = source.split("://", 1)[0] if "://" in source else ""
    if scheme in ("s3", "gs"):
        return scheme, json.dumps({"uri": redact(source)})
    return "local", json.dumps({"uri": str(Path(source).resolve())})


def resolve_uri(uri: str | None) -> str:
    """The tracking store: ``uri``, else MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db``."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def check_reachable(uri: str) -> None:
    """One quick request; a store that does not answer or cannot be opened is one line, before any
    compute. A new sqlite store gets MLflow's tables here, one process at a time
    (``stores.creating_store``)."""
    from mlflow import MlflowClient

    old = mlflow_env()
    try:
        with creating_store(uri):
            MlflowClient(client_uri(uri)).search_experiments(max_results=1)
    except Exception as exc:  # connection refused, DNS, HTTP 4xx/5xx, a bad sqlite path
        first = redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        if is_server(uri):
            raise UserError(f"MLflow tracking store '{redact(uri)}' is unreachable ({first[:200]}); start the server, "
                            "fix --tracking-uri, or pass --no-tracking") from None
        what = "file" if sqlite_path(uri) is not None else "database"
        raise UserError(f"MLflow tracking store '{redact(uri)}' cannot be opened ({first[:200]}); check the {what}, "
                        "fix --tracking-uri, or pass --no-tracking") from None
    finally:
        restore_env(old)


def creates_store(uri: str) -> bool:
    """Whether opening ``uri`` would create a new sqlite store (a file that is missing or empty)."""

    db = sqlite_path(uri)
    return db is not None and (not db.exists() or db.stat().st_size == 0)


def _artifact_location(uri: str) -> str | None:
    """For a sqlite store, artifacts live beside the database file (MLflow's own default is ./mlruns
    under whatever folder the command ran in); servers decide for themselves."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    return (db.parent.resolve() / "mlruns").as_uri()


@dataclass
class Tracking:
    """Where a job's records go: the tracking store and the experiment."""

    uri: str
    experiment: str
    # At the end of a job, how long to wait for a tracking store that does not answer before the
    # undelivered records are left in the job's spool for `losstune sync`.
    final_retry_s: float = 15.0


class JobRecords:
    """The parent run of a job, and the spool (``tuner.record.spool``) that every record of the job goes
    through: created (or re-opened on resume) and completed by the driver."""

    def __init__(self, uri: str, experiment: str, job_path: str | Path) -> None:
        self.uri, self.experiment = uri, experiment
        self.spool_path = Path(job_path) / SPOOL_FILE
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._client: Any = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = client_for(self.uri)
        return self._client

    def courier(self, spool: Spool, *, lookup_first: bool) -> Courier:
        return Courier(spool, self.uri, experiment_id=str(self.experiment_id), parent_run_id=str(self.parent_run_id),
                       lookup_first=lookup_first)

    def open(self, *, run_name: str, tags: dict[str, str], params: dict[str, Any], parent_run_id: str | None = None,
             data: PreparedData | None = None) -> str:
        """The experiment and the job's run must exist before any trial starts (the trials' runs are
        its children), so these calls are direct and their failure is the caller's error. The
        rest goes through the spool; on resume (``parent_run_id``), what an earlier run of the job
        kept is replayed.

        Args:
            run_name, tags, params: the job run's name, tags and parameters (a new run only).
            parent_run_id: the job run of an earlier run of the job (a resumed job).
            data: the prepared data, recorded as MLflow datasets.

        Returns:
            The job run's id.
        """
        from mlflow.exceptions import MlflowException

        c = self.client
        exp = c.get_experiment_by_name(self.experiment)
        if exp is None:
            try:
                self.experiment_id = c.create_experiment(self.experiment,
                                                         artifact_location=_artifact_location(self.uri),
                                                         tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            except MlflowException:  # another job started at the same moment made it: use theirs
                exp = c.get_experiment_by_name(self.experiment)
                if exp is None:
                    raise
        if exp is not None:
            self.experiment_id = exp.experiment_id
            kind = exp.tags.get(EXPERIMENT_KIND_TAG, "")
            if not kind or kind.endswith("_inferred") or kind == "no_inferred_type":  # a guess, not a choice
                c.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        records: list[dict[str, Any]] = []
        if parent_run_id:
            self.parent_run_id = parent_run_id
            records.append({"kind": "job_status", "status": "RUNNING"})
        else:
            self.parent_run_id = c.create_run(self.experiment_id, run_name=run_name, tags=tags).info.run_id
            records.append({"kind": "job_params", "params": {k: str(v) for k, v in params.items()}})
            if data is not None:
                records.append({"kind": "job_inputs", "datasets": dataset_records(data)})
        spool = Spool(self.spool_path)
        try:
            for record in records:
                spool.append(record)
            self.courier(spool, lookup_first=bool(parent_run_id)).deliver(wait_s=5.0)
        finally:
            spool.close()
        return self.parent_run_id

    def close(self, *, metrics: dict[str, Any], tags: dict[str, str], texts: dict[str, str],
              files: list[tuple[str, str, str]], files_dir: str, best_trial: str | None, status: str = "FINISHED",
              within_s: float = 15.0, trial_tags: dict[str, dict[str, str]] | None = None) -> tuple[Delivery, Spool]:
        """The job's summary as one spooled record: metrics and tags, text artifacts (name → text,
        where BEST_TRIAL_RUN_ID stands for the best trial's run id), files ((artifact dir, path
        relative to the job folder, its SHA-256) inside ``files_dir``), and tags of trial runs (trial id →
        tags) known only now. Then everything pending is delivered, waiting up to ``within_s`` for a store
        that does not answer; what remains stays spooled."""
        spool = Spool(self.spool_path)
        try:
            # A job closed as FINISHED before (a kill landed while it was closing, and it was resumed) is
            # not closed again: its summary would be logged a second time with new timestamps.
            if spool.closed() != "FINISHED":
                spool.append({"kind": "job_close", "metrics": metric_rows(metrics, 0), "tags": tags, "texts": texts,
                              "files": [list(f) for f in files], "files_dir": files_dir, "best_trial": best_trial,
                              "status": status, "trial_tags": trial_tags or {}})
            # The job's deliverer has stopped; a new process (sync) may not know every run.
            result = self.courier(spool, lookup_first=True).deliver_within(within_s)
        finally:
            spool.close()
        return result, spool

    # ---- where the record is
    def note(self) -> str:
        """Where the job's record is, for the summary: on a server, the address of its run page."""
        head = f"MLflow: experiment '{self.experiment}', job run {self.parent_run_id}"
        if is_server(self.uri):
            return f"{head}\n  open it: {run_page(ui_base(self.uri), str(self.experiment_id), str(self.parent_run_id))}"
        uri = "" if self.uri == resolve_uri(None) else f" --tracking-uri {shlex.quote(redact(self.uri))}"
        experiment = "" if self.experiment == DEFAULT_EXPERIMENT else f" --experiment {shlex.quote(self.experiment)}"
        return f"{head}\n  open it: losstune ui{uri}{experiment}"


# --------------------------------------------------------------------------- reading back
def _experiment_ids(client: MlflowClient, experiment: str | None) -> list[str]:
    """The experiment named (one line when it does not exist), or every experiment of the store."""
    if experiment is None:
        return [e.experiment_id for e in client.search_experiments(max_results=1000)]
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments(max_results=50)]
        raise UserError(f"no MLflow experiment '{experiment}'; experiments here: {', '.join(names) or 'none'}")
    return [exp.experiment_id]


def list_jobs(client: MlflowClient, *, experiment: str | None = None, max_results: int = 1000) -> list[Run]:
    """The job runs of ``experiment`` (None: of every experiment), newest first."""
    ids = _experiment_ids(client, experiment)
    runs: list[Run] = []
    for i in range(0, len(ids), 100):  # MLflow searches at most 100 experiments at once
        runs += client.search_runs(ids[i:i + 100], filter_string=f"tags.`{ROLE_TAG}` = 'job'",
                                   order_by=["attributes.start_time DESC"], max_results=max_results)
    return sorted(runs, key=lambda r: -(r.info.start_time or 0))[:max_results]


def find_job(client: MlflowClient, *, experiment: str | None, job: str | None) -> Run:
    """A job's run: by the job's name (as `tune` printed it; an MLflow run id works too), else the
    latest job of ``experiment`` (None: of every experiment)."""
    from mlflow.exceptions import MlflowException

    if job and _RUN_ID.match(job):
        try:
            run = client.get_run(job)
        except MlflowException:  # not a run id after all: perhaps a job called so
            run = None
        if run is not None:
            if run.data.tags.get(ROLE_TAG) != "job":
                raise UserError(f"MLflow run '{job}' is not a losstune job (a trial's run? pass its job's name)")
            return run
    jobs = list_jobs(client, experiment=experiment)
    where = f"experiment '{experiment}'" if experiment else "this tracking store"
    if job:
        named = [r for r in jobs if r.data.tags.get("losstune.job") == job]
        if not named:
            raise UserError(f"no job '{job}' in {where}; list the jobs with `losstune best --jobs`")
        return named[0]
    if not jobs:
        raise UserError(f"{where} holds no losstune job" + ("" if experiment else "; run `losstune tune --demo`"))
    return jobs[0]


def latest_job(client: MlflowClient, experiment: str | None) -> tuple[Any, Any]:
    """(the experiment, its latest job run), or with ``experiment`` None the latest job of the store
    and its experiment: either may be None; nothing is raised."""
    if experiment is None:
        jobs = list_jobs(client, max_results=1)
        return (client.get_experiment(jobs[0].info.experiment_id), jobs[0]) if jobs else (None, None)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None, None
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'job'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return exp, (runs[0] if runs else None)


def job_children(client: MlflowClient, job_run: Run) -> list[Any]:
    """Every run of a job (its trials, the baseline arm's, the confirmations'), oldest first."""
    return client.search_runs([job_run.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{job_run.info.run_id}'", max_results=5000)
