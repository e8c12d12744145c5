"""What one child run shows in MLflow: its name and status in the runs table, and its
metric points in the charts. Pure (no MLflow): :mod:`gradtune.tracking` queues what these
functions return.

- **Name**: while the trial runs, its knobs (:func:`run_name`); when it ends, the outcome
  first (:func:`ended_name`, e.g. ``diverged · norm=none clip=none init=3.2 bs=64``), so a
  table sorted by name groups completed, diverged, failed and pruned trials.
- **Status** (:data:`RUN_STATUS`): completed and rescued FINISHED (green: a rescued run
  trained, with a remedy; its name and tags say so), diverged and failed FAILED (red),
  pruned KILLED; the exact outcome stays in the ``gradtune.*`` tags.
- **Points** (:func:`metrics_of`, :func:`window_points`): every number of a report at its
  training step, NaN and inf as they are, plus base-10 companions of the heavy-tailed
  metrics (:func:`log10_points`) so a stable trial's chart stays readable beside a 1e18
  blow-up; and, for a verdict, the per-step points of the steps before it. Metrics that
  mostly hold still (:data:`STEADY`: a constant learning rate, ``diverged`` until the
  verdict, ``clip_fraction`` without clipping) are logged when they change and at the end
  (:class:`Steady`): the same chart for a fraction of the points.
- **Tags** of a rescue's lineage (:func:`rescue_tags`) and of the first verdict, for
  ``gradtune replay`` (:func:`replay_tags`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from gradtune import outcome, rescue
from gradtune.outcome import Outcome
from gradtune.spool import Point

__all__ = ["LOG10", "RUN_STATUS", "STEADY", "TUNE_KEYS", "Steady", "ended_name", "log10_points", "metrics_of",
           "replay_tags", "rescue_tags", "run_name", "window_points"]

SEP = " · "

# The MLflow status of a child run for each outcome: red for the two that went wrong.
RUN_STATUS = {Outcome.COMPLETED: "FINISHED", Outcome.RESCUED: "FINISHED", Outcome.DIVERGED: "FAILED",
              Outcome.PRUNED: "KILLED", Outcome.FAILED: "FAILED"}

# Metrics that span many decades when a trial blows up; each gets a ``log10_<name>``.
LOG10: tuple[str, ...] = ("train_loss", "grad_norm", "update_ratio")

# Metrics whose value often stays the same from report to report (see Steady).
STEADY: frozenset[str] = frozenset({"lr", outcome.DIVERGED, "clip_fraction"})

TUNE_KEYS = {
    "training_iteration", "time_total_s", "time_this_iter_s", "timestamp", "pid",
    "time_since_restore", "iterations_since_restore", "timesteps_total", "episodes_total",
    "timesteps_since_restore",
}


def run_name(params: dict[str, Any]) -> str:
    """A readable child-run name, e.g. ``norm=layer clip=norm@1.0 init=2.0 bs=64``."""
    clip = params.get("clip_method", "none")
    if clip != "none":
        clip = f"{clip}@{params.get('clip_threshold', 0):.3g}"
    parts = [
        f"norm={params.get('norm', 'none')}",
        f"clip={clip}",
        f"init={params.get('init_scale', 1.0):.3g}",
        f"bs={params.get('batch_size')}",
    ]
    return " ".join(parts)


def ended_name(result: Outcome | str, params: dict[str, Any]) -> str:
    """The name of an ended trial's run: its outcome, then :func:`run_name`
    (``diverged · norm=none clip=none init=3.2 bs=64``)."""
    return f"{result}{SEP}{run_name(params)}"


def log10_points(key: str, value: float, timestamp_ms: int, step: int) -> list[Point]:
    """``log10_<key>`` for a :data:`LOG10` metric: one point for a finite ``value > 0``;
    none for NaN, inf, zero or a negative value (no logarithm; the metric itself keeps the
    value as measured, so a chart of the companion just ends where the trial blew up)."""
    if key not in LOG10 or not math.isfinite(value) or value <= 0:
        return []
    return [Point(f"log10_{key}", math.log10(value), timestamp_ms, step)]


def metrics_of(result: dict[str, Any], timestamp_ms: int) -> list[Point]:
    """The numeric values of ``result`` as metric points at its training step, with their
    :func:`log10_points`; NaN and inf as they are. Tune's own bookkeeping keys and
    :data:`outcome.NOT_METRICS` are left out."""
    step = int(result.get(outcome.STEP, result.get("training_iteration", 0)))
    out = []
    for key, value in result.items():
        if key in outcome.NOT_METRICS or key in TUNE_KEYS:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out.append(Point(key, float(value), timestamp_ms, step))
        out += log10_points(key, float(value), timestamp_ms, step)
    return out


class Steady:
    """Thins one run's :data:`STEADY` metrics: a point whose value equals the one logged
    before it is held back instead of sent; when the value changes, the held point (the
    last one of the old value) goes out before the new one, and :meth:`rest` gives the
    held points at the run's end. A chart of what is sent - straight lines between points
    - is the chart of every point. NaN never equals itself: a NaN point is always sent."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}  # metric -> the value last sent
        self.held: dict[str, Point] = {}  # metric -> the newest point held back

    def __call__(self, points: list[Point]) -> list[Point]:
        out: list[Point] = []
        for point in points:
            if point.key not in STEADY:
                out.append(point)
            elif self.last.get(point.key) == point.value:
                self.held[point.key] = point
            else:
                if point.key in self.held:
                    out.append(self.held.pop(point.key))
                self.last[point.key] = point.value
                out.append(point)
        return out

    def rest(self) -> list[Point]:
        """The points held back (at most one a metric), which end the run's charts."""
        out, self.held = list(self.held.values()), {}
        return out


