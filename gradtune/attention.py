"""Divergence rules on attention: logit runaway and entropy collapse.

A transformer can fail without a NaN and without a gradient spike: at a high learning rate
its pre-softmax attention logits grow without bound, the attention of every head collapses
onto one key (entropy near zero) and the loss stalls high (Wortsman et al. 2023; Zhai et al.
2023). Clipping keeps the gradient norm tame throughout, so the gradient rules of
:mod:`gradtune.signals` do not see it. A workload that reports ``attn_logit_max`` and
``attn_entropy_min`` every step (``Workload.signals``; ``tiny_lm`` does) is judged by these
rules too.

Same discipline as :mod:`gradtune.signals`: pure functions over floats, relative to the
trial's own history (its value at the first step, where the forward pass sees the initial
weights: a scale set by the architecture and the init, not by the learning rate), sustained
over the whole window, each docstring stating what NaN and inf do. No torch, Ray or MLflow.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from gradtune.outcome import ATTN_ENTROPY_MIN, ATTN_LOGIT_MAX, Verdict


def _usable(values: Sequence[float], baseline: float) -> bool:
    return bool(values) and not any(math.isnan(v) for v in values) and (
        math.isfinite(baseline) and baseline > 0)


def logit_runaway(
    step: int, maxima: Sequence[float], initial: float, factor: float
) -> Verdict | None:
    """The largest attention logit stayed above ``factor`` x its ``initial`` value (the
    trial's first step) for the whole window ``maxima``.

    A window holding NaN is not judged (the loss goes NaN too, and ``nonfinite`` owns it);
    +inf counts as above any limit. A NaN, infinite or non-positive ``initial`` never fires
    (there is no scale to be relative to)."""
    if not _usable(maxima, initial):
        return None
    low = min(maxima)
    if low > factor * initial:
        return Verdict(
            f"attention logits ran away: the max attention logit stayed above {low:.3g} "
            f"({low / initial:.1e}x its initial {initial:.3g}) for {len(maxima)} steps", step)
    return None


def entropy_collapse(
    step: int, minima: Sequence[float], initial: float, fraction: float
) -> Verdict | None:
    """The smallest per-head attention entropy stayed below ``fraction`` x its ``initial``
    value (the trial's first step) for the whole window ``minima``: some head attends to a
    single key at every position, step after step.

    A window holding NaN is not judged (left to ``nonfinite`` on the loss); a NaN, infinite
    or non-positive ``initial`` never fires (attention that starts one-hot has nothing to
    collapse from)."""
    if not _usable(minima, initial):
        return None
    high = max(minima)
    if high < fraction * initial:
        return Verdict(
            f"attention entropy collapsed: the min attention entropy stayed below {high:.2g} "
            f"nats ({high / initial:.1e}x its initial {initial:.3g}) for {len(minima)} steps",
            step)
    return None


class AttentionWatch:
    """Runs the attention rules on one trial's per-step signals. ``cfg`` is the spec's
    ``divergence`` section (``window``, ``attn_logit_growth``, ``attn_entropy_drop``; a
    threshold of ``None`` turns its rule off). Signals a workload does not report are never
    judged; each rule waits until its window is full."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.initial: dict[str, float] = {}
        self.recent: dict[str, deque[float]] = {}

    def update(self, step: int, signals: Mapping[str, float]) -> Verdict | None:
        for name, value in signals.items():
            self.initial.setdefault(name, value)
            self.recent.setdefault(name, deque(maxlen=self.cfg.window)).append(value)
        cfg = self.cfg
        checks = [
            cfg.attn_logit_growth and self._full(ATTN_LOGIT_MAX) and logit_runaway(
                step, list(self.recent[ATTN_LOGIT_MAX]), self.initial[ATTN_LOGIT_MAX],
                cfg.attn_logit_growth),
            cfg.attn_entropy_drop and self._full(ATTN_ENTROPY_MIN) and entropy_collapse(
                step, list(self.recent[ATTN_ENTROPY_MIN]), self.initial[ATTN_ENTROPY_MIN],
                cfg.attn_entropy_drop),
        ]
        return next((c for c in checks if c), None)

    def _full(self, name: str) -> bool:
        window = self.recent.get(name)
        return window is not None and len(window) == window.maxlen
