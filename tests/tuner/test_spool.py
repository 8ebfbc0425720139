"""The MLflow spool: records written before they are sent, replayed idempotently when the server
answers again (mid-job, at the end of the job, by `losstune sync`). Unit tests of the file need no
server; the rest run against real `mlflow server` processes, killed and restarted."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from mlflow import MlflowClient

from tests.tuner.conftest import free_port, start_mlflow_server, stop_process_group
from tuner.record.spool import BEST_TRIAL_RUN_ID, SPOOL_FILE, Courier, Spool, SpoolBusy, metric_rows


def _trial_records(tid: str, epochs: int, t0: int = 1_700_000_000_000) -> list[dict]:
    recs = [{"kind": "trial_start", "trial": tid, "name": f"trial {tid[1:]} ({tid})", "config_json": "{}",
             "params": {"optim.lr": "0.001", "seed": "0"}}]
    for e in range(1, epochs + 1):
        recs.append({"kind": "trial_metrics", "trial": tid,
                     "metrics": metric_rows({"epoch": e, "val/score": 0.5 + e / 100}, e, t0 + e)})
    recs.append({"kind": "trial_end", "trial": tid, "metrics": metric_rows({"objective": 0.6}, epochs, t0 + 99),
                 "tags": {"losstune.status": "completed"}, "status": "FINISHED"})
    return recs


# --------------------------------------------------------------------------- the file, no server
def test_two_writers_in_one_process_number_every_record_once(tmp_path):
    """The stack's search and the baseline arm's run at once, each Tune run's callback writing the
    job's spool through a Spool of its own: no two records may share a number (the deliverer keys
    records by it, so a shared number lost a trial's MLflow run before)."""
    path = tmp_path / SPOOL_FILE
    writers = [Spool(path), Spool(path)]
    start = threading.Barrier(2)

    def write(spool: Spool, arm: str) -> None:
        start.wait()
        for i in range(60):
            for r in _trial_records(f"{arm}{i}", 2):
                spool.append(r, sync=False)

    threads = [threading.Thread(target=write, args=(w, arm)) for w, arm in zip(writers, "sb")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    seqs = [x["seq"] for x in lines]
    assert len(seqs) == 2 * 60 * 4 and sorted(seqs) == list(range(1, len(seqs) + 1))
    pending = Spool(path).pending()
    assert {r["trial"] for r in pending if r["kind"] == "trial_start"} == {f"{a}{i}" for a in "sb" for i in range(60)}


def test_append_ack_and_pending_survive_reopening(tmp_path):
    path = tmp_path / SPOOL_FILE
    spool = Spool(path)
    seqs = [spool.append(r) for r in _trial_records("t1", 2)]
    assert seqs == [1, 2, 3, 4]
    spool.ack([1, 2])
    spool.refuse(4, "INVALID_PARAMETER_VALUE: no")
    assert [r["seq"] for r in spool.pending()] == [3]
    spool.close()
    again = Spool(path)
    assert [r["seq"] for r in again.pending()] == [3]
    assert again.refused() == {4: "INVALID_PARAMETER_VALUE: no"}
    assert again.append({"kind": "job_status", "status": "RUNNING"}) == 5  # numbering goes on
    assert again.last_step("t1") == 2 and again.trial_state("t1") == "ended"


def test_a_torn_last_line_is_skipped_and_does_not_spoil_the_next(tmp_path):
    path = tmp_path / SPOOL_FILE
    spool = Spool(path)
    spool.append({"kind": "job_status", "status": "RUNNING"})
    spool.close()
    with path.open("ab") as f:  # a crash in the middle of writing record 2
        f.write(b'{"seq":2,"kind":"trial_metrics","trial":"t1","metrics":[["epoch",1.0,17')
    spool = Spool(path)
    assert [r["seq"] for r in spool.pending()] == [1]
    assert spool.append({"kind": "job_status", "status": "FINISHED"}) == 2
    spool.ack([1])
    spool.close()
    again = Spool(path)
    assert [(r["seq"], r["status"]) for r in again.pending()] == [(2, "FINISHED")]
    assert again.last_step("t1") == 0


def test_what_another_process_appends_is_read_before_delivering(tmp_path):
    path = tmp_path / SPOOL_FILE
    writer, other = Spool(path), Spool(path)
    writer.append({"kind": "job_status", "status": "RUNNING"})
    writer.note_run("t1", "abc")
    with other.delivering():
        assert [r["seq"] for r in other.pending()] == [1] and other.run_of("t1") == "abc"
        with pytest.raises(SpoolBusy):  # one deliverer at a time
            with writer.delivering(wait_s=0.2):
                pass
        other.ack([1])
    writer.refresh()
    assert writer.pending() == []


def test_a_dead_store_keeps_every_record_and_no_credentials(tmp_path):
    spool = Spool(tmp_path / SPOOL_FILE)
    for r in _trial_records("t1", 3):
        spool.append(r)
    uri = f"http://alice:hunter2secret@127.0.0.1:{free_port()}"
    result = Courier(spool, uri, experiment_id="1", parent_run_id="p", lookup_first=False).deliver()
    assert result.delivered == 0 and result.remaining == 5 and result.error
    assert "hunter2secret" not in result.error
    assert b"hunter2secret" not in (tmp_path / SPOOL_FILE).read_bytes()


def test_a_record_nobody_can_send_is_refused_and_blocks_nothing(tmp_path):
    spool = Spool(tmp_path / SPOOL_FILE)
    spool.append({"kind": "from_a_newer_losstune"})
    spool.append({"kind": "job_status", "status": "RUNNING"})
    result = Courier(spool, f"http://127.0.0.1:{free_port()}", experiment_id="1", parent_run_id="p",
                     lookup_first=False).deliver()
    assert len(result.refused) == 1 and "unknown record kind" in result.refused[0]
    assert result.remaining == 1 and result.error  # the next one waits for the server
    assert [r["kind"] for r in Spool(tmp_path / SPOOL_FILE).pending()] == ["job_status"]


# --------------------------------------------------------------------------- against a real server
slow = pytest.mark.slow


@slow
def test_mlflow_skips_a_metric_sent_twice(mlflow_server):
    """What replay relies on: MLflow's SQL store keys a metric by (key, timestamp, step, value) and
    ignores one it already holds."""
    from mlflow.entities import Metric

    c = MlflowClient(mlflow_server)
    run = c.create_run(c.create_experiment(f"twice-{free_port()}"))
    batch = [Metric("val/score", 0.5 + s / 10, 1_700_000_000_000 + s, s) for s in (1, 2, 3)]
    c.log_batch(run.info.run_id, metrics=batch)
    c.log_batch(run.info.run_id, metrics=batch)
    assert [h.step for h in c.get_metric_history(run.info.run_id, "val/score")] == [1, 2, 3]


def _job_run(uri: str, name: str) -> tuple[MlflowClient, str, str]:
    c = MlflowClient(uri)
    exp = c.create_experiment(name)
    parent = c.create_run(exp, run_name=name, tags={"losstune.role": "job"}).info.run_id
    return c, exp, parent


def _datasets() -> list[dict]:
    """The job_inputs of a job: one dataset per split, as tuner.record.records.dataset_records writes them."""
    schema = json.dumps({"mlflow_colspec": [{"name": "age", "type": "double", "required": False},
                                            {"name": "outcome", "type": "long", "required": True}]})
    return [{"name": f"patients.csv/{ctx}", "digest": "0123456789abcdef.fedcba9876543210", "source_type": "local",
             "source": json.dumps({"uri": "/data/patients.csv"}), "schema": schema,
             "profile": json.dumps({"num_rows": n}), "context": ctx}
            for ctx, n in (("train", 600), ("validation", 200), ("test", 200))]


@slow
def test_replaying_the_same_records_twice_changes_nothing(mlflow_server, tmp_path):
    c, exp, parent = _job_run(mlflow_server, f"replay-{free_port()}")
    records = [{"kind": "job_inputs", "datasets": _datasets()}] + _trial_records("t1", 3) + _trial_records("t2", 2) + [
        {"kind": "job_close", "metrics": metric_rows({"trials.count": 2}, 0),
         "tags": {"losstune.status": "finished", "mlflow.note.content": f"[the winner](#/runs/{BEST_TRIAL_RUN_ID})"},
         "texts": {"winner/config.yaml": f"trial_run_id: '{BEST_TRIAL_RUN_ID}'\n"}, "files": [], "files_dir": "",
         "best_trial": "t1", "status": "FINISHED"}]
    first = Spool(tmp_path / "a" / SPOOL_FILE)
    for r in records:
        first.append(r)
    result = Courier(first, mlflow_server, experiment_id=exp, parent_run_id=parent, lookup_first=False).deliver()
    assert (result.delivered, result.remaining, result.error) == (len(records), 0, "")
    # The same records again, as if every acknowledgement and run id had been lost.
    second = Spool(tmp_path / "b" / SPOOL_FILE)
    for r in records:
        second.append(r)
    again = Courier(second, mlflow_server, experiment_id=exp, parent_run_id=parent, lookup_first=True).deliver()
    assert (again.delivered, again.remaining) == (len(records), 0)
    # A creation whose answer was lost: marked, no run id, in a process that would not look up.
    third = Spool(tmp_path / "c" / SPOOL_FILE)
    third.note_creating("t1")
    third.append(records[0])
    assert Courier(third, mlflow_server, experiment_id=exp, parent_run_id=parent,
                   lookup_first=False).deliver().remaining == 0

    runs = c.search_runs([exp], max_results=100)
    trials = [r for r in runs if r.data.tags.get("losstune.role") != "job"]
    assert sorted(r.data.tags["losstune.trial_id"] for r in trials) == ["t1", "t2"]  # one run per trial
    for r in trials:
        epochs = 3 if r.data.tags["losstune.trial_id"] == "t1" else 2
        assert [h.step for h in c.get_metric_history(r.info.run_id, "val/score")] == list(range(1, epochs + 1))
        assert r.data.params == {"optim.lr": "0.001", "seed": "0"}
    job = c.get_run(parent)
    t1 = next(r for r in trials if r.data.tags["losstune.trial_id"] == "t1")
    assert job.data.tags["losstune.best_trial_run_id"] == t1.info.run_id
    # the description links to the best trial's run, whose id only the delivery knew
    assert job.data.tags["mlflow.note.content"] == f"[the winner](#/runs/{t1.info.run_id})"
    assert sorted(r.info.run_name for r in trials) == ["trial 1 (t1)", "trial 2 (t2)"]
    # the datasets, once each however often they were sent: all three splits on the job, no test split on a trial
    contexts = {i.dataset.name: {t.value for t in i.tags if t.key == "mlflow.data.context"}
                for i in job.inputs.dataset_inputs}
    assert contexts == {"patients.csv/train": {"train"}, "patients.csv/validation": {"validation"},
                        "patients.csv/test": {"test"}}
    for r in trials:
        assert sorted(i.dataset.name for i in r.inputs.dataset_inputs) == ["patients.csv/train",
                                                                             "patients.csv/validation"]
        assert {json.loads(i.dataset.profile)["num_rows"] for i in r.inputs.dataset_inputs} == {600, 200}
    assert job.info.status == "FINISHED" and len(c.get_metric_history(parent, "trials.count")) == 1
    text = open(c.download_artifacts(parent, "winner/config.yaml", str(tmp_path))).read()
    assert text == f"trial_run_id: '{t1.info.run_id}'\n"


# --------------------------------------------------------------------------- a server that dies mid-job
def _kill_at(pid: int, *, trial_number: int, epoch: int):
    from ray.tune import Callback

    class Killer(Callback):
        """Kills the server's process group when the given trial reports the given epoch. Tune
        pickles callbacks: it holds a pid, not the Popen."""

        def __init__(self) -> None:
            self.pid, self.seen = pid, []

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if trial.trial_id not in self.seen:
                self.seen.append(trial.trial_id)
            if self.seen.index(trial.trial_id) == trial_number and result.get("epoch") == epoch:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    return Killer()


def _wait_for_replay(url: str, spool_path: str, marker: str, *, at_trial: int):
    from ray.tune import Callback

    class WaitForReplay(Callback):
        """Holds the job at the start of a later trial until the server is back and the tracker's
        writer has delivered the first trial's records, mid-job (it writes ``marker`` then): the
        job goes on afterwards with the server up. Without it, small trials end before the server
        is back and only the end of the job would replay."""

        def __init__(self) -> None:
            self.started = 0

        def on_trial_start(self, iteration, trials, trial, **info):
            import urllib.request

            self.started += 1
            if self.started != at_trial + 1:
                return
            deadline = time.time() + 120
            while time.time() < deadline:
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2):
                        break
                except OSError:
                    time.sleep(0.3)
            first = None
            while time.time() < deadline:
                spool = Spool(spool_path)
                trial_records = [r for r in spool.pending() if r.get("trial")]
                first = first or next((r["trial"] for r in trial_records), None)
                if first and not any(r["trial"] == first for r in trial_records):
                    with open(marker, "w") as f:
                        f.write("delivered mid-job")
                    return
                time.sleep(0.3)

    return WaitForReplay()


