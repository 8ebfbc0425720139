"""A trial's checkpoint outlives every state that a resume could read and that names it
(``tuner.job.kept_checkpoints``): a driver killed right after Tune deleted a checkpoint resumes each
trial from a checkpoint, and a finished run keeps the checkpoints Tune keeps, no more."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tuner.killed_run import EPOCHS

ROOT = Path(__file__).resolve().parents[2]


def _run(folder: Path, die_at: int, ray_tmpdir: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.tuner.killed_run", str(folder), str(die_at)], cwd=ROOT,
                          env={**os.environ, "RAY_TMPDIR": ray_tmpdir}, capture_output=True, text=True, timeout=240,
                          start_new_session=True)


# Without the queue, Tune (num_to_keep=2) deletes a trial's 2nd checkpoint when it registers the 4th and
# saves the state that names the 4th later in that step: killed at the 2nd deletion, the state in the
# folder names a checkpoint that is gone (the trial fails its restores). With it, a kill at the 1st
# deletion of a batch leaves the 2nd checkpoint behind, unknown to the state: the resumed run's end
# removes it.
@pytest.mark.parametrize("die_at", [1, 2])
def test_a_driver_killed_right_after_a_checkpoint_deletion_resumes_its_trial_from_a_checkpoint(
        tmp_path, ray_tmpdir, die_at):
    killed = _run(tmp_path, die_at, ray_tmpdir)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = _run(tmp_path, 0, ray_tmpdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert out["error"] is None
    assert out["epoch"] == EPOCHS
    assert out["resumed_from"] >= 2  # from a checkpoint of the killed run, not from scratch
    # what Tune keeps (the latest two), and nothing the killed driver had left to delete
    numbers = [int(name.removeprefix("checkpoint_")) for name in out["checkpoints"]]
    assert len(numbers) == 2 and numbers[1] == numbers[0] + 1
