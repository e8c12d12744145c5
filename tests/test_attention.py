"""``gradtune.attention``: the attention rules on synthetic streams, and the monitor running
them beside the gradient and loss rules."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from gradtune import attention, signals
from gradtune.outcome import ATTN_ENTROPY_MIN, ATTN_LOGIT_MAX
from gradtune.spec import DivergenceSpec

NAN, INF = math.nan, math.inf


def test_logit_runaway_fires_only_when_the_whole_window_is_far_above_the_start():
    verdict = attention.logit_runaway(40, [5e4] * 20, initial=5.0, factor=1e3)
    assert verdict is not None and verdict.step == 40
    assert verdict.reason.startswith("attention logits ran away") and "20 steps" in verdict.reason
    assert attention.logit_runaway(40, [5e4] * 20, initial=5.0, factor=1e4) is None
    # one step back under the limit: not sustained
    assert attention.logit_runaway(40, [5e4] * 19 + [40.0], initial=5.0, factor=1e3) is None


@pytest.mark.parametrize("maxima, initial", [
    ([5e4] * 19 + [NAN], 5.0),   # NaN in the window: left to the non-finite rule on the loss
    ([5e4] * 20, NAN),           # no scale to be relative to
    ([5e4] * 20, INF),
    ([5e4] * 20, 0.0),
    ([5e4] * 20, -3.0),
    ([], 5.0),
])
def test_logit_runaway_quiet_without_a_usable_window_or_start(maxima, initial):
    assert attention.logit_runaway(1, maxima, initial, factor=10) is None


def test_logit_runaway_counts_inf_as_above():
    assert attention.logit_runaway(3, [INF] * 5, initial=5.0, factor=1e3) is not None


def test_entropy_collapse_fires_only_when_the_whole_window_is_near_zero():
    verdict = attention.entropy_collapse(50, [1e-4] * 20, initial=3.0, fraction=1e-2)
    assert verdict is not None and verdict.reason.startswith("attention entropy collapsed")
    assert attention.entropy_collapse(50, [1e-4] * 19 + [0.5], initial=3.0, fraction=1e-2) is None
    # sharp but healthy attention (a sixth of its start) is not a collapse
    assert attention.entropy_collapse(50, [0.5] * 20, initial=3.0, fraction=1e-2) is None
    assert attention.entropy_collapse(50, [0.0] * 20, initial=3.0, fraction=1e-2) is not None


@pytest.mark.parametrize("minima, initial", [
    ([0.0] * 19 + [NAN], 3.0), ([0.0] * 20, NAN), ([0.0] * 20, 0.0), ([0.0] * 20, INF), ([], 3.0),
])
def test_entropy_collapse_quiet_without_a_usable_window_or_start(minima, initial):
    assert attention.entropy_collapse(1, minima, initial, fraction=0.5) is None


def run(logits, entropies, cfg=None, losses=None):
    """The monitor on a healthy loss and gradient stream with these attention signals."""
    n = len(logits)
    monitor = signals.Monitor(cfg or DivergenceSpec(), reference_loss=3.2, budget=n)
    losses = losses or [3.0 - i / (2 * n) for i in range(n)]
    for step, (loss, lg, en) in enumerate(zip(losses, logits, entropies), start=1):
        verdict = monitor.update(step, loss, 1.0, 1e-3, {ATTN_LOGIT_MAX: lg, ATTN_ENTROPY_MIN: en})
        if verdict is not None:
            return verdict
    return None


# The shapes measured on tiny_lm (benchmarks/science_lm.py): at lr 0.3 without qk-norm the
# max logit climbs from ~5 to 1e5 within ~50 steps and the entropy falls from ~3 to ~0.
RUNAWAY_LOGITS = [5.0 * 1.3**min(i, 40) for i in range(300)]
COLLAPSED = [3.0 * 0.8**min(i, 60) for i in range(300)]
# qk-norm at lr 0.3: the logits settle a few times above their start, entropy near 1 nat.
BOUNDED_LOGITS = [5.0 + 30 * (1 - math.exp(-i / 40)) for i in range(300)]
SHARP = [3.0 - 2.2 * (1 - math.exp(-i / 40)) for i in range(300)]


def test_monitor_stops_a_runaway_with_the_attention_reason():
    verdict = run(RUNAWAY_LOGITS, SHARP)
    assert verdict is not None and "attention logits ran away" in verdict.reason
    assert 20 <= verdict.step < 60
    verdict = run(BOUNDED_LOGITS, COLLAPSED)
    assert verdict is not None and "attention entropy collapsed" in verdict.reason


def test_monitor_leaves_bounded_attention_alone():
    assert run(BOUNDED_LOGITS, SHARP) is None


def test_attention_rules_off_by_none_or_with_the_in_trial_rules():
    logit_off = SimpleNamespace(**{**DivergenceSpec().model_dump(), "attn_logit_growth": None})
    verdict = run(RUNAWAY_LOGITS, COLLAPSED, logit_off)
    assert verdict is not None and "entropy" in verdict.reason
    both_off = SimpleNamespace(**{**DivergenceSpec().model_dump(), "attn_logit_growth": None,
                                  "attn_entropy_drop": None})
    assert run(RUNAWAY_LOGITS, COLLAPSED, both_off) is None
    assert run(RUNAWAY_LOGITS, COLLAPSED, DivergenceSpec(enabled=False)) is None


def test_monitor_without_signals_behaves_as_before():
    monitor = signals.Monitor(DivergenceSpec(), reference_loss=3.2, budget=100)
    assert all(monitor.update(s, 2.0, 1.0, 1e-3) is None for s in range(1, 101))
    assert monitor.attention.recent == {}


def test_the_thresholds_are_validated():
    with pytest.raises(ValueError):
        DivergenceSpec(attn_entropy_drop=1.5)
    with pytest.raises(ValueError):
        DivergenceSpec(attn_logit_growth=0.5)
    assert DivergenceSpec(attn_logit_growth=None).attn_logit_growth is None
