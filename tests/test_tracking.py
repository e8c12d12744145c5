"""MLflow naming, end-of-trial tags and metric extraction (no MLflow server needed)."""

from __future__ import annotations

import math

from gradtune import tracking
from gradtune.outcome import Ledger, Outcome, Verdict


def test_run_name_is_readable():
    name = tracking.run_name({"norm": "layer", "clip_method": "norm", "clip_threshold": 1.0,
                              "init_scale": 2.0, "batch_size": 64})
    assert name == "norm=layer clip=norm@1 init=2 bs=64"
    assert tracking.run_name({"norm": "none", "clip_method": "none", "init_scale": 0.5,
                              "batch_size": 16}) == "norm=none clip=none init=0.5 bs=16"


def test_end_tags_say_the_outcome_why_and_where():
    ledger = Ledger()
    ledger.judge("a", Verdict("grad_norm 1e5 is 1e4x the cohort median at step 20", 20))
    diverged = ledger.end("a", {}, {"step": 20, "final": 0, "node_id": "n1"})
    tags = {t.key: t.value for t in tracking.end_tags(diverged)}
    assert tags == {"gradtune.outcome": "diverged", "gradtune.divergence_step": "20",
                    "gradtune.divergence_reason": "grad_norm 1e5 is 1e4x the cohort median at step 20",
                    "gradtune.node_id": "n1"}
    pruned = ledger.end("b", {}, {"step": 10, "final": 0})
    assert {t.key: t.value for t in tracking.end_tags(pruned)} == {"gradtune.outcome": "pruned"}
    assert {tracking.RUN_STATUS[o] for o in Outcome} == {"FINISHED", "KILLED", "FAILED"}
    assert tracking.RUN_STATUS[Outcome.FAILED] == "FAILED" and tracking.RUN_STATUS[Outcome.PRUNED] == "KILLED"


def test_metrics_are_logged_against_the_training_step_and_keep_nan():
    result = {"step": 40, "train_loss": math.nan, "grad_norm": math.inf, "val_accuracy": 0.5,
              "training_iteration": 4, "time_total_s": 1.0, "node_id": "abc", "final": 1,
              "divergence_reason": "loss is nan", "diverged": 1}
    metrics = {m.key: m for m in tracking.metrics_of(result, 0)}
    assert set(metrics) == {"train_loss", "grad_norm", "val_accuracy", "diverged"}
    assert all(m.step == 40 for m in metrics.values())
    assert math.isnan(metrics["train_loss"].value) and math.isinf(metrics["grad_norm"].value)


def test_credentials_in_the_tracking_uri_are_not_logged():
    assert tracking.redact("https://alice:s3cret@mlflow.example.com/") == "https://***@mlflow.example.com/"
    assert tracking.redact("postgresql+psycopg2://u:p@db:5432/m") == "postgresql+psycopg2://***@db:5432/m"
    assert tracking.redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert tracking.redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_relative_sqlite_uri_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking.resolve_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert tracking.resolve_uri("http://h:5000") == "http://h:5000"


def test_end_tags_say_why_a_trial_failed_and_how_often():
    ledger = Ledger()
    failed = ledger.end("f", {}, {"step": 10}, errored=True, error="ValueError: boom", failures=3)
    tags = {t.key: t.value for t in tracking.end_tags(failed)}
    assert tags == {"gradtune.outcome": "failed", "gradtune.failure": "ValueError: boom",
                    "gradtune.failures": "3"}
    retried = ledger.end("r", {}, {"step": 40, "final": 1}, failures=1)
    assert {t.key: t.value for t in tracking.end_tags(retried)} == {
        "gradtune.outcome": "completed", "gradtune.failures": "1"}


def test_healthy_checkpoint_step_is_not_a_metric():
    assert not tracking.metrics_of({"step": 30, "healthy_checkpoint_step": 10}, 0)
