"""A Ray runtime of several nodes on this machine (``ray.cluster_utils.Cluster``, what Ray's own
tests use): trials spread over the nodes, and a storage path that only one node could reach is
refused before any trial starts. All "nodes" share this machine's disk, so the refusal is checked
by rule (a plain local folder without --shared-storage), not by waiting for Ray to fail. The
experiment in object storage runs against a real S3 API (moto's server on 127.0.0.1), which every
node reaches with the credentials of its environment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import S3_SECRET
from tests.tuner.conftest import SEARCH_ONLY, meet_then_train
from trainables.errors import UserError
from tuner.job.plan import plan_job
from tuner.job.run import Tracking, run_job

pytestmark = pytest.mark.slow


@pytest.fixture
def two_nodes(cluster_ready, monkeypatch):
    """A head and one worker node, one CPU each; stopped by the fixture, never by `ray stop`."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # Token authentication on the nodes, as on the driver: losstune connects to an address with
    # RAY_AUTH_MODE=token (tuner/cluster/runtime.py), and a driver process keeps the auth mode of the first
    # runtime it joined (the tests' shared local one: token, Ray's default with ~/.ray/auth_token).
    # Nodes without it cannot reach the driver: every trial's actor dies before it starts.
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster.address
    cluster.shutdown()


