"""`losstune submit` and `losstune jobs`: a tuning job sent to a Ray cluster through the Ray Jobs API.

``submit`` checks the job here exactly as ``tune --dry-run`` does (the spec, the data, the scenario,
the ranges, the checkpoint), then hands the cluster a working folder that holds ``job.yaml`` (and a
copy of local data up to ``DATA_LIMIT_BYTES``); the entrypoint is ``losstune tune --job job.yaml
--address auto``, so the driver runs on the head and joins its runtime. Nothing secret goes into the
entrypoint, the runtime env or the metadata (anyone with dashboard access reads them): a tracking URI
with credentials is refused, MLflow credentials belong in the cluster's environment.

The dashboard address: ``--address``, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS`` when it
is an http(s) URL. Token authentication: when ``RAY_AUTH_MODE=token`` or a token exists
(``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``) and the mode is not
``disabled``, every request carries ``Authorization: Bearer <token>`` (never printed).

Exit status of ``--follow`` and ``jobs logs --follow``: the job's, 0 SUCCEEDED, 1 FAILED, 130 STOPPED.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from trainables.errors import UserError
from tuner.cluster.privacy import QUIET_ENV, job_env
from tuner.cluster.runtime import redact, unreachable

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

__all__ = ["DATA_LIMIT_BYTES", "JOB_ENV", "EXIT_CODES", "resolve_address", "auth_headers", "connect_jobs",
           "stage_job", "submit_spec", "follow_job", "build_submit_command", "jobs_group"]

DATA_LIMIT_BYTES = 100 * 2**20  # what Ray's working_dir upload takes in practice
# The privacy defaults a submitted job runs with (tuner/cluster/privacy.py; the opt-in replaces them).
# Never a secret here: anyone with dashboard access reads a job's runtime env.
JOB_ENV = dict(QUIET_ENV)
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 130}
_TERMINAL = set(EXIT_CODES)
AGENT_WAIT_S = 60.0  # how long submit waits for the job agent of a head that just started
_CREDENTIALS = re.compile(r"://[^/@\s]*@")


# ---------------------------------------------------------------------------------------- connecting
def resolve_address(address: str | None) -> tuple[str, str]:
    """(dashboard URL, where it came from): ``--address``, else RAY_API_SERVER_ADDRESS, else an
    http(s) RAY_ADDRESS. ``host:port`` without a scheme means http."""
    where = "--address"
    if not address:
        env_api, env_ray = os.environ.get("RAY_API_SERVER_ADDRESS"), os.environ.get("RAY_ADDRESS", "")
        if env_api:
            address, where = env_api, "RAY_API_SERVER_ADDRESS"
        elif env_ray.startswith(("http://", "https://")):
            address, where = env_ray, "RAY_ADDRESS"
        else:
            raise UserError("no Ray dashboard address: pass --address http://HEAD:8265 "
                            "(or set RAY_API_SERVER_ADDRESS)")
    url = address.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    bad = UserError(f"{where} '{redact(address)}' is not a Ray dashboard URL such as http://HEAD:8265")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise bad from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise bad
    if port is None:
        url = f"{url}:{443 if parts.scheme == 'https' else 8265}"
    return url, where


def _token() -> str | None:
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    for path in (os.environ.get("RAY_AUTH_TOKEN_PATH"), str(Path.home() / ".ray" / "auth_token")):
        if path:
            try:
                text = Path(path).read_text(encoding="utf-8").strip()
            except OSError:
                continue
            if text:
                return text
    return None


def auth_headers() -> dict[str, str]:
    """The Authorization header a token-auth cluster wants, or none (RAY_AUTH_MODE=disabled, no token)."""
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    if mode == "disabled":
        return {}
    token = _token()
    if token is None:
        if mode == "token":
            raise UserError("RAY_AUTH_MODE=token but no token was found: set RAY_AUTH_TOKEN or copy the head's "
                            "~/.ray/auth_token here (`ray get-auth-token` on the head prints it)")
        return {}
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def _without_address_env() -> Iterator[None]:
    """JobSubmissionClient lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override the address it is given:
    hide them while it is built, so that the address losstune names is the one used."""
    saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return redact(text.splitlines()[0] if text else type(exc).__name__)[:300]


def connect_jobs(address: str | None) -> tuple[Any, str, str]:
    """(JobSubmissionClient, dashboard URL, where the address came from); every failure is one line."""
    url, where = resolve_address(address)
    parts = urlsplit(url)
    why = unreachable(parts.hostname, parts.port)
    if why:
        raise UserError(f"Ray dashboard at '{redact(url)}' (from {where}) is unreachable ({why}); check host and "
                        "port (the dashboard's, 8265 by default) and that the head runs with the dashboard")
    import logging

    from ray.job_submission import JobSubmissionClient

    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk", "ray._private.runtime_env"):
        logging.getLogger(name).setLevel(logging.WARNING)  # upload and websocket chatter is not news
    headers = auth_headers()
    try:
        with _without_address_env():
            client = JobSubmissionClient(url, headers=headers)
    except Exception as exc:  # not a Ray dashboard, refused token, a version mismatch
        msg = _first_line(exc)
        hint = ""
        if any(s in msg for s in ("401", "403", "nauthorized", "orbidden", "uthentication")):
            hint = "; the cluster wants its token: set RAY_AUTH_TOKEN (or ~/.ray/auth_token) as on the head"
        raise UserError(f"cannot use the Ray Jobs API at '{redact(url)}' (from {where}): {msg}{hint}") from None
    return client, url, where


@contextmanager
def _jobs_api(url: str, job_id: str | None = None) -> Iterator[None]:
    """A failed Jobs API call as one line; an unknown submission id names itself."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        msg = _first_line(exc)
        if job_id is not None and ("404" in msg or "does not exist" in msg or "not found" in msg.lower()):
            raise UserError(f"no job '{job_id}' on the Ray cluster at '{redact(url)}'; "
                            "list them with `losstune jobs list`") from None
        raise UserError(f"Ray Jobs API at '{redact(url)}' failed: {msg}") from None


