"""Stability across seeds: one configuration trained with N seeds, judged as one trial.

Pure functions over the seeds' reports (no torch, Ray or MLflow); the lockstep loop that
produces them is :mod:`gradtune.multiseed`.

- :func:`aggregate` turns one round of the seeds' reports (each live seed's next report)
  into the trial's report: the metrics averaged over the seeds that did not diverge, the
  objective as their mean or their worst (``search.seed_aggregate``), the share of seeds
  that diverged so far (:data:`outcome.P_DIVERGED`), each seed's objective, train loss,
  gradient norm and ``diverged`` flag (``seed<i>_<metric>``) and each seed's outcome, step
  and reason (:data:`outcome.SEEDS`).
- The trial reports ``diverged=1`` only when every seed diverged (then the objective is
  NaN); otherwise its outcome is the one-seed rule's, with ``p_diverged`` > 0 visible.
- :func:`degree` is the searcher's constraint: ``-1`` (feasible) for no diverged seed,
  else P(diverged), so 1 of 3 seeds diverging is a violation of degree 1/3.

NaN and inf: a diverged seed's numbers (NaN, inf, a blow-up clipped into the millions) never
enter the averages; a seed that did not diverge is averaged as it reported. With every seed
diverged, the objective is NaN and the other metrics are the mean of the last reports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gradtune import outcome

# Per-seed metrics of each report, beside the objective.
PER_SEED: tuple[str, ...] = ("train_loss", "grad_norm")
RUNNING = "running"


def seed_key(index: int, name: str) -> str:
    """The metric name of seed ``index``'s ``name``: ``seed0_val_loss``."""
    return f"seed{index}_{name}"


def p_diverged(finals: Mapping[int, Mapping[str, Any]], seeds: int) -> float:
    """The share of ``seeds`` whose last report (``finals``: seed -> report of an ended
    seed) is a divergence verdict: 0, 1/N, ..., 1."""
    return sum(1 for r in finals.values() if outcome.reported_verdict(r)) / seeds


def degree(p: float | None) -> float:
    """The ``diverged`` constraint told to Optuna for a share ``p`` of diverged seeds:
    ``-1`` (feasible) for 0 or no share at all (a one-seed trial that did not diverge),
    else ``p`` (> 0 is violated; TPE ranks a larger violation lower). NaN counts as 0."""
    value = outcome.finite(p)
    return value if value is not None and value > 0 else -1.0


def parallel(seeds: int, trials: int, need: Mapping[str, float], cluster: Mapping[str, float]) -> bool:
    """Whether each trial's ``seeds`` train in parallel, each with ``need`` (resources per
    seed, e.g. ``{"CPU": 1}``): when the ``cluster``'s totals hold ``trials`` such trials at
    once (the concurrency limit, or fewer trials). Otherwise the seeds take turns in one
    trial's resources, and the cluster's room goes to more trials at once."""
    if seeds <= 1:
        return False
    return all(cluster.get(k, 0.0) >= trials * seeds * v for k, v in need.items() if v > 0)


def objective(values: list[float], mode: str, how: str) -> float:
    """The objective over the seeds that did not diverge: their ``mean`` or their ``worst``
    (the largest for ``mode`` min, the smallest for max); NaN for no values (every seed
    diverged). A non-finite value is kept (the scheduler stops on it, as for one seed)."""
    if not values:
        return math.nan
    if how == "mean":
        return sum(values) / len(values)
    return max(values) if mode == "min" else min(values)


