"""`losstune ui`: MLflow's UI on the runs of the latest job, at an address that opens on them.

For a local store (a sqlite file, or a database MLflow reaches directly) it starts ``mlflow server``
bound to 127.0.0.1, prints the addresses of the experiment's runs and of the latest job's run, and
keeps the server until Ctrl-C (or SIGTERM). For a tracking server it starts nothing: the server
serves its own UI, and the command prints the same addresses on it.

Every address carries ``?workflowType=machine_learning``: MLflow 3.17's UI keeps its mode in the
browser (GenAI by default) and opens an experiment on its traces page otherwise. Addresses never
carry credentials; a backend URI that holds some reaches ``mlflow server`` through its environment
(``MLFLOW_BACKEND_STORE_URI``), not its command line, which every user of the machine can read.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import click

from trainables.errors import UserError

__all__ = ["ui_command", "job_addresses", "DEFAULT_PORT"]

DEFAULT_PORT = 5000  # mlflow ui's own default
_START_S = 120.0  # a cold `mlflow server` on 2 busy cores answers in ~6-20 s


def job_addresses(uri: str, base: str, experiment: str | None) -> list[str]:
    """Lines naming the experiment's page and its latest job's page at ``base`` (the UI's address);
    ``experiment`` None: the latest job of the store, in whichever experiment it is."""
    from tuner.record.records import experiment_page, latest_job, run_page
    from tuner.record.stores import client_for

    exp, job = latest_job(client_for(uri), experiment)
    if exp is None:
        if experiment is None:
            return [f"  no losstune job in this store yet; all experiments: {experiment_page(base, None)}"]
        return [f"  no experiment '{experiment}' in this store yet; all experiments: {experiment_page(base, None)}"]
    experiment = exp.name
    lines = [f"  experiment '{experiment}' (each job and, under it, its trials): "
             f"{experiment_page(base, exp.experiment_id)}"]
    if job is None:
        lines.append(f"  experiment '{experiment}' holds no losstune job yet")
    else:
        name = job.data.tags.get("losstune.job", job.info.run_name)
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.info.start_time / 1000))
        lines.append(f"  latest job {name} ({job.info.status.lower()}, started {started}): "
                     f"{run_page(base, exp.experiment_id, job.info.run_id)}")
    return lines


def _check_port(port: int) -> None:
    """The port must be free on 127.0.0.1 before a server is started on it: one line, not MLflow's traceback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is not "in use"
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            other = port + 1 if port < 65535 else port - 1
            raise UserError(f"port {port} on 127.0.0.1 is in use ({exc.strerror or exc}); another MLflow UI? "
                            f"choose another with --port, e.g. --port {other}") from None


def _server_command(uri: str, port: int) -> tuple[list[str], dict[str, str], str | None]:
    """(command, environment, working folder) of ``mlflow server`` on the store."""
    from tuner.record.stores import sqlite_path

    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": uri}
    # The server's job runner (huey workers) serves GenAI features and slows the start: off, unless set.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env.pop("MLFLOW_TRACKING_URI", None)
    db = sqlite_path(uri)
    if db is None:
        return cmd, env, None
    folder = db.resolve().parent
    env["MLFLOW_BACKEND_STORE_URI"] = f"sqlite:///{db.resolve()}"
    # losstune keeps a sqlite store's artifacts in mlruns/ beside it; whatever the UI uploads goes there
    # too, and nothing lands in the folder the command ran in.
    cmd += ["--artifacts-destination", str(folder / "mlruns")]
    return cmd, env, str(folder)


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class _Stop(Exception):
    """SIGTERM or SIGHUP: stop the server as Ctrl-C does."""


def _serve(uri: str, port: int, experiment: str | None) -> None:
    import urllib.request

    from tuner.cluster.runtime import redact

    base = f"http://127.0.0.1:{port}"
    lines = job_addresses(uri, base, experiment)  # read before the server starts: a bad store fails first
    cmd, env, cwd = _server_command(uri, port)
    with tempfile.TemporaryDirectory(prefix="losstune-ui-") as tmp:
        log = Path(tmp) / "mlflow-server.log"
        with log.open("wb") as out:
            # A session of its own: the terminal's Ctrl-C reaches this process, which stops the server
            # (its gunicorn/uvicorn workers included) as a group.
            proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True)
        old = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
        try:
            deadline = time.monotonic() + _START_S
            while True:
                if proc.poll() is not None:
                    raise UserError(f"mlflow server on {base} exited with status {proc.returncode} before it "
                                    f"answered ({redact(_last_line(log)) or 'no output'})")
                try:
                    with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise UserError(f"mlflow server on {base} did not answer within {_START_S:.0f} s "
                                    f"({redact(_last_line(log)) or 'no output'})")
                time.sleep(0.3)
            click.echo(f"MLflow UI of {redact(uri)} at {base} (Ctrl-C stops it)")
            for line in lines:
                click.echo(line)
            status = proc.wait()
            raise click.ClickException(f"mlflow server stopped by itself (status {status}): "
                                       f"{redact(_last_line(log)) or 'no output'}")
        except (KeyboardInterrupt, _Stop):
            click.echo("stopping the MLflow UI", err=True)
        finally:
            _stop(proc)
            for sig, handler in old.items():
                signal.signal(sig, handler)


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


@click.command("ui")
@click.option("--tracking-uri", default=None, metavar="URI",
              help="MLflow tracking store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
@click.option("--experiment", default=None, metavar="NAME",
              help="MLflow experiment whose latest job is shown [default: the latest job, in any experiment].")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port of the UI on 127.0.0.1, for a local store.")
@click.pass_context
def ui_command(ctx: click.Context, tracking_uri: str | None, experiment: str | None, port: int) -> None:
    """Open MLflow's UI on the runs of the latest job.

    For a local store (a sqlite file, a database) it starts `mlflow server` on 127.0.0.1:PORT and
    keeps it until Ctrl-C; for a tracking server it starts nothing. Either way it prints the address
    of the experiment's runs and of the latest job's run: open them in a browser. The job's run page
    says the verdict (targets met on the held-out test split or not), the winner's metrics, what the
    job spent and how to run it again; its trials are listed under it.

    \b
    Examples:
      losstune ui
      losstune ui --tracking-uri sqlite:///runs/mlflow.db --port 5001
      losstune ui --tracking-uri http://mlflow.internal:5000 --experiment sepsis
    """
    from click.core import ParameterSource

    from tuner.cluster.runtime import redact
    from tuner.record.records import check_reachable, is_server, resolve_uri, ui_base
    from tuner.record.stores import check_store

    uri = resolve_uri(tracking_uri)
    check_store(uri, create=False)  # a store that does not exist is named, never created
    if is_server(uri):
        if ctx.get_parameter_source("port") is not ParameterSource.DEFAULT:
            raise UserError(f"--port starts a local UI; the tracking server '{redact(uri)}' serves its own: "
                            "drop --port")
        check_reachable(uri)
        click.echo(f"MLflow UI at {ui_base(uri)}")
        for line in job_addresses(uri, ui_base(uri), experiment):
            click.echo(line)
        return
    _check_port(port)
    check_reachable(uri)
    _serve(uri, port, experiment)