def _check_everything_recorded(uri: str, experiment: str, *, trials: int, epochs: int) -> None:
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    jobs = [r for r in runs if r.data.tags.get("losstune.role") == "job"]
    kids = [r for r in runs if r.data.tags.get("losstune.role") != "job"]
    assert len(jobs) == 1 and len(kids) == trials
    assert len({r.data.tags["losstune.trial_id"] for r in kids}) == trials  # one run per trial
    assert all(r.info.status in ("FINISHED", "KILLED", "FAILED") for r in jobs + kids)  # nothing RUNNING
    for r in kids:
        for key in ("epoch", "val/score"):
            assert [h.step for h in c.get_metric_history(r.info.run_id, key)] == list(range(1, epochs + 1)), key
        assert r.data.tags["losstune.status"] == "completed" and "best/val/auroc" in r.data.metrics
    job = jobs[0]
    assert job.data.metrics["trials.count"] == trials and "test/auroc" in job.data.metrics
    assert [h.step for h in c.get_metric_history(job.info.run_id, "trials.count")] == [0]
    assert job.data.tags["losstune.best_trial_run_id"] in {r.info.run_id for r in kids}


@slow
def test_a_server_that_dies_mid_job_and_comes_back_receives_everything(small_job, tmp_path):
    from tuner.job.outcome import format_summary
    from tuner.job.plan import plan_job
    from tuner.job.run import Tracking, run_job

    root = tmp_path / "server"
    proc, url = start_mlflow_server(root)
    port = int(url.rsplit(":", 1)[1])
    restarted: list = []

    def bring_back() -> None:  # once killed, the same server (port and store) is back a few seconds later
        proc.wait()
        time.sleep(2)
        restarted.append(start_mlflow_server(root, port=port)[0])

    watcher = threading.Thread(target=bring_back, daemon=True)
    watcher.start()
    try:
        job, data, space, pretrained = plan_job(*small_job(num_trials=4, max_epochs=6, scheduler="fifo", concurrency=1,
                                                          scenario="rare_disease_detection", fix=["optim.patience=0"]))
        marker = tmp_path / "replayed"
        outcome = run_job(job, data, space, pretrained, address=None, verbose=0,
                          callbacks=[_kill_at(proc.pid, trial_number=0, epoch=2),
                                     _wait_for_replay(url, str(job.path / SPOOL_FILE), str(marker), at_trial=2)],
                          tracking=Tracking(url, "dying"))
        watcher.join(timeout=120)
        assert proc.poll() is not None and restarted, "the server was never killed and restarted"
        assert marker.exists(), "the writer did not deliver the kept records while the job went on"
        assert len(outcome.rows) == 4 and outcome.winner is not None
        assert outcome.records_kept == 0 and not outcome.records_refused, format_summary(outcome)
        assert "MLflow did not answer" not in format_summary(outcome)
        assert Spool(job.path / SPOOL_FILE).pending() == []
        _check_everything_recorded(url, "dying", trials=4, epochs=6)
    finally:
        for p in [proc, *restarted]:
            if p.poll() is None:
                stop_process_group(p)


