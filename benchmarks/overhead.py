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
(depth 20, width 256, batch 256). Prints a table, then one JSON line.

    python benchmarks/overhead.py [--steps 300] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
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


def bare_step(spec: SweepSpec, config: dict[str, Any], evaluate: bool = True) -> float:
    """The bare loop over the same workload (same seed, model, batches)."""
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
    stamps: list[tuple[int, float]] = []
    for step in range(1, t.steps + 1):
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(wl.train_batches)
            x, y = next(batches)
        loss = wl.loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), params["clip_threshold"])
        optimizer.step()
        schedule.step()
        if step % t.report_every == 0:
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # as a trial with resources.cpu: 1
    results = {model: measure(model, args.steps, args.repeats) for model in MODELS}
    print("| model | bare ms/step | gradtune ms/step | step_overhead | eval share of bare |")
    print("| --- | --- | --- | --- | --- |")
    for model, r in results.items():
        print(f"| {model} | {r['bare_ms']:.2f} | {r['gradtune_ms']:.2f} | {r['step_overhead']:.3f} "
              f"| {r['eval_share']:.3f} |")
    summary = {"step_overhead": results["quickstart"]["step_overhead"],
               "step_overhead_larger": results["larger"]["step_overhead"],
               "models": {m: {k: round(v, 4) for k, v in r.items()} for m, r in results.items()},
               "steps": args.steps, "repeats": args.repeats}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