# ---------------------------------------------------------------------------------------- submitting
def check_tracking_uri(uri: str | None) -> None:
    if uri and _CREDENTIALS.search(uri):
        raise UserError(f"--tracking-uri '{redact(uri)}' holds credentials, which the Ray dashboard would show to "
                        "anyone; drop them from the URI and set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD "
                        "in the cluster's environment")


def _local_file(source: str | None) -> Path | None:
    if not source or source.startswith("synthetic:") or "://" in source:
        return None
    p = Path(source).expanduser()
    return p if p.is_file() else None


def stage_job(spec: Any, folder: Path, *, limit: int | None = None) -> Any:
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
    args = ["losstune", "tune", "--job", "job.yaml", "--address", "auto", *extra]
    if storage_path:
        args += ["--storage-path", storage_path]
    if no_tracking:
        args.append("--no-tracking")
    elif tracking_uri:
        args += ["--tracking-uri", tracking_uri]
    return shlex.join(args)


def submit_spec(spec: Any, *, address: str | None, storage_path: str | None, tracking_uri: str | None,
                no_tracking: bool, plan_storage: str = "losstune_results", extra: Sequence[str] = (),
                echo: Callable[[str], None] = click.echo) -> tuple[Any, str, str, str]:
    """Check the job here (as ``tune --dry-run``), then submit it: (client, dashboard URL, submission id,
    the job's name)."""
    from tuner.job.plan import plan_job

    check_tracking_uri(tracking_uri)
    job, _data, _space, _pretrained = plan_job(spec, storage_path or plan_storage)  # bad input fails here
    spec = spec.model_copy(update={"name": job.experiment})
    with tempfile.TemporaryDirectory(prefix="losstune-submit-") as tmp:
        staged = stage_job(spec, Path(tmp))
        client, url, where = connect_jobs(address)
        echo(f"Ray dashboard {redact(url)} (from {where})")
        kwargs = dict(
            entrypoint=entrypoint(storage_path=storage_path, tracking_uri=tracking_uri, no_tracking=no_tracking,
                                  extra=extra),
            runtime_env={"working_dir": tmp, "env_vars": job_env()},
            metadata={"losstune.experiment": job.experiment, "losstune.data": _public(staged.data.source)})
        deadline = time.time() + AGENT_WAIT_S
        with _jobs_api(url):
            while True:
                try:
                    job_id = client.submit_job(**kwargs)
                    break
                except RuntimeError as exc:  # a head that just started has no job agent yet
                    if "No available agent" not in str(exc) or time.time() > deadline:
                        raise
                    time.sleep(1.0)
    return client, url, job_id, job.experiment


