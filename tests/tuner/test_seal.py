"""Signing Tune's state in its staging folder while Tune's own thread copies that folder up."""

from __future__ import annotations

import threading

import pyarrow.fs as pafs

from tuner.core.seal import check_tune_state
from tuner.job.sealed_search import SealedVariants

SESSION = "2026-01-01_00-00-00"


def test_signing_the_staging_folder_never_breaks_tunes_copy_of_it(tmp_path):
    """Tune 2.60 saves a run's state into a staging folder and copies it up with pyarrow in a thread
    of its own, which may still be listing the folder when the next save signs it. A signature's
    half-written file that appears there and is renamed away made that copy fail (a CI run printed
    Ray's traceback: "Failed to open local file …/.experiment_state-….json.sig.new-…"). Ray's own
    temporary files (``.UUID-tmp-…``) have the same race, which losstune cannot change (the job's
    output says it in one line, ``tuner.job.launch.quiet_tune``); no failure may come from a signature."""
    stage = tmp_path / "driver_artifacts"
    stage.mkdir()
    (stage / f"experiment_state-{SESSION}.json").write_text("{}" + " " * 20000)
    dest = tmp_path / "experiment"
    dest.mkdir()
    search = SealedVariants(points_to_evaluate=[{"seed": s} for s in range(50)])
    errors: list[str] = []
    done = threading.Event()

    def copy_up() -> None:
        local = pafs.LocalFileSystem()
        while not done.is_set():
            try:
                pafs.copy_files(str(stage), str(dest), source_filesystem=local, destination_filesystem=local)
            except OSError as exc:
                errors.append(str(exc)[:200])

    copier = threading.Thread(target=copy_up)
    copier.start()
    try:
        for _ in range(300):
            search.save_to_dir(str(stage), SESSION)
    finally:
        done.set()
        copier.join()
    assert not [e for e in errors if ".sig" in e], errors[:3]
    assert sorted(p.name for p in stage.iterdir()) == sorted(
        [f"experiment_state-{SESSION}.json", f"experiment_state-{SESSION}.json.sig",
         f"basic-variant-state-{SESSION}.json", f"basic-variant-state-{SESSION}.json.sig"])
    pafs.copy_files(str(stage), str(dest))
    assert check_tune_state(dest) == 2  # what was copied up verifies


def _record(exc: BaseException | None, msg: str = "Saving experiment state to storage at '%s' failed with exception: "):
    import logging
    import sys

    try:
        if exc is not None:
            raise exc
    except BaseException:
        info = sys.exc_info()
    else:
        info = None
    return logging.LogRecord("ray.tune.execution.experiment_state", logging.ERROR, __file__, 1, msg, ("/x/job",), info)


def test_rays_own_staging_race_is_one_line_and_nothing_else_is_touched():
    import logging

    from tuner.job.launch import staging_race_in_one_line

    race = _record(FileNotFoundError(2, "Failed to open local file '/tmp/ray/session_1/artifacts/t/job/"
                                        "driver_artifacts/.8a31-tmp-searcher-state-x.pkl'. Detail: [errno 2]"))
    assert staging_race_in_one_line(race)
    text = logging.Formatter().format(race)
    assert "\n" not in text and "Traceback" not in text and race.levelno == logging.WARNING
    assert "the next copy carries it" in text
    for other in (_record(PermissionError(13, "Permission denied: '/data/driver_artifacts'")),  # a real failure
                  _record(FileNotFoundError(2, "Failed to open local file '/bucket/job/result.json'")),
                  _record(FileNotFoundError(2, "driver_artifacts/x"), msg="something else %s")):
        before = (other.msg, other.levelno, other.exc_info)
        assert not staging_race_in_one_line(other)
        assert (other.msg, other.levelno, other.exc_info) == before  # left as Ray logged it, traceback and all


def test_a_stray_copy_of_rays_temporary_file_is_passed_over_and_anything_else_is_still_refused(tmp_path):
    """Tune's copy of its staging folder can catch Ray's own ``.UUID-tmp-NAME`` while a save writes
    it, leaving a stray copy in a finished job's folder (a clean-clone CI run: ``baseline/.0ca6…``);
    it must not make the job refuse to resume. Ray never reads one: its restore globs a pattern that
    starts with the state's name, and glob skips dot-files (checked here with Ray's own pattern)."""
    import glob
    import uuid

    import pytest
    from ray.tune.search import Searcher

    from tuner.core.seal import UnsignedState, sign_tune_state
    from tuner.job.sealed_search import _sign_session

    run = tmp_path / "baseline"
    run.mkdir()
    state = run / f"searcher-state-{SESSION}.pkl"
    state.write_bytes(b"state")
    sign_tune_state(run)
    stray = run / f".{uuid.uuid4()}-tmp-searcher-state-{SESSION}.pkl"
    stray.write_bytes(b"half a pickle")
    assert check_tune_state(run) == 1  # the signed state only; the stray copy is not refused
    assert glob.glob(str(run / Searcher.CKPT_FILE_TMPL.format("*"))) == [str(state)]  # what Ray's restore reads

    for planted in (".evil.pkl", f".{uuid.uuid4()}-searcher-state-{SESSION}.pkl", f"x.{uuid.uuid4()}-tmp-y.pkl"):
        (run / planted).write_bytes(b"code")
        with pytest.raises(UnsignedState, match=planted.replace(".", r"\.")):
            check_tune_state(run)
        (run / planted).unlink()

    # in the staging folder, where a restore copies every *.pkl down, the next save drops it
    _sign_session(str(run), SESSION)
    assert not stray.exists() and state.exists()
