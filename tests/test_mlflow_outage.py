"""Tracking never kills a sweep: a real ``mlflow server`` on loopback (SQLite backend, the
basic-auth app as deployed) is killed - its whole process session, as a crash would - while
gradtune writes to it, and started again on the same port and databases.

- The Tune callbacks return in milliseconds while the server is down; records wait in the
  spool, the end of the sweep says how many and prints the ``gradtune sync`` command, and
  that command sends them once the server is back.
- A real sweep (Ray Tune, 4 trials x 40 steps) whose server is down for longer than the
  retry budget completes, and MLflow ends up with every metric point Tune saw, every
  outcome tag and terminal status, and the parent FINISHED.
"""

from __future__ import annotations

import json
import shlex
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from gradtune import cli, outcome, spool, summary, sweep, tracking
from gradtune.outcome import Ledger
from gradtune.sweep import SweepResult
from tests._servers import MlflowServer

pytestmark = pytest.mark.e2e

BUDGET_S = 3.0  # the writer's outage budget in these tests (30 s by default)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (starting one takes tens of seconds on a busy machine);
    each test kills and restarts it, and uses an experiment of its own."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with MlflowServer(root, f"sqlite:///{root / 'mlflow.db'}", f"sqlite:///{root / 'auth.db'}") as srv, \
            pytest.MonkeyPatch.context() as env:
        for name, value in srv.client_env().items():
            env.setenv(name, value)
        # The writer turns MLflow's HTTP retries down for the process: undo it afterwards.
        for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT"):
            env.setenv(name, "unset-by-test")
            env.delenv(name)
        yield srv


def children(client: MlflowClient, parent_id: str) -> list:
    exp_id = client.get_run(parent_id).info.experiment_id
    return [r for r in client.search_runs([exp_id], max_results=100)
            if r.data.tags.get("mlflow.parentRunId") == parent_id]


def test_callbacks_do_not_wait_for_a_dead_server_and_sync_sends_the_rest(server, tiny_spec, tmp_path):
    spec = tiny_spec(**{"tracking.uri": server.url, "name": "outage-callbacks"})
    spool_path = tmp_path / "results" / "outage-callbacks-1" / spool.SPOOL_NAME
    tracker = tracking.MLflowTracking(spec, server.url, "outage-callbacks", Ledger(),
                                      spool=str(spool_path), outage_s=BUDGET_S, drain_s=2.0)
    parent_id = tracker.start()
    server.stop()

    slowest = 0.0
    reports = 8
    for t in range(4):
        trial = SimpleNamespace(trial_id=f"trial_{t}", config={"init_scale": 1.0 + t}, last_result=None)
        calls = [lambda trial=trial: tracker.on_trial_start(0, [], trial)]
        for i in range(1, reports + 1):
            result = {"step": 5 * i, "train_loss": 1.0 / i, "grad_norm": float("inf") if t == 3 else 2.0,
                      "training_iteration": i, "node_id": "node-a", "final": int(i == reports)}
            calls.append(lambda trial=trial, result=result: tracker.on_trial_result(0, [], trial, result))
        for call in calls:
            started = time.perf_counter()
            call()
            slowest = max(slowest, time.perf_counter() - started)
        trial.last_result = result
        started = time.perf_counter()
        tracker.on_trial_complete(0, [], trial)
        slowest = max(slowest, time.perf_counter() - started)
    # Each call only queues records: milliseconds, while every request would be refused.
    assert slowest < 0.05, f"a Tune callback took {slowest * 1000:.1f} ms with the server down"

    started = time.monotonic()
    pending = tracker.finish("FINISHED")
    assert time.monotonic() - started < 2.0 + 8, "the end of the sweep waited too long"
    # Per trial: create, params, node tag, the reports, end tags, end; the parent's last three.
    assert pending >= 4 * (3 + reports + 2) + 3
    assert spool_path.exists() and len(spool.read(spool_path)[2]) == pending

    # The end summary names the records left and the exact command that sends them.
    result = SweepResult(spec=spec, tracking_uri=server.url, experiment="outage-callbacks",
                         parent_run_id=parent_id, storage=str(tmp_path), ledger=tracker.ledger,
                         runs=tracker.run_ids(), pending=pending, spool=str(spool_path))
    text = summary.render(result)
    assert f"MLflow: {pending} records not sent" in text
    command = shlex.split(text.splitlines()[-1])
    assert command[:4] == ["python", "-m", "gradtune", "sync"]

    server.start()
    assert cli.main(command[3:]) == 0
    assert spool.read(spool_path)[2] == []  # all acknowledged: a second sync sends nothing

    client = MlflowClient(server.url)
    assert client.get_run(parent_id).info.status == "FINISHED"
    kids = children(client, parent_id)
    assert sorted(r.data.tags["gradtune.trial_id"] for r in kids) == [f"trial_{t}" for t in range(4)]
    for run in kids:
        assert run.info.status == "FINISHED" and run.data.tags["gradtune.outcome"] == "completed"
        assert run.data.tags["gradtune.node_id"] == "node-a" and run.data.params["init_scale"]
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert [m.step for m in history] == [5 * i for i in range(1, reports + 1)]
    written = json.loads(Path(client.download_artifacts(parent_id, "summary.json", str(tmp_path))).read_text())
    assert {e["run_id"] for e in written["trials"]} == {r.info.run_id for r in kids}


