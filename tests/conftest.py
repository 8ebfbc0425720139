from __future__ import annotations

import os

import pytest

# The key losstune signs job state with (tuner/core/seal.py): the tests' own, so that no test writes a key
# into the home folder; every process a test starts inherits it. Tests of the key file unset it.
os.environ.setdefault("LOSSTUNE_STATE_KEY", "losstune-tests-" + "k" * 32)

from trainables.data import prepare_data


def pytest_configure(config: pytest.Config) -> None:
    """`make test` runs on two workers (pytest-xdist). Before they start, the controller makes Ray's
    token (~/.ray/auth_token, which the first Ray runtime of a machine writes): two workers starting
    their first runtimes at once would otherwise race to write it."""
    if hasattr(config, "workerinput") or config.getoption("numprocesses", None) in (None, 0):
        return
    from pathlib import Path

    if not (Path.home() / ".ray" / "auth_token").is_file():
        from ray._private.authentication.authentication_token_setup import generate_and_save_token

        generate_and_save_token()


# `make test` hands the tests to its two workers as they free up (pytest-xdist's "load"): measured on a
# clean clone, that keeps both busy to the end. (Groups of end-to-end tests pinned to one worker each were
# tried before and never applied: xdist reads the group marks before this conftest's collection hook ran.)


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


S3_SECRET = "losstune-test-secret-4f1c9e"  # distinctive: tests assert it is never written anywhere


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API on 127.0.0.1 (moto's server), with the environment every process started after
    it inherits (Ray nodes included): test credentials and ``AWS_ENDPOINT_URL_S3``. Yields a
    pyarrow filesystem on it that may create buckets."""
    import os
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        from pyarrow import fs

        yield fs.S3FileSystem(allow_bucket_creation=True, endpoint_override=f"127.0.0.1:{port}", scheme="http")
    finally:
        proc.kill()
        proc.wait()
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
