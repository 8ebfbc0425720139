from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tuner.job.spec import JobSpec

SMALL = "synthetic:rare?n=3000&signal=2.5&prevalence=0.05"
# The stack's search alone: tests of the search, its faults and its records do not pay for the
# baseline arm and the seed confirmation (tests/tuner/test_arms.py runs those).
SEARCH_ONLY = ["--no-baseline", "--confirm-top", "0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_ray_processes(tmpdir: str) -> None:
    """End every process of a Ray runtime started with RAY_TMPDIR=tmpdir (and only those)."""
    victims = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get("RAY_TMPDIR") == tmpdir:
                victims.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    for p in victims:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=10)
    shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.fixture
def ray_tmpdir():
    """A private RAY_TMPDIR for Ray runtimes a test starts in other processes; cleaned up after."""
    path = f"/tmp/lt-ray-{free_port()}"
    yield path
    kill_ray_processes(path)


@pytest.fixture
def shared_ray():
    """One local Ray runtime for the in-process jobs of the session (run_job joins a runtime this
    process already started instead of starting its own): seconds saved per test. A test that
    needs another runtime shuts it down first (``ray.shutdown()``); the next one starts it again."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    yield


@pytest.fixture
def fresh_ray():
    """For a test that connects to a runtime of its own: no shared one in this process."""
    import ray

    ray.shutdown()
    yield
    ray.shutdown()


@pytest.fixture
def cluster_ready(shared_ray, fresh_ray):
    """For a test that starts nodes of its own in this process (``ray.cluster_utils.Cluster``): the
    shared runtime has set this process's token authentication up (Ray's default for a runtime it
    starts: token auth, ~/.ray/auth_token), then is shut down. Started first in a process, a Cluster
    would find token auth asked for (RAY_AUTH_MODE=token) but no token loaded, and its GCS unreachable."""
    yield


@pytest.fixture
def small_job(tmp_path, shared_ray):
    """(spec, storage path) of a few-second job on a small synthetic task (1:19, a strong signal):
    ``plan_job(*small_job(num_trials=3))``."""

    def make(**kw):
        base = dict(data=SMALL, num_trials=6, max_epochs=4, storage_path=str(tmp_path / "results"),
                    experiment="job", grace_period=2, baseline_trials=0, confirm_top=0)
        base.update(kw)
        storage = base.pop("storage_path")
        return JobSpec.from_options(**base), storage

    return make


@pytest.fixture
def fake_gpu_cluster(ray_tmpdir, fresh_ray):
    """A Ray head with 2 CPUs and 4 declared (fake) GPUs, for scheduling tests."""
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_TMPDIR": ray_tmpdir}
    # every port of its own: Ray's defaults (10001 for clients, 52365 for the agent, …) are taken when
    # another worker of the test run has a head up at the same time
    ports = [f"--{name}={free_port()}" for name in (
        "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port")]
    done = subprocess.run([str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}", *ports,
                           "--num-cpus=2", "--num-gpus=4", "--include-dashboard=false", "--disable-usage-stats"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    wait_for(lambda: accepts(port), what=f"the Ray head on port {port}")
    yield f"127.0.0.1:{port}"


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(condition, *, what: str, timeout_s: float = 120.0, every_s: float = 0.2):
    """Wait until ``condition()`` is true (and return its value): tests wait on a condition with a
    deadline, never on a sleep that hopes to win a race."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def run_cli(args, capsys):
    """``losstune ARGS`` in this process: (exit status, stdout, stderr)."""
    from tuner.cli import main

    rc = main(list(args))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def everything_fixed():
    """--fix for every searched value of the rare-disease space: every trial runs the same config."""
    from search_spaces import load_scenario, scenario_space

    space = scenario_space(load_scenario("rare_disease_detection"))
    values = space.preset_values()
    values["consistency.weight"] = 0.3  # exercise every loss part
    values["weighting.strategy"] = "softadapt"
    values["weighting.softadapt_beta"] = 0.1  # conditional on softadapt: fix it too
    return [f"{k}={v}" for k, v in values.items()]


def start_mlflow_server(root: Path, port: int | None = None,
                        backend_store_uri: str | None = None) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` (sqlite backend, 127.0.0.1, one worker), as the tests need it; on
    ``port`` to bring back a server that was killed, with the same store. ``backend_store_uri``
    (e.g. ``postgresql://…``) replaces the sqlite file in ``root``; artifacts stay in ``root``."""
    import urllib.request

    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    backend = backend_store_uri or f"sqlite:///{root}/mlflow.db"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend,
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1", "--host", "127.0.0.1",
         "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("mlflow server did not answer within 90 s")


def stop_process_group(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    proc, url = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    yield url
    stop_process_group(proc)


def crash_once_after_epoch_2(marker_dir: str):
    """A test-only trainable: the first trial to report epoch 2 kills its worker process right
    after that report (as on a lost node); the marker file holds that trial's id."""

    def trainable(config, inputs):
        import os
        from pathlib import Path

        import ray.tune as tune_module

        from trainables.tune_trainable import train_trial

        if not getattr(tune_module, "_losstune_test_patched", False):
            real = tune_module.report

            def report(metrics, checkpoint=None):
                real(metrics, checkpoint=checkpoint)
                marker = Path(marker_dir) / "crashed"
                if metrics.get("epoch") == 2 and not marker.exists():
                    marker.write_text(tune_module.get_context().get_trial_id())
                    os._exit(1)

            tune_module.report = report
            tune_module._losstune_test_patched = True
        train_trial(config, inputs)

    return trainable


def meet_then_train(folder: str, parties: int):
    """A test-only trainable: each trial waits (up to a minute) until ``parties`` trials have started,
    then trains as the real one does. A trial of a second takes less time than a new worker process
    on a busy machine takes to start, and Tune then hands every trial to the first actor
    (``reuse_actors``); waiting makes two trials run at once (on a cluster of one CPU per node, on two
    nodes)."""

    def trainable(config, inputs):
        import time
        import uuid
        from pathlib import Path

        from trainables.tune_trainable import train_trial

        Path(folder, uuid.uuid4().hex).touch()
        deadline = time.time() + 60
        while len(list(Path(folder).iterdir())) < parties and time.time() < deadline:
            time.sleep(0.2)
        train_trial(config, inputs)

    return trainable
