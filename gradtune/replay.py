"""``gradtune replay RUN_ID``: rebuild a trial from the tracking store and run it again up to
its first divergence, with per-step and per-layer telemetry, to see whether it reproduces.

What the store holds is enough (:func:`recorded`): the parent run's ``spec.yaml`` artifact
(the resolved spec), the child run's params (the trial's hyperparameters, named as in the
space) and the first verdict's tags (``gradtune.replay_step``, ``gradtune.replay_seed``,
``gradtune.replay_device``, ``gradtune.checkpoint_step``, ``gradtune.onset_batches``; see
:func:`gradtune.runview.replay_tags`). A run without them (older, or one that never
diverged) falls back to ``gradtune.divergence_step`` and the spec's seed.

The replay (:func:`run`) trains the same configuration from step 1 with the rescue off (the
first verdict is the configuration's as proposed) and a report every step (evaluation as
often as the trial had it, so the training trajectory is the trial's), stops at the verdict
or ``tolerance`` steps after the recorded one, and writes into ``out``:

- ``steps.csv``: ``step, train_loss, grad_norm, update_ratio, lr`` of every step;
- ``onset.json``: per-layer norms of every step up to the verdict (the format of
  :mod:`gradtune.onset`, its table over the whole run), ``onset_window.csv``: the table over
  the rules' window before the verdict, as the trial logged it.

The verdict *reproduced* when it fires within ``tolerance`` steps of the recorded one. On
CPU a trial is deterministic (the same step exactly); on a GPU, kernels that are not
deterministic can move it by a few steps, and another device than the recorded one is a
different experiment (the result says so).
"""

from __future__ import annotations

import csv
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradtune import onset, outcome
from gradtune import spec as spec_mod
from gradtune.credentials import redact
from gradtune.errors import GradtuneError
from gradtune.params import PARAMS
from gradtune.spec import Range, SweepSpec

log = logging.getLogger(__name__)

STEP_COLUMNS = ("step", "train_loss", "grad_norm", "update_ratio", "lr")
MAX_LAYER_STEPS = 20000  # per-layer norms kept on the device at most (steps)


@dataclass
class Recorded:
    """What the store says about a trial: its spec, its searched values, the seed, the
    device, the first verdict's step and the healthy checkpoint's, and the onset batches."""

    run_id: str
    spec: SweepSpec
    config: dict[str, Any]
    seed: int
    device: str
    divergence_step: int
    checkpoint_step: int | None = None
    onset_batches: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def typed(value: str, dimension: Any, name: str) -> Any:
    """A logged param (a string) as the value the space gave: the choice whose logged form
    it is, or a number of the parameter's kind."""
    if isinstance(dimension, list):
        for choice in dimension:
            logged = json.dumps(choice) if isinstance(choice, (list, dict)) else str(choice)
            if logged == value:
                return choice
        raise GradtuneError(f"param {name}={value!r} is none of the space's choices {dimension}")
    if isinstance(dimension, Range):
        param = PARAMS.get(name)
        number = float(value)
        return int(number) if param is not None and param.kind == "int" else number
    return dimension  # a fixed value


def recorded(run_id: str, tracking_uri: str) -> Recorded:
    """Read what :func:`run` needs from the store; :class:`GradtuneError` (one line) for an
    unknown run, a run that is not a gradtune trial, or one without a divergence."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    where = redact(tracking_uri)
    try:
        found = client.get_run(run_id)
    except MlflowException as exc:
        raise GradtuneError(f"run {run_id}: not found in {where}") from exc
    tags = dict(found.data.tags)
    parent = tags.get("mlflow.parentRunId")
    if tags.get("gradtune.role") != "trial" or not parent:
        raise GradtuneError(f"run {run_id}: not a gradtune trial run (no gradtune.role=trial and parent)")
    with tempfile.TemporaryDirectory(prefix="gradtune-replay-") as directory:
        try:
            path = client.download_artifacts(parent, "spec.yaml", directory)
        except (MlflowException, OSError) as exc:
            raise GradtuneError(f"run {run_id}: its sweep's spec.yaml is not in {where}") from exc
        spec = spec_mod.load(path)
    step = tags.get("gradtune.replay_step") or tags.get("gradtune.divergence_step")
    if step is None:
        raise GradtuneError(f"run {run_id}: no divergence recorded (outcome "
                            f"{tags.get('gradtune.outcome', 'unknown')}); nothing to replay")
    params = dict(found.data.params)
    config = {n: typed(params[n], d, n) for n, d in spec.search.space.items() if n in params}
    checkpoint = tags.get("gradtune.checkpoint_step")
    return Recorded(
        run_id=run_id, spec=spec, config=config,
        seed=int(tags.get("gradtune.replay_seed", spec.training.seed)),
        device=tags.get("gradtune.replay_device", "cpu"), divergence_step=int(step),
        checkpoint_step=int(checkpoint) if checkpoint is not None else None,
        onset_batches=tags.get("gradtune.onset_batches"), tags=tags,
    )


class _Stop(Exception):
    """The replay ran ``tolerance`` steps past the recorded verdict without one."""


@dataclass
class Replayed:
    """The replay's verdict (``None``: none by ``last_step``), its steps and the onset."""

    verdict: outcome.Verdict | None
    last_step: int
    device: str
    steps: list[dict[str, Any]]
    found: dict[str, Any] | None
    window: dict[str, Any] | None

    def reproduced(self, rec: Recorded, tolerance: int) -> bool:
        return self.verdict is not None and abs(self.verdict.step - rec.divergence_step) <= tolerance


