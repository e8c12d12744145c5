"""The end-of-sweep terminal summary, from a ledger filled by hand: no Ray, no MLflow."""

from __future__ import annotations

import math

from gradtune import summary
from gradtune.outcome import Ledger, Verdict
from gradtune.spec import SweepSpec
from gradtune.sweep import SweepResult


def sweep_result(ledger: Ledger, uri: str = "sqlite:////tmp/x/mlflow.db") -> SweepResult:
    return SweepResult(spec=SweepSpec(), tracking_uri=uri, experiment="quickstart", parent_run_id="p1",
                       storage="/tmp/x", ledger=ledger, runs={"good": "run-good"}, seconds=12.3,
                       experiment_id="4")


RUNS = "/#/experiments/4/runs?workflowType=machine_learning"


def test_summary_counts_reasons_best_and_ui_command():
    ledger = Ledger()
    ledger.end("good", {"norm": "layer", "init_scale": 1.0}, {"final": 1, "val_loss": 0.15, "val_accuracy": 0.96})
    ledger.end("worse", {"norm": "none", "init_scale": 0.5}, {"final": 1, "val_loss": 0.4})
    ledger.judge("boom", Verdict("grad_norm 1e5 is 1e4x the cohort median at step 20", 20))
    ledger.end("boom", {"norm": "none", "init_scale": 4.0}, {"final": 0, "val_loss": math.nan})
    text = summary.render(sweep_result(ledger))
    lines = text.splitlines()
    assert "gradtune sweep 'quickstart': 3 trials in 12s" in lines
    assert "  completed: 2  diverged: 1  rescued: 0  pruned: 0  failed: 0" in lines
    assert "    diverged at step 20: grad_norm 1e5 is 1e4x the cohort median at step 20" in lines
    assert "  best trial (val_loss min): val_loss=0.15, val_accuracy=0.96" in lines
    assert "    norm=layer, init_scale=1" in lines and "    MLflow run run-good" in lines
    assert lines[-2:] == ["  open the UI: python -m gradtune ui --tracking-uri sqlite:////tmp/x/mlflow.db",
                          "    then the runs table: http://127.0.0.1:5000" + RUNS]


def test_summary_without_a_finite_completed_trial_and_many_divergences():
    ledger = Ledger()
    for i in range(7):
        ledger.end(f"t{i}", {}, {"final": 1, "diverged": 1, "divergence_reason": f"loss is nan ({i})",
                                 "divergence_step": i + 1})
    text = summary.render(sweep_result(ledger, uri="http://127.0.0.1:5000"))
    assert text.count("    diverged at step") == 5
    assert "    ... and 2 more (tag gradtune.outcome=diverged)" in text
    assert "  no trial completed with a finite val_loss" in text
    assert text.splitlines()[-1] == "  open the UI: http://127.0.0.1:5000" + RUNS


def test_summary_names_records_left_unsent_and_the_sync_command():
    ledger = Ledger()
    ledger.end("good", {"norm": "layer"}, {"final": 1, "val_loss": 0.15})
    result = sweep_result(ledger, uri="http://127.0.0.1:5000")
    result.runs, result.pending, result.spool = {}, 17, "/tmp/x/my sweep/mlflow-spool.jsonl"
    lines = summary.render(result).splitlines()
    assert "    MLflow run not created yet (see below)" in lines
    assert lines[-3:] == [
        "  MLflow: 17 records not sent (the server did not answer); they are in",
        "    /tmp/x/my sweep/mlflow-spool.jsonl; send them with:",
        "    python -m gradtune sync '/tmp/x/my sweep/mlflow-spool.jsonl' --tracking-uri http://127.0.0.1:5000",
    ]


def test_summary_lists_failed_trials_with_their_reason():
    ledger = Ledger()
    ledger.end("good", {"norm": "layer"}, {"final": 1, "val_loss": 0.2})
    ledger.end("bad", {}, {"step": 10}, errored=True, error="ValueError: boom at batch 12", failures=3)
    ledger.end("lost", {}, {"step": 5}, errored=True, error="worker died (ActorDiedError): exit code 2")
    lines = summary.render(sweep_result(ledger)).splitlines()
    assert "  completed: 1  diverged: 0  rescued: 0  pruned: 0  failed: 2" in lines
    assert "    failed: ValueError: boom at batch 12" in lines
    assert "    failed: worker died (ActorDiedError): exit code 2" in lines


def test_summary_states_the_wall_time_against_the_ideal():
    ledger = Ledger()
    for trial_id, seconds in (("a", 30.0), ("b", 50.0), ("c", math.nan)):
        ledger.end(trial_id, {}, {"final": 1, "time_total_s": seconds})
    result = sweep_result(ledger)
    result.workers = 2
    assert result.ideal_seconds() == 40.0  # (30 + 50) / 2; a NaN time counts nothing
    first = summary.render(result, wall=46.0).splitlines()[1]
    assert first == ("gradtune sweep 'quickstart': 3 trials in 46s; 1.15x the ideal 40s "
                     "(trials' compute 80s over 2 workers)")
    assert summary.render(sweep_result(Ledger())).splitlines()[1] == "gradtune sweep 'quickstart': 0 trials in 12s"


def test_summary_states_what_tracking_and_the_report_cost():
    result = sweep_result(Ledger())
    result.tracking_s = 2.5
    assert summary.render(result, wall=50.0).endswith("  MLflow tracking and the report took 2.5s (5.0% of the wall)")
    result.report_s = 2.0
    assert ("  MLflow tracking and the report took 2.5s (5.0% of the wall); the report's 2.0s ran "
            "beside Ray's shutdown") in summary.render(result, wall=50.0)
    result.tracking_s = 0.0
    assert "MLflow tracking" not in summary.render(result, wall=50.0)


def test_rescued_trials_are_counted_and_listed_with_their_lineage_and_never_best():
    ledger = Ledger()
    lineage = '[{"attempt": 1, "from_step": 120, "to_step": 80, "remedy": "lr x0.5", "reason": "r"}]'
    ledger.end("saved", {"norm": "none"}, {"final": 1, "val_loss": 0.1, "rescue_attempts": 1, "rescues": lineage})
    ledger.end("good", {"norm": "layer"}, {"final": 1, "val_loss": 0.3})
    lines = summary.render(sweep_result(ledger)).splitlines()
    assert "  completed: 1  diverged: 0  rescued: 1  pruned: 0  failed: 0" in lines
    assert "    rescued: 120->80 lr x0.5; val_loss=0.1" in lines
    assert "  best trial (val_loss min): val_loss=0.3" in lines  # the configuration as proposed diverged
