"""The driver-side scheduler, called directly with result dicts: no Ray cluster needed."""

from __future__ import annotations

import math
import pickle
from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from gradtune.outcome import Ledger, Outcome, Verdict
from gradtune.scheduler import DivergenceScheduler
from gradtune.spec import load

STOP, CONTINUE = TrialScheduler.STOP, TrialScheduler.CONTINUE


def trial(tid):
    return SimpleNamespace(trial_id=tid, status="RUNNING")


def result(step, grad_norm=1.0, val_loss=1.0, **extra):
    return {"step": step, "grad_norm": grad_norm, "val_loss": val_loss, **extra}


def make(**overrides):
    return DivergenceScheduler(load(None, overrides))


def test_stops_a_trial_that_reported_divergence():
    sched = make()
    t = trial("a")
    sched.on_trial_add(None, t)
    reported = result(20, diverged=1, divergence_reason="loss is nan", divergence_step=17)
    decision = sched.on_trial_result(None, t, reported)
    assert decision == STOP
    assert sched.ledger.verdicts["a"] == Verdict("loss is nan", 17)


def test_nonfinite_objective_or_norm_is_a_divergence_not_a_comparison():
    sched = make(**{"divergence.scheduler": "median"})
    for tid, r in [("a", result(10, val_loss=math.nan)), ("b", result(10, grad_norm=math.inf))]:
        t = trial(tid)
        sched.on_trial_add(None, t)
        assert sched.on_trial_result(None, t, r) == STOP
        assert tid in sched.ledger.verdicts


def test_cross_trial_rule_stops_the_outlier_at_the_same_step():
    sched = make()
    trials = [trial(str(i)) for i in range(5)]
    for t in trials:
        sched.on_trial_add(None, t)
    for step in (10, 20):
        for t in trials[:4]:
            assert sched.on_trial_result(None, t, result(step, grad_norm=2.0 + int(t.trial_id))) == CONTINUE
    # the outlier's first report has no trend yet; its second, still rising, is stopped
    assert sched.on_trial_result(None, trials[4], result(10, grad_norm=1e4)) == CONTINUE
    assert sched.on_trial_result(None, trials[4], result(20, grad_norm=1e5)) == STOP
    assert "cohort median at step 20" in sched.ledger.verdicts["4"].reason
    # too few peers at another step: no verdict
    assert sched.on_trial_result(None, trials[0], result(30, grad_norm=1e9)) == CONTINUE


def test_cross_trial_rule_spares_a_huge_norm_that_is_coming_down():
    sched = make()
    trials = [trial(str(i)) for i in range(5)]
    for step, norm in ((10, 1e8), (20, 1e6)):
        for t in trials[:4]:
            sched.on_trial_result(None, t, result(step, grad_norm=3.0))
        assert sched.on_trial_result(None, trials[4], result(step, grad_norm=norm)) == CONTINUE


def test_cross_trial_rule_can_be_turned_off():
    sched = make(**{"divergence.cohort_factor": None})
    trials = [trial(str(i)) for i in range(5)]
    for step in (10, 20):
        for t in trials:
            sched.on_trial_result(None, t, result(step, grad_norm=step * 1e4 if t.trial_id == "4" else 2.0))
    assert sched.ledger.verdicts == {}


def test_composes_with_asha_for_stable_but_poor_trials():
    sched = make(**{"divergence.scheduler": "asha", "training.steps": 100, "training.report_every": 10,
                    "divergence.grace_reports": 1})
    good, bad = trial("good"), trial("bad")
    for t in (good, bad):
        sched.on_trial_add(None, t)
    decisions = []
    for step in range(10, 101, 10):
        sched.on_trial_result(None, good, result(step, val_loss=0.1))
        decisions.append(sched.on_trial_result(None, bad, result(step, val_loss=2.0)))
    assert STOP in decisions
    assert "bad" in sched.pruned and "bad" not in sched.ledger.verdicts


def test_state_survives_pickling():
    sched = make(**{"divergence.scheduler": "asha"})
    t = trial("a")
    sched.on_trial_add(None, t)
    sched.on_trial_result(None, t, result(10))
    sched.on_trial_result(None, t, result(20, diverged=1, divergence_reason="x", divergence_step=20))
    clone = pickle.loads(pickle.dumps(sched))
    assert clone.ledger.verdicts == sched.ledger.verdicts == {"a": Verdict("x", 20)}
    assert clone.norms[10] == {"a": 1.0}


def test_a_driver_verdict_reaches_the_shared_ledger_not_the_result():
    """The cross-trial verdict lives in the ledger the searcher and tracking read; the
    result Tune passes on is left as the trial reported it."""
    ledger = Ledger()
    sched = DivergenceScheduler(load(None), ledger=ledger)
    trials = [trial(str(i)) for i in range(5)]
    for t in trials:
        sched.on_trial_add(None, t)
    for step in (10, 20):
        for t in trials[:4]:
            sched.on_trial_result(None, t, result(step, grad_norm=2.0))
    sched.on_trial_result(None, trials[4], result(10, grad_norm=1e4))
    last = result(20, grad_norm=1e5)
    assert sched.on_trial_result(None, trials[4], last) == STOP
    assert "diverged" not in last
    assert ledger.outcome("4", last) is Outcome.DIVERGED and ledger.verdict("4").step == 20
    assert ledger.outcome("0", result(20, final=1)) is Outcome.COMPLETED
    # a late (duplicate) result of a judged trial is stopped again, the first verdict stands
    assert sched.on_trial_result(None, trials[4], result(30, grad_norm=1.0)) == STOP
    assert ledger.verdicts["4"].step == 20
    assert ledger.numbers == {str(i): i for i in range(5)}  # suggestion order


def test_tune_may_only_confirm_the_objective():
    sched = make()
    assert sched.set_search_properties("val_loss", "min")
    assert sched.set_search_properties(None, None)
    assert not sched.set_search_properties("val_accuracy", "max")