def replay_spec(rec: Recorded, device: str) -> SweepSpec:
    """The trial's spec for the replay: its seed and ``device``, the rescue off, per-layer
    norms on, a report every step with evaluation as often as before (none of which
    changes the training trajectory)."""
    t = rec.spec.training
    data = rec.spec.model_dump(mode="json")
    data["training"].update(seed=rec.seed, device=device, report_every=1,
                            eval_every=t.eval_every or t.report_every, checkpoint_every=t.checkpoint_every)
    data["divergence"]["rescue"]["attempts"] = 0
    data["divergence"]["onset"] = True
    return SweepSpec.model_validate(data)


def run(rec: Recorded, device: str | None = None, tolerance: int = 2) -> Replayed:
    """Train ``rec``'s trial again up to its first verdict (at most ``tolerance`` steps
    past the recorded one); see the module docstring."""
    from gradtune import trial

    device = device or rec.device
    spec = replay_spec(rec, device)
    horizon = rec.divergence_step + tolerance
    steps: list[dict[str, Any]] = []

    def report(metrics: dict[str, Any]) -> None:
        steps.append({k: metrics.get(k) for k in STEP_COLUMNS})
        if metrics.get(outcome.DIVERGED) or metrics[outcome.STEP] >= horizon:
            raise _Stop(metrics)

    last: dict[str, Any] = {}
    try:
        trial.train(spec, rec.config, report, layer_steps=min(horizon, MAX_LAYER_STEPS))
    except _Stop as stop:
        last = stop.args[0]
    if not last and steps:
        last = {outcome.STEP: steps[-1]["step"]}
    verdict = outcome.reported_verdict(last)
    found = onset.from_json(last.get(outcome.ONSET))
    window = None
    if found is not None and verdict is not None:
        n = trial.last_steps(rec.spec)
        window = onset.analyse(found["layers"], found["steps"][-n:],
                               [_floats(g[-n:]) for g in found["grad_norm"]],
                               [_floats(w[-n:]) for w in found["weight_norm"]], verdict.step)
    return Replayed(verdict, int(last.get(outcome.STEP, 0)), str(spec.training.device), steps, found, window)


def _floats(values: list[Any]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def write(replayed: Replayed, out: Path) -> list[Path]:
    """The replay's files in ``out`` (module docstring); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "steps.csv"]
    with open(written[0], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=STEP_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(replayed.steps)
    if replayed.found is not None:
        written.append(out / "onset.json")
        written[-1].write_text(onset.to_json(replayed.found))
    if replayed.window is not None:
        written.append(out / "onset_window.csv")
        written[-1].write_text(onset.to_csv(replayed.window))
    return written


def lines(rec: Recorded, replayed: Replayed, tolerance: int, shown: int = 10) -> list[str]:
    """What ``gradtune replay`` prints: the recorded trial, its last steps, the layers that
    grew first, and whether the divergence reproduced."""
    out = [f"run {rec.run_id}: {rec.spec.workload.name}, {json.dumps(rec.config)}, seed {rec.seed}",
           f"  recorded: diverged at step {rec.divergence_step} on {rec.device}"
           + _healthy(rec.checkpoint_step)
           + (f", onset batches {rec.onset_batches}" if rec.onset_batches else ""),
           f"  replayed on {replayed.device}, steps 1-{replayed.last_step}; "
           f"the last {min(shown, len(replayed.steps))}:",
           "    " + "  ".join(f"{c:>12s}" for c in STEP_COLUMNS)]
    for row in replayed.steps[-shown:]:
        out.append("    " + "  ".join(f"{_num(row[c]):>12s}" for c in STEP_COLUMNS))
    if replayed.window is not None:
        out.append("  where it started (gradient norm per layer, the rules' window before the verdict):")
        for row in replayed.window["table"][:5]:
            started = "never" if row["onset_step"] is None else f"step {row['onset_step']}"
            out.append(f"    {row['rank']}. {row['layer']}: grew {_num(row['growth'])}x its baseline, "
                       f">= {onset.FACTOR:g}x at {started}")
    same_device = replayed.device == rec.device
    if replayed.verdict is None:
        out.append(f"  not reproduced: no divergence by step {replayed.last_step} "
                   f"(recorded at {rec.divergence_step}, tolerance {tolerance})")
    else:
        delta = replayed.verdict.step - rec.divergence_step
        word = "reproduced" if abs(delta) <= tolerance else "not reproduced"
        out.append(f"  {word}: diverged at step {replayed.verdict.step} ({delta:+d} steps, tolerance "
                   f"{tolerance}): {replayed.verdict.reason}")
    if not same_device:
        out.append(f"  note: recorded on {rec.device}, replayed on {replayed.device}; steps may differ")
    return out


def _healthy(step: int | None) -> str:
    if step is None:
        return ""
    return f", healthy checkpoint at step {step}" if step else ", no healthy checkpoint"


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