def _public(text: str) -> str:
    return redact(str(text))[:200]


# ---------------------------------------------------------------------------------------- following
def _status(client: JobSubmissionClient, url: str, job_id: str) -> str:
    with _jobs_api(url, job_id):
        status = client.get_job_status(job_id)
    return str(getattr(status, "value", status))


def follow_job(client: JobSubmissionClient, url: str, job_id: str, *, write: Callable[[str], None] | None = None,
               poll_s: float = 1.0) -> str:
    """Stream the job's logs until it is terminal (reconnecting when the stream ends early, never
    repeating what was shown) and return its final status."""
    write = write or (lambda s: click.echo(s, nl=False))
    shown = 0

    async def tail() -> None:
        nonlocal shown
        seen = 0
        async for chunk in client.tail_job_logs(job_id):
            new = chunk[max(0, shown - seen):] if seen < shown else chunk
            seen += len(chunk)
            if new:
                write(new)
                shown += len(new)

    status = _status(client, url, job_id)
    while status not in _TERMINAL:
        try:
            asyncio.run(tail())
        except Exception:  # a dropped websocket: poll, then reconnect
            pass
        status = _status(client, url, job_id)
        if status not in _TERMINAL:
            time.sleep(poll_s)
            status = _status(client, url, job_id)
    with _jobs_api(url, job_id):
        rest = client.get_job_logs(job_id)[shown:]  # whatever the stream missed at the end
    if rest:
        write(rest)
    return status


def _finish(status: str, job_id: str, url: str) -> None:
    click.echo(f"job {job_id}: {status}")
    raise click.exceptions.Exit(EXIT_CODES.get(status, 1))


# ---------------------------------------------------------------------------------------- commands
_ADDRESS_HELP = "Ray dashboard URL, http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS, else an http(s) RAY_ADDRESS)."
_NOT_SUBMITTED = ("address", "resume", "top", "dry_run")