@slow
def test_records_kept_while_the_server_is_down_are_delivered_by_sync(small_job, tmp_path, capsys):
    from tuner.cli import main
    from tuner.job.outcome import format_summary
    from tuner.job.plan import plan_job
    from tuner.job.run import Tracking, run_job

    root = tmp_path / "server"
    proc, url = start_mlflow_server(root)
    port = int(url.rsplit(":", 1)[1])
    procs = [proc]
    try:
        job, data, space, pretrained = plan_job(*small_job(num_trials=3, max_epochs=3, scheduler="fifo", concurrency=1,
                                                          scenario="rare_disease_detection", fix=["optim.patience=0"]))
        outcome = run_job(job, data, space, pretrained, address=None, verbose=0,
                          callbacks=[_kill_at(proc.pid, trial_number=0, epoch=1)],
                          tracking=Tracking(url, "offline", final_retry_s=1.0))
        assert proc.poll() is not None
        summary = format_summary(outcome)
        assert outcome.records_kept > 0 and not outcome.records_refused
        prose = " ".join(summary.split())  # as read, whatever the wrapping at 100 columns
        assert f"records kept in {job.path / SPOOL_FILE}" in prose and f"losstune sync {job.path}" in prose
        capsys.readouterr()
        rc = main(["sync", str(job.path)])  # the URI is in the job file; the server still does not answer
        cap = capsys.readouterr()
        # not a mistake (2): the records wait, and a retry loop keyed on 1 goes on (issue 18, failure 17)
        assert rc == 1 and "unreachable" in cap.out and len(cap.err.strip().splitlines()) == 1, cap
        assert f"{outcome.records_kept} MLflow records of job" in cap.err and "run `losstune sync` again" in cap.err

        procs.append(start_mlflow_server(root, port=port)[0])
        rc = main(["sync", job.experiment, "--storage-path", job.storage_path, "--tracking-uri", url])
        out = capsys.readouterr().out
        assert rc == 0 and "nothing remains" in out, out
        assert f"delivered {outcome.records_kept} MLflow records" in out
        _check_everything_recorded(url, "offline", trials=3, epochs=3)
        rc = main(["sync", str(job.path)])  # again: nothing to deliver, nothing written twice
        out = capsys.readouterr().out
        assert rc == 0 and "delivered 0 MLflow records" in out, out
        _check_everything_recorded(url, "offline", trials=3, epochs=3)
        assert not list((job.path / "mlflow_spool_files").glob("*"))  # delivered artifact copies are gone
        assert json.loads((job.path / "losstune_job.json").read_text())["tracking"]["uri"] == url
    finally:
        for p in procs:
            if p.poll() is None:
                stop_process_group(p)