def window_points(rows: Iterable[Any], after: int, before: int, timestamp_ms: int) -> list[Point]:
    """The per-step points of a verdict's :data:`outcome.WINDOW` (rows of ``[step,
    train_loss, grad_norm, update_ratio]``) at steps strictly between ``after`` (the last
    step already logged) and ``before`` (the report's own step, logged from the report),
    with their :func:`log10_points`; NaN and inf as they are. A malformed row is skipped."""
    out: list[Point] = []
    for row in rows:
        try:
            step, *values = (float(v) for v in row)
        except (TypeError, ValueError):
            continue
        if len(values) != len(outcome.WINDOW_METRICS) or not after < step < before:
            continue
        for key, value in zip(outcome.WINDOW_METRICS, values):
            out.append(Point(key, value, timestamp_ms, int(step)))
            out += log10_points(key, value, timestamp_ms, int(step))
    return out


def rescue_tags(result: dict[str, Any]) -> dict[str, str]:
    """A rescue's lineage: ``gradtune.rescue_attempts`` (rollbacks used),
    ``gradtune.rescued_from_step`` -> ``gradtune.rescued_to_step`` (the first rollback: where
    the configuration as proposed diverged, and the checkpoint it went back to),
    ``gradtune.rescue_remedy`` (every remedy in force at the end, ``lr x0.5 + clip
    norm@1``) and ``gradtune.rescue_lineage`` (every rollback, ``120->80 lr x0.5; ...``)."""
    rollbacks = rescue.parse(result.get(outcome.RESCUES))
    if not rollbacks:
        return {}
    first = rollbacks[0]
    return {"gradtune.rescue_attempts": str(len(rollbacks)),
            "gradtune.rescued_from_step": str(first["from_step"]),
            "gradtune.rescued_to_step": str(first["to_step"]),
            "gradtune.rescue_remedy": " + ".join(str(r["remedy"]) for r in rollbacks)[:5000],
            "gradtune.rescue_lineage": rescue.lineage_line(rollbacks)[:5000]}


def replay_tags(result: dict[str, Any]) -> dict[str, str]:
    """What ``gradtune replay`` reads about the first verdict (``outcome.REPLAY``):
    ``gradtune.replay_seed``, ``gradtune.replay_device``, ``gradtune.replay_step`` (the
    verdict's step), ``gradtune.checkpoint_step`` (the healthy checkpoint's) and
    ``gradtune.onset_batches`` (``first-last`` batch indices of the rules' window)."""
    try:
        info = json.loads(result.get(outcome.REPLAY) or "")
        first, last = info["onset_batches"]
        return {"gradtune.replay_seed": str(int(info["seed"])),
                "gradtune.replay_device": str(info["device"]),
                "gradtune.replay_step": str(int(info["divergence_step"])),
                "gradtune.checkpoint_step": str(int(info["checkpoint_step"])),
                "gradtune.onset_batches": f"{int(first)}-{int(last)}"}
    except (TypeError, ValueError, KeyError):
        return {}
