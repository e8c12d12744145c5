"""The search learns from divergence: an in-memory Optuna study, no Ray cluster."""

from __future__ import annotations

import math

from optuna.trial import TrialState

from gradtune import searcher
from gradtune.outcome import Ledger, Verdict
from gradtune.spec import load


def make():
    search, _ = searcher.make(load(None, {}))
    return search


def frozen(search, tid):
    number = search._ot_trials[tid].number
    return search._ot_study.get_trials(deepcopy=False)[number]


def test_diverged_trial_is_told_as_infeasible_not_dropped():
    search = make()
    search.suggest("ok")
    search.suggest("bad")
    search.on_trial_result("ok", {"val_loss": 0.5, "training_iteration": 1})
    search.on_trial_complete("ok", {"val_loss": 0.3, "final": 1, "diverged": 0})
    search.on_trial_complete("bad", {"val_loss": math.nan, "final": 1, "diverged": 1})
    ok, bad = frozen(search, "ok"), frozen(search, "bad")
    assert ok.state == TrialState.COMPLETE and ok.constraints == {"diverged": -1.0}
    assert bad.state == TrialState.COMPLETE and bad.constraints == {"diverged": 1.0}
    assert math.isfinite(bad.value) and bad.value >= ok.value


def test_a_verdict_reached_on_the_driver_is_read_from_the_ledger():
    """The scheduler's cross-trial verdict is not in the trial's result; the searcher
    learns it from the sweep's ledger."""
    ledger = Ledger()
    search, _ = searcher.make(load(None, {}), ledger)
    search.suggest("ok")
    search.suggest("outlier")
    search.on_trial_complete("ok", {"val_loss": 0.3, "final": 1, "diverged": 0})
    ledger.judge("outlier", Verdict("grad_norm 1e5 is 1e4x the cohort median at step 20", 20))
    search.on_trial_complete("outlier", {"val_loss": 0.2, "final": 0, "diverged": 0})
    outlier = frozen(search, "outlier")
    assert outlier.state == TrialState.COMPLETE and outlier.constraints == {"diverged": 1.0}
    assert outlier.value == 0.3  # the worst stable objective, not its own better-looking 0.2


def test_first_trial_diverging_still_gets_a_finite_value():
    search = make()
    search.suggest("bad")
    search.on_trial_complete("bad", {"val_loss": math.inf, "diverged": 1})
    assert math.isfinite(frozen(search, "bad").value)


def test_pruned_and_failed_trials():
    search = make()
    for tid in ("pruned", "failed"):
        search.suggest(tid)
    search.on_trial_result("pruned", {"val_loss": 1.5, "training_iteration": 1})
    search.on_trial_complete("pruned", {"val_loss": 1.5, "final": 0, "diverged": 0})
    search.on_trial_complete("failed", None, error=True)
    assert frozen(search, "pruned").state == TrialState.PRUNED
    assert frozen(search, "failed").state == TrialState.FAIL


def test_nonfinite_intermediate_values_never_reach_optuna():
    search = make()
    search.suggest("t")
    search.on_trial_result("t", {"val_loss": math.nan, "training_iteration": 1})
    search.on_trial_result("t", {"val_loss": 0.7, "training_iteration": 2})
    assert frozen(search, "t").intermediate_values == {2: 0.7}


def test_tpe_moves_away_from_the_diverging_region():
    """After diverged trials at init_scale > 2, TPE samples mostly below it."""
    spec = load(None, {"search.space": {"init_scale": {"low": 0.25, "high": 4.0, "log": True}}})
    search, _ = searcher.make(spec)
    late = []
    for i in range(60):
        config = search.suggest(f"t{i}")
        scale = config["init_scale"]
        if scale > 2.0:
            search.on_trial_complete(f"t{i}", {"val_loss": math.nan, "diverged": 1, "final": 1})
        else:
            search.on_trial_complete(f"t{i}", {"val_loss": 1.0 + abs(math.log(scale)), "final": 1})
        if i >= 30:
            late.append(scale > 2.0)
    assert sum(late) / len(late) < 0.2


def test_tpe_is_screened_for_divergence_risk_and_random_is_not():
    from gradtune.feasibility import FeasibleSampler

    assert isinstance(make()._sampler, FeasibleSampler)
    random, _ = searcher.make(load(None, {"search.sampler": "random"}))
    assert not isinstance(random._sampler, FeasibleSampler)


def test_a_rescued_trial_is_told_as_infeasible_like_a_diverged_one():
    """The configuration as proposed diverged; the remedy's objective stays out of the study."""
    search = make()
    search.suggest("ok")
    search.suggest("saved")
    search.on_trial_complete("ok", {"val_loss": 0.9, "final": 1, "diverged": 0})
    search.on_trial_complete("saved", {"val_loss": 0.1, "final": 1, "diverged": 0, "rescue_attempts": 1})
    saved = frozen(search, "saved")
    assert saved.state == TrialState.COMPLETE and saved.constraints == {"diverged": 1.0}
    assert saved.value == 0.9  # the worst feasible objective, not the rescued 0.1
