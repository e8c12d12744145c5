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
        assert verdict.step == 7 and verdict.reason.endswith(("nan", "inf"))


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


STILL = [1e-3] * 20  # update/weight ratios of weights that barely move


def test_loss_blowup_far_above_chance_stuck():
    ref = math.log(10)
    flat = signals.loss_blowup(30, [1e6] * 20, STILL, ref, factor=100, steps_left=270)
    assert flat is not None and "not falling" in flat.reason
    slow = [1e10 * 0.97**i for i in range(20)]  # needs ~600 more steps to reach 230
    verdict = signals.loss_blowup(30, slow, STILL, ref, factor=100, steps_left=270)
    assert verdict is not None and "270 steps left" in verdict.reason


def test_loss_blowup_leaves_a_fast_recovery_alone():
    ref = math.log(10)
    fast = [1e9 * 0.6**i for i in range(20)]  # clipping at work: down to chance in ~20 steps
    assert signals.loss_blowup(30, fast, STILL, ref, factor=100, steps_left=270) is None
    # the same slow fall with more budget left is given its chance
    slow = [1e10 * 0.97**i for i in range(20)]
    assert signals.loss_blowup(30, slow, STILL, ref, factor=100, steps_left=5000) is None


def test_loss_blowup_waits_while_the_weights_still_move():
    # Loss in the billions, but each update moves the weights 2% of their norm: over 270
    # steps they can change completely (such nets often collapse back to chance).
    moving = [0.02] * 20
    assert signals.loss_blowup(30, [1e9] * 20, moving, math.log(10), 100, 270) is None
    # unknown ratios (tracking off): judged on the loss alone
    assert signals.loss_blowup(30, [1e9] * 20, [NAN] * 20, math.log(10), 100, 270) is not None


def test_loss_blowup_quiet_on_spikes_stalls_and_bad_input():
    ref = math.log(10)
    spike = [2.0] * 10 + [1e6] + [2.0] * 9
    assert signals.loss_blowup(9, spike, STILL, ref, factor=100, steps_left=100) is None
    assert signals.loss_blowup(9, [ref] * 20, STILL, ref, factor=100, steps_left=100) is None  # stalled at chance
    for losses in ([], [NAN] * 5, [1e9, INF]):
        assert signals.loss_blowup(1, losses, STILL, ref, factor=10, steps_left=100) is None
    assert signals.loss_blowup(1, [1e9] * 5, STILL, NAN, factor=10, steps_left=100) is None


def test_loss_vs_best():
    ref = math.log(10)
    assert signals.loss_vs_best(9, [5.0] * 20, best=0.1, reference=ref, factor=10) is not None
    # far above its best but still below chance: a loss spike, not divergence
    assert signals.loss_vs_best(9, [2.0] * 20, best=0.1, reference=ref, factor=10) is None
    assert signals.loss_vs_best(9, [5.0] * 20, best=INF, reference=ref, factor=10) is None


def test_update_ratio_judges_a_single_step():
    assert signals.update_ratio(1, 2.3, limit=1.0) is not None
    assert signals.update_ratio(1, INF, limit=1.0) is not None
    assert signals.update_ratio(1, 0.5, limit=1.0) is None
    assert signals.update_ratio(1, NAN, limit=1.0) is None


def test_cohort_outlier():
    rising = dict(previous=1e4, factor=1e3, min_trials=3)
    assert signals.cohort_outlier(10, 5e4, cohort=[1, 2, 3, 4], **rising) is not None
    assert signals.cohort_outlier(10, 50, cohort=[1, 2, 3, 4], **rising) is None
    assert signals.cohort_outlier(10, 5e4, cohort=[1, 2], **rising) is None
    assert signals.cohort_outlier(10, 5e4, cohort=[1, 2, NAN, INF], **rising) is None
    assert signals.cohort_outlier(10, NAN, cohort=[1, 2, 3], **rising) is None
    assert signals.cohort_outlier(10, INF, cohort=[1, 2, 3], **rising) is not None
    # huge but falling since the last report (clipping at work), or no trend yet: no verdict
    assert signals.cohort_outlier(10, 5e4, 1e6, [1, 2, 3], factor=1e3, min_trials=3) is None
    assert signals.cohort_outlier(10, 5e4, None, [1, 2, 3], factor=1e3, min_trials=3) is None


CHANCE = math.log(10)


def run_monitor(losses, norms, cfg=None, ref=CHANCE, ratios=None):
    monitor = signals.Monitor(cfg or DivergenceSpec(), reference_loss=ref, budget=len(losses))
    ratios = ratios or [1e-3] * len(losses)
    for step, (loss, norm, ratio) in enumerate(zip(losses, norms, ratios), start=1):
        verdict = monitor.update(step, loss, norm, ratio)
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


def test_monitor_stops_an_update_that_overwrites_the_weights_at_step_1():
    verdict = run_monitor([1e10, NAN], [1e11, NAN], ratios=[1e8, NAN])
    assert verdict is not None and verdict.step == 1 and "update" in verdict.reason


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


def test_monitor_catches_a_loss_climbing_while_the_weights_churn():
    # Seen with rnn_adding under fp16 + autoclip: the loss climbs from 12 to ~3700 (chance
    # 0.167) over 200 steps while every update moves the weights ~20% of their norm. The
    # stuck-loss rule lets it run (the weights could still move far), the gradient rules see
    # no explosion; the loss-vs-best rule stops it once it sits 10x above its best.
    # Window means of that trial's reports, every 10 steps (step 0: the initial loss).
    means = [12, 30, 65, 212, 308, 401, 707, 554, 201, 236, 960, 1005, 1488, 1933, 2404, 2706,
             2789, 2794, 3021, 3428, 3698]
    losses = [means[i // 10] * (means[i // 10 + 1] / means[i // 10]) ** (i % 10 / 10)
              for i in range(200)]
    norms = [70.0 * (1 + i / 20) for i in range(200)]
    verdict = run_monitor(losses, norms, ref=1 / 6, ratios=[0.2] * 200)
    assert verdict is not None and verdict.step < 100 and "best" in verdict.reason


def test_monitor_leaves_a_short_loss_spike_alone():
    # A 10-step spike to 30x the best, then back: shorter than the window, no verdict.
    n = 300
    losses = [2.3 * math.exp(-i / 50) + 0.05 for i in range(n)]
    for i in range(150, 160):
        losses[i] = 30 * losses[149]
    assert run_monitor(losses, [3.0] * n) is None
