"""Faults during a job, on a real local Ray runtime with real MLflow stores: trials that crash, a
driver interrupted with Ctrl-C (SIGINT) at a random point and resumed, a job whose every trial
diverges. Nothing is lost, nothing runs twice, and nothing that did not finish is called finished.
(MLflow servers that die mid-job: test_spool.py.)"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from tests.tuner.conftest import SEARCH_ONLY
from trainables.config import Config
from trainables.trainer import fit
from tuner.job.outcome import RESULTS_FILE, format_summary
from tuner.job.plan import plan_job
from tuner.job.run import Tracking, run_job

pytestmark = pytest.mark.slow


def _results(trial_path: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(trial_path) / "result.json").read_text().splitlines() if line.strip()]


def crash_a_quarter_once(marker_dir: str, max_epochs: int):
    """A test-only trainable: the 1st, 5th, 9th ... trial to start kills its worker once, at an
    epoch drawn from its trial id — alternately just before that epoch's report (the epoch is lost
    and trained again) and during the epoch after it."""

    def trainable(config, inputs):
        import os
        import random
        import time
        from pathlib import Path

        import ray.tune as tune_module

        from trainables.tune_trainable import train_trial

        trial_id = tune_module.get_context().get_trial_id()
        d = Path(marker_dir)
        slot_file = d / f"slot-{trial_id}"
        if not slot_file.exists():
            n = 0
            while True:  # claim the next start index atomically (trials start concurrently)
                try:
                    os.close(os.open(d / f"index-{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                    break
                except FileExistsError:
                    n += 1
            slot_file.write_text(str(n))
        slot = int(slot_file.read_text())
        crashed = d / f"crashed-{trial_id}"
        crash_epoch = random.Random(trial_id).randint(1, max_epochs - 1)
        real = tune_module.report

        def report(metrics, checkpoint=None):
            due = slot % 4 == 0 and metrics.get("epoch") == crash_epoch and not crashed.exists()
            before = (slot // 4) % 2 == 0
            if due and before:
                crashed.write_text(f"before {crash_epoch}")
                os._exit(1)
            real(metrics, checkpoint=checkpoint)
            if due:
                crashed.write_text(f"after {crash_epoch}")
                # Die in the next epoch, not on the report's heels: a worker killed within
                # milliseconds of a report can lose that result on its way to the driver while
                # its checkpoint was already saved (Ray then resumes after an epoch it never logged).
                time.sleep(1.0)
                os._exit(1)

        tune_module.report = report
        try:
            train_trial(config, inputs)
        finally:
            tune_module.report = real

    return trainable


def test_a_quarter_of_the_trials_crash_once_and_every_trial_ends_as_if_undisturbed(small_job, tmp_path):
    uri = f"sqlite:///{tmp_path}/crash.db"
    job, data, space, pretrained = plan_job(*small_job(num_trials=8, max_epochs=5, scheduler="fifo", concurrency=2,
                                                      max_failures=2, fix=["optim.patience=0"]))
    outcome = run_job(job, data, space, pretrained, address=None, verbose=0, tracking=Tracking(uri, "crash"),
                      trainable=crash_a_quarter_once(str(tmp_path), max_epochs=5))
    crashed = {p.name.removeprefix("crashed-"): p.read_text() for p in tmp_path.glob("crashed-*")}
    assert len(crashed) == 2, crashed  # trials 1 and 5 of 8
    assert {c.split()[0] for c in crashed.values()} == {"before", "after"}
    assert len(outcome.rows) == 8 and outcome.state == "finished"
    assert all(r.status == "completed" and r.epochs == 5
               for r in outcome.rows), [(r.status, r.epochs) for r in outcome.rows]

    # MLflow: one run per trial, nothing left RUNNING, and every trial, crashed or not, recorded with
    # exactly the epochs that an undisturbed training of its config has. (Ray's own result.json is
    # not the record: on a restore Ray re-downloads it from storage and can drop the last epoch.)
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("crash")
    runs = c.search_runs([exp.experiment_id], max_results=100)
    trials = {r.data.tags["losstune.trial_id"]: r for r in runs if r.data.tags.get("losstune.role") != "job"}
    assert len(trials) == 8 and all(r.info.status == "FINISHED" for r in runs)
    torch.set_num_threads(1)  # as in a Ray worker (OMP_NUM_THREADS=1)
    base = Config.from_dict(job.base_config)
    for row in outcome.rows:
        run_id = trials[row.trial_id].info.run_id
        recorded = {k: c.get_metric_history(run_id, k) for k in ("val/auroc", "train/loss")}
        assert [m.step for m in recorded["val/auroc"]] == [1, 2, 3, 4, 5], (row.trial_id, crashed.get(row.trial_id))
        trial_config = json.loads((Path(row.path) / "params.json").read_text())
        reference = fit(base.with_overrides(trial_config), data, device="cpu", select=job.spec.metric)
        for key, history in recorded.items():
            assert [m.value for m in sorted(history, key=lambda m: m.step)] == [h[key] for h in reference.history], \
                (row.trial_id, key, crashed.get(row.trial_id))
        assert row.objective == reference.best["objective"]


def test_a_job_whose_every_trial_diverges_is_a_failed_job(small_job, tmp_path):
    def always_nan(config, inputs):
        import dataclasses

        import numpy as np

        from trainables.data import SharedData
        from trainables.tune_trainable import train_trial

        arrays = dict(inputs.data.arrays)
        arrays["train_x"] = arrays["train_x"].copy()
        arrays["train_x"][5, 0] = np.nan  # the loss turns NaN in epoch 1, whatever the config
        train_trial(config, dataclasses.replace(inputs, data=SharedData(arrays, inputs.data.meta)))

    uri = f"sqlite:///{tmp_path}/nan.db"
    job, data, space, pretrained = plan_job(*small_job(num_trials=3, max_epochs=3, scheduler="fifo", concurrency=1))
    outcome = run_job(job, data, space, pretrained, address=None, verbose=0, trainable=always_nan,
                      tracking=Tracking(uri, "nan"))
    assert [r.status for r in outcome.rows] == ["diverged"] * 3
    assert outcome.state == "failed" and outcome.exit_code == 1 and outcome.winner is None
    assert "job FAILED: every trial diverged or failed" in format_summary(outcome)
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("nan")
    jobs = c.search_runs([exp.experiment_id], filter_string="tags.`losstune.role` = 'job'")
    assert jobs[0].info.status == "FAILED" and jobs[0].data.tags["losstune.status"] == "failed"
    assert not any(k.startswith("test/") for k in jobs[0].data.metrics)


def _stack_diverges(config, inputs):
    """The stack's trials turn NaN in epoch 1; the baseline arm's (plain BCE, no aux head) train."""
    import dataclasses

    import numpy as np

    from trainables.data import SharedData
    from trainables.tune_trainable import train_trial

    if inputs.base_config["aux_loss"]["type"] != "none":
        arrays = dict(inputs.data.arrays)
        arrays["train_x"] = arrays["train_x"].copy()
        arrays["train_x"][5, 0] = np.nan
        inputs = dataclasses.replace(inputs, data=SharedData(arrays, inputs.data.meta))
    train_trial(config, inputs)


def test_a_failed_stack_search_stops_the_baseline_beside_it(small_job):
    """The baseline arm's search runs beside the stack's; once the stack's has produced no model, the
    job fails and the baseline's trials are stopped instead of trained to their end for nothing."""
    epochs, trials = 300, 3
    job, data, space, pretrained = plan_job(*small_job(num_trials=2, max_epochs=epochs, scheduler="fifo",
                                                       baseline_trials=trials, fix=["optim.patience=0"]))
    outcome = run_job(job, data, space, pretrained, address=None, verbose=0, trainable=_stack_diverges)
    assert [r.status for r in outcome.rows] == ["diverged"] * 2 and outcome.state == "failed"
    trained = _epochs_by_trial(job.path / "baseline", prefix="train_baseline_")
    assert trained, "the baseline arm's search did not run beside the stack's"
    assert sum(trained.values()) < trials * epochs, trained  # stopped, not every epoch of every trial