@pytest.fixture
def three_nodes(s3_server, cluster_ready, monkeypatch):
    """A head and two worker nodes with a (fake) GPU each, one CPU per node; started after the S3
    server, so that every node has its credentials and endpoint in its environment."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # Token authentication on the nodes, as on the driver: losstune connects to an address with
    # RAY_AUTH_MODE=token (tuner/cluster/runtime.py), and a driver process keeps the auth mode of the first
    # runtime it joined (the tests' shared local one: token, Ray's default with ~/.ray/auth_token).
    # Nodes without it cannot reach the driver: every trial's actor dies before it starts.
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
    for _ in range(2):
        cluster.add_node(num_cpus=1, num_gpus=1)
    cluster.wait_for_nodes()
    yield cluster.address
    cluster.shutdown()


def _objects(fs, prefix: str) -> dict[str, bytes]:
    from pyarrow.fs import FileSelector, FileType

    out = {}
    for info in fs.get_file_info(FileSelector(prefix, recursive=True, allow_not_found=True)):
        if info.type == FileType.File:
            with fs.open_input_stream(info.path) as f:
                out[info.path.removeprefix(prefix + "/")] = f.read()
    return out


def test_an_experiment_in_s3_on_three_nodes(small_job, three_nodes, s3_server, tmp_path, monkeypatch):
    s3_server.create_dir("experiments")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/s3.db"
    spec, _ = small_job(num_trials=4, max_epochs=3, scheduler="fifo", concurrency=3)
    job, data, space, pretrained = plan_job(spec, "s3://experiments/team")
    from tuner.cluster.storage import Storage

    mirrored, mirror = [], Storage.mirror
    monkeypatch.setattr(Storage, "mirror", lambda self, *a, **k: (mirrored.append(a), mirror(self, *a, **k))[1])
    (tmp_path / "started").mkdir()
    outcome = run_job(job, data, space, pretrained, address=three_nodes, verbose=0, tracking=Tracking(uri, "s3"),
                      trainable=meet_then_train(str(tmp_path / "started"), parties=2))  # so trials share the nodes
    assert len(mirrored) == 2  # the job folder is copied once per save point: at its start and at its end

    assert len(outcome.rows) == 4 and outcome.state == "finished" and outcome.winner is not None
    nodes = {r.resources.get("trial/node_id") for r in outcome.rows}
    assert len(nodes) >= 2 and None not in nodes, nodes
    stored = _objects(s3_server, "experiments/team/job")
    for name in ("job.yaml", "losstune_job.json", "results.csv", "trial_numbers.json", "tuner.pkl"):
        assert name in stored, sorted(stored)[:20]
    for row in outcome.rows:  # every trial's checkpoints were written to the bucket by its own node
        assert any(k.startswith(Path(row.path).name + "/checkpoint_") for k in stored), row.trial_id
    assert outcome.best.checkpoint.startswith("experiments/team/job/")  # the winner was read back from S3
    assert stored["results.csv"] == (job.path / "results.csv").read_bytes()
    assert job.path == tmp_path / "losstune_results" / "job"  # the driver's own files, and nothing of Ray's
    assert not list(job.path.glob("train_trial_*")) and not (job.path / "tuner.pkl").exists()
    assert not any(S3_SECRET.encode() in body for body in stored.values())
    run = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("s3").experiment_id],
                                        filter_string="tags.`losstune.role` = 'job'")[0]
    assert run.info.status == "FINISHED" and "test/auroc" in run.data.metrics


def _checkpoints(fs, prefix: str) -> int:
    """Checkpoints written so far, from a listing only: Tune removes old ones while the job runs."""
    from pyarrow.fs import FileSelector

    return sum(1 for i in fs.get_file_info(FileSelector(prefix, recursive=True, allow_not_found=True))
               if i.path.endswith("/checkpoint.pt"))


@pytest.mark.long
def test_a_job_in_s3_resumes_from_its_uri_on_another_machine(three_nodes, s3_server, tmp_path, ray_tmpdir):
    """Interrupted (Ctrl-C) after a few checkpoints, then resumed by its URI from a folder that holds
    none of its files (as another machine would): it ends with every trial, each epoch once in MLflow."""
    s3_server.create_dir("resumed")
    uri = f"sqlite:///{tmp_path}/resume.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_TRACKING_URI": uri, "RAY_TMPDIR": ray_tmpdir}
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    cmd = [sys.executable, "-m", "tuner.cli", "tune", "--data", "synthetic:rare?n=30000&signal=2", "--num-trials", "4",
           "--max-epochs", "6", "--scheduler", "fifo", "--concurrency", "3", "--experiment", "again",
           "--storage-path", "s3://resumed/jobs", "--address", three_nodes, "--fix", "optim.patience=0", *SEARCH_ONLY]
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([repo, env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(cmd, cwd=first, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and _checkpoints(s3_server, "resumed/jobs/again") < 3:
        time.sleep(0.5)
    assert proc.poll() is None, "the job ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    last = " ".join(" ".join(out.strip().splitlines()[-2:]).split())  # the command alone when wider than 100
    assert last.endswith("continue the job with: losstune tune --resume s3://resumed/jobs/again")

    resume = subprocess.run([sys.executable, "-m", "tuner.cli", "tune", "--resume", "s3://resumed/jobs/again",
                             "--address", three_nodes], cwd=second, env=env, capture_output=True, text=True,
                            timeout=300)
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert "on the held-out test split" in resume.stdout
    assert (second / "losstune_results" / "again" / "losstune_job.json").is_file()  # fetched from the bucket
    c = MlflowClient(uri)
    exp_id = c.get_experiment_by_name("again").experiment_id
    runs = c.search_runs([exp_id])
    trials = [r for r in runs if r.data.tags.get("losstune.role") != "job"]
    assert len(trials) == 4 and len({r.data.tags["losstune.trial_id"] for r in trials}) == 4
    assert all(r.info.status != "RUNNING" for r in runs)
    for r in trials:  # each of the 6 epochs once (no early stop: patience 0, FIFO)
        epochs = sorted(int(m.step) for m in c.get_metric_history(r.info.run_id, "val/auroc"))
        assert epochs == [1, 2, 3, 4, 5, 6], (r.data.tags["losstune.trial_id"], epochs)
    job_file = json.loads((second / "losstune_results" / "again" / "losstune_job.json").read_text())
    assert job_file["experiment"] == "again"


def test_a_local_storage_path_is_refused_on_several_nodes_before_any_trial(small_job, two_nodes):
    spec, storage = small_job(num_trials=2, max_epochs=1)
    job, data, space, pretrained = plan_job(spec, storage)
    with pytest.raises(UserError, match=r"has 2 nodes but --storage-path '.*' is a local folder .*--shared-storage"):
        run_job(job, data, space, pretrained, address=two_nodes, verbose=0)
    assert not job.path.exists()  # refused before the job folder (or any trial) was written


def test_trials_spread_over_the_nodes_of_a_shared_storage_cluster(small_job, two_nodes, tmp_path):
    spec, storage = small_job(num_trials=4, max_epochs=3, scheduler="fifo", concurrency=2)
    job, data, space, pretrained = plan_job(spec, storage)
    (tmp_path / "started").mkdir()
    outcome = run_job(job, data, space, pretrained, address=two_nodes, verbose=0, shared_storage=True,
                      trainable=meet_then_train(str(tmp_path / "started"), parties=2))
    assert len(outcome.rows) == 4 and outcome.winner is not None
    nodes = {r.resources.get("trial/node_id") for r in outcome.rows}
    assert len(nodes) >= 2 and None not in nodes, nodes
    assert os.path.isfile(job.path / "results.csv")