def tune_reports(storage: Path) -> dict[str, list[dict]]:
    """Every result Tune recorded, per trial id (result.json of each trial directory)."""
    out: dict[str, list[dict]] = {}
    for path in storage.glob("*/*/result.json"):
        for line in path.read_text().splitlines():
            result = json.loads(line)
            out.setdefault(result["trial_id"], []).append(result)
    return out


def test_a_sweep_outlives_a_server_outage_longer_than_the_retry_budget(
        server, tiny_spec, ray_session, tmp_path, monkeypatch):
    monkeypatch.setenv(tracking.OUTAGE_ENV, str(BUDGET_S))
    monkeypatch.setenv(tracking.DRAIN_ENV, "120")  # the sweep may end before the server is back
    spec = tiny_spec(**{"tracking.uri": server.url, "name": "outage-sweep"})
    outage: dict[str, float] = {}
    errors: list[BaseException] = []

    def kill_then_restart() -> None:
        """Kill the server once the first trial's metrics are in, keep it down for three
        budgets, then start it again on the same port and databases."""
        try:
            client = MlflowClient(server.url)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                exp = client.get_experiment_by_name("outage-sweep")
                runs = client.search_runs([exp.experiment_id]) if exp else []
                if any("train_loss" in r.data.metrics for r in runs):
                    break
                time.sleep(0.3)
            outage["down"] = time.monotonic()
            server.stop()
            time.sleep(3 * BUDGET_S)
            server.start()
            outage["up"] = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    killer = threading.Thread(target=kill_then_restart)
    killer.start()
    try:
        result = sweep.run(spec, verbose=0)
        ended = time.monotonic()
    finally:
        killer.join(timeout=180)
    assert not errors, errors
    assert "down" in outage and "up" in outage
    # Down for the budget and more; whether the server came back before the trials ended
    # or while the sweep's end waited for the writer depends on the machine's speed.
    print(f"server down {outage['up'] - outage['down']:.0f}s, back "
          f"{'before' if outage['up'] < ended else 'after'} the trials ended")
    assert result.pending == 0 and result.spool is None

    # The outage outlasted the budget, so records went through the spool and came back.
    spools = list(Path(spec.storage).rglob(spool.SPOOL_NAME))
    assert len(spools) == 1
    lines = [json.loads(line) for line in spools[0].read_text().splitlines()]
    assert any("op" in line for line in lines) and any("acked" in line for line in lines)
    assert spool.read(spools[0])[2] == []

    client = MlflowClient(server.url)
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"
    kids = children(client, result.parent_run_id)
    reports = tune_reports(Path(spec.storage))
    assert len(kids) == len(reports) == 4
    assert result.runs == {r.data.tags["gradtune.trial_id"]: r.info.run_id for r in kids}
    for run in kids:
        trial_id = run.data.tags["gradtune.trial_id"]
        record = result.ledger.records[trial_id]
        assert run.data.tags["gradtune.outcome"] == record.outcome.value
        assert run.info.status == tracking.RUN_STATUS[record.outcome]
        for name in ("train_loss", "grad_norm"):
            told: set[int] = set()
            for r in sorted(reports[trial_id], key=lambda r: r["step"]):
                # a verdict's report also carries its last steps: those after the steps
                # already logged are logged at their own steps
                told |= {int(row[0]) for row in r.get(outcome.WINDOW) or () if int(row[0]) > max(told, default=0)}
                told |= {r["step"]} if name in r else set()
            history = client.get_metric_history(run.info.run_id, name)
            steps = [m.step for m in history]
            assert len(steps) == len(set(steps)) and set(steps) == told, (trial_id, name)
