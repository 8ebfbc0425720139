"""MLflow records against a real `mlflow server` process: one parent and one child per trial, the
winner on held-out data, best/export, credentials never stored or printed, and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from tests.tuner.conftest import (
    SEARCH_ONLY,
    SMALL,
    crash_once_after_epoch_2,
    everything_fixed,
    free_port,
    run_cli,
    wait_for,
)
from trainables.config import Config
from tuner.job.plan import plan_job
from tuner.job.run import Tracking, run_job
from tuner.record.records import CONFIG_TAG, TRIAL_TAG

pytestmark = pytest.mark.slow


def _runs(uri: str, experiment: str):
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    jobs = [r for r in runs if r.data.tags.get("losstune.role") == "job"]
    trials = [r for r in runs if r.data.tags.get("losstune.role") != "job"]
    return c, jobs, trials


_cli = run_cli


def test_a_six_trial_job_leaves_one_parent_six_children_and_the_winner(small_job, mlflow_server, tmp_path):
    job, data, space, pretrained = plan_job(*small_job(target_auroc=0.8, target_auprc=0.3))
    outcome = run_job(job, data, space, pretrained, address=None, verbose=0,
                      tracking=Tracking(mlflow_server, "six-trials"))
    c, jobs, trials = _runs(mlflow_server, "six-trials")
    assert len(jobs) == 1 and len(trials) == 6
    parent = jobs[0]
    assert parent.info.status == "FINISHED"
    # what MLflow's UI shows a person: a model-training experiment, runs named for what they are
    assert c.get_experiment_by_name("six-trials").tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.info.run_name == "job job"
    numbers = {r.trial_id: r.number for r in outcome.rows}
    assert sorted(t.info.run_name for t in trials) == sorted(f"trial {numbers[t.data.tags[TRIAL_TAG]]} "
                                                             f"({t.data.tags[TRIAL_TAG]})" for t in trials)
    assert {numbers[t.data.tags[TRIAL_TAG]] for t in trials} == set(range(6))
    assert all(t.info.status in ("FINISHED", "FAILED", "KILLED") for t in trials)
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {parent.info.run_id}
    assert len({t.data.tags[TRIAL_TAG] for t in trials}) == 6
    # params: the job's settings and searched ranges; each trial's whole config as dotted keys
    p = parent.data.params
    assert p["scenario"] == job.scenario and p["scenario.requested"] == "auto" and p["num_trials"] == "6"
    assert p["data.fingerprint"] == data.fingerprint and p["data.split_fingerprint"] == data.split_fingerprint
    assert p["target.auroc"] == "0.8" and any(k.startswith("search.main_loss.gamma") for k in p)
    for t in trials:
        cfg = Config.from_dict(json.loads(t.data.tags[CONFIG_TAG]))
        assert {k: str(v) for k, v in cfg.flat().items()} == t.data.params
        m = t.data.metrics
        assert {"objective", "best/val/auroc", "best/val/auprc", "best/val/ece", "target.auroc_met",
                "target.auprc_met", "target.all_met", "target.epoch_reached"} <= set(m)
        history = c.get_metric_history(t.info.run_id, "val/auroc")
        assert sorted(h.step for h in history) == list(range(1, int(m["epoch"]) + 1))  # every epoch, once
        assert t.data.tags["losstune.status"] in ("completed", "early-stopped", "stopped", "diverged")
        # its description: how it ended, its best epoch, whether it met the targets
        note = t.data.tags["mlflow.note.content"]
        assert note.startswith(f"**{t.data.tags['losstune.status']}** after {int(m['epoch'])} epoch"), note
        if m["best/epoch"] >= 1:  # (a trial that diverged in its first epoch has none)
            assert f"Best epoch {int(m['best/epoch'])}: validation AUROC {m['best/val/auroc']:.4f}" in note
        assert ("Targets: **met**" if m["target.all_met"] else "Targets: **not met**") in note
        # the data it trained and was selected on, never the held-out test split
        assert sorted(i.dataset.name.rsplit("/", 1)[1] for i in t.inputs.dataset_inputs) == ["train", "validation"]
    # the job's summary, the winner on held-out test data, plots and artifacts
    m = parent.data.metrics
    assert m["trials.count"] == 6
    # what the job spent: each trial's reserved CPUs × its running time
    assert m["budget.trials"] == 6 and m["budget.gpu_hours"] == 0
    assert m["budget.cpu_hours"] == pytest.approx(sum(r.seconds for r in outcome.rows) / 3600, abs=1e-4)
    # the spec, flat, and the search space, structured
    assert p["spec.num_trials"] == "6" and p["spec.targets.auroc"] == "0.8" and p["spec.data.source"] == data.source
    from search_spaces import SpaceSpec

    assert SpaceSpec.from_dict(json.loads(parent.data.tags["losstune.search_space"])).searched_keys() == job.searched
    met = sum(t.data.metrics["target.all_met"] for t in trials)
    assert m["trials.met_all_targets"] == met and m["target.attainment_rate"] == pytest.approx(met / 6)
    best = max(trials, key=lambda t: t.data.metrics["objective"])
    assert parent.data.tags["losstune.best_trial_run_id"] == best.info.run_id
    assert m["best.objective"] == pytest.approx(best.data.metrics["objective"])
    assert {"test/auroc", "test/auprc", "test/ece", "test/ece_scaled", "temperature", "target.test_all_met"} <= set(m)
    assert m["test/auroc"] == pytest.approx(outcome.winner.holdout["test/auroc"])
    arts = {f.path for d in ("", "winner", "plots") for f in c.list_artifacts(parent.info.run_id, d or None)}
    assert {"results.csv", "winner/config.yaml", "winner/model.pt", "winner/preprocessor.json",
            "plots/optimization_history.png", "plots/best_so_far.png", "plots/param_importances.png"} <= arts
    local = Path(c.download_artifacts(parent.info.run_id, "winner", str(tmp_path)))
    state = torch.load(local / "model.pt", weights_only=True)
    assert state["temperature"] == pytest.approx(m["temperature"])
    exported = yaml.safe_load((local / "config.yaml").read_text())
    assert exported["provenance"]["trial_run_id"] == best.info.run_id
    assert Config.from_dict(exported) == Config.from_dict(json.loads(best.data.tags[CONFIG_TAG]))
    png = Path(c.download_artifacts(parent.info.run_id, "plots/best_so_far.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the job's description says the bottom line first, the targets' verdict, then the winner (linked), the
    # cost and how to rerun it
    note = parent.data.tags["mlflow.note.content"]
    verdict = "met" if m["target.test_all_met"] else "NOT met"
    assert note.startswith(f"**{parent.data.tags['losstune.bottom_line']}**\n\nTargets {verdict} on the held-out "
                           f"test split: AUROC {m['test/auroc']:.4f} "), note
    assert parent.data.tags["losstune.bottom_line"].startswith("Best here on test AUROC: ")
    assert f"(#/experiments/{parent.info.experiment_id}/runs/{best.info.run_id}?workflowType=machine_learning)" in note
    assert f"| **held-out test** | {m['test/auroc']:.4f} | {m['test/auprc']:.4f} |" in note
    assert f"- **Spent**: 6 trials, {m['budget.wall_s']:.0f} s wall" in note
    assert f"losstune tune --job {job.location}/job.yaml" in note and "report.html" in note
    # the data as MLflow datasets: the fingerprints, the schema and row counts of each split, no rows
    inputs = {i.dataset.name.rsplit("/", 1)[1]: i for i in parent.inputs.dataset_inputs}
    assert sorted(inputs) == ["test", "train", "validation"]
    for context, split in (("train", data.train), ("validation", data.val), ("test", data.test)):
        d = inputs[context].dataset
        assert [t.value for t in inputs[context].tags if t.key == "mlflow.data.context"] == [context]
        assert d.digest == f"{data.fingerprint}.{data.split_fingerprint}"
        assert json.loads(d.profile)["num_rows"] == len(split)
        names = [col["name"] for col in json.loads(d.schema)["mlflow_colspec"]]
        assert names == [col["name"] for col in data.preprocessor.columns] + data.label_names


def test_a_retried_trial_keeps_one_run(small_job, mlflow_server, tmp_path):
    job, data, space, pretrained = plan_job(*small_job(num_trials=2, max_epochs=4, scheduler="fifo",
                                                      scenario="rare_disease_detection", fix=everything_fixed()))
    run_job(job, data, space, pretrained, address=None, trainable=crash_once_after_epoch_2(str(tmp_path)), verbose=0,
            tracking=Tracking(mlflow_server, "retry"))
    assert (tmp_path / "crashed").exists()
    c, jobs, trials = _runs(mlflow_server, "retry")
    assert len(jobs) == 1 and len(trials) == 2
    assert all(r.info.status != "RUNNING" for r in jobs + trials)
    for t in trials:
        assert sorted(h.step for h in c.get_metric_history(t.info.run_id, "val/auroc")) == [1, 2, 3, 4]


def test_resume_after_sigkill_leaves_no_duplicate_and_no_running_run(tmp_path, ray_tmpdir, mlflow_server):
    import os
    import signal
    import subprocess
    import sys

    store = tmp_path / "results"
    env = {**os.environ, "RAY_TMPDIR": ray_tmpdir}
    base = [sys.executable, "-m", "tuner.cli", "tune", "--storage-path", str(store), "--tracking-uri", mlflow_server,
            *SEARCH_ONLY]
    proc = subprocess.Popen([*base, "--data", "synthetic:rare?n=12000&signal=2", "--num-trials", "5",
                             "--max-epochs", "8",
                             "--scheduler", "fifo", "--experiment", "resumed", "--fix", "optim.patience=0"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    exp = store / "resumed"

    def progress():
        done = [len((d / "result.json").read_text().splitlines()) for d in exp.glob("train_trial_*")
                if (d / "result.json").exists()]
        return sum(done) >= 10 and any(0 < n < 6 for n in done)

    def epochs_in_mlflow():  # the writer has delivered some epochs: the kill cuts a job with records
        exp_ = MlflowClient(mlflow_server).get_experiment_by_name("resumed")
        runs = MlflowClient(mlflow_server).search_runs([exp_.experiment_id]) if exp_ else []
        return any("epoch" in r.data.metrics for r in runs)

    wait_for(progress, what="10 epochs of the job", timeout_s=180)
    wait_for(epochs_in_mlflow, what="epochs recorded in MLflow", timeout_s=60)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    out = subprocess.run([*base, "--resume", "resumed"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    c, jobs, trials = _runs(mlflow_server, "resumed")
    assert len(jobs) == 1 and len(trials) == 5
    assert len({t.data.tags[TRIAL_TAG] for t in trials}) == 5
    assert all(r.info.status in ("FINISHED", "KILLED", "FAILED") for r in jobs + trials)
    assert jobs[0].data.metrics["trials.count"] == 5
    for t in trials:
        steps = [h.step for h in c.get_metric_history(t.info.run_id, "epoch")]
        assert len(steps) == len(set(steps)) and max(steps) == 8  # nothing recorded twice


def test_best_and_export_reproduce_the_trial_with_train(tmp_path, monkeypatch, capsys, shared_ray):
    """Against the default sqlite file: tune, best, export, then train the export on the same data."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    rc, out, err = _cli(["tune", "--data", SMALL, "--num-trials", "3", "--max-epochs", "5", "--scheduler", "fifo",
                         "--target-auroc", "0.8", *SEARCH_ONLY], capsys)
    assert rc == 0, err
    assert (tmp_path / "mlflow.db").is_file()
    rc, out, err = _cli(["best"], capsys)
    assert rc == 0, err
    assert re.search(r"spent: 3 trials, \d+ s wall, [\d.]+ CPU-hours, 0\.000 GPU-hours", out)
    assert "searched values" in out and "winner" in out and "on the held-out test split" in out
    shown_ids = re.findall(r"^\d+\s+([0-9a-f]{8})\s", out, flags=re.M)  # the table's trial ids, best first
    assert len(shown_ids) == 3
    rc, out, err = _cli(["export", "--out", "winner.yaml"], capsys)
    assert rc == 0, err
    doc = yaml.safe_load((tmp_path / "winner.yaml").read_text())
    prov = doc["provenance"]
    # the ids a person is shown work everywhere: a trial id as printed, a unique start of it, a run id's start
    for i, trial in enumerate((shown_ids[1], shown_ids[2][:6], prov["trial_run_id"][:10])):
        rc, out, err = _cli(["export", "--trial", trial, "--out", f"t{i}.yaml"], capsys)
        assert rc == 0, err
    exported = [yaml.safe_load((tmp_path / f"t{i}.yaml").read_text())["provenance"] for i in range(3)]
    assert [e["trial_id"] for e in exported[:2]] == shown_ids[1:]
    assert exported[2]["trial_run_id"] == prov["trial_run_id"]
    rc, out, err = _cli(["export", "--trial", "zz", "--out", "none.yaml"], capsys)
    assert rc == 2 and "has no trial 'zz'" in err and not (tmp_path / "none.yaml").exists()
    # --job is the job's name, as `tune` printed it and `best --jobs` lists it
    rc, jobs, err = _cli(["best", "--jobs"], capsys)
    assert rc == 0 and prov["job"] in jobs
    rc, named, err = _cli(["best", "--job", prov["job"]], capsys)
    assert rc == 0 and re.findall(r"^\d+\s+([0-9a-f]{8})\s", named, flags=re.M) == shown_ids
    rc, out, err = _cli(["best", "--job", "no-such-job"], capsys)
    assert rc == 2 and "no job 'no-such-job'" in err and "losstune best --jobs" in err
    assert {"job_run_id", "trial_run_id", "data", "validation", "test", "targets"} <= set(prov)
    assert prov["data"]["fingerprint"] and prov["targets"]["auroc"] == 0.8
    rc, out, err = _cli(["train", "--config", "winner.yaml", "--data", SMALL, "--out", "again", "--quiet"], capsys)
    assert rc == 0, err
    history = json.loads((tmp_path / "again" / "metrics.json").read_text())["history"]
    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")  # absolute: MLflow keeps one store per URI string
    for key in ("val/auroc", "val/auprc", "val/ece"):
        trial = {h.step: h.value for h in c.get_metric_history(prov["trial_run_id"], key)}
        assert trial and {e: history[e - 1][key] for e in trial} == pytest.approx(trial, abs=0, rel=0)
    assert prov["validation"]["auroc"] == max(h["val/auroc"] for h in history
                                              if h["epoch"] == prov["validation"]["best_epoch"])
    # the export is a preset for tune too
    rc, out, err = _cli(["scenarios", "show", "winner.yaml"], capsys)
    assert rc == 0 and "winner" in out