def _epochs_by_trial(exp: Path, prefix: str = "train_trial_") -> dict[str, int]:
    out = {}
    for d in exp.glob(prefix + "*"):
        f = d / "result.json"
        out[d.name] = len(f.read_text().splitlines()) if f.exists() else 0
    return out


@pytest.mark.long
def test_ctrl_c_at_a_random_point_then_resume(tmp_path, ray_tmpdir):
    """Ctrl-C as a terminal sends it (to the whole process group) once the job has run a random
    number of epochs: exit 130, the MLflow job KILLED, the test split untouched, the resume command
    last; that command then finishes the job with every trial once and every run closed."""
    store, uri = tmp_path / "results", f"sqlite:///{tmp_path}/ctrl-c.db"
    env = {**os.environ, "RAY_TMPDIR": ray_tmpdir, "PYTHONUNBUFFERED": "1", "MLFLOW_TRACKING_URI": uri}
    cmd = [sys.executable, "-m", "tuner.cli", "tune", "--data", "synthetic:rare?n=12000&signal=2", "--num-trials", "5",
           "--max-epochs", "6", "--scheduler", "fifo", "--concurrency", "2", "--experiment", "ctrl-c",
           "--storage-path", str(store), "--fix", "optim.patience=0", *SEARCH_ONLY]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    exp = store / "ctrl-c"
    at = random.Random().randint(2, 12)  # epochs done across trials when Ctrl-C comes
    deadline = time.time() + 240
    while time.time() < deadline and sum(_epochs_by_trial(exp).values()) < at:
        time.sleep(0.2)
    assert proc.poll() is None, "the job ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (at, err[-3000:])
    lines = out.strip().splitlines()  # the command alone on the last line when the whole is wider than 100
    assert " ".join(" ".join(lines[-2:]).split()).endswith(f"continue the job with: losstune tune --resume {exp}"), \
        (at, lines[-3:])
    assert "INTERRUPTED in the stack's search, after" in " ".join(out.split())
    assert "held-out test split (never seen" not in out and "Traceback" not in err
    c = MlflowClient(uri)
    exp_id = c.get_experiment_by_name("ctrl-c").experiment_id
    job_run = c.search_runs([exp_id], filter_string="tags.`losstune.role` = 'job'")[0]
    assert job_run.info.status == "KILLED" and job_run.data.tags["losstune.status"] == "interrupted", at
    assert not any(k.startswith("test/") for k in job_run.data.metrics)  # the held-out split was not touched
    assert all(r.info.status != "RUNNING" for r in c.search_runs([exp_id])), at

    printed = lines[-1].removeprefix("continue the job with: ").split()
    assert printed[:2] == ["losstune", "tune"]
    resume = subprocess.run([sys.executable, "-m", "tuner.cli", *printed[1:]], env=env, capture_output=True, text=True,
                            timeout=300)
    assert resume.returncode == 0, (at, resume.stderr[-3000:])
    after = {d.name: _results(d) for d in exp.glob("train_trial_*")}
    assert len(after) == 5, at  # the asked number of trials
    for name, rows in after.items():
        # Tune's own log may repeat the epoch that Ctrl-C cut short (its checkpoint had not reached
        # the driver, so it is trained again); MLflow, the record, holds each epoch once (below).
        epochs = [int(r["epoch"]) for r in rows]
        assert sorted(set(epochs)) == list(range(1, 7)) and len(epochs) - 6 <= 1, (at, name, epochs)
    assert len((exp / RESULTS_FILE).read_text().splitlines()) == 6
    # every trial keeps the number it was created with, those created after the resume included (issue
    # 18, failure 13: Tune's restore-time copies of the job's JSON files replaced what came after)
    import csv

    numbers = sorted(int(r["trial"]) for r in csv.DictReader((exp / RESULTS_FILE).open()))
    assert numbers == [0, 1, 2, 3, 4], (at, numbers)
    runs = c.search_runs([exp_id], max_results=100)
    job_run = next(r for r in runs if r.data.tags.get("losstune.role") == "job")
    trials = [r for r in runs if r.data.tags.get("losstune.role") != "job"]
    assert job_run.info.status == "FINISHED" and "test/auroc" in job_run.data.metrics
    assert len(trials) == 5 and all(r.info.status != "RUNNING" for r in runs)
    for r in trials:
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "val/auroc")]
        assert sorted(steps) == list(range(1, 7)), (at, steps)
    prose = " ".join(resume.stdout.split())  # as read, whatever the wrapping at 100 columns
    assert re.search(r"winner \w+, the deployed model[^;]*; on the held-out test split", prose)