@slow
def test_resume_replays_what_the_job_kept_before_any_trial(mlflow_server, tmp_path):
    """Opening the records of a resumed job delivers its spool first (and re-opens the job run)."""
    from tuner.record.records import JobRecords

    c, exp, parent = _job_run(mlflow_server, f"resumed-{free_port()}")
    spool = Spool(tmp_path / "job" / SPOOL_FILE)
    for r in _trial_records("t1", 2)[:-1]:  # the driver died before the trial ended
        spool.append(r)
    spool.close()
    c.set_terminated(parent, "KILLED")
    assert "mlflow.experimentKind" not in c.get_experiment(exp).tags  # an experiment losstune did not create
    records = JobRecords(mlflow_server, c.get_experiment(exp).name, tmp_path / "job")
    assert records.open(run_name="", tags={}, params={}, parent_run_id=parent) == parent
    # the first write declares its kind: MLflow's UI shows it as model training, not GenAI traces
    assert c.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    assert Spool(tmp_path / "job" / SPOOL_FILE).pending() == []
    assert c.get_run(parent).info.status == "RUNNING"
    [trial] = c.search_runs([exp], filter_string="tags.`losstune.trial_id` = 't1'")
    assert [h.step for h in c.get_metric_history(trial.info.run_id, "epoch")] == [1, 2]


