"""A job folder's state across commands (issue 18): what is unpickled is what losstune signed with
this machine's key (failure 1), a damaged or foreign spool is said and kept (2, 3), two jobs on a new
store (4), a finished job in a bucket (7), records written once (12), trial numbers after a resume
(13), paths that work from any folder (14). The key and its signatures are checked against
hashlib/hmac directly, not against the code under test."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pyarrow.fs import FileSelector

from tests.tuner.conftest import SMALL, free_port, kill_ray_processes, run_cli
from trainables.errors import UserError
from tuner.core.seal import (
    KEY_ENV,
    SIG_SUFFIX,
    UnsignedState,
    check_file,
    key_id,
    sealed_write,
    sign_file,
    signature,
    state_key,
)
from tuner.record.spool import SPOOL_FILE, Spool

TEST_KEY = os.environ[KEY_ENV]  # tests/conftest.py


class _Shell:
    """A pickle that runs a shell command when it is loaded: what an attacker plants."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil(marker: Path) -> bytes:
    return pickle.dumps(_Shell(marker))


# --------------------------------------------------------------------------- the key and one signature
def test_a_signature_is_an_hmac_of_the_name_and_the_content(tmp_path):
    path = tmp_path / "tuner.pkl"
    path.write_bytes(b"state")
    sign_file(path)
    doc = json.loads((tmp_path / f"tuner.pkl{SIG_SUFFIX}").read_text())
    digest = hashlib.sha256(b"state").hexdigest()
    expected = hmac.new(TEST_KEY.encode(), f"losstune-sig-v1\0tuner.pkl\0{digest}".encode(), hashlib.sha256)
    assert doc["mac"] == expected.hexdigest() and doc["sha256"] == digest
    check_file(path)  # verifies
    path.write_bytes(b"state!")
    with pytest.raises(UnsignedState, match=r"changed after losstune signed it"):
        check_file(path)
    renamed = tmp_path / "other.pkl"  # a signed file cannot take another file's role
    shutil.copy(tmp_path / f"tuner.pkl{SIG_SUFFIX}", tmp_path / f"other.pkl{SIG_SUFFIX}")
    renamed.write_bytes(b"state")
    with pytest.raises(UnsignedState):
        check_file(renamed)
    (tmp_path / f"tuner.pkl{SIG_SUFFIX}").unlink()
    with pytest.raises(UnsignedState, match=r"is not signed \(tuner\.pkl\.sig is missing\)"):
        check_file(path)
    (tmp_path / f"tuner.pkl{SIG_SUFFIX}").write_text("{not json")
    with pytest.raises(UnsignedState, match=r"damaged signature"):
        check_file(path)


def test_a_file_signed_with_another_key_names_both_keys(tmp_path, monkeypatch):
    path = tmp_path / "losstune_job.json"
    path.write_text("{}")
    (tmp_path / f"losstune_job.json{SIG_SUFFIX}").write_text(signature(path.name, b"{}", key=b"k" * 40))
    with pytest.raises(UnsignedState) as err:
        check_file(path)
    assert f"another losstune key (id {key_id(b'k' * 40)}; this machine's is {key_id(TEST_KEY.encode())})" \
        in str(err.value)


