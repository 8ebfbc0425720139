"""tuner.core.settings.temporarily: what a call sets for its duration is as before once it returns,
or raises."""

from __future__ import annotations

import logging
import os

import optuna
import pytest

from tuner.core.settings import temporarily


def test_variables_and_levels_come_back_after_an_exception(monkeypatch):
    monkeypatch.setenv("LT_SET", "user")
    monkeypatch.delenv("LT_NEW", raising=False)
    monkeypatch.setenv("LT_DEFAULT", "mine")
    monkeypatch.delenv("LT_UNSET_DEFAULT", raising=False)
    logging.getLogger("lt.test").setLevel(logging.DEBUG)
    optuna.logging.set_verbosity(optuna.logging.INFO)
    with pytest.raises(RuntimeError), temporarily(
            env={"LT_SET": "call", "LT_NEW": "call"}, env_defaults={"LT_DEFAULT": "x", "LT_UNSET_DEFAULT": "y"},
            loggers={"lt.test": logging.ERROR}, optuna_level=logging.WARNING):
        assert (os.environ["LT_SET"], os.environ["LT_NEW"]) == ("call", "call")
        assert (os.environ["LT_DEFAULT"], os.environ["LT_UNSET_DEFAULT"]) == ("mine", "y")  # the user's choice wins
        assert logging.getLogger("lt.test").level == logging.ERROR
        assert optuna.logging.get_verbosity() == logging.WARNING
        raise RuntimeError("inside")
    assert os.environ["LT_SET"] == "user" and os.environ["LT_DEFAULT"] == "mine"
    assert "LT_NEW" not in os.environ and "LT_UNSET_DEFAULT" not in os.environ
    assert logging.getLogger("lt.test").level == logging.DEBUG
    assert optuna.logging.get_verbosity() == optuna.logging.INFO


def test_nothing_asked_nothing_touched(monkeypatch):
    before = dict(os.environ)
    with temporarily():
        pass
    assert dict(os.environ) == before
