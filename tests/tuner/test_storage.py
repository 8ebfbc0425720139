"""--storage-path as a URI, against a real S3 API (moto's server on 127.0.0.1); no Ray here (the
jobs that run in a bucket are in test_multinode.py)."""

from __future__ import annotations

import pytest

from trainables.errors import UserError
from tuner.cluster.storage import Storage
from tuner.job.plan import find_job_folder


def test_a_local_folder_is_not_remote_and_keeps_the_job_files_in_the_experiment(tmp_path):
    s = Storage.parse(str(tmp_path / "r"))
    assert not s.remote and s.ray_kwargs() == {"storage_path": str(tmp_path / "r"), "storage_filesystem": None}
    assert s.local_folder("job") == tmp_path / "r" / "job" and s.shown("job") == f"{tmp_path}/r/job"


def test_an_s3_uri_is_a_bucket_path_for_ray_and_a_local_twin_for_the_driver(s3_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Storage.parse("s3://team-bucket/losstune/")
    assert s.remote and s.root == "team-bucket/losstune" and s.shown("job") == "s3://team-bucket/losstune/job"
    assert s.ray_kwargs()["storage_path"] == "team-bucket/losstune"
    assert s.local_folder("job") == tmp_path / "losstune_results" / "job"


def test_mirror_then_fetch_brings_back_the_job_files_byte_for_byte(s3_server, tmp_path):
    s3_server.create_dir("mirror")
    s = Storage.parse("s3://mirror/jobs")
    s.check_writable()
    here = tmp_path / "here" / "job"
    (here / "mlflow_spool_files" / "close-1").mkdir(parents=True)
    files = {"losstune_job.json": b'{"a": 1}', "job.yaml": b"name: job\n", "results.csv": b"x\n1\n",
             "mlflow_spool_files/close-1/model.pt": bytes(range(256)) * 10}
    for name, body in files.items():
        (here / name).write_bytes(body)
    s.mirror(here, "job")
    assert s.exists("job", "losstune_job.json") and not s.exists("job", "nope.json")
    there = tmp_path / "there" / "job"
    s.fetch("job", ["losstune_job.json", "job.yaml", "results.csv", "missing.csv"], there,
            folders=["mlflow_spool_files"])
    assert {p.relative_to(there).as_posix(): p.read_bytes() for p in there.rglob("*") if p.is_file()} == files
    from pyarrow.fs import FileSelector

    assert not [i.path for i in s3_server.get_file_info(FileSelector("mirror/jobs")) if "probe" in i.path]  # removed


def test_a_missing_bucket_is_one_line_before_anything_runs(s3_server):
    s = Storage.parse("s3://no-such-bucket-here/jobs")
    with pytest.raises(UserError, match=r"cannot write in --storage-path 's3://no-such-bucket-here/jobs' .*bucket"):
        s.check_writable()


def test_an_unreachable_endpoint_is_one_line(s3_server, monkeypatch):
    from tests.tuner.conftest import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    s = Storage.parse("s3://anything/jobs")
    with pytest.raises(UserError, match=r"cannot write in --storage-path 's3://anything/jobs'") as err:
        s.check_writable()
    assert "\n" not in str(err.value) and "AWS_ENDPOINT_URL_S3" in str(err.value)


def test_a_job_that_is_not_in_the_bucket_is_one_line(s3_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s3_server.create_dir("empty-jobs")
    with pytest.raises(UserError, match=r"no losstune job 'gone' .*'s3://empty-jobs/team/gone'"):
        find_job_folder("s3://empty-jobs/team/gone", "losstune_results")
    assert not (tmp_path / "losstune_results").exists()  # nothing half-fetched
