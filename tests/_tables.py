"""Hand-built sweep tables for the report's tests (no Ray, no MLflow)."""

from __future__ import annotations

import math
from typing import Any

from gradtune import spec as spec_mod
from gradtune.table import Row, SweepTable

SPACE = {
    "clip_method": ["none", "norm"],
    "clip_threshold": {"low": 0.01, "high": 10.0, "log": True},
    "init_scale": {"low": 0.25, "high": 4.0, "log": True},
    "norm": ["none", "layer"],
    "batch_size": [16, 32],
}


def row(number: int, outcome: str = "completed", value: float | None = 1.0, **params: Any) -> Row:
    params = {"clip_method": "norm", "clip_threshold": 1.0, "init_scale": 1.0, "norm": "none",
              "batch_size": 32, "optimizer": "sgd", "lr": 0.05, **params}
    if params["clip_method"] == "none":
        params.pop("clip_threshold", None)
    diverged = outcome == "diverged"
    steps = range(5, 35 if not diverged else 20, 5)
    trace = tuple((s, 1e18 if diverged and s == 15 else (math.nan if diverged and s == 10 else 1.0 + s / 10))
                  for s in steps)
    return Row(number=number, trial_id=f"t{number:05d}", run_id=f"run{number}", params=params,
               outcome=outcome,
               reason={"diverged": "grad norm 1e18 x its early median", "failed": "RuntimeError: boom"}.get(outcome),
               divergence_step=15 if diverged else None, value=value if outcome != "failed" else None,
               metrics={"val_loss": value if value is not None else math.nan,
                        "grad_norm": math.inf if diverged else 1.0},
               trace=trace)


def table(rows: list[Row], space: dict[str, Any] | None = None, mode: str = "min") -> SweepTable:
    spec = spec_mod.load(None, {"name": "hand", "search.space": space or SPACE, "search.mode": mode})
    return SweepTable(name="hand", experiment="hand", experiment_id="1", parent_run_id="p",
                      metric=spec.search.metric, mode=mode, spec=spec, rows=tuple(rows))


def sweep(n: int = 24) -> SweepTable:
    """``n`` trials over :data:`SPACE`: large init without norm diverges, one clip none, one
    failed, one pruned."""
    rows = []
    for i in range(n):
        init = 0.25 * (16 ** (i / max(n - 1, 1)))
        norm = "layer" if i % 3 == 0 else "none"
        clip = "none" if i % 4 == 0 else "norm"
        outcome = "diverged" if init > 2.0 and norm == "none" else "completed"
        if i == 1:
            outcome = "failed"
        if i == 2:
            outcome = "pruned"
        rows.append(row(i, outcome, value=None if outcome == "diverged" and i % 2 else 0.5 + abs(math.log(init)),
                        clip_method=clip, clip_threshold=0.01 * 1000 ** (i / n), init_scale=init, norm=norm,
                        batch_size=16 if i % 2 else 32))
    return table(rows)
