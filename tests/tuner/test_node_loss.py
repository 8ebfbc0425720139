"""A worker node lost mid-job, on a Ray runtime of three nodes on this machine
(``ray.cluster_utils.Cluster``): the trial it ran continues on another node from its last
checkpoint, and the job ends with every trial once, in Ray and in MLflow.

The moment of the loss is not a race: the trial that runs on the chosen worker stops after its
epoch-2 report (its checkpoint saved and its result with the driver) and waits there until the
test removes the node."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.tuner.conftest import SMALL, everything_fixed, wait_for
from tuner.job.plan import plan_job
from tuner.job.run import Tracking, run_job
from tuner.job.spec import JobSpec
from tuner.record.records import TRIAL_TAG

pytestmark = pytest.mark.slow

MAX_EPOCHS = 5
STALL_AFTER = 2  # the epoch after which the trial on the lost node waits for the loss


@pytest.fixture
def three_nodes(cluster_ready, monkeypatch):
    """A head and two worker nodes, one CPU each; stopped by the fixture, never by `ray stop`."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # Token authentication on the nodes, as on the driver: losstune connects to an address with
    # RAY_AUTH_MODE=token (tuner/cluster/runtime.py), and a driver process keeps the auth mode of the first
    # runtime it joined (the tests' shared local one: token, Ray's default with ~/.ray/auth_token).
    # Nodes without it cannot reach the driver: every trial's actor dies before it starts.
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def stall_on_node(victim_file: str):
    """A test-only trainable: on the node whose id ``victim_file`` holds, the trial waits after its
    epoch-``STALL_AFTER`` report until its node goes away; elsewhere it is the real trainable."""
    stall_after = STALL_AFTER

    def trainable(config, inputs):
        import time
        from pathlib import Path

        import ray
        import ray.tune as tune_module

        from trainables.tune_trainable import train_trial

        real = tune_module.report
        if ray.get_runtime_context().get_node_id() == Path(victim_file).read_text():

            def report(metrics, checkpoint=None):
                real(metrics, checkpoint=checkpoint)
                while metrics.get("epoch") == stall_after:
                    time.sleep(1)  # until the test removes this node

            tune_module.report = report
        try:
            train_trial(config, inputs)
        finally:
            tune_module.report = real

    return trainable


def _results(trial_dir: Path) -> list[dict]:
    f = trial_dir / "result.json"
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.exists() else []


@pytest.mark.long
def test_a_worker_node_lost_mid_job_moves_its_trial_which_resumes_from_its_checkpoint(three_nodes, tmp_path):
    cluster = three_nodes
    victim = next(iter(cluster.worker_nodes))  # never the driver's node: a driver on this machine joins the head
    victim_file = tmp_path / "victim-node"
    victim_file.write_text(victim.node_id)
    uri = f"sqlite:///{tmp_path}/node-loss.db"  # absolute: MLflow caches its stores per URI
    # The same config for every trial (and no early stop): 4 trials of exactly MAX_EPOCHS epochs.
    # (Not the small_job fixture: it starts a local Ray runtime that this test does not use.)
    spec = JobSpec.from_options(data=SMALL, experiment="job", num_trials=4, max_epochs=MAX_EPOCHS, scheduler="fifo",
                                concurrency=3, max_failures=2, scenario="rare_disease_detection",
                                fix=[*everything_fixed(), "optim.patience=0"], baseline_trials=0, confirm_top=0)
    job, data, space, pretrained = plan_job(spec, str(tmp_path / "results"))
    done: dict = {}

    def run() -> None:
        try:
            done["outcome"] = run_job(job, data, space, pretrained, address=cluster.address, verbose=0,
                                      shared_storage=True, trainable=stall_on_node(str(victim_file)),
                                      tracking=Tracking(uri, "node-loss"))
        except BaseException as exc:  # handed to the test thread
            done["error"] = exc

    thread = threading.Thread(target=run, name="losstune-job", daemon=True)
    thread.start()

    def stalled_trial() -> Path | None:
        if "error" in done:
            raise done["error"]
        if "outcome" in done:
            pytest.fail(f"the job ended before the node was lost: {done['outcome'].state}, "
                        f"{[(r.status, r.epochs, r.error[:200]) for r in done['outcome'].rows]}")
        for d in (p for p in job.path.glob("*") if p.is_dir()):
            rows = _results(d)
            if any(r.get("trial/node_id") == victim.node_id and r.get("epoch") == STALL_AFTER for r in rows):
                return d
        return None

    trial_dir = wait_for(stalled_trial, what=f"a trial on the worker node to report epoch {STALL_AFTER}",
                         timeout_s=240)
    cluster.remove_node(victim)
    thread.join(timeout=300)
    assert not thread.is_alive(), "the job did not end within 300 s of the node's loss"
    if "error" in done:
        raise done["error"]

    outcome = done["outcome"]
    assert outcome.state == "finished" and outcome.exit_code == 0
    assert len(outcome.rows) == 4 and len({r.trial_id for r in outcome.rows}) == 4
    assert all(r.status == "completed" and r.epochs == MAX_EPOCHS
               for r in outcome.rows), [(r.status, r.epochs) for r in outcome.rows]
    moved = next(r for r in outcome.rows if Path(r.path).name == trial_dir.name)
    assert moved.resources.get("trial/node_id") not in (None, victim.node_id)

    # Ray's record of the moved trial: epochs 1-2 on the lost node, then epoch 3 onwards on another
    # node; never epoch 1 again, so it continued from its epoch-2 checkpoint, not from scratch.
    rows = _results(trial_dir)
    after = [r["epoch"] for r in rows if r.get("trial/node_id") != victim.node_id]
    assert after == list(range(STALL_AFTER + 1, MAX_EPOCHS + 1)), [(r["epoch"], r.get("trial/node_id")) for r in rows]

    # MLflow: one run per trial (the moved one too), every epoch once, nothing left RUNNING.
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("node-loss").experiment_id], max_results=100)
    jobs = [r for r in runs if r.data.tags.get("losstune.role") == "job"]
    trials = [r for r in runs if r.data.tags.get("losstune.role") != "job"]
    assert len(jobs) == 1 and jobs[0].info.status == "FINISHED"
    assert sorted(t.data.tags[TRIAL_TAG] for t in trials) == sorted(r.trial_id for r in outcome.rows)
    assert all(t.info.status == "FINISHED" for t in trials), [t.info.status for t in trials]
    assert jobs[0].data.metrics["trials.count"] == 4
    for t in trials:
        for key in ("epoch", "val/auroc"):
            steps = [m.step for m in c.get_metric_history(t.info.run_id, key)]
            assert sorted(steps) == list(range(1, MAX_EPOCHS + 1)), (t.data.tags[TRIAL_TAG], key, steps)
    run = next(t for t in trials if t.data.tags[TRIAL_TAG] == moved.trial_id)
    pids = {m.step: m.value for m in c.get_metric_history(run.info.run_id, "trial/pid")}
    assert len({pids[e] for e in range(1, STALL_AFTER + 1)}) == 1  # one process until the loss ...
    assert pids[STALL_AFTER + 1] != pids[STALL_AFTER]  # ... then another, on another node, in the same run
