"""Divergence rules: pure functions over streams of numbers, and the per-trial monitor that
runs them on every training step.

No torch, Ray or MLflow here: the rules are plain arithmetic on floats, tested directly.
Each rule returns a :class:`Verdict` when it fires and ``None`` otherwise; each docstring
states what NaN and inf do. Rules look only at what a single trial has seen so far, so a
verdict never depends on other trials (the cross-trial rule lives in ``scheduler``).

A stalled network is not a diverged one: a scale-invariant (BatchNorm) net can show huge raw
gradient norms from step 1 and sit at chance loss forever without a NaN. The gradient rules
are relative to the trial's own early history and need sustained growth, and the loss rules
need the loss far above chance or far above the trial's own best, so such a trial is left to
performance pruning.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from statistics import median
from typing import Any

from gradtune.attention import AttentionWatch
from gradtune.outcome import Verdict


def _finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def nonfinite(step: int, **values: float) -> Verdict | None:
    """Fires on the first NaN or +-inf among ``values`` (e.g. ``loss=..., grad_norm=...``)."""
    for name, value in values.items():
        if not math.isfinite(value):
            return Verdict(f"{name} is {value}", step)
    return None


def log_slope(values: Sequence[float]) -> float:
    """Least-squares slope of ``ln(value)`` per step. NaN if any value is <= 0 or not finite,
    or if there are fewer than 2 values."""
    n = len(values)
    if n < 2 or not _finite(values) or min(values) <= 0:
        return math.nan
    logs = [math.log(v) for v in values]
    mean_x, mean_y = (n - 1) / 2, sum(logs) / n
    cov = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(logs))
    var = sum((i - mean_x) ** 2 for i in range(n))
    return cov / var


def grad_growth(step: int, norms: Sequence[float], factor: float) -> Verdict | None:
    """Sustained exponential growth: over the window ``norms`` the fitted growth
    ``exp(slope * (len - 1))`` is at least ``factor`` *and* most steps (>= 70%) went up.

    A window holding NaN/inf or non-positive values is not judged here (``nonfinite``
    catches non-finite values); a window shorter than 3 never fires."""
    if len(norms) < 3:
        return None
    # The cheap condition first: a healthy window rises about half its steps, so the fit
    # (which the monitor would otherwise pay every step) is rarely needed.
    rising = sum(b > a for a, b in zip(norms, norms[1:])) / (len(norms) - 1)
    if rising < 0.7:
        return None
    slope = log_slope(norms)
    if math.isnan(slope):
        return None
    growth = math.exp(min(slope * (len(norms) - 1), 700.0))
    if growth >= factor:
        return Verdict(f"grad_norm grew {growth:.1e}x in {len(norms)} steps", step)
    return None


def grad_ceiling(step: int, norm: float, baseline: float, factor: float) -> Verdict | None:
    """The gradient norm is above ``factor`` times the trial's own early baseline (the
    median of its first steps). Never fires on a non-finite or non-positive baseline, or on
    a NaN ``norm``; +inf fires (it is above any ceiling)."""
    if not (math.isfinite(baseline) and baseline > 0) or math.isnan(norm):
        return None
    if norm > factor * baseline:
        return Verdict(f"grad_norm {norm:.3g} is {norm / baseline:.1e}x its early median", step)
    return None


def loss_blowup(
    step: int, losses: Sequence[float], ratios: Sequence[float], reference: float,
    factor: float, steps_left: int,
) -> Verdict | None:
    """The loss is stuck far up: it stayed above ``factor`` x the reference (chance-level)
    loss for the whole window, it is not coming down in time (not falling, or at the rate
    fitted over the window it needs more than ``steps_left`` steps to get back under that
    limit), and the weights cannot change enough to escape: the window's mean update/weight
    ratio times ``steps_left`` is below 1, so even the whole remaining budget moves the
    weights by less than their own norm.

    A blown-up net whose weights still move fast (it may yet collapse or recover) is left
    alone, as is a loss that falls fast. A one-step spike passes (the window's minimum is
    judged). A window with NaN/inf losses is left to ``nonfinite``; NaN ratios (update
    tracking off) drop the weight-movement condition; a non-finite or non-positive
    ``reference`` disables the rule."""
    if not losses or not (math.isfinite(reference) and reference > 0):
        return None
    low, limit = min(losses), factor * reference
    if low <= limit or not _finite(losses):  # the cheap test first: a healthy loss is under
        return None
    slope = log_slope(losses) if len(losses) >= 2 else 0.0
    needed = math.inf if slope >= 0 else math.log(losses[-1] / limit) / -slope
    if needed <= steps_left:
        return None
    known = [r for r in ratios if math.isfinite(r)]
    movement = sum(known) / len(known) * steps_left if known else 0.0
    if movement >= 1.0:
        return None
    trend = "is not falling" if slope >= 0 else f"needs ~{needed:.0f} more steps to fall back"
    return Verdict(
        f"loss stayed above {low:.3g} ({low / reference:.1e}x chance) for {len(losses)} steps, "
        f"{trend}, and the updates move the weights {movement:.2g}x their norm in the "
        f"{steps_left} steps left",
        step,
    )


def loss_vs_best(step: int, losses: Sequence[float], best: float, reference: float,
                 factor: float) -> Verdict | None:
    """The loss stayed above ``factor`` x the trial's best loss so far (taken before the
    window) for the whole window, and above the reference loss: a run that learned and then
    blew up. Non-finite values are left to ``nonfinite``; a non-finite ``best`` never fires."""
    if not losses or not (math.isfinite(best) and best > 0):
        return None
    low = min(losses)
    if low > factor * best and _finite(losses) and (not math.isfinite(reference) or low > reference):
        return Verdict(f"loss rose to {low:.3g}, {low / best:.1e}x its best {best:.3g}", step)
    return None


def update_ratio(step: int, ratio: float, limit: float) -> Verdict | None:
    """One optimizer step moved the weights by more than ``limit`` x their norm
    (``||dw|| / ||w||``; healthy training sits near 1e-3, and at 10 the update has
    overwritten the weights): the next forward pass is garbage, usually NaN. Fires on a
    single step, so it can stop a trial *before* its first NaN. NaN (rule off, zero
    weights) never fires; +inf does."""
    if math.isnan(ratio) or ratio <= limit:
        return None
    return Verdict(f"one update moved the weights {ratio:.3g}x their norm", step)


class Monitor:
    """Runs the rules on every step of one trial. ``cfg`` is the spec's ``divergence``
    section (any object with its attributes); a rule whose threshold is ``None`` is off.

    ``update`` returns the first verdict, or ``None``. The non-finite and update-ratio rules
    judge single steps and fire from step 1; the others wait ``grace_steps`` steps and, where
    they judge a window, until the window is full. ``extra`` holds the step's workload
    signals (``attn_logit_max``, ``attn_entropy_min``), judged by
    :class:`gradtune.attention.AttentionWatch` after the gradient and loss rules.
    """

    def __init__(self, cfg: Any, reference_loss: float, budget: int) -> None:
        self.cfg = cfg
        self.reference = reference_loss
        self.budget = budget
        self.early: list[float] = []
        self.norms: deque[float] = deque(maxlen=cfg.window)
        self.losses: deque[float] = deque(maxlen=cfg.window)
        self.ratios: deque[float] = deque(maxlen=cfg.window)
        self.best = math.inf
        self.pending_best: deque[float] = deque(maxlen=cfg.window)
        self.attention = AttentionWatch(cfg)

    def update(self, step: int, loss: float, grad_norm: float, ratio: float = math.nan,
               extra: Mapping[str, float] | None = None) -> Verdict | None:
        verdict = nonfinite(step, loss=loss, grad_norm=grad_norm)
        if verdict is not None or not self.cfg.enabled:
            return verdict
        if self.cfg.update_ratio and (verdict := update_ratio(step, ratio, self.cfg.update_ratio)):
            return verdict
        self.norms.append(grad_norm)
        self.losses.append(loss)
        self.ratios.append(ratio)
        # "Best so far" lags one window behind, so a loss rising inside the window is
        # compared with where the trial was, not with itself.
        if len(self.pending_best) == self.pending_best.maxlen:
            self.best = min(self.best, self.pending_best[0])
        self.pending_best.append(loss)
        attention = self.attention.update(step, extra or {})
        if len(self.early) < self.cfg.grace_steps:
            self.early.append(grad_norm)
            return attention
        return self._windowed(step) or attention

    def state_dict(self) -> dict[str, Any]:
        """What the monitor has seen, as plain floats and lists (for a trial checkpoint);
        NaN and inf are kept as they are."""
        return {"early": list(self.early), "norms": list(self.norms), "losses": list(self.losses),
                "ratios": list(self.ratios), "best": self.best, "pending_best": list(self.pending_best)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on from ``state`` (from :meth:`state_dict`), as if those steps had been seen."""
        window = self.cfg.window
        self.early = [float(v) for v in state["early"]]
        self.norms = deque(state["norms"], maxlen=window)
        self.losses = deque(state["losses"], maxlen=window)
        self.ratios = deque(state["ratios"], maxlen=window)
        self.best = float(state["best"])
        self.pending_best = deque(state["pending_best"], maxlen=window)

    def _windowed(self, step: int) -> Verdict | None:
        cfg = self.cfg
        full = len(self.norms) == self.norms.maxlen
        checks = [
            cfg.grad_ceiling and grad_ceiling(step, self.norms[-1], median(self.early), cfg.grad_ceiling),
            full and cfg.grad_growth and grad_growth(step, list(self.norms), cfg.grad_growth),
            full and cfg.loss_factor and loss_blowup(
                step, list(self.losses), list(self.ratios), self.reference, cfg.loss_factor,
                self.budget - step),
            full and cfg.loss_vs_best and loss_vs_best(
                step, list(self.losses), self.best, self.reference, cfg.loss_vs_best),
        ]
        return next((c for c in checks if c), None)


def cohort_outlier(
    step: int, value: float, previous: float | None, cohort: Sequence[float], factor: float,
    min_trials: int,
) -> Verdict | None:
    """Cross-trial rule: ``value`` (a trial's gradient norm at ``step``) is above ``factor``
    x the median of the other trials' finite values at the same step, and has not fallen
    since the trial's ``previous`` report (a huge norm that is coming down is clipping or
    normalisation at work, not an explosion; a first report has no trend and never fires).

    Needs at least ``min_trials`` finite cohort values; NaN/inf cohort values are dropped;
    a NaN ``value`` never fires (``nonfinite`` owns it), +inf does."""
    finite = [v for v in cohort if math.isfinite(v)]
    if len(finite) < min_trials or math.isnan(value):
        return None
    if previous is None or (math.isfinite(previous) and value < previous):
        return None
    mid = median(finite)
    if mid > 0 and value > factor * mid:
        return Verdict(f"grad_norm {value:.3g} is {value / mid:.1e}x the cohort median at step {step}", step)
    return None
