from __future__ import annotations

import pytest

from trainables.data import prepare_data


@pytest.fixture(scope="session")
def easy_binary():
    """A small binary task with a strong signal (1:3), for 'the trainer learns' tests."""
    return prepare_data("synthetic:treatment?n=2000&signal=2.5")


@pytest.fixture(scope="session")
def easy_multilabel():
    """A small 5-label task (about 1:5 each) with a strong signal."""
    return prepare_data("synthetic:screening?n=2000&signal=2")


@pytest.fixture(autouse=True)
def _tracking_in_tmp(tmp_path, monkeypatch):
    """No test ever writes ./mlflow.db into the working copy: the default store is a temp file."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
