"""Benchmark: what does gradtune's trial loop cost over a bare PyTorch loop, per step?

The same model, batches, optimizer, learning-rate schedule, clipping and evaluation
cadence, one thread, CPU, in this process (no Ray):

- **bare**: the loop a user would write: ``zero_grad``, forward, backward,
  ``clip_grad_norm_``, ``step``, schedule, and ``workloads.evaluate`` every ``report_every``
  steps (what gradtune does by default: ``eval_every: null``);
- **gradtune**: ``trial.train`` with a report that does nothing: the same work plus the
  per-step statistics (pre-clip norm, update ratio, loss), the host sync that hands them to
  the divergence rules, the rules, and the report's aggregates;
- **bare, no eval**: the bare loop without evaluation, to state evaluation's share.

Each is timed from its first report step to its last (set-up left out), interleaved over
``--repeats`` rounds; the ratio of medians is the figure (this machine is shared: ratios
only). Two models: the quickstart (deep_mlp depth 20, width 64, batch 64) and a larger one
(depth 20, width 256, batch 256).

Then whole sweeps, each a command of its own, timed from its start to its exit, interleaved
over ``--sweeps`` rounds (the default sweep: 24 trials of 300 steps, two at a time):

- **gradtune**: ``python -m gradtune sweep`` on a new SQLite store; its summary states the
  ideal (its trials' compute over its workers) and what MLflow tracking and the report took;
- **plain Tune, logged**: what a user would write instead: a ``Tuner`` with Ray's
  ``OptunaSearch`` (TPE) over the same space, the bare loop above as the trainable reporting
  every ``report_every`` steps, ``reuse_actors``, and Ray's ``MLflowLoggerCallback`` on a
  new SQLite store;
- **plain Tune, unlogged**: the same without MLflow.

And 1-step trials: gradtune sweeps of 20 and 60 trials; ``trials_per_second`` is 40 over
the difference of their walls (steady state, start-up cancelled out).

Prints tables, then one JSON line: ``step_overhead`` (gradtune / bare per step, quickstart),
``sweep_over_ideal``, ``tracking_share`` (tracking + report over gradtune's wall),
``vs_plain_tune_logged`` and ``vs_plain_tune_unlogged`` (gradtune's wall / the peer's),
``trials_per_second``.

    python benchmarks/overhead.py [--steps 300] [--repeats 5] [--sweeps 2] [--skip-sweeps]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import torch

from gradtune import trial, workloads
from gradtune.params import trial_params
from gradtune.spec import SweepSpec, load

CONFIG = {"norm": "none", "init_scale": 1.0, "clip_method": "norm", "clip_threshold": 1.0}
MODELS = {"quickstart": {"width": 64, "batch_size": 64}, "larger": {"width": 256, "batch_size": 256}}


def spec_for(model: str, steps: int) -> tuple[SweepSpec, dict[str, Any]]:
    m = MODELS[model]
    spec = load(None, {"training.steps": steps, "training.device": "cpu",
                       "workload.options": {"depth": 20, "width": m["width"]}})
    return spec, {**CONFIG, "batch_size": m["batch_size"]}


def per_step(stamps: list[tuple[int, float]]) -> float:
    (first, t_first), (last, t_last) = stamps[0], stamps[-1]
    return (t_last - t_first) / (last - first)


def gradtune_step(spec: SweepSpec, config: dict[str, Any]) -> float:
    stamps: list[tuple[int, float]] = []
    trial.train(spec, config, lambda m: stamps.append((m["step"], time.perf_counter())))
    return per_step(stamps)


def bare_loop(spec: SweepSpec, config: dict[str, Any]) -> Iterator[tuple[int, Any, Any]]:
    """The loop a user would write over the same workload (same seed, model, batches, LR
    schedule and clipping): yields ``(step, loss, workload)`` after each optimizer step."""
    params = trial_params(spec, config)
    t = spec.training
    torch.manual_seed(t.seed)
    wl = workloads.build(spec.workload.name, spec.workload.options, params, t.seed, torch.device("cpu"))
    model = wl.model.train()
    optimizer = trial.make_optimizer(model, params)
    warmup = params["warmup_steps"] or wl.warmup_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    batches = iter(wl.train_batches)
    for step in range(1, t.steps + 1):
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(wl.train_batches)
            x, y = next(batches)
        loss = wl.loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if params["clip_method"] == "norm":
            torch.nn.utils.clip_grad_norm_(model.parameters(), params["clip_threshold"])
        elif params["clip_method"] == "value":
            torch.nn.utils.clip_grad_value_(model.parameters(), params["clip_threshold"])
        optimizer.step()
        schedule.step()
        yield step, loss, wl


def bare_step(spec: SweepSpec, config: dict[str, Any], evaluate: bool = True) -> float:
    """Seconds per step of :func:`bare_loop`, evaluating every ``report_every`` steps."""
    stamps: list[tuple[int, float]] = []
    for step, _, wl in bare_loop(spec, config):
        if step % spec.training.report_every == 0:
            if evaluate:
                workloads.evaluate(wl)
            stamps.append((step, time.perf_counter()))
    return per_step(stamps)


def measure(model: str, steps: int, repeats: int) -> dict[str, float]:
    spec, config = spec_for(model, steps)
    runs: dict[str, list[float]] = {"bare": [], "gradtune": [], "bare_no_eval": []}
    for _ in range(repeats):  # interleaved: drift in the machine's load hits all three
        runs["bare"].append(bare_step(spec, config))
        runs["gradtune"].append(gradtune_step(spec, config))
        runs["bare_no_eval"].append(bare_step(spec, config, evaluate=False))
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "bare_ms": 1e3 * med["bare"], "gradtune_ms": 1e3 * med["gradtune"],
        "bare_no_eval_ms": 1e3 * med["bare_no_eval"],
        "step_overhead": med["gradtune"] / med["bare"],
        "eval_share": 1 - med["bare_no_eval"] / med["bare"],
    }


# ----------------------------------------------------------------------------- sweeps
def plain_tune(steps: int, logged: bool, tmp: str) -> None:
    """The peer (run in a process of its own by ``--peer``): plain Ray Tune + Ray's
    ``OptunaSearch`` over the quickstart space, the bare loop as the trainable."""
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from gradtune.search_space import define_by_run

    spec = load(None, {"training.steps": steps, "training.device": "cpu"})
    ray.init(include_dashboard=False)
    data = spec.model_dump(mode="json")

    def trainable(config: dict[str, Any]) -> None:
        torch.set_num_threads(1)
        s = SweepSpec.model_validate(data)
        t = s.training
        for step, loss, wl in bare_loop(s, config):
            if step % t.report_every == 0 or step == t.steps:
                tune.report({"step": step, "train_loss": loss.item(), **workloads.evaluate(wl)})

    callbacks = []
    if logged:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(MLflowLoggerCallback(tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                                              experiment_name="plain-tune"))
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(space=define_by_run(spec.search.space), metric=spec.search.metric,
                                    mode=spec.search.mode, seed=0),
            metric=spec.search.metric, mode=spec.search.mode, num_samples=spec.search.trials,
            max_concurrent_trials=spec.search.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=f"{tmp}/ray_results", callbacks=callbacks, verbose=0),
    )
    tuner.fit()
    ray.shutdown()


def timed(command: list[str], cwd: str) -> tuple[float, str]:
    started = time.monotonic()
    out = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.monotonic() - started
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return wall, out.stdout


def gradtune_sweep(steps: int, tmp: str, *extra: str) -> dict[str, float]:
    wall, out = timed([sys.executable, "-m", "gradtune", "sweep", "--storage", f"{tmp}/ray_results",
                       "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--set", f"training.steps={steps}",
                       *extra], tmp)
    ideal = re.search(r"x the ideal (\d+)s \(trials' compute (\d+)s over (\d+) workers\)", out)
    cost = re.search(r"MLflow tracking and the report took ([\d.]+)s", out)
    return {"wall": wall, "ideal": float(ideal.group(1)) if ideal else math.nan,
            "compute": float(ideal.group(2)) if ideal else math.nan,
            "tracking": float(cost.group(1)) if cost else math.nan}


def sweeps(steps: int, rounds: int) -> dict[str, Any]:
    walls: dict[str, list[float]] = {"gradtune": [], "plain_tune_logged": [], "plain_tune_unlogged": []}
    ideal: list[float] = []
    tracking: list[float] = []
    for _ in range(rounds):  # interleaved
        with tempfile.TemporaryDirectory() as tmp:
            g = gradtune_sweep(steps, tmp)
        walls["gradtune"].append(g["wall"])
        ideal.append(g["ideal"])
        tracking.append(g["tracking"])
        for name, logged in (("plain_tune_logged", True), ("plain_tune_unlogged", False)):
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [sys.executable, __file__, "--peer", "logged" if logged else "unlogged",
                       "--steps", str(steps), "--tmp", tmp]
                walls[name].append(timed(cmd, tmp)[0])
    with tempfile.TemporaryDirectory() as tmp:
        few = gradtune_sweep(1, tmp, "--trials", "20")["wall"]
    with tempfile.TemporaryDirectory() as tmp:
        many = gradtune_sweep(1, tmp, "--trials", "60")["wall"]
    med = {k: statistics.median(v) for k, v in walls.items()}
    return {
        "walls_s": {k: [round(w, 1) for w in v] for k, v in walls.items()},
        "ideal_s": [round(i, 1) for i in ideal],
        "sweep_over_ideal": statistics.median(w / i for w, i in zip(walls["gradtune"], ideal)),
        "tracking_share": statistics.median(t / w for t, w in zip(tracking, walls["gradtune"])),
        "vs_plain_tune_logged": med["gradtune"] / med["plain_tune_logged"],
        "vs_plain_tune_unlogged": med["gradtune"] / med["plain_tune_unlogged"],
        "trials_per_second": 40 / (many - few) if many > few else math.nan,
        "one_step_walls_s": [round(few, 1), round(many, 1)],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sweeps", type=int, default=2, help="rounds of whole sweeps")
    p.add_argument("--skip-sweeps", action="store_true", help="the per-step comparison only")
    p.add_argument("--peer", choices=["logged", "unlogged"], help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.peer:
        plain_tune(args.steps, args.peer == "logged", args.tmp)
        return 0
    torch.set_num_threads(1)  # as a trial with resources.cpu: 1
    results = {model: measure(model, args.steps, args.repeats) for model in MODELS}
    print("| model | bare ms/step | gradtune ms/step | step_overhead | eval share of bare |")
    print("| --- | --- | --- | --- | --- |")
    for model, r in results.items():
        print(f"| {model} | {r['bare_ms']:.2f} | {r['gradtune_ms']:.2f} | {r['step_overhead']:.3f} "
              f"| {r['eval_share']:.3f} |")
    summary: dict[str, Any] = {
        "step_overhead": results["quickstart"]["step_overhead"],
        "step_overhead_larger": results["larger"]["step_overhead"],
        "models": {m: {k: round(v, 4) for k, v in r.items()} for m, r in results.items()},
        "steps": args.steps, "repeats": args.repeats}
    if not args.skip_sweeps:
        whole = sweeps(args.steps, args.sweeps)
        print()
        print("| sweep (24 trials) | wall s (each round) |")
        print("| --- | --- |")
        for name, walls in whole["walls_s"].items():
            print(f"| {name} | {', '.join(f'{w:.1f}' for w in walls)} |")
        print(f"gradtune's ideal (trials' compute / workers): {whole['ideal_s']} s; "
              f"1-step sweeps of 20 and 60 trials: {whole['one_step_walls_s']} s")
        summary.update(whole)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