def build_submit_command(tune_command: click.Command) -> click.Command:
    """``losstune submit``: the options of ``tune`` (but --address, --resume, --top, --dry-run)
    plus ``--address URL`` and ``--follow``."""

    @click.command("submit")
    @click.option("--address", default=None, metavar="URL", help=_ADDRESS_HELP)
    @click.option("--follow", is_flag=True, help="Stream the job's logs and exit with its status "
                                                  "(0 SUCCEEDED, 1 FAILED, 130 STOPPED).")
    @click.pass_context
    def submit_command(ctx: click.Context, *, address: str | None, follow: bool, job_file: str | None,
                       tracking_uri: str | None, no_tracking: bool, storage_path: str, demo: bool,
                       demo_images: bool, **options: Any) -> None:
        """Check a tuning job here, then run it on a Ray cluster with the Ray Jobs API.

        The driver runs on the head (`losstune tune --job job.yaml`); losstune must be installed
        there. Local data up to 100 MiB travels with the job; larger data needs a URI or a path
        the cluster reads. MLflow credentials belong in the cluster's environment.

        \b
        Examples:
          losstune submit --data patients.csv --label-col outcome --address http://head:8265 --follow
          losstune submit --demo --address http://127.0.0.1:8265 --follow
          losstune submit --job job.yaml --tracking-uri http://mlflow:5000 --storage-path /mnt/shared/losstune
        """
        from click.core import ParameterSource

        from tuner.job.spec import OPTION_FIELDS, JobSpec

        # tune's options that are not part of the spec (e.g. --shared-storage) go to the entrypoint as given
        extra = _forwarded(ctx, {k: options.pop(k) for k in list(options) if k not in OPTION_FIELDS})
        given = {k: v for k, v in options.items() if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
        spec = JobSpec.from_command_line(options, given, job_file=job_file, demo=demo, demo_images=demo_images)
        storage_given = ctx.get_parameter_source("storage_path") is not ParameterSource.DEFAULT
        client, url, job_id, name = submit_spec(
            spec, address=address, storage_path=storage_path if storage_given else None, tracking_uri=tracking_uri,
            no_tracking=no_tracking, plan_storage=storage_path, extra=extra)
        click.echo(f"submitted job {job_id} (losstune job {name})")
        if not no_tracking and not tracking_uri:
            click.echo("note: the job records to the cluster's MLFLOW_TRACKING_URI (else sqlite in its working "
                       "folder); pass --tracking-uri or --no-tracking to choose")
        if not storage_given:
            click.echo("note: without --storage-path the results stay in the job's working folder on the head; "
                       "pass a shared path or an s3:// URI to keep them")
        if not follow:
            click.echo(f"follow it with: losstune jobs logs {job_id} --follow --address {redact(url)}")
            return
        try:
            status = follow_job(client, url, job_id)
        except KeyboardInterrupt:
            click.echo(f"losstune: stopped following; job {job_id} goes on (stop it with: losstune jobs stop "
                       f"{job_id} --address {redact(url)})", err=True)
            raise click.exceptions.Exit(130) from None
        _finish(status, job_id, url)

    for p in tune_command.params:
        if p.name not in _NOT_SUBMITTED:
            submit_command.params.append(p)
    return submit_command


def _forwarded(ctx: click.Context, values: dict[str, Any]) -> list[str]:
    """Command-line arguments that repeat the given (non-default) values of these options."""
    from click.core import ParameterSource

    params = {p.name: p for p in ctx.command.params}
    out: list[str] = []
    for name, value in values.items():
        p = params[name]
        if ctx.get_parameter_source(name) is ParameterSource.DEFAULT or not isinstance(p, click.Option):
            continue
        flag = max(p.opts, key=len)
        if p.is_flag:
            if value:
                out.append(flag)
            elif p.secondary_opts:
                out.append(max(p.secondary_opts, key=len))
        else:
            for v in (value if p.multiple else [value]):
                out += [flag, str(v)]
    return out


def _address_option(f):
    return click.option("--address", default=None, metavar="URL", help=_ADDRESS_HELP)(f)


@click.group("jobs")
def jobs_group() -> None:
    """Jobs on a Ray cluster (submitted with `losstune submit`): list, status, logs, stop."""


@jobs_group.command("list")
@_address_option
def jobs_list(address: str | None) -> None:
    """The cluster's jobs, newest last: id, status, entrypoint."""
    client, url, _ = connect_jobs(address)
    with _jobs_api(url):
        jobs = client.list_jobs()
    jobs = sorted(jobs, key=lambda j: j.start_time or 0)
    if not jobs:
        click.echo("no jobs")
    for j in jobs:
        jid = j.submission_id or j.job_id
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time / 1000)) if j.start_time else "-"
        status = str(getattr(j.status, "value", j.status))
        click.echo(f"{jid}  {status:<9}  {started}  {_public(j.entrypoint)}")


@jobs_group.command("status")
@click.argument("job_id")
@_address_option
def jobs_status(job_id: str, address: str | None) -> None:
    """A job's status (and its message when it failed or stopped)."""
    client, url, _ = connect_jobs(address)
    with _jobs_api(url, job_id):
        info = client.get_job_info(job_id)
    status = str(getattr(info.status, "value", info.status))
    msg = f" ({_public(' '.join(str(info.message).split()))})" if info.message and status != "SUCCEEDED" else ""
    click.echo(f"{job_id}: {status}{msg}")


@jobs_group.command("logs")
@click.argument("job_id")
@_address_option
@click.option("--follow", is_flag=True, help="Stream until the job ends; exit with its status.")
def jobs_logs(job_id: str, address: str | None, follow: bool) -> None:
    """A job's output so far, or (--follow) until it ends."""
    client, url, _ = connect_jobs(address)
    if not follow:
        with _jobs_api(url, job_id):
            click.echo(client.get_job_logs(job_id), nl=False)
        return
    try:
        status = follow_job(client, url, job_id)
    except KeyboardInterrupt:
        click.echo(f"losstune: stopped following; job {job_id} goes on", err=True)
        raise click.exceptions.Exit(130) from None
    _finish(status, job_id, url)


@jobs_group.command("stop")
@click.argument("job_id")
@_address_option
def jobs_stop(job_id: str, address: str | None) -> None:
    """Ask the cluster to stop a job (its trials end; the status becomes STOPPED)."""
    client, url, _ = connect_jobs(address)
    status = _status(client, url, job_id)  # an unknown id is one line
    if status in _TERMINAL:
        click.echo(f"job {job_id} already ended: {status}")
        return
    with _jobs_api(url, job_id):
        client.stop_job(job_id)
    click.echo(f"stopping job {job_id}; see it end with: losstune jobs logs {job_id} --follow")