def test_a_relative_sqlite_store_follows_the_working_folder(tmp_path, monkeypatch):
    """MLflow keeps one store per URI string for the life of a process: the same relative URI opened
    from another folder must write there, not into the first folder's file."""
    from tuner.record.records import check_reachable
    from tuner.record.stores import client_for

    (tmp_path / "first").mkdir(), (tmp_path / "second").mkdir()
    monkeypatch.chdir(tmp_path / "first")
    check_reachable("sqlite:///mlflow.db")
    monkeypatch.chdir(tmp_path / "second")
    check_reachable("sqlite:///mlflow.db")
    client_for("sqlite:///mlflow.db").create_experiment("second")
    assert MlflowClient(f"sqlite:///{tmp_path / 'second' / 'mlflow.db'}").get_experiment_by_name("second")
    assert MlflowClient(f"sqlite:///{tmp_path / 'first' / 'mlflow.db'}").get_experiment_by_name("second") is None


def test_credentials_in_the_tracking_uri_appear_nowhere(mlflow_server, tmp_path, capsys, shared_ray):
    secret_uri = mlflow_server.replace("http://", "http://alice:hunter2secret@")
    store = tmp_path / "results"
    rc, out, err = _cli(["tune", "--data", SMALL, "--num-trials", "2", "--max-epochs", "2", "--experiment", "creds",
                         "--storage-path", str(store), "--tracking-uri", secret_uri, *SEARCH_ONLY], capsys)
    assert rc == 0, err
    rc2, out2, err2 = _cli(["best", "--experiment", "creds", "--tracking-uri", secret_uri], capsys)
    rc3, out3, err3 = _cli(["export", "--experiment", "creds", "--tracking-uri", secret_uri, "--out",
                            str(tmp_path / "w.yaml")], capsys)
    assert rc2 == 0 and rc3 == 0
    assert "hunter2secret" not in out + err + out2 + err2 + out3 + err3
    # the job's summary, and `best`, give the address of the job's page in MLflow's UI, without credentials
    c = MlflowClient(mlflow_server)
    exp = c.get_experiment_by_name("creds")
    [job] = c.search_runs([exp.experiment_id], filter_string="tags.`losstune.role` = 'job'")
    page = f"{mlflow_server}/#/experiments/{exp.experiment_id}/runs/{job.info.run_id}?workflowType=machine_learning"
    assert f"open it: {page}" in " ".join(out.split()) and f"MLflow: {page}" in " ".join(out2.split())
    c = MlflowClient(mlflow_server)
    for exp in c.search_experiments():
        for r in c.search_runs([exp.experiment_id], max_results=1000):
            stored = json.dumps([r.data.params, r.data.tags, r.info.run_name])
            assert "hunter2secret" not in stored
    for f in store.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".csv", ".pkl", ".yaml"):
            assert b"hunter2secret" not in f.read_bytes(), f
    assert "hunter2secret" not in (tmp_path / "w.yaml").read_text()


