"""A job of two objectives end to end (the CLI in this process, the session's Ray runtime, a sqlite
MLflow store): the trials it marks as its front are exactly those a plain double loop finds in
results.csv, MLflow tags the same runs, the rule's choice is what the confirmation trains, `best --pareto`
lists the front and `export --trial` writes any member; a rule nobody meets selects no model, says so
and exits 1 with the front printed."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from tests.tuner.conftest import SMALL, run_cli
from tuner.core.summary import JobSummary

pytestmark = pytest.mark.slow

OBJECTIVES = "val/auroc:max,val/ece:min"
MODEL_STATUSES = {"completed", "early-stopped", "stopped"}  # a trial that produced a model


def _front_by_double_loop(points: list[tuple[float, float]]) -> list[bool]:
    """AUROC up, ECE down: a point is on the front when no other is at least as good on both and better on one."""
    out = []
    for i, (a, e) in enumerate(points):
        beaten = any(j != i and b >= a and f <= e and (b > a or f < e) for j, (b, f) in enumerate(points))
        out.append(not beaten)
    return out


def _knee(points: list[tuple[float, float]]) -> int:
    """The member nearest the ideal point after each objective is scaled to [0, 1] over the front."""
    a = np.array([p[0] for p in points])
    e = -np.array([p[1] for p in points])
    na = (a - a.min()) / (a.max() - a.min()) if a.max() > a.min() else np.ones_like(a)
    ne = (e - e.min()) / (e.max() - e.min()) if e.max() > e.min() else np.ones_like(e)
    return int(np.argmin((1 - na) ** 2 + (1 - ne) ** 2))


def _runs(uri: str, experiment: str):
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    [job] = c.search_runs([exp.experiment_id], filter_string="tags.`losstune.role` = 'job'")
    trials = c.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{job.info.run_id}'",
                           max_results=500)
    return job, trials


def test_a_two_objective_job_marks_its_front_confirms_the_rules_choice_and_exports_any_member(
        tmp_path, shared_ray, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rc, out, err = run_cli(["tune", "--data", SMALL, "--num-trials", "8", "--max-epochs", "3",
                            "--objectives", OBJECTIVES, "--baseline-trials", "3", "--confirm-top", "2",
                            "--confirm-seeds", "2", "--storage-path", str(tmp_path / "results"),
                            "--experiment", "front", "--tracking-uri", uri], capsys)
    assert rc == 0, err[-3000:]
    folder = tmp_path / "results" / "front"
    with open(folder / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and "pareto" in rows[0]
    with_model = [r for r in rows if r["status"] in MODEL_STATUSES]
    points = [(float(r["val/auroc"]), float(r["val/ece"])) for r in with_model]
    expected = {r["trial_id"] for r, on in zip(with_model, _front_by_double_loop(points)) if on}
    assert {r["trial_id"] for r in rows if r["pareto"] == "1"} == expected
    assert {r["pareto"] for r in rows} <= {"0", "1"}

    # MLflow: the same runs tagged, after the fact, by the job's last record
    job, trials = _runs(uri, "front")
    search = [t for t in trials if t.data.tags.get("losstune.arm", "stack") == "stack"
              and t.data.tags.get("losstune.phase", "search") == "search"]
    assert len(search) == 8
    tagged = {t.data.tags["losstune.trial_id"] for t in search if t.data.tags.get("losstune.pareto") == "true"}
    assert tagged == expected
    assert all(t.data.tags.get("losstune.pareto") == "false" for t in search
               if t.data.tags["losstune.trial_id"] not in expected)
    assert job.data.metrics["pareto.front_size"] == len(expected)
    assert job.data.params["scheduler"] == "fifo"  # several objectives: FIFO unless ASHA is asked for

    # the rule (the knee, by default) chose the member the hand computation finds; the confirmation trained it
    summary = JobSummary.from_json((folder / "summary.json").read_text())
    front = [r for r in with_model if r["trial_id"] in expected]
    knee = front[_knee([(float(r["val/auroc"]), float(r["val/ece"])) for r in front])]["trial_id"]
    assert summary.selected[0] == knee and set(summary.selected) == expected
    by_config = summary.arms["stack"].by_config
    assert [c["source_trial"] for c in by_config][:1] == [knee] and len(by_config) == 2
    assert all(set(c["objectives"]) == {"val/auroc", "val/ece"} for c in by_config)
    words = " ".join(out.split())
    assert "Pareto front of val/auroc:max, val/ece:min on validation" in words
    assert f"selected in the search: trial {knee}" in words
    assert "baseline" in summary.arms and summary.winner is not None  # compared with the baseline arm as ever
    report = (folder / "report.html").read_text()
    assert 'id="front"' in report and report.index('id="front"') < report.index('id="arms"')
    assert (folder / "plots" / "pareto_front.png").is_file()

    # best --pareto: every member, from MLflow alone; export --trial: any member, not only the winner
    rc, listed, err = run_cli(["best", "--job", "front", "--pareto", "--tracking-uri", uri], capsys)
    assert rc == 0, err
    assert all(tid in listed for tid in expected) and f"{knee} >" in listed
    other = sorted(expected - {knee})
    if other:
        rc, said, err = run_cli(["export", "--job", "front", "--trial", other[0], "--out", str(tmp_path / "m.yaml"),
                                 "--tracking-uri", uri], capsys)
        assert rc == 0, err
        prov = yaml.safe_load((tmp_path / "m.yaml").read_text())["provenance"]
        row = next(r for r in rows if r["trial_id"] == other[0])
        assert prov["trial_id"] == other[0]
        assert math.isclose(prov["validation"]["ece"], float(row["val/ece"]), rel_tol=1e-9)

    # a job of one objective has no front to list
    rc, out1, err1 = run_cli(["tune", "--data", SMALL, "--num-trials", "2", "--max-epochs", "1", "--no-baseline",
                              "--confirm-top", "0", "--storage-path", str(tmp_path / "results"), "--experiment", "one",
                              "--tracking-uri", uri], capsys)
    assert rc == 0, err1
    rc, _, err = run_cli(["best", "--job", "one", "--experiment", "one", "--pareto", "--tracking-uri", uri], capsys)
    assert rc == 2 and "searched one objective" in err and "Traceback" not in err


def test_a_rule_nobody_meets_selects_no_model_and_says_so_with_the_front(tmp_path, shared_ray, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rc, out, err = run_cli(["tune", "--data", SMALL, "--num-trials", "3", "--max-epochs", "1",
                            "--objectives", OBJECTIVES, "--select", "val/auroc>=0.9999, min val/ece",
                            "--storage-path", str(tmp_path / "results"), "--experiment", "strict",
                            "--tracking-uri", uri], capsys)
    assert rc == 1, err[-3000:]
    assert "Traceback" not in out  # (stderr carries the shared runtime's workers' lines: test_output checks it)
    words = " ".join(out.split())
    assert "NO MODEL SELECTED: no member of the front meets --select 'val/auroc>=0.9999, min val/ece'" in words
    assert "Pareto front of val/auroc:max, val/ece:min" in words
    folder = tmp_path / "results" / "strict"
    with open(folder / "results.csv", newline="") as f:
        front = [r["trial_id"] for r in csv.DictReader(f) if r["pareto"] == "1"]
    assert front and all(tid in out for tid in front)  # the front is printed
    # nothing was confirmed, tested or exported as a winner; the baseline arm never started
    assert not (folder / "confirm").exists() and not (folder / "baseline").exists()
    assert not (folder / "winner").exists()
    job, _ = _runs(uri, "strict")
    assert job.data.tags["losstune.status"] == "no model selected"
    assert "No model selected" in job.data.tags["mlflow.note.content"]
    rc, _, err = run_cli(["export", "--job", "strict", "--out", str(tmp_path / "w.yaml"), "--tracking-uri", uri],
                         capsys)
    assert rc == 2 and "selected no model" in err and "--pareto" in err and not (tmp_path / "w.yaml").exists()
    assert Path(folder / "results.csv").is_file()
