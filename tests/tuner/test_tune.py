"""`losstune tune` on a real local Ray runtime: end to end, stop on target, retry, resume after
SIGKILL, GPU-fraction scheduling on fake GPUs, and bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from search_spaces import load_scenario
from tests.tuner.conftest import SEARCH_ONLY, SMALL, crash_once_after_epoch_2, everything_fixed, free_port, run_cli
from trainables.data import prepare_data
from trainables.errors import UserError
from trainables.model import DualHeadModel
from tuner.job.outcome import RESULTS_FILE
from tuner.job.plan import plan_job
from tuner.job.run import run_job

pytestmark = pytest.mark.slow


def _results(trial_path: str) -> list[dict]:
    return [json.loads(line) for line in (Path(trial_path) / "result.json").read_text().splitlines() if line.strip()]


def test_six_trial_job_runs_end_to_end_and_trial_0_is_the_preset(small_job):
    job, data, space, pretrained = plan_job(*small_job(scenario="rare_disease_detection"))
    import optuna

    switched = ("TUNE_DISABLE_SIGINT_HANDLER", "RAY_AIR_NEW_OUTPUT",
                "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S")
    env, verbosity = {k: os.environ.get(k) for k in switched}, optuna.logging.get_verbosity()
    outcome = run_job(job, data, space, pretrained, address=None, verbose=0)
    # what the job switched for its duration (Tune's SIGINT handler, its live table, Optuna's chatter) is back
    assert {k: os.environ.get(k) for k in switched} == env and optuna.logging.get_verbosity() == verbosity
    assert len(outcome.rows) == 6 and sorted(r.number for r in outcome.rows) == list(range(6))
    first = next(r for r in outcome.rows if r.number == 0)
    preset = load_scenario("rare_disease_detection").config
    assert preset.with_overrides(first.config).with_overrides({"optim.max_epochs": 4}) == space.base
    assert all(r.status in ("completed", "early-stopped", "stopped") for r in outcome.rows)
    # two trials at once: which configs TPE proposes depends on which finishes first, and a trial ASHA
    # stops after an epoch may sit at chance; every value is a real AUROC and the search learnt something
    assert all(0 <= r.metrics["val/auroc"] <= 1 for r in outcome.rows)
    assert max(r.metrics["val/auroc"] for r in outcome.rows) > 0.7
    assert outcome.best.objective == max(r.objective for r in outcome.rows)
    csv = (job.path / RESULTS_FILE).read_text().splitlines()
    assert len(csv) == 7 and csv[0].startswith("rank,trial,trial_id,status")
    assert (job.path / "losstune_job.json").is_file()
    # each trial's epochs in Tune's result.json and progress.csv, which resume reads; no TensorBoard files
    for trial in job.path.glob("train_trial_*"):
        assert (trial / "result.json").stat().st_size > 0 and (trial / "progress.csv").stat().st_size > 0
        assert not list(trial.glob("events.out.tfevents*"))
    from tuner.job.outcome import format_summary

    text = format_summary(outcome)
    assert "0 preset" in text and "their searched values: `losstune best --job job`" in text and "val auroc" in text


def test_stop_on_target_ends_the_job_and_names_the_trial(small_job):
    job, data, space, pretrained = plan_job(*small_job(num_trials=8, max_epochs=6, concurrency=1, target_auroc=0.6,
                                                      stop_on_target=True, scheduler="fifo"))
    outcome = run_job(job, data, space, pretrained, address=None, verbose=0)
    assert outcome.stopped_on_target is not None
    trial_id, epoch = outcome.stopped_on_target
    winner = next(r for r in outcome.rows if r.trial_id == trial_id)
    assert winner.targets["target/all_met"] == 1 and winner.epochs == epoch
    assert len(outcome.rows) < 8  # the job ended before creating every trial
    from tuner.job.outcome import format_summary

    assert f"stopped early: trial {trial_id} met every target at epoch {epoch}" in format_summary(outcome)


def test_a_trial_whose_worker_dies_finishes_from_its_checkpoint_with_the_same_metrics(small_job, tmp_path):
    job, data, space, pretrained = plan_job(*small_job(num_trials=2, max_epochs=5, scheduler="fifo", max_failures=2,
                                                      scenario="rare_disease_detection", fix=everything_fixed()))
    outcome = run_job(job, data, space, pretrained, address=None, trainable=crash_once_after_epoch_2(str(tmp_path)),
                      verbose=0)
    crashed_id = (tmp_path / "crashed").read_text()
    rows = {r.trial_id: r for r in outcome.rows}
    assert crashed_id in rows and len(rows) == 2
    crashed, clean = rows[crashed_id], next(r for r in outcome.rows if r.trial_id != crashed_id)
    assert crashed.status == clean.status and crashed.epochs == clean.epochs == 5
    assert crashed.objective == clean.objective and crashed.metrics == clean.metrics
    history = {int(r["epoch"]): r for r in _results(crashed.path)}
    reference = {int(r["epoch"]): r for r in _results(clean.path)}
    assert sorted(history) == [1, 2, 3, 4, 5]
    for e in range(1, 6):
        assert (history[e]["val/auroc"] == reference[e]["val/auroc"]
                and history[e]["train/loss"] == reference[e]["train/loss"])


@pytest.mark.long
@pytest.mark.parametrize("concurrency", [[], ["--concurrency", "2"]], ids=["default", "two-at-once"])
def test_a_driver_killed_with_sigkill_resumes_without_rerunning_trials(tmp_path, ray_tmpdir, concurrency):
    store = tmp_path / "results"
    env = {**os.environ, "RAY_TMPDIR": ray_tmpdir, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "tuner.cli", "tune", "--data", "synthetic:rare?n=12000&signal=2", "--num-trials", "6",
           "--max-epochs", "8", "--scheduler", "fifo", "--experiment", "killed", "--storage-path", str(store),
           "--fix", "optim.patience=0", *concurrency, *SEARCH_ONLY]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    exp = store / "killed"

    def epochs_by_trial():
        out = {}
        for d in exp.glob("train_trial_*"):
            f = d / "result.json"
            out[d.name] = len(f.read_text().splitlines()) if f.exists() else 0
        return out

    deadline = time.time() + 180
    while time.time() < deadline:
        seen = epochs_by_trial()
        if sum(seen.values()) >= 10 and any(0 < n < 6 for n in seen.values()):
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"the job did not get going: {epochs_by_trial()}")
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and anything in its process group
    proc.wait()
    before = epochs_by_trial()
    interrupted = [name for name, n in before.items() if 0 < n < 8]
    assert interrupted, before  # at least one trial was cut off mid-run

    resume = subprocess.run([sys.executable, "-m", "tuner.cli", "tune", "--resume", "killed",
                             "--storage-path", str(store)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert "resuming job killed" in resume.stdout
    after = {d.name: _results(d) for d in exp.glob("train_trial_*")}
    assert len(after) == 6  # the asked number of trials, not more
    for name, rows in after.items():
        epochs = [int(r["epoch"]) for r in rows]
        assert epochs == list(range(1, 9)), (name, epochs)  # every epoch once: nothing ran twice
    for name in interrupted:
        # continued from its checkpoint: the epochs before the kill are the ones it already had
        assert [int(r["epoch"]) for r in after[name][: before[name]]] == list(range(1, before[name] + 1))
    csv = (exp / RESULTS_FILE).read_text().splitlines()
    assert len(csv) == 7


def test_half_gpu_trials_share_fake_gpus_and_run_concurrently(small_job, fake_gpu_cluster):
    job, data, space, pretrained = plan_job(*small_job(num_trials=4, max_epochs=6, gpus_per_trial=0.5,
                                                      cpus_per_trial=1, scheduler="fifo"))
    outcome = run_job(job, data, space, pretrained, address=fake_gpu_cluster, verbose=0)
    assert len(outcome.rows) == 4
    for r in outcome.rows:
        ids = r.resources["trial/gpu_ids"]
        assert re.fullmatch(r"[0-3]", ids), r.resources  # each trial sees its assigned device id
        assert r.resources["trial/device"] == "cpu"  # no real GPU here: the trainer falls back
    spans = []
    for r in outcome.rows:
        rows = _results(r.path)
        spans.append((rows[0]["timestamp"] - rows[0]["time_this_iter_s"], rows[-1]["timestamp"]))
    overlaps = sum(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:])
    assert overlaps >= 1  # two CPUs: two half-GPU trials at a time


def _cli(args, capsys):
    return (*run_cli(args, capsys), None)


def test_gpus_on_a_cpu_only_runtime_fail_fast(tmp_path, capsys):
    rc, out, err, took = _cli(["tune", "--data", SMALL, "--gpus-per-trial", "0.5", "--storage-path", str(tmp_path)],
                              capsys)
    assert rc == 2 and "asks for GPUs but the Ray runtime at 'local' has none" in err
    assert err.strip().count("\n") == 0


def test_the_design_notes_invocation_works(tmp_path, capsys, shared_ray):
    data = prepare_data(SMALL)
    model = DualHeadModel(in_features=data.n_features, n_labels=1, hidden=(128, 64))
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    rc, out, err, _ = _cli(["tune", "--pretrained_ckpt", str(tmp_path / "ckpt.pt"), "--medical_scenario", "auto",
                            "--target_auc", "0.90", "--target_auprc", "0.50", "--data", SMALL, "--num-trials", "2",
                            "--max_epochs", "2", "--storage-path", str(tmp_path / "r"), *SEARCH_ONLY], capsys)
    assert rc == 0, err
    assert "scenario treatment_response_prediction, chosen from the data" in out  # 1:19 is commoner than 1:20
    assert "targets (AUROC >= 0.9, AUPRC >= 0.5, validation)" in out


@pytest.mark.parametrize("args,pattern", [
    (["--address", "127.0.0.1:{port}"], r"Ray runtime at '127\.0\.0\.1:\d+' is unreachable"),
    (["--address", "ray://user:hunter2@127.0.0.1:{port}"],
     r"Ray runtime at 'ray://\*\*\*@127\.0\.0\.1:\d+' is unreachable"),
    (["--num-trials", "0"], r"--num-trials must be at least 1, got 0"),
    (["--cpus-per-trial", "64"], r"--cpus-per-trial 64 is more than the \d+ CPUs"),
    (["--stop-on-target"], r"--stop-on-target needs --target-auroc"),
    (["--search", "main_loss.gamma=[3, 1]"], r"search\.main_loss\.gamma: low must be below high"),
])
def test_bad_input_is_one_line_exit_2(args, pattern, tmp_path, capsys):
    args = [a.replace("{port}", str(free_port())) for a in args]
    rc, out, err, took = _cli(["tune", "--data", SMALL, "--storage-path", str(tmp_path), *args], capsys)
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and re.search(pattern, err), err
    assert "Traceback" not in out + err and "hunter2" not in out + err


def _no_ray(monkeypatch):
    """Fail the test if the command connects to (or starts) a Ray runtime."""
    import tuner.cluster.runtime

    def refuse(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(tuner.cluster.runtime, "connect", refuse)


def test_a_data_file_the_trainer_refuses_fails_before_ray_starts(tmp_path, capsys, monkeypatch):
    _no_ray(monkeypatch)
    (tmp_path / "d.csv").write_text("a,b,y\n" + "".join(f"{i},{i % 3},0\n" for i in range(50)))
    rc, _, err, took = _cli(["tune", "--data", str(tmp_path / "d.csv"), "--label-col", "y",
                             "--storage-path", str(tmp_path)], capsys)
    assert rc == 2 and "only one class" in err


def test_resuming_a_job_that_does_not_exist(tmp_path, capsys):
    rc, _, err, _ = _cli(["tune", "--resume", "nope", "--storage-path", str(tmp_path)], capsys)
    assert rc == 2 and "no losstune job 'nope'" in err


def test_an_existing_experiment_name_is_refused(small_job):
    job, *_ = plan_job(*small_job())
    job.save()
    where = r"continue it with --resume \S*results/job "
    with pytest.raises(UserError, match=f"experiment 'job' already exists .* {where}"):
        plan_job(*small_job())


def test_dry_run_checks_everything_prints_the_spec_and_starts_nothing(tmp_path, capsys, monkeypatch):
    import yaml

    _no_ray(monkeypatch)

    from tuner.job.spec import JobSpec

    rc, out, err, _ = _cli(["tune", "--data", SMALL, "--num-trials", "7", "--fix", "optim.lr=0.002", "--target-auroc",
                            "0.8", "--storage-path", str(tmp_path / "r"), "--experiment", "dry", "--dry-run"], capsys)
    assert rc == 0, err
    spec = JobSpec.from_dict(yaml.safe_load(out), source="dry-run output")
    assert spec.name == "dry" and spec.num_trials == 7 and spec.fix == {"optim.lr": 0.002}
    assert spec.targets.auroc == 0.8 and spec.data.source == SMALL
    assert out.startswith("# job dry · data ")
    assert "# scenario treatment_response_prediction, chosen from the data" in out
    assert "# trains up to 26 models" in out  # 7 + 7 + 2 arms × a race of 3 configs over 3 seeds (3 + 2 + 1)
    assert "confirmation 12 (3 configs raced over up to 3 seeds: 6 per arm × 2 arms)" in \
        " ".join(line.lstrip("# ") for line in out.splitlines())
    assert not (tmp_path / "r").exists()
    assert not Path(os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")).exists()  # no store created
    rc, _, err, _ = _cli(["tune", "--data", SMALL, "--num-trials", "0", "--dry-run"], capsys)
    assert rc == 2 and "--num-trials must be at least 1" in err


def test_a_saved_job_spec_reruns_under_a_new_name_with_the_same_trial_configs(small_job, tmp_path, capsys):
    spec, storage = small_job(num_trials=4, max_epochs=2, scheduler="fifo", concurrency=1, seed=3)
    job, data, space, pretrained = plan_job(spec, storage)
    first = run_job(job, data, space, pretrained, address=None, verbose=0)
    saved = job.path / "job.yaml"
    assert saved.is_file()
    rc, out, err, _ = _cli(["tune", "--job", str(saved), "--experiment", "again", "--storage-path", storage,
                            "--no-tracking"], capsys)
    assert rc == 0, err
    again = json.loads((Path(storage) / "again" / "losstune_job.json").read_text())
    assert again["base_config"] == job.base_config and again["search_space"] == job.search_space

    def configs(folder: Path) -> list[dict]:
        def number(d: Path) -> int:  # train_trial_<id>_<creation number>_<params>
            return int(d.name.split("_")[3])

        trials = sorted(folder.glob("train_trial_*"), key=number)
        return [json.loads((d / "params.json").read_text()) for d in trials]

    assert len(first.rows) == 4
    assert configs(Path(storage) / "again") == configs(job.path)


def test_a_multi_label_table_is_tuned_end_to_end(tmp_path, capsys, shared_ray):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 1500
    x = rng.normal(size=(n, 4))
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"]).assign(site=rng.choice(["n", "s", "e"], n))
    frame.loc[rng.random(n) < 0.1, "c"] = np.nan
    for k, col in enumerate(("copd", "chf", "ckd")):  # three findings, ~1:4 each
        frame[col] = (x[:, k] + rng.normal(scale=0.8, size=n) > 1.0).astype(int)
    frame.to_csv(tmp_path / "screening.csv", index=False)
    rc, out, err = run_cli(["tune", "--data", str(tmp_path / "screening.csv"), "--label-col", "copd", "--label-col",
                            "chf", "--label-col", "ckd", "--num-trials", "3", "--max-epochs", "2",
                            "--scheduler", "fifo",
                            "--storage-path", str(tmp_path / "r"), "--experiment", "multi", "--no-tracking",
                            *SEARCH_ONLY], capsys)
    assert rc == 0, err
    assert "scenario multi_disease_screening, chosen from the data: 3 label columns" in " ".join(out.split())
    assert re.search(r"winner \w+, the deployed model[^;]*; on the held-out test split .*AUROC 0\.\d+",
                     " ".join(out.split()))
    results = (tmp_path / "r" / "multi" / RESULTS_FILE).read_text().splitlines()
    assert len(results) == 4 and all(",completed," in row for row in results[1:])


def test_search_aux_tries_more_than_one_aux_loss_through_ray(small_job):
    job, data, space, pretrained = plan_job(*small_job(num_trials=6, max_epochs=1, scheduler="fifo", search_aux=True,
                                                       scenario="rare_disease_detection"))
    assert "aux_loss.type" in job.searched
    outcome = run_job(job, data, space, pretrained, address=None, verbose=0)
    kinds = {r.config["aux_loss.type"] for r in outcome.rows}
    assert len(outcome.rows) == 6 and len(kinds) >= 2, kinds


def test_asha_stops_weak_trials_and_says_so(small_job, tmp_path):
    from mlflow import MlflowClient

    from tuner.job.run import Tracking

    uri = f"sqlite:///{tmp_path}/asha.db"
    # A wide learning-rate range (some trials barely learn), a short grace period and halving at
    # every rung: a search built so that ASHA has weak trials to stop.
    job, data, space, pretrained = plan_job(*small_job(
        num_trials=8, max_epochs=6, scheduler="asha", grace_period=1, reduction_factor=2, concurrency=1,
        search=["optim.lr=[1.0e-6, 3.0e-2]"], fix=["optim.patience=0"], scenario="rare_disease_detection"))
    outcome = run_job(job, data, space, pretrained, address=None, verbose=0, tracking=Tracking(uri, "asha"))
    stopped = [r for r in outcome.rows if r.status == "stopped"]
    assert stopped and all(r.epochs < 6 for r in stopped), [(r.status, r.epochs) for r in outcome.rows]
    assert outcome.state == "finished"
    csv_rows = (job.path / RESULTS_FILE).read_text().splitlines()[1:]
    assert sum(",stopped," in row for row in csv_rows) == len(stopped)
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("asha").experiment_id], max_results=50)
    killed = [r for r in runs if r.data.tags.get("losstune.status") == "stopped"]
    assert len(killed) == len(stopped) and all(r.info.status == "KILLED" for r in killed)


def test_pretrained_weights_reach_every_trial_before_its_first_step(small_job, tmp_path):
    from trainables.model import MLPBackbone, weights_fingerprint

    probe = prepare_data(SMALL)
    torch.manual_seed(7)
    backbone = MLPBackbone(in_features=probe.n_features, hidden=(128, 64), dropout=0.1)
    torch.save(backbone.state_dict(), tmp_path / "pretrained.pt")
    expected = weights_fingerprint(backbone.state_dict())
    # a backbone freshly initialised from any trial's seed would not have these weights
    assert expected != weights_fingerprint(MLPBackbone(in_features=probe.n_features, hidden=(128, 64),
                                                       dropout=0.1).state_dict())
    job, data, space, pretrained = plan_job(*small_job(num_trials=3, max_epochs=2, scheduler="fifo",
                                                       pretrained_ckpt=str(tmp_path / "pretrained.pt"),
                                                       fix=["model.hidden=[128, 64]", "model.dropout=0.1"]))
    outcome = run_job(job, data, space, pretrained, address=None, verbose=0)
    assert len(outcome.rows) == 3
    for row in outcome.rows:
        first = _results(row.path)[0]
        assert first["epoch"] == 1 and first["init/backbone"] == expected, row.trial_id


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["random", "gp"])
def test_the_sampler_is_chosen_by_the_spec_and_recorded(kind, small_job, monkeypatch):
    import optuna

    made = []
    expected = {"random": optuna.samplers.RandomSampler, "gp": optuna.samplers.GPSampler}[kind]
    for name in ("RandomSampler", "GPSampler", "TPESampler"):
        real = getattr(optuna.samplers, name)
        monkeypatch.setattr(optuna.samplers, name, lambda *a, _real=real, **k: made.append(_real) or _real(*a, **k))
    spec, storage = small_job(num_trials=3, max_epochs=2, scheduler="fifo", sampler=kind)
    job, data, space, pretrained = plan_job(spec, storage)
    outcome = run_job(job, data, space, pretrained, address=None, verbose=0)
    assert len(outcome.rows) == 3 and outcome.winner is not None
    assert made[0] is expected  # the search's sampler (the importance plot makes a study of its own later)
    assert f"sampler: {kind}" in (job.path / "job.yaml").read_text()


def test_tpe_is_multivariate_with_groups_and_the_constant_liar():
    """Spelled out, not Optuna's defaults (independent TPE without the liar in Optuna 4)."""
    from types import SimpleNamespace

    import optuna

    from tuner.job.launch import sampler

    s = sampler(SimpleNamespace(spec=SimpleNamespace(sampler="tpe"), concurrency=2), 3)
    assert isinstance(s, optuna.samplers.TPESampler)
    assert (s._multivariate, s._group, s._constant_liar) == (True, True, True)


