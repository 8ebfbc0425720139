"""What a person reads: a job and its ablation through the real CLI print losstune's lines, not Ray's,
every line fits 100 columns, and the cost said before the first trial is what the job then trains."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tuner.present.tables import WIDTH

pytestmark = pytest.mark.slow

# Ray's and Tune's lines that are not the user's business, and a worker's traceback at shutdown
NOT_SHOWN = ("== Status ==", "Result logdir", "Current best trial", "SystemExit", "Traceback",
             "Token authentication is enabled", "snapshotting", "may become a bottleneck", "(train_trial pid=")


def _losstune(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db"}
    return subprocess.run([str(Path(sys.executable).parent / "losstune"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _check_quiet(proc: subprocess.CompletedProcess) -> None:
    both = proc.stdout + proc.stderr
    for text in NOT_SHOWN:
        assert text not in both, f"{text!r} was printed:\n{both[-3000:]}"
    wide = [line for line in proc.stdout.splitlines() if len(line) > WIDTH]
    assert not wide, f"lines wider than {WIDTH} columns: {wide}"


@pytest.fixture
def short_tmp():
    """A folder with a short path: a path is never broken, so a long one alone would pass 100 columns."""
    folder = Path(tempfile.mkdtemp(prefix="lt-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_job_and_its_ablation_print_their_own_lines_and_the_cost_they_then_spend(short_tmp):
    tmp_path = short_tmp
    proc = _losstune(["tune", "--data", "synthetic:rare?n=2000&signal=2.5&prevalence=0.05", "--num-trials", "2",
                      "--max-epochs", "2", "--scheduler", "fifo", "--confirm-top", "1", "--confirm-seeds", "2",
                      "--experiment", "quiet"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_quiet(proc)
    out = proc.stdout
    words = " ".join(out.split())  # the lines as wrapped at 100 columns, read as prose
    cost = re.search(r"trains up to (\d+) models \((\d+) at a time\): stack search (\d+), baseline arm (\d+), "
                     r"confirmation (\d+) \(1 config × 2 seeds × 2 arms\)", words)
    assert cost, out[:2000]
    planned = int(cost.group(1))
    assert (planned, int(cost.group(3)), int(cost.group(4)), int(cost.group(5))) == (8, 2, 2, 4)
    assert out.index("trains up to") < out.index("job quiet: 2 of 2 trials")  # said before, summary after
    # what the job then trained: every trial it recorded, and what its summary says it spent
    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = c.get_experiment_by_name("quiet")
    [job] = c.search_runs([exp.experiment_id], filter_string="tags.`losstune.role` = 'job'")
    trials = c.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{job.info.run_id}'",
                           max_results=100)
    assert len(trials) == planned
    assert re.search(rf"spent: {planned} trials", out)
    # the metric is named with what it is, where the summary shows it
    assert "score = val/score_ece = (AUROC + AUPRC) / 2 − ECE" in words
    # one progress line per part (not a terminal: a line every few seconds, and when a part finishes)
    progress = [line for line in proc.stderr.splitlines() if line.startswith("stack ")]
    assert progress and progress[-1].startswith("stack 2/2 · baseline 2/2 · confirm 4/4")

    ablation = _losstune(["ablate", "--job", "quiet", "--seeds", "2"], tmp_path)
    assert ablation.returncode == 0, ablation.stderr[-3000:]
    _check_quiet(ablation)
    assert "ablation of job quiet" in ablation.stdout and len(ablation.stdout.splitlines()) < 40