def _sigterm_job(tmp_path: Path, ray_tmpdir: str, name: str, *, under_timeout_s: int | None = None,
                 epochs: int = 12):
    """A job long enough to be stopped mid-way: under `timeout`, long enough to outlast it."""
    store = tmp_path / "results"
    env = {**os.environ, "RAY_TMPDIR": ray_tmpdir, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "tuner.cli", "tune", "--data", "synthetic:rare?n=20000&signal=2", "--num-trials", "6",
           "--max-epochs", str(epochs), "--scheduler", "fifo", "--experiment", name, "--storage-path", str(store),
           "--fix", "optim.patience=0", "--no-tracking", *SEARCH_ONLY]
    if under_timeout_s is not None:  # coreutils' timeout: the signal goes to the whole process group
        cmd = ["timeout", "-s", "TERM", str(under_timeout_s), *cmd]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    return proc, store / name, env


def _wait_for_epochs(exp: Path, proc: subprocess.Popen, n: int) -> None:
    deadline = time.time() + 240
    while time.time() < deadline and sum(_epochs_by_trial(exp).values()) < n:
        assert proc.poll() is None, "the job ended before it could be stopped"
        time.sleep(0.2)


def _stopped(proc: subprocess.Popen, exp: Path, *, rc: int = 130) -> None:
    # Before: the workers printed SystemExit tracebacks and the driver waited 60 s for a GCS that the
    # signal had stopped too, then exited 1 without the resume line. communicate's timeout is a
    # bound on a hang, not a measurement.
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == rc, err[-3000:]
    assert "Traceback" not in out + err and "SystemExit" not in out + err, err[-3000:]
    assert "Failed to connect to GCS" not in err
    last = [text.strip().splitlines()[-1] for text in (out, err) if text.strip()]
    assert any(line.endswith(f"losstune tune --resume {exp}") for line in last), (out[-500:], err[-500:])


