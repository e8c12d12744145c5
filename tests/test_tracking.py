"""MLflow naming, end-of-trial tags and metric extraction (no MLflow server needed); one
sweep's records against a local SQLite store, read back as a person sees them (no Ray)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from gradtune import note, onset, outcome, tracking
from gradtune.outcome import Ledger, Outcome, Verdict
from gradtune.spec import SweepSpec
from tests import _tables


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
    # red in the runs table: a diverged trial must not look like a completed one
    assert tracking.RUN_STATUS[Outcome.DIVERGED] == "FAILED" and tracking.RUN_STATUS[Outcome.COMPLETED] == "FINISHED"


def test_metrics_are_logged_against_the_training_step_and_keep_nan():
    result = {"step": 40, "train_loss": math.nan, "grad_norm": math.inf, "val_accuracy": 0.5,
              "training_iteration": 4, "time_total_s": 1.0, "node_id": "abc", "final": 1,
              "divergence_reason": "loss is nan", "diverged": 1}
    metrics = {m.key: m for m in tracking.metrics_of(result, 0)}
    assert set(metrics) == {"train_loss", "grad_norm", "val_accuracy", "diverged"}  # no log10 of nan/inf
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


def test_heavy_tailed_metrics_get_log10_companions():
    result = {"step": 10, "train_loss": 2.0, "grad_norm": 1e18, "update_ratio": 0.0, "val_loss": 100.0}
    metrics = {m.key: m.value for m in tracking.metrics_of(result, 0)}
    assert metrics["log10_grad_norm"] == 18.0 and metrics["log10_train_loss"] == math.log10(2.0)
    assert "log10_update_ratio" not in metrics  # no log of 0 (nor of nan, inf, < 0)
    assert "log10_val_loss" not in metrics  # val_loss is not heavy-tailed


def test_ended_runs_are_named_by_their_outcome_first():
    params = {"norm": "none", "clip_method": "none", "init_scale": 3.2, "batch_size": 64}
    assert tracking.ended_name(Outcome.DIVERGED, params) == "diverged · norm=none clip=none init=3.2 bs=64"
    assert tracking.ended_name(Outcome.COMPLETED, params).startswith("completed · norm=none")


def test_steady_metrics_are_sent_when_they_change_and_at_the_end():
    steady = tracking.Steady()
    sent = []
    for step, lr, diverged, loss in [(10, 0.1, 0.0, 2.0), (20, 0.1, 0.0, 1.5), (30, 0.1, 0.0, 1.2),
                                     (40, 0.01, 0.0, 1.1), (50, 0.01, 1.0, math.nan)]:
        sent += steady([tracking.Point("lr", lr, 0, step), tracking.Point("diverged", diverged, 0, step),
                        tracking.Point("train_loss", loss, 0, step)])
    sent += steady.rest()
    by_key = {k: [(p.step, p.value) for p in sent if p.key == k] for k in ("lr", "diverged")}
    # the last point of the old value goes out before the new one: a step, not a slope
    assert by_key["lr"] == [(10, 0.1), (30, 0.1), (40, 0.01), (50, 0.01)]
    assert by_key["diverged"] == [(10, 0.0), (40, 0.0), (50, 1.0)]
    assert [p.step for p in sent if p.key == "train_loss"] == [10, 20, 30, 40, 50]  # not steady: all
    assert steady.rest() == []
    nan = tracking.Steady()
    assert len(nan([tracking.Point("lr", math.nan, 0, 1)]) + nan([tracking.Point("lr", math.nan, 0, 2)])) == 2


def test_parent_name_is_unique_and_says_spec_and_experiment():
    spec = SweepSpec()
    one, two = tracking.parent_name(spec, "team", 0.0), tracking.parent_name(spec, "team", 0.0)
    assert one.startswith("sweep quickstart in team · ") and one != two
    assert tracking.parent_name(spec, "quickstart").startswith("sweep quickstart · ")
    params = tracking.parent_params(spec)
    assert params["training.steps"] == "300"
    assert params["searched"] == "clip_method,clip_threshold,init_scale,norm,batch_size"
    assert len(params) <= 10 and "tracking.uri" not in params


def _trial(trial_id, last_result, **config):
    return SimpleNamespace(trial_id=trial_id, config=config, last_result=last_result, num_failures=0)


@pytest.mark.slow  # an MLflow store, real training or every figure: seconds
def test_a_sweep_as_mlflow_shows_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ledger = Ledger()
    tracker = tracking.MLflowTracking(SweepSpec(), uri, "exp", ledger, spool=str(tmp_path / "spool.jsonl"),
                                      drain_s=30)
    parent = tracker.start()
    good = _trial("good", None, norm="layer", init_scale=1.0)
    boom = _trial("boom", None, norm="none", init_scale=4.0)
    for t in (good, boom):
        tracker.on_trial_start(0, [], t)
    for step in (10, 20, 30):
        tracker.on_trial_result(0, [], good, {"step": step, "grad_norm": 1.0, "val_loss": 0.5, "lr": 0.1,
                                              "final": int(step == 30)})
    tracker.on_trial_result(0, [], boom, {"step": 10, "grad_norm": 2.0, "train_loss": 1.0})
    window = [[s, 1.0, 10.0 ** s, 0.1] for s in range(5, 16)] + [[16, math.nan, math.inf, math.nan]]
    found = _tables.onset(verdict_step=16)
    last = {"step": 16, "grad_norm": math.inf, "train_loss": math.nan, "final": 1,
            **Verdict("loss is nan", 16).keys(), outcome.WINDOW: window, outcome.ONSET: onset.to_json(found)}
    tracker.on_trial_result(0, [], boom, last)
    tracker.on_trial_result(0, [], boom, last)  # a replayed report: logged once
    good.last_result = {"step": 30, "final": 1, "val_loss": 0.5, "val_accuracy": 0.9}
    boom.last_result = last
    tracker.on_trial_complete(0, [], good)
    tracker.on_trial_complete(0, [], boom)
    assert tracker.traces["boom"][:2] == [(10, 2.0), (11, 1e11)] and tracker.traces["boom"][-1] == (16, math.inf)
    assert tracker.onsets == {"boom": found}  # the report's, as logged
    assert tracker.finish() == 0
    # what tracking cost: the callbacks above, and the writer's thread at work on SQLite
    assert 0 < tracker.busy_s and tracker.busy_s + tracker.writer.cpu_s <= tracker.cost_s
    assert tracker.writer.cpu_s > 0

    client = MlflowClient(uri)
    exp = client.get_experiment(tracker.experiment_id)
    assert exp.tags[note.KIND_TAG] == note.KIND_ML
    ids = tracker.run_ids()
    d, g = client.get_run(ids["boom"]), client.get_run(ids["good"])
    assert d.info.run_name == "diverged · norm=none clip=none init=4 bs=64" and d.info.status == "FAILED"
    assert d.data.tags["gradtune.outcome"] == "diverged" and d.data.tags["gradtune.divergence_step"] == "16"
    assert g.info.run_name.startswith("completed · norm=layer") and g.info.status == "FINISHED"
    history = client.get_metric_history(ids["boom"], "grad_norm")
    steps = [m.step for m in history]
    assert steps == [10, *range(11, 16), 16]  # window points after step 10, none at 5..10 again
    assert [m.value for m in history][1] == 1e11
    # a constant learning rate: its first and last points draw the same line as all three
    assert [(m.step, m.value) for m in client.get_metric_history(ids["good"], "lr")] == [(10, 0.1), (30, 0.1)]
    assert [m.step for m in client.get_metric_history(ids["good"], "grad_norm")] == [10, 20, 30]
    logs = {m.step: m.value for m in client.get_metric_history(ids["boom"], "log10_grad_norm")}
    assert logs[11] == 11.0 and 16 not in logs
    p = client.get_run(parent)
    assert p.data.metrics["best_val_loss"] == 0.5 and p.data.metrics["trials_diverged"] == 1
    text = p.data.tags[note.NOTE_TAG]
    assert f"(#/experiments/{tracker.experiment_id}/runs/{ids['good']})" in text
    assert "| loss is nan | 1 | 16 |" in text and "run-" not in text
    assert "tracking.uri" not in p.data.params and p.data.params["search.metric"] == "val_loss"

    # --resume: the renamed, FAILED run is found again by its trial id and continued; its
    # new end names it by its outcome once (no prefix on a prefix).
    again = tracking.MLflowTracking(SweepSpec(), uri, "exp", Ledger(), spool=str(tmp_path / "spool.jsonl"))
    again.reopen(parent)
    assert again.run_ids()["boom"] == ids["boom"] and again.logged_step["boom"] == 16
    assert again.traces["boom"][0] == (10, 2.0)
    assert again.onsets == {"boom": found} and again.onset_tagged == {"boom"}  # read back: tagged runs only
    again.on_trial_start(0, [], boom)
    again.on_trial_complete(0, [], boom)
    again.finish()
    d = client.get_run(ids["boom"])
    assert d.info.run_name == "diverged · norm=none clip=none init=4 bs=64" and d.info.status == "FAILED"


@pytest.mark.slow  # an MLflow store: seconds
def test_a_resume_ends_a_run_whose_end_the_killed_driver_never_sent(tmp_path):
    """Tune's saved state says the trial ended, but ``kill -9`` took its end (queued in the
    writer) with it: the run is RUNNING in the store and Tune will not run the trial again.
    The resumed sweep ends it as the saved ledger says, with its last reported metrics."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ledger = Ledger()
    first = tracking.MLflowTracking(SweepSpec(), uri, "exp", ledger, drain_s=30)
    parent = first.start()
    lost = _trial("lost", None, norm="none", init_scale=4.0)
    first.on_trial_start(0, [], lost)
    first.on_trial_result(0, [], lost, {"step": 10, "grad_norm": 2.0, "train_loss": 1.0})
    first.writer.close(30)  # what reached the store before the kill
    last = {"step": 20, "grad_norm": math.inf, "train_loss": math.nan, "final": 1, **Verdict("loss is nan", 20).keys()}
    ledger.end("lost", {"norm": "none"}, last)  # ... and what Tune's experiment checkpoint holds
    client = MlflowClient(uri)
    run_id = first.run_ids()["lost"]
    assert client.get_run(run_id).info.status == "RUNNING"

    again = tracking.MLflowTracking(SweepSpec(), uri, "exp", Ledger())
    again.reopen(parent)
    again.set_state({"ledger": ledger, "ended": {"lost"}})
    again.finish()
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["gradtune.outcome"] == "diverged"
    assert run.data.tags["gradtune.divergence_step"] == "20" and run.info.run_name.startswith("diverged · ")
    assert [m.step for m in client.get_metric_history(run_id, "grad_norm")] == [10, 20]
    assert client.get_run(parent).info.status == "FINISHED"