def aggregate(round_: Mapping[int, Mapping[str, Any]], finals: Mapping[int, Mapping[str, Any]],
              seeds: int, metric: str, mode: str, how: str) -> dict[str, Any]:
    """The trial's report for one round: ``round_`` holds each seed's report of the round
    (seed -> report; a diverged seed's verdict report may be at an earlier step than the
    others'), ``finals`` the last report of every seed that has ended, this round's
    included. ``final`` is 1 once every seed has ended; ``diverged`` is 1 only when every
    seed diverged (reason and step: the last one to diverge)."""
    healthy = {i: r for i, r in round_.items() if not outcome.reported_verdict(r)}
    pool = healthy or round_
    names = [k for k in (*outcome.METRICS, *outcome.SIGNALS) if all(k in r for r in pool.values())]
    out: dict[str, Any] = {k: _mean([float(r[k]) for r in pool.values()]) for k in names}
    values = [float(r[metric]) for r in healthy.values() if _number(r.get(metric))]
    out[metric] = objective(values, mode, how)
    if "grad_norm_max" in out:  # the largest of the window over the seeds, NaN kept
        out["grad_norm_max"] = _max([float(r["grad_norm_max"]) for r in pool.values()])
    out[outcome.STEP] = max(int(r.get(outcome.STEP, 0)) for r in round_.values())
    out[outcome.DIVERGED] = 0
    out[outcome.FINAL] = int(len(finals) == seeds)
    out[outcome.HEALTHY_STEP] = min((int(r.get(outcome.HEALTHY_STEP, 0)) for r in healthy.values()),
                                    default=0)
    out[outcome.P_DIVERGED] = p_diverged(finals, seeds)
    for i, r in sorted(round_.items()):
        for name in (metric, *PER_SEED):
            if _number(r.get(name)):
                out[seed_key(i, name)] = float(r[name])
        verdict = outcome.reported_verdict(r)
        out[seed_key(i, outcome.DIVERGED)] = int(verdict is not None)
        if verdict is not None:
            out[seed_key(i, outcome.DIVERGENCE_STEP)] = verdict.step
    out[outcome.SEEDS] = outcomes(finals, seeds)
    if out[outcome.P_DIVERGED] == 1.0:
        last = max((outcome.reported_verdict(r) for r in finals.values()), key=_step)
        assert last is not None
        out.update(last.keys())
        out[outcome.REASON] = f"every seed diverged ({seeds} of {seeds}); the last: {last.reason}"
    return out


def outcomes(finals: Mapping[int, Mapping[str, Any]], seeds: int) -> list[list[Any]]:
    """Each seed's ``[index, outcome, step, reason]``: ``diverged`` (with the verdict's
    step and reason), ``completed`` (its last step, reason ``""``) or ``running``."""
    out: list[list[Any]] = []
    for i in range(seeds):
        report = finals.get(i)
        verdict = outcome.reported_verdict(report)
        if verdict is not None:
            out.append([i, outcome.Outcome.DIVERGED.value, verdict.step, verdict.reason])
        elif report is not None:
            out.append([i, outcome.Outcome.COMPLETED.value, int(report.get(outcome.STEP, 0)), ""])
        else:
            out.append([i, RUNNING, 0, ""])
    return out


def tags(result: Mapping[str, Any], ended: outcome.Outcome) -> dict[str, str]:
    """The child run's tags of a trial of several seeds (none for one seed):
    ``gradtune.p_diverged`` and ``gradtune.seed<i>``, e.g. ``diverged at step 53: ...``,
    ``completed``; a seed still running when the trial ended has the trial's outcome
    (``pruned``, ``failed``, or ``diverged`` for a verdict reached on the driver)."""
    rows = result.get(outcome.SEEDS)
    if not isinstance(rows, list):
        return {}
    found = {"gradtune.p_diverged": f"{outcome.finite(result.get(outcome.P_DIVERGED)) or 0.0:.4g}"}
    for row in rows:
        try:
            index, status, step, reason = row
        except (TypeError, ValueError):
            continue
        if status == outcome.Outcome.DIVERGED.value:
            text = f"diverged at step {step}: {reason}"
        else:
            text = ended.value if status == RUNNING else str(status)
        found[f"gradtune.seed{index}"] = outcome.failure_line(text)
    return found


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _max(values: list[float]) -> float:
    # max() would skip NaN depending on argument order; keep NaN visible.
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _step(verdict: outcome.Verdict | None) -> int:
    return -1 if verdict is None else verdict.step
