"""A finished sweep as an Optuna study, read as the searcher's own study was told
(:class:`gradtune.searcher.DivergenceAwareSearch`), so Optuna's plots, importance
evaluators and ``optuna-dashboard`` work on it:

- completed (and any other outcome that ended with a finite objective): ``COMPLETE`` with
  the objective, constraint ``diverged`` = -1 (feasible), or, for a trial of several seeds
  some of which diverged, its ``p_diverged`` (infeasible to that degree);
- diverged and rescued (unstable as proposed, :data:`gradtune.outcome.UNSTABLE`):
  ``COMPLETE`` with constraint +1 (infeasible) and, as its objective, the worst finite
  objective of the completed trials (else its own last finite value), as the searcher
  tells it; such a trial with no finite number to show is ``FAIL``;
- pruned: ``PRUNED`` (constraint -1); failed: ``FAIL``.

Every trial carries ``user_attrs`` ``outcome``, ``reason``, ``divergence_step``,
``trial_id``, ``run_id`` and ``objective`` (its own finite objective or ``None``: NaN and inf
never reach Optuna). Params are the searched ones only, with distributions from the spec's
space (log ranges as log ``FloatDistribution``); a conditional param that does not apply
(``clip_threshold`` with ``clip_method: none``) is absent from the trial, as when sampled.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from gradtune.outcome import P_DIVERGED, UNSTABLE, Outcome
from gradtune.params import PARAMS
from gradtune.spec import Range
from gradtune.table import Row, SweepTable

log = logging.getLogger(__name__)

__all__ = ["CONSTRAINT", "distributions", "divergence_study", "save_journal", "to_study", "trials"]

# The searcher's constraint name (gradtune.searcher.CONSTRAINT; the tests hold them equal).
CONSTRAINT = "diverged"


def distributions(table: SweepTable) -> dict[str, BaseDistribution]:
    """The Optuna distribution of each searched name: ranges (int for the registry's int
    parameters), lists as categoricals; fixed values are not searched and left out."""
    out: dict[str, BaseDistribution] = {}
    for name, dim in table.spec.search.space.items():
        if isinstance(dim, Range):
            if name in PARAMS and PARAMS[name].kind == "int":
                out[name] = IntDistribution(int(dim.low), int(dim.high), log=dim.log)
            else:
                out[name] = FloatDistribution(dim.low, dim.high, log=dim.log)
        elif isinstance(dim, list):
            out[name] = CategoricalDistribution(dim)
    return out


def _params(row: Row, dists: dict[str, BaseDistribution]) -> tuple[dict[str, Any], dict[str, BaseDistribution]]:
    params, used = {}, {}
    for name, dist in dists.items():
        if name not in row.params:  # did not apply to this trial
            continue
        value = row.params[name]
        try:
            dist.to_internal_repr(value)
            if isinstance(dist, CategoricalDistribution) and value not in dist.choices:
                raise ValueError
            if isinstance(dist, (FloatDistribution, IntDistribution)) and not dist.low <= value <= dist.high:
                raise ValueError
        except (ValueError, TypeError):
            log.warning("trial %d: %s=%r is outside the spec's space; left out of the study",
                        row.number, name, value)
            continue
        params[name], used[name] = value, dist
    return params, used


def _attrs(row: Row) -> dict[str, Any]:
    return {"outcome": row.outcome, "reason": row.reason, "divergence_step": row.divergence_step,
            "trial_id": row.trial_id, "run_id": row.run_id, "objective": row.value}


def trials(table: SweepTable) -> list[FrozenTrial]:
    """The table's rows as Optuna trials (see the module docstring), in number order."""
    dists = distributions(table)
    completed = [r.value for r in table.rows if r.outcome == Outcome.COMPLETED.value and r.value is not None]
    worst = (max if table.mode == "min" else min)(completed) if completed else None
    out = []
    for row in table.rows:
        params, used = _params(row, dists)
        state, value, constraint = TrialState.FAIL, None, None
        if row.outcome == Outcome.FAILED.value:
            pass
        elif row.outcome == Outcome.PRUNED.value:
            state, constraint = TrialState.PRUNED, -1.0
        elif row.outcome in UNSTABLE_VALUES:
            value = worst if worst is not None else row.value
            if value is not None:
                state, constraint = TrialState.COMPLETE, 1.0
        elif row.value is not None:
            state, value, constraint = TrialState.COMPLETE, row.value, -1.0
            p = row.metrics.get(P_DIVERGED)
            if p is not None and p > 0:
                constraint = p
        out.append(optuna.trial.create_trial(
            state=state, value=value, params=params, distributions=used, user_attrs=_attrs(row),
            constraints=None if constraint is None else {CONSTRAINT: constraint}))
    return out


def _study(table: SweepTable, storage: optuna.storages.BaseStorage | str | None, name: str,
           direction: Literal["minimize", "maximize"], frozen: list[FrozenTrial]) -> optuna.Study:
    quiet = logging.getLogger("optuna")  # "A new study created ..." on every study
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.create_study(storage=storage, study_name=name, direction=direction,
                                        load_if_exists=False)
            study.add_trials(frozen)
            study.set_metric_names([table.metric])
    finally:
        quiet.setLevel(level)
    study.set_user_attr("experiment", table.experiment)
    study.set_user_attr("parent_run_id", table.parent_run_id)
    return study


def to_study(table: SweepTable, storage: optuna.storages.BaseStorage | str | None = None) -> optuna.Study:
    """The sweep as an Optuna study named after it, in ``storage`` (default: in memory);
    direction from the spec's mode."""
    return _study(table, storage, table.name, "minimize" if table.mode == "min" else "maximize",
                  trials(table))


def divergence_study(table: SweepTable) -> optuna.Study:
    """An in-memory study whose objective is a trial's P(diverged): its ``p_diverged``
    (several seeds), else 1 for a diverged or rescued trial and 0 for any other that trained
    without failing (failed trials are left out): Optuna's importance evaluators over it
    rank the knobs by how much they move P(diverged)."""
    dists = distributions(table)
    frozen = []
    for row in table.rows:
        if row.outcome == Outcome.FAILED.value:
            continue
        params, used = _params(row, dists)
        frozen.append(optuna.trial.create_trial(
            value=_p_diverged(row), params=params,
            distributions=used, user_attrs=_attrs(row)))
    return _study(table, None, f"{table.name} P(diverged)", "minimize", frozen)


UNSTABLE_VALUES = frozenset(o.value for o in UNSTABLE)


def _p_diverged(row: Row) -> float:
    p = row.metrics.get(P_DIVERGED)
    if p is not None and 0 <= p <= 1:
        return float(p)
    return 1.0 if row.outcome in UNSTABLE_VALUES else 0.0


def save_journal(table: SweepTable, path: str | Path) -> Path:
    """Write the study to an Optuna journal file at ``path`` (replaced if it exists), which
    ``optuna-dashboard <path>`` opens."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(path)
    path.unlink(missing_ok=True)
    to_study(table, JournalStorage(JournalFileBackend(str(path))))
    return path
