"""Checks of an MLflow tracking store that run before anything else, and answer in seconds.

MLflow itself, pointed at a store it cannot use, retries for minutes (an unwritable sqlite file:
110 s and dozens of warnings) or quietly creates one (``sqlite:///nosuch.db`` for ``losstune best``).
So losstune looks first:

- a sqlite store must be a file in an existing, writable folder for commands that write
  (``tune``, ``sync``); for commands that only read (``best``, ``export``) it must already exist
  and hold MLflow's tables: a read never creates a store;
- a server must accept a TCP connection within a few seconds, then answer one request.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from trainables.errors import UserError
from tuner.cluster.runtime import redact, unreachable

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["check_store", "check_uri_form", "sqlite_path", "client_uri", "StoreDown", "creating_store", "mlflow_env",
           "restore_env", "client_for"]

# What MLflow 3 opens as a tracking store: SQLAlchemy databases (a driver may follow a '+'), a server
# over HTTP(S), Databricks.
_STORE_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mssql", "http", "https", "databricks",
                  "databricks-uc")


class StoreDown(UserError):
    """A server that does not answer: for ``tune`` a mistake to fix before any compute (exit 2), for
    ``sync`` a reason to keep the records and try again later (exit 1)."""


def check_uri_form(uri: str) -> None:
    """A tracking URI names a kind of store MLflow opens; anything else is a mistake (one line)."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme not in _STORE_SCHEMES:
        raise UserError(f"tracking URI '{redact(uri)}' is not an MLflow tracking store; use sqlite:///FILE.db, "
                        "http(s)://HOST:PORT (a server), or a database URI such as postgresql://HOST/DB")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///relative`` or ``sqlite:////absolute`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def client_uri(uri: str) -> str:
    """The URI an MLflow client is given: a relative sqlite path made absolute. MLflow keeps one store
    per URI string for the life of a process, so ``sqlite:///mlflow.db`` opened in one folder would
    go on writing there after the process moved to another (a notebook, a test run)."""
    db = sqlite_path(uri)
    if db is None or db.is_absolute():
        return uri
    query = uri.partition("?")[2]
    return f"sqlite:///{db.resolve()}" + (f"?{query}" if query else "")


def _check_sqlite(uri: str, db: Path, *, create: bool) -> None:
    shown = redact(uri)
    if db.is_dir():
        raise UserError(f"MLflow tracking store '{shown}' is a folder, not a database file; name a file, "
                        "e.g. sqlite:///mlflow.db")
    if not db.exists():
        if not create:
            raise UserError(f"MLflow tracking store '{shown}' does not exist (no file '{db}'); pass the --tracking-uri "
                            "that the job was recorded in")
        folder = db.parent if str(db.parent) else Path(".")
        if not folder.exists():
            raise UserError(f"MLflow tracking store '{shown}' cannot be created: folder '{folder}' does not exist")
        if not folder.is_dir():
            raise UserError(f"MLflow tracking store '{shown}' cannot be created: '{folder}' is a file, not a folder")
    if create:
        # sqlite writes a journal beside the database: the folder must take a new file, the file a write.
        try:
            fd, probe = tempfile.mkstemp(prefix=".losstune-probe-", dir=db.parent if str(db.parent) else ".")
            os.close(fd)
            os.unlink(probe)
            if db.exists():
                with db.open("r+b"):
                    pass
        except OSError as exc:
            raise UserError(f"MLflow tracking store '{shown}' is not writable ({exc.strerror or exc}); fix the "
                            "permissions, choose another --tracking-uri, or pass --no-tracking") from None
        if not os.access(db.parent if str(db.parent) else ".", os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise UserError(f"MLflow tracking store '{shown}' is not writable (permission denied); "
                            "fix the permissions, choose another --tracking-uri, or pass --no-tracking")
    if db.exists() and db.stat().st_size > 0:
        try:
            with sqlite3.connect(f"file:{db.resolve()}?mode=ro", uri=True, timeout=2) as con:
                tables = {r[0] for r in con.execute("select name from sqlite_master where type = 'table'")}
        except sqlite3.Error as exc:
            raise UserError(f"MLflow tracking store '{shown}' is not an SQLite database ({exc}); "
                            "choose another --tracking-uri") from None
        if "experiments" not in tables and (tables or not create):
            raise UserError(f"'{db}' is an SQLite database but not an MLflow tracking store; "
                            "choose another --tracking-uri")
    elif not create:
        raise UserError(f"MLflow tracking store '{shown}' is empty (no MLflow tables in '{db}'); "
                        "pass the --tracking-uri that the job was recorded in")


def _check_server(uri: str) -> None:
    parts = urlsplit(uri)
    try:
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        host, port = None, None
    if not host:
        raise UserError(f"MLflow tracking URI '{redact(uri)}' has no host; e.g. http://127.0.0.1:5000")
    why = unreachable(host, port)
    if why:
        raise StoreDown(f"MLflow tracking store '{redact(uri)}' is unreachable ({why}); "
                        "start the server or fix --tracking-uri")


def check_store(uri: str, *, create: bool) -> None:
    """Everything that can be said about a store before MLflow is asked (asking it creates a sqlite
    store's tables): ``create`` for commands that write, not for those that only read. The caller
    then asks MLflow itself (``tracking.check_reachable``) once nothing else can fail."""
    check_uri_form(uri)
    db = sqlite_path(uri)
    if db is not None:
        _check_sqlite(uri, db, create=create)
    elif uri.startswith(("http://", "https://")):
        _check_server(uri)


@contextmanager
def creating_store(uri: str) -> Iterator[None]:
    """Held while MLflow may create a sqlite store's tables: two jobs started together on a new store
    would otherwise both run MLflow's schema migration, and one fails ("table _alembic_tmp_tags
    already exists") or leaves the store unusable. An exclusive ``flock`` on the store's folder
    serialises them without a lock file of its own; the second finds the tables made."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    folder = db.parent if str(db.parent) else Path(".")
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


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


def restore_env(old: dict[str, str | None]) -> None:
    """Put back the environment variables ``mlflow_env`` replaced."""
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def client_for(uri: str) -> MlflowClient:
    """An MLflow client that fails fast on a dead server: the spool, not MLflow, retries."""
    from mlflow import MlflowClient

    mlflow_env(max_retries=0, timeout_s=10)
    return MlflowClient(client_uri(uri))
