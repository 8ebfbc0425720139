"""--data from object storage and the web: a real S3 API (moto's server on 127.0.0.1) and a real
HTTP server, read on the driver; the fingerprint is of the bytes, as for a local file."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainables.data import prepare_data
from trainables.errors import UserError


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("remote")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3))
    y = (x[:, 0] + rng.normal(scale=0.7, size=500) > 1.0).astype(int)
    pd.DataFrame(x, columns=["a", "b", "c"]).assign(outcome=y).to_csv(d / "patients.csv", index=False)
    return d / "patients.csv"


@pytest.fixture(scope="module")
def s3(table, s3_server):
    """s3://cohort/2026/patients.csv on the test S3 server."""
    s3_server.create_dir("cohort")
    with s3_server.open_output_stream("cohort/2026/patients.csv") as out:
        out.write(table.read_bytes())


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
