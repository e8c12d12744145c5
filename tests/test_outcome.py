"""The outcome vocabulary: verdicts, outcomes, the ledger and the strict-JSON summary."""

from __future__ import annotations

import json
import math
import pickle

import pytest

from gradtune import outcome
from gradtune.outcome import MAX_ERROR, Ledger, Outcome, Verdict, failure_line


def test_a_verdict_round_trips_through_a_report():
    verdict = Verdict("loss is nan", 17)
    report = {"step": 20, "diverged": 0, **verdict.keys()}
    assert report["diverged"] == 1
    assert outcome.reported_verdict(report) == verdict
    assert outcome.reported_verdict({"step": 20, "diverged": 0}) is None
    assert outcome.reported_verdict(None) is None
    assert outcome.reported_verdict({"step": 9, "diverged": 1}) == Verdict("diverged", 9)


@pytest.mark.parametrize("result, verdict, errored, expected", [
    ({"diverged": 1, "final": 1}, None, False, Outcome.DIVERGED),
    ({"diverged": 0, "final": 1}, None, False, Outcome.COMPLETED),
    ({"diverged": 0, "final": 0}, None, False, Outcome.PRUNED),
    ({"final": 1}, None, True, Outcome.FAILED),
    (None, None, False, Outcome.PRUNED),
    ({"diverged": 0, "final": 0}, Verdict("cohort", 20), False, Outcome.DIVERGED),
    ({"diverged": 0, "final": 1}, Verdict("cohort", 20), True, Outcome.FAILED),
])
def test_outcome_of(result, verdict, errored, expected):
    assert outcome.outcome_of(result, verdict, errored) is expected


def test_outcomes_are_the_mlflow_tag_values():
    assert outcome.OUTCOMES == ("completed", "diverged", "rescued", "pruned", "failed")
    assert str(Outcome.DIVERGED) == "diverged" and Outcome("pruned") is Outcome.PRUNED


def test_the_ledger_ends_each_trial_once_and_keeps_the_first_verdict():
    ledger = Ledger()
    for tid in ("b", "a"):
        ledger.number(tid)
    ledger.judge("a", Verdict("cohort outlier", 20))
    ledger.judge("a", Verdict("later", 30))
    first = ledger.end("a", {"lr": 0.1}, {"step": 20, "final": 0, "val_loss": math.nan, "time_total_s": 3,
                                            "pid": 77})
    again = ledger.end("a", {"lr": 0.2}, {"step": 40, "final": 1}, errored=True)
    assert again is first
    assert first.outcome is Outcome.DIVERGED and first.verdict == Verdict("cohort outlier", 20)
    assert first.number == 1  # seen second
    assert "pid" not in first.result and math.isnan(first.result["val_loss"])
    assert ledger.end("b", {}, {"step": 40, "final": 1, "time_total_s": 4.5}).outcome is Outcome.COMPLETED
    assert ledger.compute_seconds() == 7.5  # Tune's training time of each, summed
    assert ledger.counts() == {"completed": 1, "diverged": 1, "rescued": 0, "pruned": 0, "failed": 0}
    assert [r.trial_id for r in ledger.ordered()] == ["b", "a"]
    clone = pickle.loads(pickle.dumps(ledger))  # Tune checkpoints what holds it
    assert clone.verdicts == ledger.verdicts and clone.counts() == ledger.counts()
    assert clone.records["b"] == ledger.records["b"] and clone.numbers == ledger.numbers


@pytest.mark.parametrize("mode, best", [("min", "low"), ("max", "high")])
def test_best_is_the_completed_trial_with_the_best_finite_objective(mode, best):
    ledger = Ledger()
    ledger.end("low", {}, {"final": 1, "val_loss": 0.1})
    ledger.end("high", {}, {"final": 1, "val_loss": 0.9})
    ledger.end("nan", {}, {"final": 1, "val_loss": math.nan})
    ledger.end("pruned", {}, {"final": 0, "val_loss": 0.01 if mode == "min" else 5.0})
    ledger.end("diverged", {}, {"final": 1, "diverged": 1, "val_loss": 0.0 if mode == "min" else 9.0})
    record = ledger.best("val_loss", mode)
    assert record is not None and record.trial_id == best
    assert Ledger().best("val_loss", mode) is None


def test_the_summary_is_strict_json_in_number_order_with_counts_and_best_on_top():
    ledger = Ledger()
    ledger.end("t0", {"init_scale": 4.0}, {"final": 1, "diverged": 1, "divergence_reason": "loss is inf",
                                           "divergence_step": 3, "train_loss": math.inf, "val_loss": math.nan})
    ledger.end("t1", {"init_scale": 1.0}, {"final": 1, "val_loss": 0.2})
    summary = ledger.summary("val_loss", "min", {"t1": "run-1"})
    text = json.dumps(summary, allow_nan=False)  # raises on a bare NaN
    back = json.loads(text)
    assert list(back) == ["counts", "objective", "best", "trials"]
    assert back["best"]["trial_id"] == "t1" and back["best"]["run_id"] == "run-1"
    assert [t["number"] for t in back["trials"]] == [0, 1]
    assert back["trials"][0]["result"]["train_loss"] is None
    assert back["trials"][0]["divergence"] == {"reason": "loss is inf", "step": 3}
    assert back["trials"][0]["run_id"] is None


def test_finite():
    assert outcome.finite(1) == 1.0 and outcome.finite(0.5) == 0.5
    assert outcome.finite(math.nan) is None and outcome.finite(-math.inf) is None
    assert outcome.finite(True) is None and outcome.finite("1") is None


def test_a_failed_trial_keeps_its_reason_on_one_line_and_its_failures():
    ledger = Ledger()
    record = ledger.end("t", {}, {"step": 10}, errored=True, error="ValueError: boom\n  at line 3",
                        failures=3)
    assert record.outcome is Outcome.FAILED and record.error == "ValueError: boom at line 3"
    assert record.failures == 3
    assert record.to_json()["error"] == "ValueError: boom at line 3" and record.to_json()["failures"] == 3
    retried = ledger.end("r", {}, {"step": 40, "final": 1}, error="worker died", failures=1)
    assert retried.outcome is Outcome.COMPLETED and retried.error is None and retried.failures == 1
    assert "error" not in retried.to_json() and retried.to_json()["failures"] == 1
    assert ledger.end("n", {}, None, errored=True).error == "failed (no error recorded)"
    assert failure_line("x" * 400) == "x" * (MAX_ERROR - 3) + "..."
