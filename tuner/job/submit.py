"""A tuning job sent to a Ray cluster through the Ray Jobs API (``losstune submit``).

The job is checked here exactly as ``tune --dry-run`` checks it (the spec, the data, the scenario, the
ranges, the checkpoint); the cluster gets a working folder that holds ``job.yaml`` (and a copy of local
data up to ``DATA_LIMIT_BYTES``), and the entrypoint is ``losstune tune --job job.yaml --address auto``,
so the driver runs on the head and joins its runtime. Nothing secret goes into the entrypoint, the
runtime env or the metadata (anyone with dashboard access reads them): a tracking URI with
credentials is refused, MLflow credentials belong in the cluster's environment.
"""

from __future__ import annotations

import re
import shlex
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainables.errors import UserError
from tuner.cluster.privacy import QUIET_ENV, job_env
from tuner.cluster.ray_jobs import connect_jobs, public_text, submit_job
from tuner.cluster.runtime import redact
from tuner.job.plan import plan_job
from tuner.job.spec import JobSpec

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

__all__ = ["DATA_LIMIT_BYTES", "JOB_ENV", "Submitted", "check_tracking_uri", "stage_job", "entrypoint", "submit_spec"]

DATA_LIMIT_BYTES = 100 * 2**20  # what Ray's working_dir upload takes in practice
# The privacy defaults a submitted job runs with (tuner/cluster/privacy.py; the opt-in replaces them).
# Never a secret here: anyone with dashboard access reads a job's runtime env.
JOB_ENV = dict(QUIET_ENV)
_CREDENTIALS = re.compile(r"://[^/@\s]*@")


@dataclass(frozen=True)
class Submitted:
    """A job the cluster accepted: its Jobs API client and dashboard URL, its submission id, its losstune name."""

    client: JobSubmissionClient
    url: str
    job_id: str
    name: str


def check_tracking_uri(uri: str | None) -> None:
    """A tracking URI with credentials never goes to the cluster, whose dashboard shows the entrypoint."""
    if uri and _CREDENTIALS.search(uri):
        raise UserError(f"--tracking-uri '{redact(uri)}' holds credentials, which the Ray dashboard would show to "
                        "anyone; drop them from the URI and set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD "
                        "in the cluster's environment")


def _local_file(source: str | None) -> Path | None:
    if not source or source.startswith("synthetic:") or "://" in source:
        return None
    p = Path(source).expanduser()
    return p if p.is_file() else None


def stage_job(spec: JobSpec, folder: Path, *, limit: int | None = None) -> JobSpec:
    """Write ``job.yaml`` (and copies of a local data file and pretrained checkpoint, rewritten to
    their names in ``folder``) into ``folder``; returns the spec as written."""
    limit = DATA_LIMIT_BYTES if limit is None else limit
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    update: dict[str, Any] = {}
    data_file = _local_file(spec.data.source)
    copies: list[tuple[Path, str]] = []
    if data_file is not None:
        copies.append((data_file, "data"))
    ckpt = _local_file(spec.pretrained_ckpt)
    if ckpt is not None:
        copies.append((ckpt, "pretrained_ckpt"))
    for path, what in copies:
        size = path.stat().st_size
        total += size
        if total > limit:
            option = "--data" if what == "data" else "--pretrained-ckpt"
            raise UserError(f"{option} '{path}' ({size / 2**20:.1f} MiB) is too large to send with the job "
                            f"(at most {limit / 2**20:g} MiB in all); put it where the cluster reads it (an s3:// "
                            "or gs:// URI, or a shared path) and pass that")
        name = ("data-" if what == "data" else "ckpt-") + path.name
        shutil.copy2(path, folder / name)
        if what == "data":
            update["data"] = spec.data.model_copy(update={"source": name})
        else:
            update["pretrained_ckpt"] = name
    scenario = _local_file(spec.scenario) if spec.scenario.endswith((".yaml", ".yml")) else None
    if scenario is not None:  # a preset file (e.g. an exported winner) travels with the job
        name = "scenario-" + scenario.name
        shutil.copy2(scenario, folder / name)
        update["scenario"] = name
    presets = []
    for i, d in enumerate(spec.presets_dirs):  # the preset files of each --presets folder
        src, dest = Path(d).expanduser(), folder / f"presets-{i}"
        if src.is_dir():
            dest.mkdir()
            for f in sorted(src.glob("*.y*ml")):
                shutil.copy2(f, dest / f.name)
            presets.append(dest.name)
        else:
            presets.append(d)
    if spec.presets_dirs:
        update["presets_dirs"] = presets
    staged = spec.model_copy(update=update)
    (folder / "job.yaml").write_text(staged.to_yaml(), encoding="utf-8")
    return staged


def entrypoint(*, storage_path: str | None, tracking_uri: str | None, no_tracking: bool,
               extra: Sequence[str] = ()) -> str:
    """The command the head runs: ``losstune tune --job job.yaml --address auto`` and the options that
    are not in the spec (``extra``)."""
    args = ["losstune", "tune", "--job", "job.yaml", "--address", "auto", *extra]
    if storage_path:
        args += ["--storage-path", storage_path]
    if no_tracking:
        args.append("--no-tracking")
    elif tracking_uri:
        args += ["--tracking-uri", tracking_uri]
    return shlex.join(args)


def submit_spec(spec: JobSpec, *, address: str | None, storage_path: str | None, tracking_uri: str | None,
                no_tracking: bool, plan_storage: str = "losstune_results", extra: Sequence[str] = (),
                echo: Callable[[str], None] = print) -> Submitted:
    """Check the job here (as ``tune --dry-run``), then submit it.

    Args:
        storage_path: where the job keeps its results on the cluster (None: its working folder on the head).
        plan_storage: the storage the check here plans with when ``storage_path`` is None.
        extra: ``tune`` options that are not part of the spec, passed to the entrypoint as given.
        echo: where the dashboard's address is said.
    """
    check_tracking_uri(tracking_uri)
    job, _data, _space, _pretrained = plan_job(spec, storage_path or plan_storage)  # bad input fails here
    spec = spec.model_copy(update={"name": job.experiment})
    with tempfile.TemporaryDirectory(prefix="losstune-submit-") as tmp:
        staged = stage_job(spec, Path(tmp))
        client, url, where = connect_jobs(address)
        echo(f"Ray dashboard {redact(url)} (from {where})")
        job_id = submit_job(client, url,
                            entrypoint=entrypoint(storage_path=storage_path, tracking_uri=tracking_uri,
                                                  no_tracking=no_tracking, extra=extra),
                            runtime_env={"working_dir": tmp, "env_vars": job_env()},
                            metadata={"losstune.experiment": job.experiment,
                                      "losstune.data": public_text(staged.data.source)})
    return Submitted(client, url, job_id, job.experiment)
