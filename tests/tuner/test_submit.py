"""`losstune submit` and `losstune jobs` against a real Ray head with its dashboard (the Jobs API),
started here in a private RAY_TMPDIR with token authentication on, and bad input without one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.tuner.conftest import SEARCH_ONLY, SMALL, free_port, kill_ray_processes, run_cli, wait_for

TOKEN = "losstune-test-token-0123456789abcdef"
TINY = ["--data", SMALL, "--num-trials", "2", "--max-epochs", "2", "--no-tracking", *SEARCH_ONLY]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:  # 401 without a token: the dashboard is up
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A head with the dashboard on 127.0.0.1 (2 CPUs), token authentication on with a test token;
    the client side of this module gets the same token from RAY_AUTH_TOKEN. Yields the dashboard URL."""
    tmpdir = f"/tmp/lt-ray-{free_port()}"
    port, dash = free_port(), free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "RAY_TMPDIR": tmpdir, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}  # the job's driver runs `losstune`
    env.pop("RAY_ADDRESS", None)
    try:
        # the agents' default ports (52365 for the job agent's HTTP server) may be taken by another Ray on
        # this host: then the head runs but refuses every job ("No available agent"); give them free ones
        agent_ports = [f"--{name}={free_port()}" for name in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
            "metrics-export-port", "ray-client-server-port")]
        subprocess.run([str(Path(bin_dir) / "ray"), "start", "--head", f"--port={port}", "--dashboard-host",
                        "127.0.0.1", f"--dashboard-port={dash}", *agent_ports, "--num-cpus=2",
                        "--disable-usage-stats"], check=True, capture_output=True, env=env, timeout=120)
        url = f"http://127.0.0.1:{dash}"
        wait_for(lambda: _answers(f"{url}/api/version"), what=f"the Ray dashboard at {url}")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("RAY_AUTH_TOKEN", TOKEN)
            mp.delenv("RAY_AUTH_MODE", raising=False)
            mp.delenv("RAY_ADDRESS", raising=False)
            mp.delenv("RAY_API_SERVER_ADDRESS", raising=False)
            yield url
    finally:
        kill_ray_processes(tmpdir)


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("losstune: error:"), err
    return lines[0]


def _job_id(out: str) -> str:
    return next(ln.split()[2] for ln in out.splitlines() if ln.startswith("submitted job "))


@pytest.mark.slow
def test_submit_demo_follow_then_status_logs_list(ray_head, capsys, tmp_path, monkeypatch):
    """The README's first cluster command: `losstune submit --demo --address URL --follow`, on a
    smaller table and fewer epochs (options given beside --demo override its own)."""
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(["submit", "--demo", "--data", "synthetic:rare?n=6000", "--max-epochs", "3",
                            "--address", ray_head, "--follow"], capsys)
    assert rc == 0, out + err
    assert re.search(r"winner \w+, the deployed model.*on the held-out test split .*: AUROC 0\.\d{4}, "
                     r"AUPRC 0\.\d{4}", " ".join(out.split())), out[-2000:]
    assert "relative to the plain baseline" in out  # the demo answers whether the loss stack helped
    assert "(from --address)" in out and "SUCCEEDED" in out
    assert TOKEN not in out + err
    job_id = _job_id(out)
    assert out.count("on the held-out test split (never seen") == 1  # reconnecting never repeats output

    rc, out, err = run_cli(["jobs", "status", job_id, "--address", ray_head], capsys)
    assert rc == 0 and f"{job_id}: SUCCEEDED" in out, out + err
    rc, out, _ = run_cli(["jobs", "logs", job_id, "--address", ray_head], capsys)
    assert rc == 0 and "on the held-out test split" in out
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", ray_head)  # the address from the environment
    rc, out, _ = run_cli(["jobs", "list"], capsys)
    assert rc == 0 and job_id in out and "SUCCEEDED" in out
    assert not list(tmp_path.iterdir())  # nothing written here


