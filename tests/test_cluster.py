"""Multi-node Ray: ``gradtune sweep --address`` (and ``RAY_ADDRESS``) against a real
two-node Ray cluster on loopback.

The cluster (``tests/_servers.py``, :class:`RayCluster`) is two ``ray start`` nodes with one
CPU each, token authentication on, every port on 127.0.0.1. The sweep asks for one CPU per
trial and two trials at a time, so Ray can only run them side by side by using both nodes;
the MLflow child runs' ``gradtune.node_id`` tags must name both nodes and nothing else. The
sweep runs as a subprocess (a driver of its own), so this process never joins the cluster,
and the cluster is stopped by killing exactly the processes it started.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests._servers import (
    RayCluster,
    gradtune,
    is_loopback,
    listening_sockets,
    run_watched,
    session_pids,
)

pytestmark = pytest.mark.e2e

OUTCOMES = {"completed", "diverged", "pruned", "failed"}


@pytest.fixture(scope="module")
def cluster():
    with RayCluster(cpus=(1, 1)) as c:
        yield c


def sweep_command(cluster: RayCluster, tmp_path: Path, experiment: str, *extra: str) -> list[str]:
    return gradtune(
        "sweep",
        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--experiment", experiment,
        "--storage", str(tmp_path / "results"),
        "--set", "resources.cpu=1",
        "--set", "search.max_concurrent=2",
        *extra,
    )


def trial_runs(tmp_path: Path, experiment: str):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("gradtune.role") == "sweep"]
    assert len(parents) == 1, [r.data.tags for r in runs]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], kids


class LoopbackWatch:
    """Collects every listening socket of the cluster's and the sweep's processes that is
    not on a loopback address, sampled while the sweep runs (trial workers come and go)."""

    def __init__(self, cluster: RayCluster) -> None:
        self.cluster = cluster
        self.exposed: dict[tuple[int, str, int], str] = {}
        self.samples = 0

    def __call__(self, sweep_session: int | None = None) -> None:
        pids = self.cluster.pids() + (session_pids([sweep_session]) if sweep_session else [])
        for pid, address, port in listening_sockets(pids):
            if not is_loopback(address):
                self.exposed[(pid, address, port)] = self.cluster.describe([pid])[0]
        self.samples += 1


def test_cluster_nodes_are_on_loopback(cluster):
    nodes = cluster.nodes
    assert len(nodes) == 2
    assert sorted(n["head"] for n in nodes) == [False, True]
    assert all(n["address"] == "127.0.0.1" for n in nodes), nodes
    assert all(n["cpu"] == 1.0 for n in nodes), nodes
    listening = listening_sockets(cluster.pids())
    assert any(port == cluster.port for _, _, port in listening), "GCS port not found"
    exposed = [entry for entry in listening if not is_loopback(entry[1])]
    assert not exposed, cluster.describe(pid for pid, _, _ in exposed)


def test_sweep_with_address_runs_trials_on_both_nodes(cluster, tmp_path):
    watch = LoopbackWatch(cluster)
    watch()
    proc = run_watched(
        sweep_command(cluster, tmp_path, "two-nodes", "--address", cluster.address,
                      "--trials", "4", "--set", "training.steps=30"),
        env=cluster.env(), cwd=tmp_path, timeout=240, log=tmp_path / "sweep.log", watch=watch,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + "\n" + cluster.logs()

    parent, kids = trial_runs(tmp_path, "two-nodes")
    assert parent.info.status == "FINISHED"
    assert len(kids) == 4
    node_of = {}
    for run in kids:
        tags = run.data.tags
        assert tags["gradtune.role"] == "trial"
        assert tags["gradtune.outcome"] in OUTCOMES - {"failed"}, tags
        node_of[tags["gradtune.trial_id"]] = tags["gradtune.node_id"]
    assert len(node_of) == 4

    # Every trial ran on a node of this cluster (not on a Ray the driver started itself),
    # and the trials used both nodes.
    cluster_ids = {n["node_id"] for n in cluster.nodes}
    assert set(node_of.values()) <= cluster_ids, (node_of, cluster.nodes)
    assert set(node_of.values()) == cluster_ids, (
        f"all trials ran on {set(node_of.values())}; the cluster has {cluster_ids}"
    )

    # --storage on a path every node sees: the results of every trial, on either node,
    # landed there, and they say where the trial ran.
    stored = {}
    for result in (tmp_path / "results").glob("*/*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        assert rows, f"{result} is empty"
        stored[rows[-1]["trial_id"]] = {row["node_id"] for row in rows}
    assert set(stored) == set(node_of)
    for trial_id, nodes in stored.items():
        assert nodes == {node_of[trial_id]}, trial_id

    assert watch.samples >= 2
    assert not watch.exposed, f"listening beyond loopback: {watch.exposed}"


def test_ray_address_environment_variable_joins_the_cluster(cluster, tmp_path):
    """No --address: RAY_ADDRESS points the sweep at the cluster."""
    proc = run_watched(
        sweep_command(cluster, tmp_path, "ray-address", "--trials", "2",
                      "--set", "training.steps=10"),
        env=cluster.env(RAY_ADDRESS=cluster.address), cwd=tmp_path, timeout=180,
        log=tmp_path / "sweep.log",
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + "\n" + cluster.logs()
    _, kids = trial_runs(tmp_path, "ray-address")
    assert len(kids) == 2
    nodes = {run.data.tags["gradtune.node_id"] for run in kids}
    assert nodes == {n["node_id"] for n in cluster.nodes}
