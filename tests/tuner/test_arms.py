"""A job's arms: the plain baseline arm tuned beside the loss stack, each arm's top configs trained
again with fresh seeds, winners picked by their mean validation score (never their best seed), and
the stack's lift over the baseline on the held-out test split."""

from __future__ import annotations

import math
import re
import statistics

import pytest
from mlflow.tracking import MlflowClient
from sklearn.metrics import roc_auc_score

from trainables.pareto import Objective, parse_select
from tuner.job.arms import BASELINE, STACK, Confirmed, confirm, confirmation_points, mark_front, top_configs
from tuner.job.outcome import TrialRow, format_summary
from tuner.job.plan import plan_job
from tuner.job.run import Tracking, run_job
from tuner.present.html import OPTIONAL, SECTIONS


def _row(tid: str, objective: float, config: dict, status: str = "completed", checkpoint: str = "ckpt") -> TrialRow:
    return TrialRow(number=0, trial_id=tid, status=status, epochs=3, best_epoch=3, objective=objective, metrics={},
                    targets={}, config=config, path="", checkpoint=checkpoint)


def test_top_configs_are_the_best_trials_that_produced_a_model():
    rows = [_row("a", 0.5, {"x": 1}), _row("b", 0.9, {"x": 2}, status="failed"), _row("c", 0.7, {"x": 3}),
            _row("d", math.nan, {"x": 4}), _row("e", 0.6, {"x": 5}, checkpoint=""), _row("f", 0.55, {"x": 6})]
    assert [r.trial_id for r in top_configs(rows, 2)] == ["c", "f"]


def test_confirmation_points_set_every_key_and_fresh_seeds():
    top = [_row("a", 0.9, {"lr": 0.01, "gamma": 2.0}), _row("b", 0.8, {"lr": 0.02})]
    points = confirmation_points(top, 3, {"gamma": 1.5, "lr": 0.001, "other": 7})
    assert points == [{"gamma": 2.0, "lr": 0.01, "seed": s} for s in (1, 2, 3)] + \
                     [{"gamma": 1.5, "lr": 0.02, "seed": s} for s in (1, 2, 3)]


