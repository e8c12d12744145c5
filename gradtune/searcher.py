"""Optuna inside Ray Tune, taught by divergence.

Ray's ``OptunaSearch`` tells Optuna a NaN objective as ``COMPLETE``, which Optuna rejects;
the error is only logged and the trial stays ``RUNNING`` in the study for good. TPE learns
nothing about divergence from it (its constant liar, on by default in Optuna 5, only
counts it as one more unpromising guess, like a trial still in flight), and the unstable
region keeps being sampled. :class:`DivergenceAwareSearch` tells every outcome instead:

- a stable trial: ``COMPLETE`` with its objective and constraint ``-1`` (feasible);
- a diverged trial: ``COMPLETE`` with constraint ``+1`` (infeasible) and, as its objective,
  the worst finite objective seen so far (or its own last finite value, or 0), so TPE's
  sampler ranks it below every stable trial (``Trial.set_constraint``);
- a rescued trial (``divergence.rescue``): the same as a diverged one. The configuration as
  proposed diverged; what the remedy reached stays visible in MLflow, not in the study;
- a trial stopped for performance with a finite objective: ``PRUNED`` with that value;
- an errored trial: ``FAIL``.

Intermediate results with NaN/inf objectives are not reported to Optuna.

A configuration trained with several seeds (``search.seeds``) is one trial: when some but
not all of its seeds diverged (``p_diverged`` in its result), it is told as completed or
pruned with its objective over the other seeds, and constraint ``p_diverged`` (violated,
by that degree: :func:`gradtune.seeds.degree`) instead of ``-1``.

TPE alone still proposes the unstable edge next to its best trials, so gradtune's TPE is
wrapped in :class:`gradtune.feasibility.FeasibleSampler`, which screens its proposals with
a classifier of which configurations diverged.
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from typing import Any, cast

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from gradtune import outcome
from gradtune.feasibility import FeasibleSampler
from gradtune.outcome import UNSTABLE, Ledger, Outcome
from gradtune.search_space import define_by_run, grid_points
from gradtune.seeds import degree
from gradtune.spec import SweepSpec

log = logging.getLogger(__name__)

# Optuna's constraint name; > 0 is a violation (TPE ranks violators below feasible trials).
CONSTRAINT = "diverged"


class DivergenceAwareSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna about divergence (see the module docstring).

    The outcome of a trial comes from ``ledger`` (the sweep's, where the scheduler records
    verdicts reached on the driver), or from the trial's last result when no one recorded
    a verdict (a driver without gradtune's scheduler, as in the replay benchmark).
    """

    def __init__(self, *args: Any, ledger: Ledger | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ledger = ledger if ledger is not None else Ledger()
        self._worst: float | None = None

    def restore(self, checkpoint_path: str) -> None:
        """Tune's resume: the study comes back from the checkpoint; the ledger stays the
        sweep's live one (shared with the scheduler and tracking) and takes in the saved."""
        live = self.ledger
        super().restore(checkpoint_path)
        live.update(self.ledger)
        self.ledger = live

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        value = result.get(self._metric)  # type: ignore[arg-type]
        if isinstance(value, (int, float)) and math.isfinite(value):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        study = cast(optuna.Study, self._ot_study)  # set up by OptunaSearch once a space exists
        raw = (result or {}).get(self._metric)  # type: ignore[arg-type]
        value = float(raw) if isinstance(raw, (int, float)) else math.nan
        ended = self.ledger.outcome(trial_id, result, errored=error)
        violated = degree((result or {}).get(outcome.P_DIVERGED))  # -1: no seed diverged
        if ended is Outcome.FAILED:
            study.tell(ot_trial, state=TrialState.FAIL)
        elif ended in UNSTABLE:  # diverged, or rescued: unstable as proposed
            ot_trial.set_constraint(CONSTRAINT, 1.0)
            fallback = value if math.isfinite(value) else self._sentinel()
            study.tell(ot_trial, self._worst if self._worst is not None else fallback,
                       state=TrialState.COMPLETE)
        elif ended is Outcome.COMPLETED and math.isfinite(value):
            ot_trial.set_constraint(CONSTRAINT, violated)
            study.tell(ot_trial, value, state=TrialState.COMPLETE)
            self._note_worst(value)
        else:
            # Stopped early for performance (or a final objective that is not finite, which
            # the scheduler stops as diverged first): Optuna's PRUNED, ranked by its last
            # intermediate value (reported in on_trial_result).
            ot_trial.set_constraint(CONSTRAINT, violated)
            study.tell(ot_trial, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)

    def _sentinel(self) -> float:
        # A finite "worst possible" objective; the constraint already marks the trial bad.
        return sys.float_info.max if self._mode == "min" else -sys.float_info.max

    def _note_worst(self, value: float) -> None:
        worse = max if self._mode == "min" else min
        self._worst = value if self._worst is None else worse(self._worst, value)


def tpe(seed: int, trials: int) -> optuna.samplers.TPESampler:
    """TPE set up for short stability sweeps:

    - ``multivariate`` + ``group``: divergence is an interaction (no normalisation *and* a
      large init scale *and* no clipping), which independent per-parameter densities cannot
      express; ``group`` handles the conditional ``clip_threshold``;
    - ``constant_liar``: trials run concurrently, so running ones count as bad guesses
      instead of being sampled again;
    - fewer random start-up trials on short sweeps (a quarter of the budget, 4 to 10).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True,
            n_startup_trials=min(10, max(4, trials // 4)),
        )


def screened_tpe(seed: int, trials: int) -> FeasibleSampler:
    """gradtune's sampler: :func:`tpe`, its proposals screened for divergence risk."""
    return FeasibleSampler(tpe(seed, trials), CONSTRAINT, seed)


def make(spec: SweepSpec, ledger: Ledger | None = None) -> tuple[DivergenceAwareSearch, int]:
    """The searcher for ``spec`` (reading outcomes from ``ledger``) and the number of
    trials to run."""
    seed = spec.search_seed
    space = spec.search.space
    points: list[dict[str, Any]] | None = None
    trials = spec.search.trials
    if spec.search.sampler == "tpe":
        sampler: optuna.samplers.BaseSampler = screened_tpe(seed, trials)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    if spec.search.sampler == "grid":
        # The whole product, each point once, enqueued; the sampler never has to choose.
        points = grid_points(space)
        trials = len(points)
    search = DivergenceAwareSearch(
        space=define_by_run(space),
        metric=spec.search.metric,
        mode=spec.search.mode,
        sampler=sampler,
        points_to_evaluate=points,
        ledger=ledger,
    )
    return search, trials