def test_the_key_file_is_made_once_and_for_its_owner_only(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    key = state_key()
    path = tmp_path / "config" / "losstune" / "state.key"
    assert path.stat().st_mode & 0o777 == 0o600 and len(key) == 64
    assert state_key() == key  # the same key every time
    path.chmod(0o666)
    with pytest.raises(UserError, match=r"can be written by others"):
        state_key()


def test_a_key_too_short_to_be_a_secret_is_refused(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "secret")
    with pytest.raises(UserError, match=r"LOSSTUNE_STATE_KEY must be a secret of at least 32 characters, got 6"):
        state_key()


# --------------------------------------------------------------------------- the spool (1, 3)
def test_spool_lines_that_losstune_did_not_sign_are_not_records(tmp_path, monkeypatch):
    path = tmp_path / SPOOL_FILE
    spool = Spool(path)
    spool.append({"kind": "job_status", "status": "RUNNING"})
    spool.close()
    # planted by someone without the key: a record naming a file to upload from anywhere
    with path.open("ab") as f:
        f.write(b'{"seq":2,"kind":"job_close","files":[["x","../../../etc/passwd"]],"status":"FINISHED"}\n')
    again = Spool(path)
    assert [r["seq"] for r in again.pending()] == [1]
    assert again.unreadable() == {2: "not signed by losstune"}
    monkeypatch.setenv(KEY_ENV, "another-machine-" + "z" * 32)  # a spool written with another key
    other = Spool(path)
    assert other.pending() == [] and set(other.unreadable()) == {1, 2}
    assert "does not match" in other.unreadable()[1]


def test_a_spooled_file_outside_the_job_folder_or_changed_since_is_refused(tmp_path):
    from tuner.record.spool import _Refused, _spooled_file

    (tmp_path / "job" / "files").mkdir(parents=True)
    (tmp_path / "job" / "files" / "model.pt").write_bytes(b"weights")
    (tmp_path / "secret").write_text("not yours")
    base = tmp_path / "job"
    assert _spooled_file(base, "files/model.pt", hashlib.sha256(b"weights").hexdigest()) == base / "files/model.pt"
    with pytest.raises(_Refused, match="outside the job folder"):
        _spooled_file(base, "../secret", None)
    with pytest.raises(_Refused, match="changed after it was spooled"):
        _spooled_file(base, "files/model.pt", hashlib.sha256(b"other").hexdigest())


def _recorded_job(tmp_path: Path, *, pending: int = 1, garbage: bytes = b"") -> tuple[Path, str, str, object]:
    """A job folder recorded in a new sqlite store: its job file (signed) names the job's run, its
    spool holds ``pending`` trial records not yet delivered, then ``garbage``."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/store.db"
    c = MlflowClient(uri)
    exp = c.create_experiment("e")
    parent = c.create_run(exp, tags={"losstune.role": "job"}).info.run_id
    folder = tmp_path / "jobs" / "j"
    folder.mkdir(parents=True)
    sealed_write(folder / "losstune_job.json", json.dumps({"tracking": {"experiment": "e", "experiment_id": exp,
                                                                       "parent_run_id": parent, "uri": uri}}))
    spool = Spool(folder / SPOOL_FILE)
    if pending:
        spool.append({"kind": "trial_start", "trial": "t1", "name": "trial 0 (t1)", "tags": {}, "params": {"a": "1"}})
        for epoch in range(1, pending):
            spool.append({"kind": "trial_metrics", "trial": "t1", "metrics": [["epoch", float(epoch), 1, epoch]]})
    spool.close()
    with (folder / SPOOL_FILE).open("ab") as f:
        f.write(garbage)
    return folder, uri, parent, c


def test_sync_says_which_lines_are_unreadable_keeps_them_and_exits_1(tmp_path, capsys):
    folder, uri, _, _ = _recorded_job(tmp_path, pending=0, garbage=b"garbage\n\x00\x01not json either\n")
    before = (folder / SPOOL_FILE).read_bytes()
    rc, out, err = run_cli(["sync", str(folder)], capsys)
    assert rc == 1, (out, err)
    assert "2 lines of" in out and "line 1: not a JSON line" in out and "line 2: not a JSON line" in out
    assert "nothing remains" not in out
    assert err.strip().splitlines()[-1].startswith("losstune: 2 lines of") and "(lines 1, 2)" in err
    assert (folder / SPOOL_FILE).read_bytes() == before  # kept as it is


def test_sync_delivers_the_records_and_names_a_line_cut_off_mid_write(tmp_path, capsys):
    folder, uri, parent, c = _recorded_job(tmp_path, pending=3, garbage=b'{"seq":4,"kind":"trial_met')
    rc, out, err = run_cli(["sync", str(folder)], capsys)
    assert rc == 1, (out, err)
    # what sync wrote after it (the acknowledgements) starts on a line of its own
    assert "delivered 3 MLflow records" in out and "line 4: not a JSON line (cut off mid-write" in out
    [trial] = c.search_runs([c.get_run(parent).info.experiment_id],
                            filter_string="tags.`losstune.trial_id` = 't1'")
    assert [m.step for m in c.get_metric_history(trial.info.run_id, "epoch")] == [1, 2]
    assert (folder / SPOOL_FILE).read_bytes().splitlines()[3] == b'{"seq":4,"kind":"trial_met'


def test_a_line_being_cut_off_is_said_to_be_incomplete(tmp_path):
    folder, *_ = _recorded_job(tmp_path, pending=1, garbage=b'{"seq":2,"kind":"trial_met')
    assert Spool(folder / SPOOL_FILE).unreadable() == {2: "incomplete (cut off mid-write)"}


def test_a_mistyped_store_marks_nothing_and_the_right_one_gets_everything(tmp_path, capsys):
    """Issue 18, failure 2: `sync --tracking-uri garbage://x` marked every record refused for good."""
    folder, uri, parent, c = _recorded_job(tmp_path, pending=2)
    before = (folder / SPOOL_FILE).read_bytes()
    rc, out, err = run_cli(["sync", str(folder), "--tracking-uri", "garbage://x"], capsys)
    assert rc == 2 and "is not an MLflow tracking store" in err
    assert (folder / SPOOL_FILE).read_bytes() == before
    rc, out, err = run_cli(["sync", str(folder), "--tracking-uri", f"sqlite:///{tmp_path}/no-such-folder/m.db"],
                           capsys)
    assert rc == 2 and (folder / SPOOL_FILE).read_bytes() == before
    rc, out, err = run_cli(["sync", str(folder)], capsys)
    assert rc == 0 and "delivered 2 MLflow records" in out and "nothing remains" in out, (out, err)


def test_two_jobs_open_a_new_sqlite_store_together(tmp_path):
    """Issue 18, failure 4: MLflow's schema creation raced ("table _alembic_tmp_tags already exists")
    and both jobs called the store unreachable. Two processes open the same new store at once."""
    uri = f"sqlite:///{tmp_path}/new.db"
    code = ("import sys; from tuner.record.records import check_reachable, JobRecords; check_reachable(sys.argv[1]); "
            "from mlflow import MlflowClient; c = MlflowClient(sys.argv[1]); "
            "print(c.create_experiment(sys.argv[2]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, uri, f"job-{i}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in results]
    from mlflow import MlflowClient

    assert sorted(e.name for e in MlflowClient(uri).search_experiments()) == ["Default", "job-0", "job-1", "job-2"]


# --------------------------------------------------------------------------- end to end, real jobs
slow = pytest.mark.slow


@pytest.fixture(scope="session")
def finished_job(tmp_path_factory, worker_id):
    """A small finished job with both arms and a confirmation (so four Tune runs), recorded in a
    sqlite store: (its folder, the store's URI, the environment it ran with). Made once per test
    run: the first worker that needs it makes it under a file lock, the other reuses it (a session
    fixture is otherwise made once per xdist worker; pytest-xdist's groups do not apply under
    pytest 9). The tests copy the job before they change anything in it."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if worker_id != "master" else base  # the run's folder, above each worker's
    root = shared / "finished-job"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/m.db"}
    with FileLock(str(shared / "finished-job.lock")):
        if not (root / "made").is_file():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            ray_tmp = f"/tmp/lt-ray-{free_port()}"
            run = subprocess.run([sys.executable, "-m", "tuner.cli", "tune", "--data", SMALL, "--num-trials", "3",
                                  "--max-epochs", "2", "--scheduler", "fifo", "--baseline-trials", "2",
                                  "--confirm-top", "1", "--confirm-seeds", "2", "--experiment", "trusted",
                                  "--storage-path", str(root / "results")],
                                 env={**env, "RAY_TMPDIR": ray_tmp}, capture_output=True, text=True, timeout=600,
                                 cwd=root)
            kill_ray_processes(ray_tmp)
            assert run.returncode == 0, run.stderr[-3000:]
            (root / "made").write_text("")
    yield root / "results" / "trusted", env["MLFLOW_TRACKING_URI"], env


def _copy(job: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "jobs" / job.name
    shutil.copytree(job, dest)
    return dest


def _plant(folder: Path, pattern: str, marker: Path) -> str:
    if pattern == "experiment_state-*.json":  # JSON whose decoder runs cloudpickle on an embedded blob
        target = next(folder.glob(pattern))
        target.write_text(json.dumps({"trial_data": [], "runner_data": {
            "x": {"_type": "CLOUDPICKLE_FALLBACK", "value": _evil(marker).hex()}}, "stats": {}}))
        return str(target)
    matches = sorted(folder.glob(pattern))
    target = matches[0] if matches else folder / pattern  # a new file: a pickle Ray would pick up
    target.write_bytes(_evil(marker))
    return str(target)


PLANTED = ["tuner.pkl", "searcher-state-*.pkl", "search_gen_state-*.json", "experiment_state-*.json",
           "callback-states-2026-01-01_00-00-00.pkl", "baseline/tuner.pkl", "baseline/searcher-state-*.pkl",
           "confirm/searcher-state-*.pkl", "confirm/tuner.pkl"]


@slow
@pytest.mark.parametrize("pattern", PLANTED)
@pytest.mark.parametrize("command", ["resume", "ablate"])
def test_a_planted_pickle_is_refused_before_anything_is_unpickled(finished_job, tmp_path, capsys, pattern, command):
    """Issue 18, failure 1: a job folder whose state file was replaced by a pickle that runs a shell
    command. The command is refused in one line naming the file, and the command never runs."""
    job = _copy(finished_job[0], tmp_path)
    marker = tmp_path / "PWNED"
    planted = _plant(job, pattern, marker)
    args = ["tune", "--resume", str(job)] if command == "resume" else ["ablate", "--job", str(job), "--seeds", "2"]
    rc, out, err = run_cli(args, capsys)
    assert rc == 2, (out, err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("losstune: error: ") and planted in lines[0], lines
    assert "it is not read" in lines[0] and "losstune trust" in lines[0]
    assert not marker.exists()


@slow
def test_predict_and_sync_read_only_what_the_job_signed(finished_job, tmp_path, capsys):
    job = _copy(finished_job[0], tmp_path)
    data = tmp_path / "rows.csv"
    from trainables.synthetic import synthetic_frame

    frame, labels, _ = synthetic_frame(SMALL)
    frame.drop(columns=labels).head(20).to_csv(data, index=False)
    rc, out, err = run_cli(["predict", "--job", str(job), "--data", str(data)], capsys)
    assert rc == 0 and len(out.strip().splitlines()) == 21, err  # untouched: it predicts
    model = job / "winner" / "model.pt"
    model.write_bytes(model.read_bytes()[:-8] + b"\0" * 8)  # weights changed behind the job's back
    rc, out, err = run_cli(["predict", "--job", str(job), "--data", str(data)], capsys)
    assert rc == 2 and f"'{model}' changed after losstune signed it" in err and out == ""
    state = json.loads((job / "losstune_job.json").read_text())
    state["tracking"]["parent_run_id"] = "another-run"  # the records sent to someone else's run
    (job / "losstune_job.json").write_text(json.dumps(state))
    rc, out, err = run_cli(["sync", str(job)], capsys)
    assert rc == 2 and "losstune_job.json' changed after losstune signed it" in err


@slow
def test_another_machines_key_and_trust(finished_job, tmp_path, capsys, monkeypatch):
    """A folder signed with another key is refused (naming both keys); one from a losstune before
    signatures is refused until `losstune trust` signs it; a finished job then says it is finished."""
    job = _copy(finished_job[0], tmp_path)
    monkeypatch.setenv(KEY_ENV, "another-machine-" + "z" * 32)
    rc, out, err = run_cli(["tune", "--resume", str(job)], capsys)
    assert rc == 2 and "signed with another losstune key" in err
    monkeypatch.setenv(KEY_ENV, TEST_KEY)
    for sig in job.rglob(f"*{SIG_SUFFIX}"):  # as a losstune before signatures left it
        sig.unlink()
    rc, out, err = run_cli(["tune", "--resume", str(job)], capsys)
    assert rc == 2 and "is not signed" in err
    rc, out, err = run_cli(["trust", str(job)], capsys)
    assert rc == 0 and "tuner.pkl" in out and "baseline/tuner.pkl" in out and "spool lines" in out, (out, err)
    rc, out, err = run_cli(["tune", "--resume", str(job)], capsys)
    assert rc == 0 and f"job {job.name} finished on " in out and "nothing to resume" in out, (out, err)


@slow
def test_records_are_written_once(finished_job, tmp_path, capsys):
    """Issue 18, failure 12: each trial logged best/* and objective twice at its last step; a resume of a
    job killed while closing logged every metric of the job run again; a resume of a finished job ran
    its final stage again."""
    from mlflow import MlflowClient

    folder, uri, _ = finished_job
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("trusted").experiment_id
    runs = c.search_runs([exp], max_results=100)
    [job_run] = [r for r in runs if r.data.tags.get("losstune.role") == "job"]
    trials = [r for r in runs if r.data.tags.get("losstune.role") != "job"]
    for r in trials:
        for key in ("objective", "best/val/auroc", "best/epoch"):
            steps = [m.step for m in c.get_metric_history(r.info.run_id, key)]
            assert len(steps) == len(set(steps)), (r.info.run_name, key, steps)
    history = {k: len(c.get_metric_history(job_run.info.run_id, k)) for k in job_run.data.metrics}
    assert set(history.values()) == {1}, history
    # the kill landed after the job's summary was spooled, before its job file said it was finished
    job = _copy(folder, tmp_path)
    state = json.loads((job / "losstune_job.json").read_text())
    sealed_write(job / "losstune_job.json", json.dumps({**state, "finished": ""}))
    rc, out, err = run_cli(["tune", "--resume", str(job), "--tracking-uri", uri], capsys)
    assert rc == 0 and "nothing to resume" in out, (out, err)
    assert {k: len(c.get_metric_history(job_run.info.run_id, k)) for k in job_run.data.metrics} == history


@slow
def test_a_resume_never_unpickles_the_trial_folders_pickles(tmp_path, capsys, shared_ray):
    """params.pkl and error.pkl in the trial folders are Ray's too, unsigned: a resume does not read
    them (a resumed errored trial starts from its checkpoint, not from its error)."""
    results = tmp_path / "results"
    rc, out, err = run_cli(["tune", "--data", SMALL, "--num-trials", "2", "--max-epochs", "2", "--scheduler", "fifo",
                            "--no-baseline", "--confirm-top", "0", "--experiment", "quiet", "--storage-path",
                            str(results), "--no-tracking"], capsys)
    assert rc == 0, err
    job = results / "quiet"
    state = json.loads((job / "losstune_job.json").read_text())
    sealed_write(job / "losstune_job.json", json.dumps({**state, "finished": ""}))  # as if it had been stopped
    marker = tmp_path / "PWNED"
    for trial in job.glob("train_trial_*"):
        for name in ("params.pkl", "error.pkl"):
            (trial / name).write_bytes(_evil(marker))
    rc, out, err = run_cli(["tune", "--resume", str(job)], capsys)
    assert rc == 0, err[-2000:]
    assert not marker.exists()


@slow
def test_a_job_in_a_bucket_is_verified_and_its_winner_predicts_from_anywhere(s3_server, tmp_path, capsys,
                                                                              monkeypatch, fresh_ray):
    """Issue 18, failure 7: `predict --job s3://…` said "no winner yet" and left a partial copy in
    ./losstune_results. And a pickle planted in the bucket is refused like one in a folder."""
    from trainables.synthetic import synthetic_frame

    s3_server.create_dir("jobs-bucket")
    storage = "s3://jobs-bucket/exp"
    ran = tmp_path / "ran"
    ran.mkdir()
    monkeypatch.chdir(ran)
    rc, out, err = run_cli(["tune", "--data", SMALL, "--num-trials", "2", "--max-epochs", "4", "--scheduler", "fifo",
                            "--no-baseline", "--confirm-top", "0", "--experiment", "bucketed", "--storage-path",
                            storage, "--no-tracking", "--fix", "optim.patience=0"], capsys)
    assert rc == 0, err[-2000:]
    # 4 checkpoints per trial, 2 kept: the deletions deferred until the bucket's state no longer names them happened
    trials = [i.path for i in s3_server.get_file_info(FileSelector("jobs-bucket/exp/bucketed"))
              if i.path.rsplit("/", 1)[-1].startswith("train_trial_")]
    assert len(trials) == 2
    for trial in trials:
        names = sorted(i.path.rsplit("/", 1)[-1] for i in s3_server.get_file_info(FileSelector(trial)))
        assert [n for n in names if n.startswith("checkpoint_")] == ["checkpoint_000002", "checkpoint_000003"], names
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    frame, labels, _ = synthetic_frame(SMALL)
    frame.drop(columns=labels).head(10).to_csv("rows.csv", index=False)
    rc, out, err = run_cli(["predict", "--job", f"{storage}/bucketed", "--data", "rows.csv"], capsys)
    assert rc == 0 and len(out.strip().splitlines()) == 11, err
    assert sorted(p.name for p in elsewhere.iterdir()) == ["rows.csv"]  # nothing copied here
    marker = tmp_path / "PWNED"
    with s3_server.open_output_stream("jobs-bucket/exp/bucketed/tuner.pkl") as f:
        f.write(_evil(marker))
    rc, out, err = run_cli(["tune", "--resume", f"{storage}/bucketed"], capsys)
    assert rc == 2 and f"'{storage}/bucketed/tuner.pkl' changed after losstune signed it" in err, err
    assert not marker.exists()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["rows.csv"]  # the refused job's files were not kept


@slow
def test_a_job_started_with_a_relative_path_resumes_and_ablates_from_anywhere(tmp_path, capsys, monkeypatch,
                                                                            shared_ray):
    """Issue 18, failure 14: job.yaml kept `source: data.csv` as typed, so --resume and ablate from
    another folder named a missing file (and for ablate of an unfinished job, that is not the problem)."""
    from trainables.synthetic import synthetic_frame

    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    frame, labels, _ = synthetic_frame(SMALL)
    frame.to_csv("data.csv", index=False)
    rc, out, err = run_cli(["tune", "--data", "data.csv", "--label-col", labels[0], "--num-trials", "2",
                            "--max-epochs", "2", "--scheduler", "fifo", "--no-baseline", "--confirm-top", "0",
                            "--experiment", "rel", "--no-tracking"], capsys)
    assert rc == 0, err[-2000:]
    job = here / "losstune_results" / "rel"
    import yaml

    assert yaml.safe_load((job / "job.yaml").read_text())["data"]["source"] == str(here / "data.csv")
    monkeypatch.chdir(tmp_path)
    state = json.loads((job / "losstune_job.json").read_text())
    sealed_write(job / "losstune_job.json", json.dumps({**state, "finished": ""}))
    shutil.rmtree(job / "winner")  # an unfinished job: no winner yet
    rc, out, err = run_cli(["ablate", "--job", str(job)], capsys)
    assert rc == 2 and "has no winner to ablate" in err and "is unfinished" in err and "data.csv" not in err
    rc, out, err = run_cli(["tune", "--resume", str(job)], capsys)
    assert rc == 0, err[-2000:]
    assert (job / "winner" / "model.pt").is_file()


def test_a_finished_job_is_not_resumed_again(tmp_path, capsys):
    """Issue 18, failure 12: `--resume` of a finished job ran its final stage again; now it says so,
    before its data is read (the data is gone here)."""
    folder = tmp_path / "results" / "done"
    folder.mkdir(parents=True)
    from tuner.job.plan import TuneJob
    from tuner.job.spec import JobSpec

    spec = JobSpec.from_options(data=str(tmp_path / "gone.csv"), label_cols=["y"], experiment="done")
    job = TuneJob(experiment="done", storage_path=str(tmp_path / "results"), spec=spec, data_fingerprint="f",
                  split_fingerprint="s", scenario="baseline", detection=None, base_config={}, search_space={},
                  searched=[], space_spec={}, finished="2026-12-03T10:00:00", local_root=str(tmp_path / "results"))
    job.save()
    rc, out, err = run_cli(["tune", "--resume", str(folder)], capsys)
    assert rc == 0 and out.startswith("job done finished on 2026-12-03 10:00:00: nothing to resume"), (out, err)
