"""Benchmark: what do trial checkpoints cost, as a share of training time?

The quickstart trial (deep_mlp, depth 20, width 64, batch 64, SGD with momentum, fp32, CPU,
one thread) at ``training.checkpoint_every`` (default 50):

1. In-process, no Ray: the mean step time of a trial without checkpoints (from its first
   report to its last: evaluations at reports included, setup left out), and the time of
   one checkpoint as the trainable takes it, without Tune: capture the state, ``torch.save``
   it into a temporary directory, copy that directory into a storage directory (what Tune
   does for a local ``storage``) and remove it.
2. In Ray Tune (``--tune``): one trial of the real trainable path, timing every plain
   report (``tune.report``) and every report with a checkpoint (the trainable's ``save``:
   write, ``Checkpoint.from_directory``, ``tune.report(..., checkpoint=...)``, which copies
   it into the sweep's storage before it returns). The extra cost of a checkpoint is the
   difference of the two means.

The share is ``cost / (checkpoint_every * step time)``. Prints a table, then one JSON line.

    python benchmarks/checkpoint.py [--steps 300] [--every 50] [--repeats 3] [--tune]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from gradtune import checkpoint, trial
from gradtune.spec import SweepSpec, load

CONFIG = {"norm": "none", "init_scale": 1.0, "clip_method": "norm", "clip_threshold": 1.0,
          "batch_size": 64}


def quickstart(steps: int, every: int) -> SweepSpec:
    return load(None, {"training.steps": steps, "training.checkpoint_every": every,
                       "training.device": "cpu"})


def step_time(spec: SweepSpec) -> float:
    """Seconds per step without checkpoints, from the first report to the last (setup left out)."""
    stamps: list[tuple[int, float]] = []
    trial.train(spec, CONFIG, lambda m: stamps.append((m["step"], time.perf_counter())))
    (first, t_first), (last, t_last) = stamps[0], stamps[-1]
    return (t_last - t_first) / (last - first)


def in_process(steps: int, every: int, repeats: int) -> dict[str, float]:
    spec = quickstart(steps, every)
    step_times: list[float] = []
    costs: list[float] = []
    sizes: list[int] = []
    with tempfile.TemporaryDirectory() as storage:
        for _ in range(repeats):
            step_times.append(step_time(spec))

            def save(metrics: dict[str, Any], state: dict[str, Any]) -> None:
                t0 = time.perf_counter()
                with tempfile.TemporaryDirectory() as directory:
                    path = checkpoint.save(state, directory)
                    sizes.append(path.stat().st_size)
                    target = Path(storage) / f"checkpoint_{len(costs):06d}"
                    shutil.copytree(directory, target)
                costs.append(time.perf_counter() - t0)
                shutil.rmtree(target)

            trial.train(spec, CONFIG, lambda m: None, save=save)
    step = statistics.median(step_times)
    cost = statistics.median(costs)
    return {"step_ms": round(step * 1e3, 3), "checkpoint_ms": round(cost * 1e3, 2),
            "checkpoint_kb": round(statistics.median(sizes) / 1024, 1),
            "share": round(cost / (every * step), 4)}


def in_tune(steps: int, every: int) -> dict[str, float]:
    import ray
    from ray import tune

    def trainable(config: dict[str, Any], spec_data: dict[str, Any], out: str) -> None:
        spec = SweepSpec.model_validate(spec_data)
        torch.set_num_threads(1)
        timings: dict[str, list[float]] = {"report": [], "save": []}

        def report(metrics: dict[str, Any]) -> None:
            t0 = time.perf_counter()
            tune.report(metrics)
            timings["report"].append(time.perf_counter() - t0)

        def save(metrics: dict[str, Any], state: dict[str, Any]) -> None:
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="gradtune-checkpoint-") as directory:
                checkpoint.save(state, directory)
                found = tune.Checkpoint.from_directory(directory)
                found.set_metadata({"step": state["step"], "healthy_step": state["healthy_step"]})
                tune.report(metrics, checkpoint=found)
            timings["save"].append(time.perf_counter() - t0)

        started = time.perf_counter()
        trial.train(spec, config, report, save=save)
        total = time.perf_counter() - started
        Path(out).write_text(json.dumps({**timings, "total": total}))

    spec = quickstart(steps, every)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "timings.json"
        ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
        try:
            tuner = tune.Tuner(
                tune.with_parameters(trainable, spec_data=spec.model_dump(mode="json"), out=str(out)),
                param_space=CONFIG,
                run_config=tune.RunConfig(storage_path=str(Path(tmp) / "storage"), verbose=0),
            )
            tuner.fit()
        finally:
            ray.shutdown()
        timings = json.loads(out.read_text())
    report = statistics.mean(timings["report"])
    save = statistics.mean(timings["save"])
    return {"report_ms": round(report * 1e3, 2), "report_with_checkpoint_ms": round(save * 1e3, 2),
            "checkpoints": len(timings["save"]), "trial_s": round(timings["total"], 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tune", action="store_true", help="also time checkpoints in a real Ray Tune trial")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    local = in_process(args.steps, args.every, args.repeats)
    print(f"step {local['step_ms']} ms; checkpoint {local['checkpoint_ms']} ms ({local['checkpoint_kb']} KiB) "
          f"every {args.every} steps: {local['share']:.2%} of training time (in process)")
    result: dict[str, Any] = {"every": args.every, "in_process": local}
    if args.tune:
        tuned = in_tune(args.steps, args.every)
        extra = (tuned["report_with_checkpoint_ms"] - tuned["report_ms"]) / 1e3
        tuned["share"] = round(extra / (args.every * local["step_ms"] / 1e3), 4)
        print(f"in Tune: report {tuned['report_ms']} ms, report with checkpoint "
              f"{tuned['report_with_checkpoint_ms']} ms ({tuned['checkpoints']} checkpoints): "
              f"{tuned['share']:.2%} of training time")
        result["tune"] = tuned
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
