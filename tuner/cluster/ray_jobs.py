"""The Ray Jobs API, as losstune uses it: the dashboard's address, its token, one line per failure.

The dashboard address: ``--address``, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS`` when it
is an http(s) URL. Token authentication: when ``RAY_AUTH_MODE=token`` or a token exists
(``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``) and the mode is not
``disabled``, every request carries ``Authorization: Bearer <token>`` (never printed).

A job's exit status, as ``--follow`` and ``jobs logs --follow`` give it: 0 SUCCEEDED, 1 FAILED, 130 STOPPED.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from trainables.errors import UserError
from tuner.cluster.runtime import redact, unreachable

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

__all__ = ["EXIT_CODES", "TERMINAL", "resolve_address", "auth_headers", "connect_jobs", "jobs_api", "job_status",
           "submit_job", "follow_job", "public_text"]

EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 130}
TERMINAL = frozenset(EXIT_CODES)
AGENT_WAIT_S = 60.0  # how long a submission waits for the job agent of a head that just started


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


def connect_jobs(address: str | None) -> tuple[JobSubmissionClient, str, str]:
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
def jobs_api(url: str, job_id: str | None = None) -> Iterator[None]:
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


def submit_job(client: JobSubmissionClient, url: str, *, entrypoint: str, runtime_env: dict[str, object],
               metadata: dict[str, str]) -> str:
    """Submit, waiting up to ``AGENT_WAIT_S`` for the job agent of a head that just started; the submission id."""
    deadline = time.time() + AGENT_WAIT_S
    with jobs_api(url):
        while True:
            try:
                return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata)
            except RuntimeError as exc:
                if "No available agent" not in str(exc) or time.time() > deadline:
                    raise
                time.sleep(1.0)


def public_text(text: object) -> str:
    """A text the cluster shows (an entrypoint, a data source, a message), credentials removed, cut short."""
    return redact(str(text))[:200]


# ---------------------------------------------------------------------------------------- following
def job_status(client: JobSubmissionClient, url: str, job_id: str) -> str:
    """The job's status (``RUNNING``, ``SUCCEEDED``…); an unknown id is one line."""
    with jobs_api(url, job_id):
        status = client.get_job_status(job_id)
    return str(getattr(status, "value", status))


def follow_job(client: JobSubmissionClient, url: str, job_id: str, *, write: Callable[[str], None] | None = None,
               poll_s: float = 1.0) -> str:
    """Stream the job's logs until it is terminal (reconnecting when the stream ends early, never
    repeating what was shown) and return its final status."""
    write = write or sys.stdout.write
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

    status = job_status(client, url, job_id)
    while status not in TERMINAL:
        try:
            asyncio.run(tail())
        except Exception:  # a dropped websocket: poll, then reconnect
            pass
        status = job_status(client, url, job_id)
        if status not in TERMINAL:
            time.sleep(poll_s)
            status = job_status(client, url, job_id)
    with jobs_api(url, job_id):
        rest = client.get_job_logs(job_id)[shown:]  # whatever the stream missed at the end
    if rest:
        write(rest)
    return status