def test_sync_exits_1_while_records_remain(monkeypatch, capsys):
    from pathlib import Path

    import tuner.job.sync
    from tuner.cli import main

    report = tuner.job.sync.SyncReport(job="j", folder=Path("f"), spool=Path("f") / SPOOL_FILE, delivered=3,
                                       remaining=2, refused=[], error="the server stopped answering",
                                       uri_shown="'http://h'")
    monkeypatch.setattr(tuner.job.sync, "sync_job", lambda job, **kw: report)
    assert main(["sync", "j"]) == 1
    cap = capsys.readouterr()
    assert "delivered 3 MLflow records" in cap.out and "2 records remain" in cap.out
    assert cap.err.strip().splitlines() == [f"losstune: 2 MLflow records of job 'j' remain undelivered in "
                                            f"{Path('f') / SPOOL_FILE}; run `losstune sync` again "
                                            "when the server answers"]


# --------------------------------------------------------------------------- the callback and the deliverer
def test_the_callback_only_spools_and_the_job_runs_deliverer_sends_while_trials_run(tmp_path):
    """Tune's callback holds no URI (it is pickled with the job, and a URI may hold credentials); an
    unpickled one, as on --resume, spools into the job's spool where the job now is; the deliverer the
    job run owns sends each trial's start while the job goes on, not only at its end."""
    import pickle

    from ray.tune.experiment import Trial

    from tests.tuner.conftest import wait_for
    from trainables.config import Config
    from tuner.core.layout import TRIAL_TAG
    from tuner.record.callback import TrialSpooler
    from tuner.record.deliverer import Deliverer
    from tuner.record.records import JobRecords

    uri = f"sqlite:///{tmp_path}/secret-store-name.db"
    records = JobRecords(uri, "deliver", tmp_path / "job")
    records.open(run_name="job", tags={"losstune.role": "job"}, params={"num_trials": 2})
    spooler = TrialSpooler(base_config=Config().to_dict(), spool_path=str(records.spool_path))
    state = pickle.dumps(spooler)
    assert b"secret-store-name" not in state and b"sqlite" not in state
    # what Tune hands back on --resume of a job that moved (another folder or machine): its pickled spool
    # path is stale, and it writes into the spool of the job run delivering here
    stale = tmp_path / "first-machine" / "job" / "mlflow_spool.jsonl"
    resumed = pickle.loads(pickle.dumps(TrialSpooler(base_config=Config().to_dict(), spool_path=str(stale))))
    c = MlflowClient(uri)

    def trial_runs() -> dict[str, object]:
        runs = c.search_runs([records.experiment_id], filter_string=f"tags.`{TRIAL_TAG}` != ''")
        return {r.data.tags[TRIAL_TAG]: r for r in runs}

    trials = [Trial("fn", config={"optim.lr": 0.01 * (i + 1)}, trial_id=f"abc_0000{i}", stub=True) for i in range(2)]
    with Deliverer(records, lookup_first=False, flush_every_s=60.0, poll_s=0.05):
        for number, (cb, trial) in enumerate(zip((spooler, resumed), trials)):
            cb.on_trial_start(0, trials, trial)
            # a start is sent at once, long before the flush interval of epochs
            wait_for(lambda t=trial: t.trial_id in trial_runs(), timeout_s=20, what=f"the run of trial {number}")
            cb.on_trial_result(1, trials, trial, {"epoch": 1, "val/auroc": 0.6 + number / 10, "objective": 0.5})
            trial.update_last_result({"epoch": 1, "val/auroc": 0.6 + number / 10, "status": "completed"})
            cb.on_trial_complete(1, trials, trial)
            cb.on_experiment_end(trials=[trial])  # an ended trial is not ended again
    runs = trial_runs()
    assert set(runs) == {"abc_00000", "abc_00001"} and not stale.exists()
    for number, t in enumerate(trials):  # what the deliverer did not send by the end, the driver will
        run = runs[t.trial_id]
        assert run.data.params["optim.lr"] == str(0.01 * (number + 1))
    spool = Spool(records.spool_path)
    pending = {r["kind"] for r in spool.pending()}
    assert "trial_start" not in pending
    assert records.courier(spool, lookup_first=True).deliver().remaining == 0
    for number, t in enumerate(trials):
        history = c.get_metric_history(runs[t.trial_id].info.run_id, "val/auroc")
        assert [(h.step, round(h.value, 6)) for h in history] == [(1, round(0.6 + number / 10, 6))]
        assert c.get_run(runs[t.trial_id].info.run_id).info.status == "FINISHED"