def _stopped_and_resumable(proc: subprocess.Popen, exp: Path, env: dict, *, rc: int = 130, epochs: int = 12) -> None:
    _stopped(proc, exp, rc=rc)
    resume = subprocess.run([sys.executable, "-m", "tuner.cli", "tune", "--resume", str(exp)], env=env,
                            capture_output=True, text=True, timeout=400)
    assert resume.returncode == 0, resume.stderr[-3000:]
    after = {d.name: _results(d) for d in exp.glob("train_trial_*")}
    assert len(after) == 6 and all(max(int(r["epoch"]) for r in rows) == epochs for rows in after.values())


@pytest.mark.long
def test_sigterm_to_the_whole_process_group_stops_and_saves_the_job(tmp_path, ray_tmpdir):
    """What `kill -TERM -PGID`, a shell's job control and most service managers send: the local Ray
    runtime runs in a session of its own, so the driver alone gets it and stops the job as on Ctrl-C."""
    proc, exp, env = _sigterm_job(tmp_path, ray_tmpdir, "pgroup")
    _wait_for_epochs(exp, proc, 6)
    os.killpg(proc.pid, signal.SIGTERM)
    _stopped_and_resumable(proc, exp, env)


def test_a_job_under_timeout_stops_and_saves_the_job(tmp_path, ray_tmpdir):
    """`timeout -s TERM N losstune tune …`: timeout exits 124 when it sent the signal; the job inside
    stopped as on Ctrl-C (its own status is 130), saved Tune's state and prints the resume command.
    (The SIGTERM above resumes such a job to its end; this one checks that the state is there.) The
    timer leaves a slow machine time to start the trials; a signal that came before they started is
    handed on all the same (tests/tuner/test_interrupts.py)."""
    from ray import tune

    proc, exp, env = _sigterm_job(tmp_path, ray_tmpdir, "timed", under_timeout_s=40, epochs=100)
    _stopped(proc, exp, rc=124)
    assert tune.Tuner.can_restore(str(exp))
    epochs = _epochs_by_trial(exp)
    assert epochs and sum(epochs.values()) < 6 * 100, epochs  # stopped mid-way, not trained to the end


@pytest.mark.long
def test_sigterm_to_every_process_of_the_job_interrupts_it_at_once(tmp_path, ray_tmpdir):
    """systemd (KillMode=control-group) and Slurm send SIGTERM to every process of the service, Ray's
    included: nothing can be stopped through Ray any more, so the driver says so and exits 130 at
    once; the job resumes from Tune's last saved state, as after a kill."""
    import psutil

    proc, exp, env = _sigterm_job(tmp_path, ray_tmpdir, "everyone")
    _wait_for_epochs(exp, proc, 6)
    driver = psutil.Process(proc.pid)
    for p in [driver, *driver.children(recursive=True)]:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _stopped_and_resumable(proc, exp, env)


def test_the_local_runtime_runs_in_a_session_of_its_own(fresh_ray):
    """What the SIGTERM tests rely on, checked on a real runtime: Ray's processes are not in the
    driver's session (so not in its process group), and they still end with the driver."""
    from tuner.cluster.runtime import connect

    runtime = connect(None)
    try:
        assert runtime.processes, "the runtime's processes are not known"
        for p in runtime.processes:
            assert os.getsid(p.pid) != os.getsid(0) and os.getpgid(p.pid) != os.getpgrp()
        assert not runtime.went_down(within_s=0.2)
    finally:
        runtime.shutdown()
