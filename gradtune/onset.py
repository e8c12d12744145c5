"""Where a divergence started: which layers' gradients grew first over the steps before a
verdict. Pure (no torch): the trial keeps per-layer norms in a ring buffer on the device
(:class:`gradtune.telemetry.LayerNorms`, one foreach norm per step, read only at a verdict)
and hands the numbers here.

The analysis (:func:`analyse`), per layer (a parameter tensor, named as in
``model.named_parameters()``):

- its *baseline* is the median of the finite gradient norms of the first quarter of the
  window (at least one step): where the layer was before the blow-up;
- its *onset step* is the first step whose gradient norm is at least :data:`FACTOR` x that
  baseline, or not finite (NaN and inf count as grown: a layer that went non-finite first
  started it); ``None`` when it never got there;
- its *growth* is the largest finite gradient norm over the window divided by the baseline.

Layers are ranked by onset step (earliest first; never: last), then by growth (larger
first), then by model order. The *onset layer* is the first of that ranking (the largest
grower when no layer crossed the factor). Gradients flow through every layer in one
backward pass, so several layers often cross on the same step; the growth then says which
moved most.

The artifact (``onset/verdict_<n>_step_<step>.json`` on the child run, for the trial's n-th
verdict: a rescued trial has one per rollback; :func:`to_json`), version 1::

    {"version": 1, "verdict": 1, "verdict_step": 120, "factor": 10.0,
     "onset_layer": "net.6.weight",
     "steps": [101, ..., 120],                  # the window, oldest first
     "layers": ["net.0.weight", ...],           # model order
     "grad_norm":   [[...per step...], ...],    # [layer][step], pre-clip L2, null = NaN/inf
     "weight_norm": [[...per step...], ...],    # [layer][step], before the optimizer step
     "table": [{"rank", "layer", "onset_step", "growth", "baseline", "grad_first",
                "grad_last", "weight_first", "weight_last", "nonfinite_step"}, ...]}

``table`` is also ``onset/verdict_<n>_step_<step>.csv`` (:func:`to_csv`, the same columns, empty
cells for null). A report plots ``grad_norm`` per layer against ``steps`` (log scale), the
onset layer first.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from statistics import median
from typing import Any

from gradtune.outcome import strict_json

__all__ = ["COLUMNS", "FACTOR", "VERSION", "analyse", "from_json", "onset_row", "to_csv", "to_json"]

VERSION = 1
FACTOR = 10.0  # x its own baseline: a layer's gradient has "grown"
COLUMNS = ("rank", "layer", "onset_step", "growth", "baseline", "grad_first", "grad_last",
           "weight_first", "weight_last", "nonfinite_step")


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _first_finite(values: Sequence[float]) -> float | None:
    return next((v for v in values if math.isfinite(v)), None)


def layer_row(name: str, steps: Sequence[int], grads: Sequence[float], weights: Sequence[float],
              factor: float = FACTOR) -> dict[str, Any]:
    """One layer's row of the table (no rank yet); see the module docstring."""
    head = _finite(grads[: max(1, len(grads) // 4)])
    baseline = median(head) if head else math.nan
    onset = nonfinite = None
    for step, g in zip(steps, grads):
        if not math.isfinite(g):
            nonfinite = step if nonfinite is None else nonfinite
        grown = not math.isfinite(g) or (math.isfinite(baseline) and baseline > 0 and g >= factor * baseline)
        if grown and onset is None:
            onset = step
    finite = _finite(grads)
    growth = max(finite) / baseline if finite and math.isfinite(baseline) and baseline > 0 else math.nan
    return {"layer": name, "onset_step": onset, "growth": growth, "baseline": baseline,
            "grad_first": _first_finite(grads), "grad_last": _first_finite(list(reversed(grads))),
            "weight_first": _first_finite(weights), "weight_last": _first_finite(list(reversed(weights))),
            "nonfinite_step": nonfinite}


def analyse(names: Sequence[str], steps: Sequence[int], grad_norms: Sequence[Sequence[float]],
            weight_norms: Sequence[Sequence[float]], verdict_step: int,
            factor: float = FACTOR) -> dict[str, Any]:
    """The onset of a divergence: ``grad_norms[layer][step]`` and ``weight_norms`` over
    ``steps`` (oldest first) for each of ``names``; returns the artifact's dict (module
    docstring), NaN and inf kept as floats (:func:`to_json` writes them as null)."""
    rows = [layer_row(n, steps, g, w, factor) for n, g, w in zip(names, grad_norms, weight_norms)]
    order = {n: i for i, n in enumerate(names)}

    def key(row: dict[str, Any]) -> tuple[float, float, int]:
        onset = row["onset_step"]
        growth = row["growth"] if math.isfinite(row["growth"]) else -math.inf
        if row["nonfinite_step"] is not None and row["nonfinite_step"] == onset:
            growth = math.inf  # went non-finite at its onset: more than any finite growth
        return (math.inf if onset is None else onset, -growth, order[row["layer"]])

    table = [{"rank": i + 1, **row} for i, row in enumerate(sorted(rows, key=key))]
    return {
        "version": VERSION, "verdict": 1, "verdict_step": verdict_step, "factor": factor,
        "onset_layer": table[0]["layer"] if table else None,
        "steps": list(steps), "layers": list(names),
        "grad_norm": [list(g) for g in grad_norms], "weight_norm": [list(w) for w in weight_norms],
        "table": table,
    }


def to_json(found: Mapping[str, Any]) -> str:
    """The artifact as strict JSON text (NaN and inf are ``null``)."""
    return json.dumps(strict_json(dict(found)), allow_nan=False, separators=(",", ":"))


def from_json(text: Any) -> dict[str, Any] | None:
    """The artifact's dict from :func:`to_json` text; ``None`` for anything else."""
    if not isinstance(text, str):
        return None
    try:
        found = json.loads(text)
    except ValueError:
        return None
    return found if isinstance(found, dict) and found.get("version") == VERSION else None


def onset_row(found: Mapping[str, Any]) -> dict[str, Any]:
    """The onset layer's row of the artifact's ``table`` (``{}`` when there is none)."""
    for row in found.get("table") or []:
        if isinstance(row, dict) and row.get("layer") == found.get("onset_layer"):
            return row
    return {}


def to_csv(found: Mapping[str, Any]) -> str:
    """The artifact's table as CSV (:data:`COLUMNS`; empty cells for null)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in strict_json(list(found.get("table") or [])):
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS})
    return out.getvalue()