def test_the_winner_has_the_best_mean_over_seeds_not_the_best_seed():
    top = [_row("lucky", 0.9, {"lr": 0.01}), _row("steady", 0.8, {"lr": 0.02})]
    points = confirmation_points(top, 3, {})
    scores = {0: [0.95, 0.60, 0.62], 1: [0.80, 0.79, 0.81]}  # 'lucky' has the best single seed, 'steady' the best mean
    rows = [_row(f"c{n}", scores[n // 3][n % 3], dict(p)) for n, p in enumerate(points)]
    evaluated = []

    def evaluate(row):
        evaluated.append(row.trial_id)
        k = int(row.trial_id[1:])
        return {"test/auroc": 0.7 + 0.01 * k, "test/auprc": 0.3, "test/ece": 0.1, "test/ece_calibrated": 0.02,
                "test/brier_calibrated": 0.05}

    final = confirm(STACK, top, points, rows, evaluate)
    assert isinstance(final, Confirmed) and final.source_trial == "steady" and final.config == {"lr": 0.02}
    assert final.seeds == [1, 2, 3] and sorted(evaluated) == ["c3", "c4", "c5"]  # only the winner's seeds on test
    assert final.val == pytest.approx((statistics.mean(scores[1]), statistics.stdev(scores[1])))
    aurocs = [0.73, 0.74, 0.75]
    assert final.test["auroc"] == pytest.approx((statistics.mean(aurocs), statistics.stdev(aurocs)))
    # the deployed model: the seed with the best validation score (c5, 0.81), its own test metrics
    assert final.best_seed_row.trial_id == "c5" and final.deployed_seed == 3
    assert final.deployed["auroc"] == pytest.approx(0.75)


AUROC_ECE = [Objective("val/auroc", "max"), Objective("val/ece", "min")]



def test_after_a_race_only_the_configs_given_the_most_seeds_can_win():
    top = [_row("a", 0.9, {"lr": 0.01}), _row("b", 0.8, {"lr": 0.02}), _row("c", 0.7, {"lr": 0.03})]
    points = confirmation_points(top, 3, {})
    # the race: seed 1 a 0.80, b 0.82, c 0.79 → a, b; seed 2 a 0.70 (mean 0.75), b 0.81 (0.815) → b; seed 3 b 0.60
    # → b's mean is 0.7433, below c's one seed (0.79) and a's two (0.75), yet b, the finalist, wins
    given = {0: [0.80, 0.70], 1: [0.82, 0.81, 0.60], 2: [0.79]}
    rows = [_row(f"{'abc'[c]}{s + 1}", v, dict(points[3 * c + s])) for c, vs in given.items() for s, v in enumerate(vs)]

    def evaluate(row):
        return {f"test/{m}": 0.5 for m in ("auroc", "auprc", "ece", "ece_calibrated", "brier_calibrated")}

    final = confirm(STACK, top, points, rows, evaluate)
    assert final.source_trial == "b" and final.seeds == [1, 2, 3]
    assert final.val == pytest.approx((statistics.mean(given[1]), statistics.stdev(given[1])))
    assert [(c["source_trial"], c["seeds"], c["finalist"]) for c in final.by_config] == \
        [("a", 2, False), ("b", 3, True), ("c", 1, False)]
    # a finalist's failed last seed still makes it a finalist (the race gave it the seed): it wins on its two
    rows[4] = _row("b3", math.nan, dict(points[5]), status="failed")
    final = confirm(STACK, top, points, rows, evaluate)
    assert final.source_trial == "b" and final.seeds == [1, 2]

def _mrow(tid: str, auroc: float, ece: float, config: dict, status: str = "completed") -> TrialRow:
    row = _row(tid, auroc, config, status=status)
    row.metrics = {"val/auroc": auroc, "val/ece": ece}
    return row


def test_several_objectives_mark_the_front_and_confirm_what_the_rule_ranks_first():
    rows = [_mrow("a", 0.80, 0.05, {"x": 1}), _mrow("b", 0.85, 0.10, {"x": 2}), _mrow("c", 0.90, 0.20, {"x": 3}),
            _mrow("d", 0.84, 0.12, {"x": 4}),  # dominated by b
            _mrow("e", 0.99, 0.01, {"x": 5}, status="failed")]  # would dominate all, but has no model
    mark_front(rows, AUROC_ECE)
    assert [r.trial_id for r in rows if r.pareto] == ["a", "b", "c"]
    # the knee first (b: normalised (0.5, 0.67) is nearest (1, 1)), then by distance: c (1, 0), a (0, 1) tie → a first
    assert [r.trial_id for r in top_configs(rows, 3, AUROC_ECE, parse_select(""))] == ["b", "a", "c"]
    assert [r.trial_id for r in top_configs(rows, 2, AUROC_ECE, parse_select("val/auroc>=0.85, min val/ece"))] == \
        ["b", "c"]
    assert top_configs(rows, 2, AUROC_ECE, parse_select("val/auroc>=0.95")) == []


def test_with_several_objectives_the_rule_chooses_among_the_seed_means():
    top = [_mrow("first", 0.86, 0.10, {"lr": 0.01}), _mrow("second", 0.85, 0.12, {"lr": 0.02})]
    points = confirmation_points(top, 2, {})
    # on its seeds 'first' falls below the constraint (mean AUROC 0.84); 'second' holds (0.855) with ECE 0.11
    values = [(0.85, 0.09), (0.83, 0.11), (0.86, 0.10), (0.85, 0.12)]
    rows = [_mrow(f"c{n}", a, e, dict(p)) for n, (p, (a, e)) in enumerate(zip(points, values))]

    def evaluate(row):
        return {f"test/{m}": 0.5 for m in ("auroc", "auprc", "ece", "ece_calibrated", "brier_calibrated")}

    final = confirm(STACK, top, points, rows, evaluate, AUROC_ECE, parse_select("val/auroc>=0.85, min val/ece"))
    assert final.source_trial == "second" and final.met_on_means is True
    assert final.by_config[1]["objectives"]["val/auroc"] == pytest.approx([0.855, statistics.stdev([0.86, 0.85])])
    assert final.best_seed_row.trial_id == "c2"  # of its seeds, both meet the rule; min ECE: 0.10
    # nobody meets it on the means: the search's selection stays, and the outcome says so
    final = confirm(STACK, top, points, rows, evaluate, AUROC_ECE, parse_select("val/auroc>=0.9"))
    assert final.source_trial == "first" and final.met_on_means is False


@pytest.mark.slow
def test_a_job_with_a_baseline_arm_and_confirmed_winners(small_job, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/arms.db"
    import threading

    import tuner.job.arms as arms_module
    from trainables.reference import evaluate as evaluate_reference
    from trainables.reference import fit_reference_models

    fit_in: list[str] = []  # the threads that fit the reference models

    def fit_and_say_where(*args, **kwargs):
        fit_in.append(threading.current_thread().name)
        return fit_reference_models(*args, **kwargs)

    monkeypatch.setattr(arms_module, "fit_reference_models", fit_and_say_where)
    spec, storage = small_job(num_trials=4, max_epochs=3, scheduler="fifo", baseline_trials=3, confirm_top=2,
                              confirm_seeds=2)
    job, data, space, pretrained = plan_job(spec, storage)
    import os

    import ray
    from ray.tune import Callback

    from tuner.job.arms import slot_key
    from tuner.job.slots import share_of

    class Ahead(Callback):  # what Tune's controller read when the stack's trials started
        seen: set[str | None] = set()
        beside: list[int] = []  # the stack's trials running with it, at each start while the baseline searched

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            self.seen.add(os.environ.get("TUNE_MAX_PENDING_TRIALS_PG"))
            share = share_of(slot_key(job))
            if share is not None and BASELINE in share.searching:
                self.beside.append(1 + sum(t.status == "RUNNING" for t in trials if t is not trial))

    assert "TUNE_MAX_PENDING_TRIALS_PG" not in os.environ
    outcome = run_job(job, data, space, pretrained, address=None, verbose=0, tracking=Tracking(uri, "arms"),
                      callbacks=[Ahead()])
    assert outcome.state == "finished"
    # as many trials ready as the runtime has slots (Ray's default of one kept short trials on one worker)
    assert Ahead.seen == {str(int(ray.cluster_resources()["CPU"]))} and "TUNE_MAX_PENDING_TRIALS_PG" not in os.environ
    # while both arms searched, each had its share of the 2 slots: one trial of the stack at a time (the run
    # that asked first no longer takes every slot and leaves the other arm to start its workers after it)
    assert int(ray.cluster_resources()["CPU"]) == 2 and Ahead.beside and max(Ahead.beside) == 1
    assert len(outcome.rows) == 4 and len(outcome.arm_rows[BASELINE]) == 3
    # the reference models were fit once, in a thread, when the first arm's search ended (its slot idle until
    # the other's ended), and they are the models the job's seed gives on its training split
    assert fit_in == ["losstune-reference-models"]
    fresh = fit_reference_models(data, seed=spec.seed)
    assert {name: evaluate_reference(m, data) for name, m in fresh.items()} == outcome.winner.references
    # scored on the draws there too: the lifts over them are what comparing them afresh gives
    from trainables.compare import bootstrap_draws, paired_differences
    from tuner.job.winner import Winner

    y_test = data.test.y.numpy()
    for name, m in fresh.items():
        assert outcome.winner.lifts[name] == paired_differences(
            y_test, outcome.winner.test_probs, m.predict_proba(data.test.x.numpy()), metrics=Winner.COMPARED,
            draws=bootstrap_draws(y_test, seed=spec.seed), label_names=list(data.label_names)), name
    assert {k for r in outcome.arm_rows[BASELINE] for k in r.config} <= set(job.arms[BASELINE]["searched"])
    # a race over seeds: both configs got seed 1, the one with the better seed-1 score seed 2 (3, not 4)
    assert [len(outcome.confirm_rows[a]) for a in (STACK, BASELINE)] == [3, 3]

    for arm in (STACK, BASELINE):
        final = outcome.confirmed[arm]
        groups: dict[tuple, dict[int, float]] = {}
        for r in outcome.confirm_rows[arm]:
            key = tuple(sorted((k, repr(v)) for k, v in r.config.items() if k != "seed"))
            groups.setdefault(key, {})[int(r.config["seed"])] = r.objective
        assert sorted(sorted(g) for g in groups.values()) == [[1], [1, 2]], arm
        leader = max(groups.values(), key=lambda g: g[1])
        assert sorted(leader) == [1, 2], arm
        best = list(leader.values())
        assert final.val == pytest.approx((statistics.mean(best), statistics.stdev(best))), arm
        assert final.seeds == [1, 2]
        assert sorted(c["seeds"] for c in final.by_config) == [1, 2]

    # the lift of the stack over the baseline: the two deployed models (each arm's seed with the best
    # validation score), scored by sklearn; the headline is the deployed stack model's (METHODS.md, "One winner")
    from tuner.job.winner import evaluate_winner

    y = data.test.y.numpy()[:, 0]
    deployed = {arm: evaluate_winner(outcome.confirmed[arm].best_seed_row.checkpoint, "", data, {}, references=False)
                for arm in (STACK, BASELINE)}
    lift = {(x.metric, x.label): x for x in outcome.winner.lifts[BASELINE]}[("auroc", "macro")]
    expected = roc_auc_score(y, deployed[STACK].test_probs[:, 0]) - roc_auc_score(
        y, deployed[BASELINE].test_probs[:, 0])
    assert lift.estimate == pytest.approx(expected, abs=1e-9) and lift.low <= lift.estimate <= lift.high
    assert outcome.winner.holdout["test/auroc"] == pytest.approx(deployed[STACK].holdout["test/auroc"])
    assert outcome.confirmed[STACK].deployed["auroc"] == pytest.approx(deployed[STACK].holdout["test/auroc"])

    # and the calibration error of the probabilities as trained (before post-hoc calibration), by torchmetrics
    import torch
    from torchmetrics.functional.classification import binary_calibration_error

    def ece(p):
        return float(binary_calibration_error(torch.tensor(p[:, 0]), torch.tensor(y).long(), n_bins=15, norm="l1"))

    raw = outcome.winner.lifts["baseline_as_trained"][0]
    assert raw.metric == "ece" and raw.estimate == pytest.approx(
        ece(deployed[STACK].test_raw_probs) - ece(deployed[BASELINE].test_raw_probs), abs=1e-6)

    text = format_summary(outcome)
    assert "arms on the held-out test split (deployed: the config's seed best on validation" in text
    assert "mean ± sd, 2 seeds" in text
    assert "relative to the plain baseline" in text and "baseline 3 trials" in text
    # the baseline searched less than the stack (3 trials against 4): said beside the verdict
    warning = "— the baseline had less search; the lift may be overstated"
    prose = " ".join(text.split())  # as read, whatever the wrapping at 100 columns
    for arm in (STACK, BASELINE):  # how many seeds the race gave each config, in the search's order
        counts = ", ".join(f"{c['source_trial']} {c['seeds']}" for c in outcome.confirmed[arm].by_config)
        assert f"{arm} {counts}" in prose.split("seeds per confirmed config (a race")[1], arm
    assert re.search(r"budgets: stack 4 trials, \d+ CPU-s; baseline 3 trials, \d+ CPU-s " + warning, prose), text

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("arms").experiment_id
    runs = c.search_runs([exp])
    children = [r for r in runs if r.data.tags.get("losstune.role") != "job"]
    assert len(children) == 4 + 3 + 6 and all(r.info.status != "RUNNING" for r in runs)
    by = {(r.data.tags["losstune.arm"], r.data.tags["losstune.phase"]) for r in children}
    assert by == {(STACK, "search"), (BASELINE, "search"), (STACK, "confirm"), (BASELINE, "confirm")}
    # the baseline's search ran as the run a job starts beside the stack's, under a trainable name of its own
    from tuner.job.arms import BASELINE_TRAINABLE

    baseline_trials = [d.name for d in (job.path / BASELINE).iterdir() if d.is_dir()]
    assert len(baseline_trials) == 3 and all(n.startswith(BASELINE_TRAINABLE + "_") for n in baseline_trials)
    for r in children:
        if r.data.tags["losstune.arm"] == BASELINE:  # plain BCE, one head, no teacher
            p = r.data.params
            assert (p["main_loss.type"], p["aux_loss.type"], p["teacher.enabled"]) == ("bce", "none", "False")
    job_run = next(r for r in runs if r.data.tags.get("losstune.role") == "job")
    assert warning in job_run.data.tags["mlflow.note.content"] and warning in job_run.data.tags["losstune.budgets"]
    m = job_run.data.metrics
    assert m["lift/baseline/auroc"] == pytest.approx(lift.estimate)
    assert m["arm/stack/test/auroc_mean"] == pytest.approx(outcome.confirmed[STACK].test["auroc"][0])
    assert (m["budget.stack.trials"], m["budget.baseline.trials"], m["budget.confirm.trials"]) == (4, 3, 6)
    # the share of the runtime's trial slots its trials kept busy: their CPU-seconds over wall × CPUs
    import ray

    every = [*outcome.rows, *outcome.arm_rows[BASELINE],
             *(r for a in (STACK, BASELINE) for r in outcome.confirm_rows[a])]
    cpus = ray.cluster_resources()["CPU"] if ray.is_initialized() else outcome.runtime_cpus
    busy = sum(r.seconds for r in every) * job.resources["cpu"] / (outcome.wall_s * cpus)
    assert 0 < m["budget.slot_utilisation"] <= 1 and m["budget.slot_utilisation"] == pytest.approx(busy, abs=1e-3)
    # the summary prints the recorded share (3 decimals): 0.0650… is "7%" but its record 0.065 is "6%"
    assert f"trial slots busy {m['budget.slot_utilisation']:.0%} of the time" in prose
    stack_mean, stack_sd = outcome.confirmed[STACK].test["auroc"]

    # report.html: one self-contained page with every section, its plots embedded, also in MLflow
    from html.parser import HTMLParser

    page = (job.path / "report.html").read_text()
    sections, images = [], []

    class Page(HTMLParser):
        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "section":
                sections.append(a["id"])
            if tag == "img":
                images.append(a["src"])

    Page().feed(page)
    # every section in its order; "front" only with several objectives, "ablation" once `losstune ablate` has run
    assert sections == [k for k in SECTIONS if k not in OPTIONAL]
    assert sections[:6] == ["bottom_line", "verdict", "arms", "references", "operating", "calibration"]
    assert len(images) >= 4 and all(src.startswith("data:image/png;base64,iVBOR") for src in images)
    assert "relative to the plain baseline" in page and "logistic regression" in page
    assert f"{stack_mean:.4f} ± {stack_sd:.4f}" in page and "each arm&#x27;s best validation score so far" in page
    assert warning in page
    assert re.search(r"losstune tune --job \S+/job\.yaml --experiment job-again", page)
    assert "report.html" in {f.path for f in c.list_artifacts(job_run.info.run_id)}

    # `losstune best` says the same from MLflow alone; `export` exports the confirmed winner's seed
    from tuner.cli.best import best_report, export_config

    text = best_report(uri=uri, experiment="arms", job_name=None, top=5)
    bottom = job_run.data.tags["losstune.bottom_line"]  # the same sentence, wrapped at 100 columns where printed
    said = " ".join(text.split())
    assert bottom in said and bottom in " ".join(format_summary(outcome).split())
    assert warning in said
    stack_auroc = outcome.confirmed[STACK].test["auroc"]
    assert f"{stack_auroc[0]:.4f} ± {stack_auroc[1]:.4f}" in said
    assert "relative to the plain baseline" in said and "relative to logistic regression" in said
    export_config(uri=uri, experiment="arms", job_name=None, trial_id=None, out=str(tmp_path / "w.yaml"))
    import yaml

    exported = yaml.safe_load((tmp_path / "w.yaml").read_text())
    assert exported["seed"] in (1, 2) and exported["provenance"]["trial_id"] == outcome.winner.trial_id


@pytest.mark.slow
def test_ctrl_c_during_the_baseline_arm_then_resume(tmp_path, ray_tmpdir):
    """Interrupted once the baseline arm has trained a few epochs: the resumed job restores the
    stack's finished search, continues the baseline arm, confirms both and ends with every run once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    store, uri = tmp_path / "results", f"sqlite:///{tmp_path}/resume.db"
    env = {**os.environ, "RAY_TMPDIR": ray_tmpdir, "PYTHONUNBUFFERED": "1", "MLFLOW_TRACKING_URI": uri}
    cmd = [sys.executable, "-m", "tuner.cli", "tune", "--data", "synthetic:rare?n=12000&signal=2", "--num-trials", "3",
           "--max-epochs", "5", "--scheduler", "fifo", "--concurrency", "2", "--experiment", "arms",
           "--storage-path", str(store), "--fix", "optim.patience=0", "--baseline-trials", "3", "--confirm-top", "1",
           "--confirm-seeds", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    baseline = store / "arms" / "baseline"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(list(baseline.glob("*/checkpoint_*"))) < 2:
        time.sleep(0.2)
    assert proc.poll() is None, "the job ended before its baseline arm could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    last = " ".join(" ".join(out.strip().splitlines()[-2:]).split())  # the command alone when wider than 100
    assert last.endswith(f"continue the job with: losstune tune --resume {store / 'arms'}")

    resume = subprocess.run([sys.executable, "-m", "tuner.cli", "tune", "--resume", str(store / "arms")], env=env,
                            capture_output=True, text=True, timeout=400)
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert "relative to the plain baseline" in resume.stdout
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("arms").experiment_id])
    children = [r for r in runs if r.data.tags.get("losstune.role") != "job"]
    count = {}
    for r in children:
        key = (r.data.tags["losstune.arm"], r.data.tags["losstune.phase"])
        count[key] = count.get(key, 0) + 1
    assert count == {(STACK, "search"): 3, (BASELINE, "search"): 3, (STACK, "confirm"): 2, (BASELINE, "confirm"): 2}
    assert len({r.data.tags["losstune.trial_id"] for r in children}) == len(children)  # no run twice
    assert all(r.info.status != "RUNNING" for r in runs)
    for r in children:  # each of the 5 epochs once
        steps = sorted(int(m.step) for m in c.get_metric_history(r.info.run_id, "val/auroc"))
        assert steps == [1, 2, 3, 4, 5], (r.data.tags["losstune.trial_id"], steps)


def test_a_baseline_arm_begun_by_an_older_losstune_is_told_apart(tmp_path):
    """Its trials carry the stack's trainable name: Tune restores it only under that name, which the
    stack's search uses at the same time, so it is finished after the stack's search instead."""
    from tuner.cluster.storage import Storage
    from tuner.job.arms import BASELINE_TRAINABLE, baseline_started_by_older_losstune

    storage = Storage.parse(str(tmp_path))
    assert not baseline_started_by_older_losstune(storage, "job")  # no baseline run yet
    (tmp_path / "job" / BASELINE / f"{BASELINE_TRAINABLE}_0a1b2c3d_1_lr=0.001").mkdir(parents=True)
    assert not baseline_started_by_older_losstune(storage, "job")
    (tmp_path / "job" / BASELINE / "train_trial_0a1b2c3d_2_lr=0.002").mkdir()
    assert baseline_started_by_older_losstune(storage, "job")