def test_a_trial_restarted_from_a_checkpoint_keeps_no_result_beyond_it(tmp_path):
    """Tune writes an epoch's result before its state records the epoch's checkpoint: a driver killed
    in between resumed the trial from the checkpoint before, and the epoch was in its results twice.
    The results beyond the checkpoint a trial restarts from are dropped before Tune appends again."""
    from types import SimpleNamespace

    import pyarrow.fs

    from tuner.job.launch import _cut_results_after

    rows = [{"training_iteration": i, "epoch": i, "checkpoint_dir_name": f"checkpoint_{i - 1:06d}"}
            for i in range(1, 6)]
    (tmp_path / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"training_it')  # cut short
    csv_rows = ["epoch,training_iteration,config/x\n"] + [f'{i},{i},"a,b"\n' for i in range(1, 6)]
    (tmp_path / "progress.csv").write_text("".join(csv_rows))
    trial = SimpleNamespace(storage=SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem(),
                                                    trial_fs_path=str(tmp_path)))
    _cut_results_after(trial, "checkpoint_000003")  # the 4th epoch's: epoch 5 will be trained again
    assert [r["epoch"] for r in _results(str(tmp_path))] == [1, 2, 3, 4]
    assert (tmp_path / "progress.csv").read_text() == "".join(csv_rows[:5])
    assert not list(tmp_path.glob("*tmp"))
    _cut_results_after(trial, "checkpoint_000003")  # the last row already: nothing changes
    _cut_results_after(trial, "checkpoint_000009")  # a checkpoint the results do not name: left alone
    assert [r["epoch"] for r in _results(str(tmp_path))] == [1, 2, 3, 4]
    assert (tmp_path / "progress.csv").read_text() == "".join(csv_rows[:5])