@pytest.mark.slow
def test_stop_ends_stopped_and_bad_ids_and_tokens_are_one_line(ray_head, capsys, tmp_path, monkeypatch):
    from ray.job_submission import JobSubmissionClient

    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(["submit", "--data", SMALL, "--num-trials", "50", "--max-epochs", "50", "--no-tracking",
                            "--scheduler", "fifo", "--address", ray_head], capsys)
    assert rc == 0, out + err
    job_id = _job_id(out)
    assert f"losstune jobs logs {job_id} --follow" in out
    client = JobSubmissionClient(ray_head, headers={"Authorization": f"Bearer {TOKEN}"})
    wait_for(lambda: " elapsed" in client.get_job_logs(job_id), what="the job's trials to run (its progress line)",
             timeout_s=180)
    rc, out, err = run_cli(["jobs", "stop", job_id, "--address", ray_head], capsys)
    assert rc == 0 and "stopping job" in out, out + err
    rc, out, err = run_cli(["jobs", "logs", job_id, "--follow", "--address", ray_head], capsys)
    assert rc == 130 and f"job {job_id}: STOPPED" in out, out[-2000:] + err
    rc, out, _ = run_cli(["jobs", "status", job_id, "--address", ray_head], capsys)
    assert rc == 0 and f"{job_id}: STOPPED" in out

    for cmd in (["status"], ["logs"], ["logs", "--follow"], ["stop"]):
        rc, out, err = run_cli(["jobs", *cmd, "raysubmit_nosuchjob", "--address", ray_head], capsys)
        assert rc == 2, (cmd, out, err)
        assert "no job 'raysubmit_nosuchjob'" in _one_error_line(err)

    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    rc, out, err = run_cli(["jobs", "list", "--address", ray_head], capsys)
    assert rc == 2 and "not-the-token" not in err
    _one_error_line(err)


# ------------------------------------------------------------------ bad input, no cluster needed
def test_unreachable_dashboard_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    port = free_port()  # nothing listens there
    rc, out, err = run_cli(["submit", *TINY, "--address", f"http://127.0.0.1:{port}"], capsys)
    assert rc == 2  # a TCP probe first, so it fails in seconds (timings are the benchmarks' business)
    assert "unreachable" in _one_error_line(err)
    rc, out, err = run_cli(["jobs", "status", "raysubmit_x", "--address", f"127.0.0.1:{port}"], capsys)
    assert rc == 2 and "unreachable" in _one_error_line(err)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a GCS address, not a dashboard URL
    rc, out, err = run_cli(["jobs", "list"], capsys)
    assert rc == 2 and "--address http://HEAD:8265" in _one_error_line(err)


def _table(path: Path) -> Path:
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 600
    y = (rng.random(n) < 0.1).astype(int)
    pd.DataFrame({"a": rng.normal(size=n) + y, "b": rng.normal(size=n), "outcome": y}).to_csv(path, index=False)
    return path


def test_local_data_over_the_limit_is_one_line(capsys, monkeypatch, tmp_path):
    import tuner.job.submit as submit

    monkeypatch.chdir(tmp_path)
    data = _table(tmp_path / "patients.csv")
    monkeypatch.setattr(submit, "DATA_LIMIT_BYTES", 1000)
    rc, out, err = run_cli(["submit", "--data", str(data), "--label-col", "outcome", "--num-trials", "2",
                            "--no-tracking", "--address", "http://127.0.0.1:1"], capsys)
    assert rc == 2
    line = _one_error_line(err)
    assert "too large" in line and "URI" in line


