"""A Ray runtime of several nodes on this machine (``ray.cluster_utils.Cluster``, what Ray's own
tests use): trials spread over the nodes, and a storage path that only one node could reach is
refused before any trial starts. All "nodes" share this machine's disk, so the refusal is checked
by rule (a plain local folder without --shared-storage), not by waiting for Ray to fail."""

from __future__ import annotations

import os

import pytest

from trainables.errors import UserError
from tuner.driver import plan_job, run_job

pytestmark = pytest.mark.slow


@pytest.fixture
def two_nodes(fresh_ray, monkeypatch):
    """A head and one worker node, one CPU each; stopped by the fixture, never by `ray stop`."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster.address
    cluster.shutdown()


def test_a_local_storage_path_is_refused_on_several_nodes_before_any_trial(small_job, two_nodes):
    spec, storage = small_job(num_trials=2, max_epochs=1)
    job, data, space, pretrained = plan_job(spec, storage)
    with pytest.raises(UserError, match=r"has 2 nodes but --storage-path '.*' is a local folder .*--shared-storage"):
        run_job(job, data, space, pretrained, address=two_nodes, verbose=0)
    assert not job.path.exists()  # refused before the job folder (or any trial) was written


def test_trials_spread_over_the_nodes_of_a_shared_storage_cluster(small_job, two_nodes):
    spec, storage = small_job(num_trials=4, max_epochs=3, scheduler="fifo", concurrency=2)
    job, data, space, pretrained = plan_job(spec, storage)
    outcome = run_job(job, data, space, pretrained, address=two_nodes, verbose=0, shared_storage=True)
    assert len(outcome.rows) == 4 and outcome.winner is not None
    nodes = {r.resources.get("trial/node_id") for r in outcome.rows}
    assert len(nodes) >= 2 and None not in nodes, nodes
    assert os.path.isfile(job.path / "results.csv")
