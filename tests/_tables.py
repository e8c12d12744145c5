"""Hand-built sweep tables for the report's tests (no Ray, no MLflow)."""

from __future__ import annotations

import math
from typing import Any

from gradtune import onset as onset_mod
from gradtune import spec as spec_mod
from gradtune.table import Row, SweepTable

SPACE = {
    "clip_method": ["none", "norm"],
    "clip_threshold": {"low": 0.01, "high": 10.0, "log": True},
    "init_scale": {"low": 0.25, "high": 4.0, "log": True},
    "norm": ["none", "layer"],
    "batch_size": [16, 32],
}


LAYERS = ["embed.weight", "net.0.weight", "net.0.bias", "net.1.weight", "net.2.weight", "net.3.weight",
          "net.4.weight", "head.weight"]


def onset(verdict_step: int = 15, first: str = "net.1.weight", window: int = 15) -> dict[str, Any]:
    """An onset artifact's dict as tracking logs it (:func:`gradtune.onset.to_json`, then read
    back): ``first`` grows 3x a step from 5 steps before the verdict, the others later and
    slower, ``head.weight`` NaN at the verdict."""
    steps = list(range(verdict_step - window + 1, verdict_step + 1))
    grads = []
    for k, name in enumerate(LAYERS):
        start, rate = (verdict_step - 5, 3.0) if name == first else (verdict_step - 2, 1.5 + 0.1 * k)
        grads.append([0.1 * (k + 1) * rate ** max(0, s - start) for s in steps])
    grads[LAYERS.index("head.weight")][-1] = math.nan
    found = onset_mod.analyse(LAYERS, steps, grads, [[1.0] * len(steps)] * len(LAYERS), verdict_step)
    back = onset_mod.from_json(onset_mod.to_json(found))
    assert back is not None
    return back


def row(number: int, outcome: str = "completed", value: float | None = 1.0, **params: Any) -> Row:
    params = {"clip_method": "norm", "clip_threshold": 1.0, "init_scale": 1.0, "norm": "none",
              "batch_size": 32, "optimizer": "sgd", "lr": 0.05, **params}
    if params["clip_method"] == "none":
        params.pop("clip_threshold", None)
    diverged = outcome == "diverged"
    if diverged:  # a blow-up: NaN, then 1e18 at the verdict, then inf
        trace: tuple[tuple[int, float], ...] = ((5, 1.5), (10, math.nan), (15, 1e18), (20, math.inf))
    else:
        trace = tuple((s, 1.0 + s / 10) for s in range(5, 35, 5))
    return Row(number=number, trial_id=f"t{number:05d}", run_id=f"run{number}", params=params,
               outcome=outcome,
               reason={"diverged": "grad norm 1e18 x its early median", "failed": "RuntimeError: boom"}.get(outcome),
               divergence_step=15 if diverged else None, value=value,
               metrics={"val_loss": value if value is not None else math.nan, "grad_norm": trace[-1][1]},
               trace=trace, onset=onset() if diverged else None)


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


def log_sweep(uri: str, swept: SweepTable, summary: bool = True) -> str:
    """Write ``swept`` to MLflow as gradtune's tracking does (parent with ``spec.yaml`` and
    ``summary.json``, a child run per row); returns the parent run id."""
    import json

    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.create_experiment(swept.experiment)
    parent = client.create_run(experiment_id, tags={"gradtune.role": "sweep"}).info.run_id
    client.log_text(parent, spec_mod.dump(swept.spec), "spec.yaml")
    if summary:
        trials = [{"number": r.number, "trial_id": r.trial_id} for r in swept.rows]
        client.log_text(parent, json.dumps({"trials": trials}), "summary.json")
    for r in sorted(swept.rows, key=lambda r: -r.number):  # start order is not number order
        tags = {"mlflow.parentRunId": parent, "gradtune.role": "trial", "gradtune.trial_id": r.trial_id,
                "gradtune.outcome": r.outcome}
        if r.outcome == "diverged":
            tags.update({"gradtune.divergence_reason": r.reason, "gradtune.divergence_step": str(r.divergence_step)})
        elif r.reason:
            tags["gradtune.failure"] = r.reason
        if r.onset is not None:  # as tracking._onset logs it
            tags["gradtune.onset_layer"] = r.onset["onset_layer"]
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
        if r.onset is not None:
            name = f"onset/verdict_{r.onset['verdict']}_step_{r.onset['verdict_step']}"
            client.log_text(run_id, onset_mod.to_json(r.onset), f"{name}.json")
            client.log_text(run_id, onset_mod.to_csv(r.onset), f"{name}.csv")
        points = [Metric("grad_norm", v, 0, s) for s, v in r.trace]  # its last is metrics["grad_norm"]
        last = max((s for s, _ in r.trace), default=0)
        points += [Metric(k, v, 0, last) for k, v in r.metrics.items() if k != "grad_norm"]
        client.log_batch(run_id, metrics=points, params=[Param(k, str(v)) for k, v in r.params.items()],
                         tags=[RunTag(k, v) for k, v in tags.items()])
        client.set_terminated(run_id)
    client.create_run(experiment_id, tags={"mlflow.parentRunId": parent, "gradtune.role": "trial",
                                           "gradtune.trial_id": "interrupted",
                                           "gradtune.outcome": "interrupted"})
    client.set_terminated(parent)
    return parent


def same(a: SweepTable, b: SweepTable, traces: bool = True) -> None:
    """Assert two tables are equal, NaN equal to NaN; traces compared when ``traces``."""
    def clean(t: SweepTable) -> list[Any]:
        rows = []
        for r in t.rows:
            metrics = {k: ("nan" if math.isnan(v) else v) for k, v in r.metrics.items()}
            trace = tuple((s, "nan" if math.isnan(v) else v) for s, v in r.trace) if traces else ()
            rows.append((r.number, r.trial_id, r.run_id, r.params, r.outcome, r.reason, r.divergence_step,
                         r.value, metrics, trace, r.onset))
        return rows

    assert (a.name, a.experiment, a.metric, a.mode, a.spec) == (b.name, b.experiment, b.metric, b.mode, b.spec)
    for x, y in zip(clean(a), clean(b)):
        assert x == y, (x, y)
    assert len(a.rows) == len(b.rows)