def test_a_tracking_uri_with_credentials_is_refused(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(["submit", "--data", SMALL, "--tracking-uri", "http://alice:s3cret@mlflow:5000",
                            "--address", "http://127.0.0.1:1"], capsys)
    assert rc == 2
    line = _one_error_line(err)
    assert "MLFLOW_TRACKING_USERNAME" in line and "s3cret" not in out + err


def test_stage_job_copies_small_local_data_and_rewrites_the_source(tmp_path):
    from tuner.job.spec import JobSpec
    from tuner.job.submit import entrypoint, stage_job

    data = _table(tmp_path / "patients.csv")
    spec = JobSpec.from_options(data=str(data), label_cols=["outcome"], num_trials=3)
    staged = stage_job(spec, tmp_path / "wd")
    assert staged.data.source == "data-patients.csv"
    assert (tmp_path / "wd" / "data-patients.csv").read_bytes() == data.read_bytes()
    assert JobSpec.load(tmp_path / "wd" / "job.yaml") == staged
    synthetic = stage_job(JobSpec.from_options(data=SMALL), tmp_path / "wd2")
    assert synthetic.data.source == SMALL and sorted(p.name for p in (tmp_path / "wd2").iterdir()) == ["job.yaml"]
    (tmp_path / "winner.yaml").write_text("scenario: {name: w}\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.yaml").write_text("scenario: {name: a}\n")
    (tmp_path / "mine" / "notes.txt").write_text("not sent")
    spec = JobSpec.from_options(data=SMALL, scenario=str(tmp_path / "winner.yaml"),
                                presets_dirs=[str(tmp_path / "mine")])
    staged = stage_job(spec, tmp_path / "wd3")
    assert (staged.scenario, staged.presets_dirs) == ("scenario-winner.yaml", ["presets-0"])
    assert sorted(p.name for p in (tmp_path / "wd3" / "presets-0").iterdir()) == ["a.yaml"]
    assert entrypoint(storage_path="s3://b/p", tracking_uri="http://mlflow:5000", no_tracking=False) == (
        "losstune tune --job job.yaml --address auto --storage-path s3://b/p --tracking-uri http://mlflow:5000")


def test_address_and_token_resolution(monkeypatch, tmp_path):
    from trainables.errors import UserError
    from tuner.cluster.ray_jobs import auth_headers, resolve_address

    for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    assert resolve_address("http://head:8265") == ("http://head:8265", "--address")
    assert resolve_address("head") == ("http://head:8265", "--address")
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    with pytest.raises(UserError):
        resolve_address(None)
    monkeypatch.setenv("RAY_ADDRESS", "https://ray.example:443")
    assert resolve_address(None) == ("https://ray.example:443", "RAY_ADDRESS")
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://api:8265")
    assert resolve_address(None) == ("http://api:8265", "RAY_API_SERVER_ADDRESS")
    with pytest.raises(UserError):
        resolve_address("ray://head:10001")

    assert auth_headers() == {}
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    with pytest.raises(UserError, match="no token"):
        auth_headers()
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("filetoken\n")
    assert auth_headers() == {"Authorization": "Bearer filetoken"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "envtoken")
    assert auth_headers() == {"Authorization": "Bearer envtoken"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth_headers() == {}


def test_follow_reconnects_when_the_stream_ends_early_and_never_repeats():
    from tuner.cluster.ray_jobs import follow_job

    full = "line 1\nline 2\nline 3\nheld-out line\n"

    class Client:
        """The log stream ends twice before the job does (as tail_job_logs may); the job then ends."""

        def __init__(self):
            self.statuses = iter(["RUNNING", "RUNNING", "RUNNING", "RUNNING", "RUNNING", "SUCCEEDED"])
            self.streams = iter([["line 1\n"], ["line 1\n", "line 2\n"], ["line 1\nline 2\n", "line 3\n"]])

        def get_job_status(self, job_id):
            return next(self.statuses, "SUCCEEDED")

        async def tail_job_logs(self, job_id):
            for chunk in next(self.streams, []):
                yield chunk

        def get_job_logs(self, job_id):
            return full

    out: list[str] = []
    assert follow_job(Client(), "http://x:8265", "raysubmit_1", write=out.append, poll_s=0) == "SUCCEEDED"
    assert "".join(out) == full