@pytest.mark.parametrize("args,pattern", [
    (["tune", "--data", SMALL, "--tracking-uri", "http://127.0.0.1:{port}"],
     r"MLflow tracking store 'http://127\.0\.0\.1:\d+' is unreachable"),
    (["best", "--tracking-uri", "http://u:pw123@127.0.0.1:{port}"], r"'http://\*\*\*@127\.0\.0\.1:\d+' is unreachable"),
    (["export", "--out", "{tmp}/w.yaml", "--tracking-uri", "http://127.0.0.1:{port}"], r"is unreachable"),
    (["best", "--experiment", "nope"], r"no MLflow experiment 'nope'"),
    (["best", "--job", "0123456789abcdef"], r"no job '0123456789abcdef' in this tracking store"),
    (["best", "--job", "0123456789abcdef0123456789abcdef"], r"no job '0123456789abcdef0123456789abcdef'"),
    (["export", "--job", "sepsis", "--out", "{tmp}/w.yaml"], r"no job 'sepsis'.*losstune best --jobs"),
    (["export", "--out", "/nonexistent-dir/w.yaml"], r"--out '/nonexistent-dir/w\.yaml' cannot be written"),
    (["export", "--out", "{tmp}"], r"cannot be written"),
])
def test_bad_input_is_one_line_exit_2(args, pattern, tmp_path, capsys):
    import os

    MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).search_experiments()  # a store that exists (and is empty)
    capsys.readouterr()  # MLflow's own lines about creating it are not the command's
    args = [a.replace("{port}", str(free_port())).replace("{tmp}", str(tmp_path)) for a in args]
    rc, out, err = _cli(args, capsys)
    assert rc == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and re.search(pattern, err), err
    assert "Traceback" not in out + err and "pw123" not in out + err


