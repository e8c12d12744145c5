"""The driver-side Ray Tune scheduler: stops diverging trials, then leaves stable ones to
an optional performance pruner (ASHA or the median stopping rule).

Divergence decisions are pure functions in :mod:`gradtune.signals`; this wrapper only keeps
per-trial state and translates verdicts into Tune decisions, so a Ray upgrade touches one
file. Every verdict, the trial's own or the driver's, goes into the sweep's
:class:`~gradtune.outcome.Ledger`, where the searcher and tracking read it (Tune shows each
result to the scheduler first). All state is plain dicts of floats and strings, so Tune can
pickle it on checkpoint.

NaN and inf: a result whose objective or gradient norm is not finite is a divergence verdict
here (``STOP``), so no performance pruner ever compares a NaN (where ``nan < cutoff`` is
False and would mean "continue").
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from typing import Any

from ray.tune.schedulers import (
    AsyncHyperBandScheduler,
    FIFOScheduler,
    MedianStoppingRule,
    TrialScheduler,
)

from gradtune import outcome, signals
from gradtune.outcome import Verdict
from gradtune.spec import SweepSpec

log = logging.getLogger(__name__)


def performance_scheduler(spec: SweepSpec) -> TrialScheduler:
    """ASHA / median rule on the spec's objective, over training steps; FIFO for ``none``."""
    d, s = spec.divergence, spec.search
    grace = d.grace_reports * spec.training.report_every
    if d.scheduler == "asha":
        return AsyncHyperBandScheduler(
            time_attr="step", metric=s.metric, mode=s.mode, max_t=spec.training.steps,
            grace_period=min(grace, spec.training.steps),
        )
    if d.scheduler == "median":
        return MedianStoppingRule(
            time_attr="step", metric=s.metric, mode=s.mode, grace_period=grace,
            min_samples_required=3,
        )
    return FIFOScheduler()


class DivergenceScheduler(TrialScheduler):
    """Stops a trial that reported divergence, or whose gradient norm is an outlier against
    the other trials at the same step; otherwise defers to ``inner``.

    Verdicts go into ``ledger`` (the sweep's, shared with the searcher and tracking);
    ``pruned`` holds the trial ids that ``inner`` stopped.
    """

    def __init__(
        self, spec: SweepSpec, inner: TrialScheduler | None = None,
        ledger: outcome.Ledger | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Ray leaves it unannotated
        self.ledger = ledger if ledger is not None else outcome.Ledger()
        self.cfg = spec.divergence
        self.metric_name = spec.search.metric
        self.mode = spec.search.mode
        self.inner = inner if inner is not None else performance_scheduler(spec)
        # step -> trial id -> grad_norm at that step
        self.norms: dict[int, dict[str, float]] = defaultdict(dict)
        self.last_norm: dict[str, float] = {}  # trial id -> grad_norm of its last report
        self.pruned: set[str] = set()

    @property
    def metric(self) -> str | None:
        return self.metric_name

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        # The inner pruner is built with the spec's objective; Tune may only confirm it.
        return metric in (None, self.metric_name) and mode in (None, self.mode)

    def decide(self, trial_id: str, result: dict[str, Any]) -> Verdict | None:
        """The divergence verdict for one result (pure bookkeeping, no Ray needed)."""
        reported = outcome.reported_verdict(result)
        if reported is not None:
            return reported
        step = int(result.get(outcome.STEP, 0))
        norm = float(result.get("grad_norm", math.nan))
        objective = result.get(self.metric_name)
        values = {"grad_norm": norm}
        if isinstance(objective, (int, float)):
            values[self.metric_name] = float(objective)
        verdict = signals.nonfinite(step, **values)
        if verdict is not None:
            return verdict
        cohort = [v for t, v in self.norms[step].items() if t != trial_id]
        self.norms[step][trial_id] = norm
        previous = self.last_norm.get(trial_id)
        self.last_norm[trial_id] = norm
        if self.cfg.cohort_factor:
            return signals.cohort_outlier(
                step, norm, previous, cohort, self.cfg.cohort_factor, self.cfg.cohort_min_trials
            )
        return None

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if self.ledger.verdict(trial.trial_id) is not None:
            return TrialScheduler.STOP  # a late result of a trial already judged
        verdict = self.decide(trial.trial_id, result)
        if verdict is not None:
            self.ledger.judge(trial.trial_id, verdict)
            # The inner pruner must forget the trial, or ASHA keeps a rung slot for it.
            self.inner.on_trial_remove(tune_controller, trial)
            return TrialScheduler.STOP
        decision = self.inner.on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP:
            self.pruned.add(trial.trial_id)
        return decision

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self.ledger.number(trial.trial_id)  # trials are added in suggestion order
        self.inner.on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.inner.on_trial_error(tune_controller, trial)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        if self.ledger.verdict(trial.trial_id) is None:
            self.inner.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        if self.ledger.verdict(trial.trial_id) is None:  # already removed from inner at the verdict
            self.inner.on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        return self.inner.choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        return f"DivergenceScheduler: {len(self.ledger.verdicts)} diverged, {len(self.pruned)} pruned"
