"""The MLflow server path: a sweep logging over HTTP to a real ``mlflow server``.

The server is configured as deployed (``k8s/base/mlflow``): the basic-auth app, a
PostgreSQL backend store and auth database (``postgresql+psycopg2://``), proxied artifacts
(``--serve-artifacts --artifacts-destination``), on 127.0.0.1. Each run gets fresh,
uniquely named databases, dropped afterwards. PostgreSQL is looked up at 127.0.0.1:5432
(user ``postgres``, then ``root``) or at ``GRADTUNE_TEST_POSTGRES`` (a libpq URI to a
maintenance database; setting it makes PostgreSQL required); when no server listens, the
test falls back to SQLite and says so in a warning.

The sweep runs as a subprocess with the credentials in ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` and a private local Ray; everything is then read back through
``MlflowClient`` over HTTP: the parent run and its spec parameters, each child's params,
tags and metric history against the training step, and the ``spec.yaml`` artifact through
the server's artifact proxy.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import warnings
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from gradtune.outcome import OUTCOMES
from tests._servers import (
    MlflowServer,
    clean_env,
    find_postgres,
    gradtune,
    postgres_databases,
    run_watched,
)

pytestmark = pytest.mark.e2e

STEPS, REPORT_EVERY, TRIALS = 30, 10, 4


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    admin_dsn, why = find_postgres()
    if admin_dsn is None:
        warnings.warn(f"PostgreSQL is not reachable ({why}); the MLflow server test runs on "
                      "SQLite instead", stacklevel=1)
        print(f"MLflow server test: SQLite backend (PostgreSQL not reachable: {why})")
        with MlflowServer(root, f"sqlite:///{root / 'mlflow.db'}",
                          f"sqlite:///{root / 'auth.db'}") as srv:
            yield srv
        return
    print(f"MLflow server test: PostgreSQL backend via {admin_dsn}")
    with postgres_databases(admin_dsn, "", "_auth") as (backend_uri, auth_uri):
        with MlflowServer(root, backend_uri, auth_uri) as srv:
            yield srv


def sweep_env(tmp_path, **extra: str) -> dict[str, str]:
    """A private local Ray (never a cluster found on the machine) with its own token file,
    so ~/.ray/auth_token is neither read nor written."""
    token = tmp_path / "ray_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    return clean_env(RAY_ADDRESS="local", RAY_AUTH_MODE="token",
                     RAY_AUTH_TOKEN_PATH=str(token), **extra)


def test_sweep_logs_to_the_tracking_server_over_http(server, tmp_path, monkeypatch):
    proc = run_watched(
        gradtune("sweep", "--tracking-uri", server.url, "--experiment", "over-http",
                 "--trials", str(TRIALS), "--set", f"training.steps={STEPS}",
                 "--set", f"training.report_every={REPORT_EVERY}",
                 "--set", "search.max_concurrent=2", "--storage", str(tmp_path / "results")),
        env=sweep_env(tmp_path, **server.client_env()), cwd=tmp_path, timeout=240,
        log=tmp_path / "sweep.log",
    )
    assert proc.returncode == 0, proc.stdout[-6000:]
    parent_id = re.search(r"parent run ([0-9a-f]{32})", proc.stdout).group(1)
    # The client wrote nothing locally: no file store, no artifacts beside the sweep.
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()

    for name, value in server.client_env().items():
        monkeypatch.setenv(name, value)
    client = MlflowClient(server.url)
    exp = client.get_experiment_by_name("over-http")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parent = client.get_run(parent_id)
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]

    # The parent: the sweep, its spec as parameters and as the spec.yaml artifact.
    assert parent.data.tags["gradtune.role"] == "sweep"
    assert parent.info.status == "FINISHED"
    assert parent.data.params["training.steps"] == str(STEPS)
    assert parent.data.params["search.trials"] == str(TRIALS)
    spec_text = Path(client.download_artifacts(parent.info.run_id, "spec.yaml", str(tmp_path))).read_text()
    assert f"uri: {server.url}" in spec_text
    counts = {o: parent.data.metrics[f"trials_{o}"] for o in OUTCOMES}
    assert sum(counts.values()) == TRIALS and counts["failed"] == 0, counts
    # Artifacts go through the server's proxy into --artifacts-destination.
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:"), parent.info.artifact_uri
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"spec.yaml", "summary.json"} <= artifacts
    spec = yaml.safe_load(open(client.download_artifacts(parent_id, "spec.yaml",
                                                         str(tmp_path))))
    assert spec["training"]["steps"] == STEPS and spec["search"]["trials"] == TRIALS
    stored = list(server.artifacts.glob(f"*/{parent_id}/artifacts/spec.yaml"))
    assert len(stored) == 1, list(server.artifacts.rglob("*"))
    summary = json.loads(open(client.download_artifacts(parent_id, "summary.json",
                                                        str(tmp_path))).read())
    assert {entry["run_id"] for entry in summary["trials"]} == {r.info.run_id for r in kids}
    assert [entry["number"] for entry in summary["trials"]] == list(range(TRIALS))
    assert summary["counts"] == counts

    # The children: one per trial, with params, outcome tags and per-step metrics.
    assert len(kids) == TRIALS
    tune_params = {}
    for path in (tmp_path / "results").glob("*/*/params.json"):
        trial_id = json.loads(path.with_name("result.json").read_text()
                              .splitlines()[-1])["trial_id"]
        tune_params[trial_id] = json.loads(path.read_text())
    for run in kids:
        tags, params = run.data.tags, run.data.params
        assert tags["gradtune.role"] == "trial"
        assert run.info.run_name.startswith(f"{tags['gradtune.outcome']} · norm=")  # renamed at its end
        assert tags["gradtune.node_id"]
        outcome = tags["gradtune.outcome"]
        assert outcome in {"completed", "diverged", "pruned"}, tags
        for name in ("clip_method", "init_scale", "norm", "batch_size", "lr", "optimizer"):
            assert name in params, name
        # Logged params are what Tune ran the trial with.
        sampled = tune_params[tags["gradtune.trial_id"]]
        for name in set(sampled) & set(params):
            assert params[name] == str(sampled[name]), (name, params[name], sampled[name])

        history = client.get_metric_history(run.info.run_id, "train_loss")
        steps = [m.step for m in history]
        assert steps == sorted(set(steps)) and steps, steps
        assert all(0 < s <= STEPS for s in steps)
        if outcome == "completed":
            assert run.info.status == "FINISHED"
            assert steps == list(range(REPORT_EVERY, STEPS + 1, REPORT_EVERY))
            val = client.get_metric_history(run.info.run_id, "val_loss")
            assert [m.step for m in val] == steps
            assert all(math.isfinite(m.value) for m in val)
        elif outcome == "diverged":
            assert run.info.status == "FAILED" and run.info.run_name.startswith("diverged · ")
            assert int(tags["gradtune.divergence_step"]) <= steps[-1]
            assert tags["gradtune.divergence_reason"]
        # train_loss and grad_norm also have a diverged trial's last steps; the rest, reports
        assert [m.step for m in client.get_metric_history(run.info.run_id, "grad_norm")] == steps
        reported = [s for s in steps if s % REPORT_EVERY == 0 or s == steps[-1]]
        for name in ("grad_norm_max", "val_accuracy"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == reported
        # a steady metric (runview.Steady): when it changes, and its first and last reports
        clipped = [m.step for m in client.get_metric_history(run.info.run_id, "clip_fraction")]
        assert set(clipped) <= set(reported) and clipped[0] == reported[0] and clipped[-1] == reported[-1]


def test_a_sweep_without_credentials_is_refused_in_one_line(server, tmp_path):
    """Only the driver talks to MLflow, and it fails fast: exit 2, one line, no trial run."""
    proc = run_watched(
        gradtune("sweep", "--tracking-uri", server.url, "--experiment", "no-credentials",
                 "--trials", "1", "--set", "training.steps=10"),
        env=sweep_env(tmp_path), cwd=tmp_path, timeout=120,
        log=tmp_path / "sweep.log",
    )
    assert proc.returncode == 2, proc.stdout[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stdout[-4000:]
    assert lines[0].startswith(f"error: tracking.uri {server.url}: cannot start the MLflow run")
    assert "401" in lines[0]
    assert "Trial status" not in proc.stdout