def test_a_job_with_no_finished_trial(tmp_path, capsys):
    import os

    uri = os.environ["MLFLOW_TRACKING_URI"]
    c = MlflowClient(uri)
    exp = c.create_experiment("empty")
    c.create_run(exp, run_name="job-x", tags={"losstune.role": "job", "losstune.job": "job-x"})
    for args in (["best", "--experiment", "empty"],
                 ["export", "--experiment", "empty", "--out", str(tmp_path / "w.yaml")]):
        rc, _, err = _cli(args, capsys)
        assert rc == 2 and "has no finished trial" in err, err
    assert not (tmp_path / "w.yaml").exists()


def test_a_diverged_trial_is_reported_as_diverged_and_the_job_goes_on(small_job, mlflow_server, tmp_path):
    marker_dir = str(tmp_path)

    def nan_in_the_first_trial(config, inputs):
        import dataclasses

        import numpy as np

        from trainables.data import SharedData
        from trainables.tune_trainable import train_trial

        marker = Path(marker_dir) / "poisoned"
        if not marker.exists():
            marker.write_text("x")
            arrays = dict(inputs.data.arrays)
            arrays["train_x"] = arrays["train_x"].copy()
            arrays["train_x"][5, 0] = np.nan  # a NaN feature: the loss turns NaN in epoch 1
            inputs = dataclasses.replace(inputs, data=SharedData(arrays, inputs.data.meta))
        train_trial(config, inputs)

    job, data, space, pretrained = plan_job(*small_job(num_trials=3, max_epochs=3, scheduler="fifo", concurrency=1))
    outcome = run_job(job, data, space, pretrained, address=None, trainable=nan_in_the_first_trial, verbose=0,
                      tracking=Tracking(mlflow_server, "diverged"))
    statuses = sorted(r.status for r in outcome.rows)
    assert statuses.count("diverged") == 1 and len(outcome.rows) == 3
    assert outcome.best is not None and outcome.best.status != "diverged" and outcome.winner is not None
    _, jobs, trials = _runs(mlflow_server, "diverged")
    assert sorted(t.data.tags["losstune.status"] for t in trials).count("diverged") == 1
    assert jobs[0].data.metrics["trials.diverged"] == 1
