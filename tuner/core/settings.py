"""Process-wide settings a call needs for its duration only: environment variables, logger levels
and Optuna's verbosity, set on entry and put back as they were on exit, whatever happens in between.
A library used from a notebook or a test run must not leave a Ray or MLflow switch flipped behind it.

Example::

    with temporarily(env={"TUNE_DISABLE_SIGINT_HANDLER": "1"}, env_defaults={"RAY_AIR_NEW_OUTPUT": "0"},
                     loggers={"mlflow": logging.WARNING}, optuna_level=logging.WARNING):
        ...
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

__all__ = ["temporarily"]


@contextmanager
def temporarily(*, env: Mapping[str, str] | None = None, env_defaults: Mapping[str, str] | None = None,
                loggers: Mapping[str, int] | None = None, optuna_level: int | None = None) -> Iterator[None]:
    """Set, for the block, ``env`` (overriding), ``env_defaults`` (only where the variable is unset:
    the user's own choice wins), the levels of ``loggers`` (name → level), and Optuna's verbosity
    (``optuna_level``, e.g. ``logging.WARNING``; Optuna imported only then); restore them after.

    Args:
        env: environment variables to set for the block.
        env_defaults: environment variables to set only when unset.
        loggers: logger name → level.
        optuna_level: Optuna's verbosity for the block (its ``logging`` levels are the stdlib's).
    """
    saved_env = {k: os.environ.get(k) for k in [*(env or {}), *(env_defaults or {})]}
    saved_levels = {name: logging.getLogger(name).level for name in loggers or {}}
    saved_optuna = None
    try:
        os.environ.update(env or {})
        for k, v in (env_defaults or {}).items():
            os.environ.setdefault(k, v)
        for name, level in (loggers or {}).items():
            logging.getLogger(name).setLevel(level)
        if optuna_level is not None:
            import optuna

            saved_optuna = optuna.logging.get_verbosity()
            optuna.logging.set_verbosity(optuna_level)
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        if saved_optuna is not None:
            import optuna

            optuna.logging.set_verbosity(saved_optuna)
