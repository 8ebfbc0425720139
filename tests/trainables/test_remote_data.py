"""--data from object storage and the web: a real S3 API (moto's server on 127.0.0.1) and a real
HTTP server, read on the driver; the fingerprint is of the bytes, as for a local file."""

from __future__ import annotations

import functools
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainables.data import prepare_data
from trainables.errors import UserError


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("remote")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3))
    y = (x[:, 0] + rng.normal(scale=0.7, size=500) > 1.0).astype(int)
    pd.DataFrame(x, columns=["a", "b", "c"]).assign(outcome=y).to_csv(d / "patients.csv", index=False)
    return d / "patients.csv"


@pytest.fixture(scope="module")
def s3(table):
    """A moto S3 server on 127.0.0.1 holding s3://cohort/2026/patients.csv."""
    port = _port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"}
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

        bucket = fs.S3FileSystem(allow_bucket_creation=True, endpoint_override=f"127.0.0.1:{port}", scheme="http")
        bucket.create_dir("cohort")
        with bucket.open_output_stream("cohort/2026/patients.csv") as out:
            out.write(table.read_bytes())
        yield
    finally:
        proc.kill()
        proc.wait()
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def web(table):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(table.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_table_in_s3_is_the_same_data_as_the_local_file(table, s3):
    local = prepare_data(str(table), ["outcome"])
    remote = prepare_data("s3://cohort/2026/patients.csv", ["outcome"])
    assert remote.source == "s3://cohort/2026/patients.csv"
    assert remote.fingerprint == local.fingerprint and remote.split_fingerprint == local.split_fingerprint
    assert (remote.train.x == local.train.x).all() and (remote.test.y == local.test.y).all()


def test_a_table_on_the_web(table, web):
    remote = prepare_data(f"{web}/patients.csv", ["outcome"])
    assert remote.fingerprint == prepare_data(str(table), ["outcome"]).fingerprint


@pytest.mark.parametrize("uri,pattern", [
    ("s3://cohort/2026/nope.csv", r"cannot read data 's3://cohort/2026/nope\.csv'"),
    ("s3://cohort/2026/patients.xlsx", r"unsupported format '\.xlsx'"),
])
def test_a_missing_or_unsupported_remote_table_is_one_line(uri, pattern, s3):
    with pytest.raises(UserError, match=pattern) as err:
        prepare_data(uri, ["outcome"])
    assert "\n" not in str(err.value)


def test_credentials_in_a_web_address_are_never_shown(web):
    url = web.replace("http://", "http://alice:hunter2@") + "/nope.csv?X-Amz-Signature=secret"
    with pytest.raises(UserError) as err:
        prepare_data(url, ["outcome"])
    assert "hunter2" not in str(err.value) and "secret" not in str(err.value)
