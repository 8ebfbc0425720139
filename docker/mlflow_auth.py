"""MLflow's basic-auth app for the compose stack, configured from the environment so that no password
is ever written into a committed file. Built into docker/mlflow.Dockerfile; compose runs it as

  python mlflow_auth.py exec mlflow server ... --app-name basic-auth
      writes the auth app's ini (at MLFLOW_AUTH_CONFIG_PATH, the path MLflow reads it from), creates
      the auth database on PostgreSQL if it is missing, then replaces itself with the command;
  python mlflow_auth.py users
      makes the running server's non-admin user for losstune (MLFLOW_TRACKING_USERNAME and _PASSWORD,
      what the Ray nodes log in with), or resets its password to that one, logged in as the admin.

Environment of `exec`: MLFLOW_AUTH_CONFIG_PATH, MLFLOW_AUTH_DATABASE_URI (SQLAlchemy URI of the auth
database: users and permissions), MLFLOW_AUTH_ADMIN_USERNAME, MLFLOW_AUTH_ADMIN_PASSWORD (MLflow 3.17
also reads these two itself), MLFLOW_AUTH_DEFAULT_PERMISSION (READ unless set).
Environment of `users`: MLFLOW_TRACKING_URI, MLFLOW_AUTH_ADMIN_USERNAME, MLFLOW_AUTH_ADMIN_PASSWORD,
MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

# MLflow's permission names (mlflow.server.auth.permissions) that make sense as the default of a
# user on an experiment they were given nothing on: more than READ would let every user change or
# delete everyone's runs.
DEFAULT_PERMISSIONS = ("READ", "NO_PERMISSIONS")
AUTHORIZATION_FUNCTION = "mlflow.server.auth:authenticate_request_basic_auth"
# MLflow refuses shorter passwords (mlflow.utils.validation._validate_password); checked here too so
# that the stack fails at start with the variable's name, not at the first login.
MIN_PASSWORD_CHARS = 12


class ConfigError(Exception):
    """A missing or unusable setting: one line for the container's log."""


def _need(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise ConfigError(f"{name} is not set (docker/.env)")
    return value


def _password(env: Mapping[str, str], name: str, what: str) -> str:
    value = _need(env, name)
    if value.startswith("change-me"):  # docker/.env.example's placeholders are public
        raise ConfigError(f"{name} still holds the placeholder of docker/.env.example: set a secret of your own")
    if len(value) < MIN_PASSWORD_CHARS:
        raise ConfigError(f"{name} ({what}) needs at least {MIN_PASSWORD_CHARS} characters")
    return value


def _ini_value(name: str, value: str) -> str:
    """A value as configparser reads it back unchanged: MLflow's reader interpolates `%`, and a
    value loses surrounding blanks and cannot span lines."""
    if value != value.strip() or "\n" in value or "\r" in value:
        raise ConfigError(f"{name} must be one line without leading or trailing blanks")
    return value.replace("%", "%%")


def render(env: Mapping[str, str]) -> str:
    """The [mlflow] section of basic_auth.ini (keys as in MLflow 3.17's mlflow/server/auth/config.py)."""
    permission = env.get("MLFLOW_AUTH_DEFAULT_PERMISSION") or "READ"
    if permission not in DEFAULT_PERMISSIONS:
        raise ConfigError(f"MLFLOW_AUTH_DEFAULT_PERMISSION must be one of {', '.join(DEFAULT_PERMISSIONS)}, "
                          f"not {permission!r}")
    password = _password(env, "MLFLOW_AUTH_ADMIN_PASSWORD", "the MLflow admin's password")
    values = {
        "default_permission": permission,
        "database_uri": _need(env, "MLFLOW_AUTH_DATABASE_URI"),
        "admin_username": _need(env, "MLFLOW_AUTH_ADMIN_USERNAME"),
        "admin_password": password,
        "authorization_function": AUTHORIZATION_FUNCTION,
    }
    lines = ["# Written by mlflow_auth.py at container start from the environment; not kept anywhere else.",
             "[mlflow]"]
    lines += [f"{key} = {_ini_value(key, value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def write_config(path: str, text: str) -> None:
    """Owner-only from the first byte (it holds two passwords); replaced whole, never half-written."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def ensure_database(uri: str) -> None:
    """PostgreSQL creates only POSTGRES_DB on its first start; the auth database, kept apart from the
    tracking store's, is made here, also on a volume that predates it. Other databases: left as given
    (SQLite creates its file itself)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    if not url.drivername.startswith("postgresql") or not url.database:
        return
    # the maintenance database every PostgreSQL server has; CREATE DATABASE cannot run in a transaction
    engine = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            found = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": url.database})
            if found.scalar() is None:
                conn.execute(text(f"CREATE DATABASE {engine.dialect.identifier_preparer.quote(url.database)}"))
                print(f"mlflow_auth: created the database {url.database!r}", file=sys.stderr)
    finally:
        engine.dispose()


def ensure_user(env: Mapping[str, str]) -> str:
    """Create losstune's MLflow user (not an admin), or reset its password to the configured one, so
    that docker/.env stays the one place that holds it."""
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    uri = _need(env, "MLFLOW_TRACKING_URI")
    admin = _need(env, "MLFLOW_AUTH_ADMIN_USERNAME")
    admin_password = _need(env, "MLFLOW_AUTH_ADMIN_PASSWORD")
    user = _need(env, "MLFLOW_TRACKING_USERNAME")
    password = _password(env, "MLFLOW_TRACKING_PASSWORD", f"the password of MLflow user {user!r}")
    if user == admin:
        raise ConfigError("the Ray nodes' MLflow user must not be the admin: give it a name of its own")
    # the auth client logs in with MLflow's usual variables: the admin's, for this process only
    os.environ["MLFLOW_TRACKING_USERNAME"] = admin
    os.environ["MLFLOW_TRACKING_PASSWORD"] = admin_password
    client = get_app_client("basic-auth", tracking_uri=uri)
    try:
        found = client.get_user(user)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_user(user, password)
        return f"created MLflow user {user!r}"
    client.update_user_password(user, password)
    if found.is_admin:
        print(f"mlflow_auth: warning: MLflow user {user!r} is an admin; the Ray nodes need none of that",
              file=sys.stderr)
    return f"MLflow user {user!r} exists; password set from the environment"


def main(argv: list[str], env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    try:
        if argv[:1] == ["exec"] and len(argv) > 1:
            path = _need(env, "MLFLOW_AUTH_CONFIG_PATH")
            write_config(path, render(env))
            ensure_database(env["MLFLOW_AUTH_DATABASE_URI"])
            sys.stdout.flush()
            os.execvp(argv[1], argv[1:])
        if argv == ["users"]:
            from mlflow.exceptions import MlflowException

            try:
                print(f"mlflow_auth: {ensure_user(env)}")
            except MlflowException as exc:  # e.g. a wrong admin password: the server's answer, one line
                print(f"mlflow_auth: {str(exc).splitlines()[0]}", file=sys.stderr)
                return 1
            return 0
    except ConfigError as exc:
        print(f"mlflow_auth: {exc}", file=sys.stderr)
        return 2
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
