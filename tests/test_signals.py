from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from gradtune import signals
from gradtune.spec import DivergenceSpec

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("loss, norm, fires", [
    (1.0, 1.0, False), (NAN, 1.0, True), (1.0, INF, True), (-INF, 1.0, True), (1e30, 1e30, False),
])
def test_nonfinite(loss, norm, fires):
    verdict = signals.nonfinite(7, loss=loss, grad_norm=norm)
    assert (verdict is not None) == fires
    if fires:
        assert verdict.step == 7 and verdict.diverged


def test_log_slope():
    assert signals.log_slope([1, math.e, math.e**2]) == pytest.approx(1.0)
    assert math.isnan(signals.log_slope([1.0]))
    assert math.isnan(signals.log_slope([]))
    assert math.isnan(signals.log_slope([1, NAN, 2]))
    assert math.isnan(signals.log_slope([1, 0, 2]))


def test_grad_growth_fires_on_sustained_exponential_growth():
    rising = [1.5**i for i in range(20)]  # 1.5^19 ~ 2.2e3x
    verdict = signals.grad_growth(20, rising, factor=1e3)
    assert verdict is not None and "grew" in verdict.reason and "in 20 steps" in verdict.reason
    assert signals.grad_growth(20, rising, factor=1e4) is None


@pytest.mark.parametrize("norms", [
    [1.0] * 20,                              # flat
    [1.0] * 19 + [1e6],                      # one spike: not sustained
    [10.0 * 0.9**i for i in range(20)],      # shrinking
    [1.0, 2.0],                              # too short
    [],                                      # empty
    [1.5**i for i in range(19)] + [NAN],     # non-finite: left to nonfinite()
    [1.5**i for i in range(19)] + [INF],
])
def test_grad_growth_quiet(norms):
    assert signals.grad_growth(1, norms, factor=10) is None


def test_grad_ceiling_is_relative_to_the_trials_own_baseline():
    assert signals.grad_ceiling(5, 2e5, baseline=10.0, factor=1e4) is not None
    # A BatchNorm net with a huge norm from step 1 has a huge baseline too.
    assert signals.grad_ceiling(5, 5e5, baseline=1e5, factor=1e4) is None
    assert signals.grad_ceiling(5, INF, baseline=1.0, factor=1e4) is not None
    assert signals.grad_ceiling(5, NAN, baseline=1.0, factor=1e4) is None
    assert signals.grad_ceiling(5, 1e9, baseline=NAN, factor=1e4) is None
    assert signals.grad_ceiling(5, 1e9, baseline=0.0, factor=1e4) is None


def test_loss_blowup_far_above_chance_for_the_whole_window():
    ref = math.log(10)
    assert signals.loss_blowup(9, [1e6] * 20, ref, best=INF, factor_ref=100, factor_best=INF) is not None
    # a one-step spike that recovers is not a blow-up
    spike = [2.0] * 10 + [1e6] + [2.0] * 9
    assert signals.loss_blowup(9, spike, ref, best=INF, factor_ref=100, factor_best=INF) is None
    # stalled at chance: not divergence
    assert signals.loss_blowup(9, [ref] * 20, ref, best=ref, factor_ref=100, factor_best=10) is None


def test_loss_blowup_relative_to_best():
    ref = math.log(10)
    assert signals.loss_blowup(9, [5.0] * 20, ref, best=0.1, factor_ref=100, factor_best=10) is not None
    # far above its best but still below chance: a loss spike, not divergence
    assert signals.loss_blowup(9, [2.0] * 20, ref, best=0.1, factor_ref=100, factor_best=10) is None


@pytest.mark.parametrize("losses", [[], [NAN] * 5, [1e9, INF]])
def test_loss_blowup_quiet_on_empty_or_nonfinite(losses):
    assert signals.loss_blowup(1, losses, 2.3, best=1.0, factor_ref=10, factor_best=10) is None


def test_update_ratio():
    assert signals.update_ratio(3, [2.0] * 5, limit=1.0) is not None
    assert signals.update_ratio(3, [2.0] * 4 + [0.5], limit=1.0) is None
    assert signals.update_ratio(3, [INF] * 5, limit=1.0) is not None
    assert signals.update_ratio(3, [NAN] * 5, limit=1.0) is None
    assert signals.update_ratio(3, [], limit=1.0) is None


def test_cohort_outlier():
    assert signals.cohort_outlier(10, 5e4, [1, 2, 3, 4], factor=1e3, min_trials=3) is not None
    assert signals.cohort_outlier(10, 50, [1, 2, 3, 4], factor=1e3, min_trials=3) is None
    assert signals.cohort_outlier(10, 5e4, [1, 2], factor=1e3, min_trials=3) is None
    assert signals.cohort_outlier(10, 5e4, [1, 2, NAN, INF], factor=1e3, min_trials=3) is None
    assert signals.cohort_outlier(10, NAN, [1, 2, 3], factor=1e3, min_trials=3) is None
    assert signals.cohort_outlier(10, INF, [1, 2, 3], factor=1e3, min_trials=3) is not None


def run_monitor(losses, norms, cfg=None, ref=math.log(10)):
    monitor = signals.Monitor(cfg or DivergenceSpec(), reference_loss=ref)
    for step, (loss, norm) in enumerate(zip(losses, norms), start=1):
        verdict = monitor.update(step, loss, norm)
        if verdict is not None:
            return verdict
    return None


def test_monitor_nan_fires_at_once_even_in_grace():
    verdict = run_monitor([2.3, NAN], [1.0, 1.0])
    assert verdict is not None and verdict.step == 2 and "loss is nan" in verdict.reason


def test_monitor_catches_exploding_gradients():
    norms = [1.0] * 10 + [1.6**i for i in range(1, 60)]
    verdict = run_monitor([2.3] * len(norms), norms)
    assert verdict is not None and verdict.step < len(norms)


def test_monitor_catches_a_finite_loss_in_the_millions():
    verdict = run_monitor([3e6] * 100, [5e6] * 100)
    assert verdict is not None and "chance" in verdict.reason


def test_monitor_leaves_a_batchnorm_stall_alone():
    # Scale-invariant net: raw grad norm huge from step 1, loss stuck at chance, no NaN.
    n = 300
    norms = [5e4 * (1 + 0.3 * math.sin(i)) for i in range(n)]
    assert run_monitor([math.log(10)] * n, norms) is None


def test_monitor_leaves_healthy_training_alone():
    n = 300
    losses = [2.3 * math.exp(-i / 100) + 0.05 for i in range(n)]
    norms = [3.0 + math.sin(i) for i in range(n)]
    assert run_monitor(losses, norms) is None


def test_monitor_disabled_keeps_only_the_nan_floor():
    cfg = DivergenceSpec(enabled=False)
    assert run_monitor([3e6] * 100, [5e6] * 100, cfg) is None
    assert run_monitor([1.0, INF], [1.0, 1.0], cfg) is not None


def test_monitor_rule_off_by_none():
    cfg = SimpleNamespace(**{**DivergenceSpec().model_dump(), "loss_factor": None})
    assert run_monitor([3e6] * 100, [5.0] * 100, cfg) is None
