"""Benchmark: does a trial of 2 data-parallel ranks (``resources.workers: 2``) train faster
than one process?

One trial's training loop (gradtune's, telemetry and rules on), no Ray, CPU, measured as
steps per second from its first report to its last (setup left out), three ways:

- ``1x1``: one process, one thread (``resources.cpu: 1``);
- ``1x2``: one process, two threads (``resources.cpu: 2``): what the same 2 cores give
  without DDP;
- ``2x1``: two gloo ranks on loopback, one thread each (``resources.workers: 2``), each
  step's batch split between them (the same global batch), the statistics combined in one
  all-gather per step.

On two models: the quickstart one (deep_mlp depth 20, width 64, batch 64) and a larger one
(deep_mlp depth 20, width 512, batch 256). Modes interleaved, ``--repeats`` times; the
median is reported. Prints a table, then one JSON line.

    python benchmarks/dataparallel.py [--steps 200] [--repeats 3] [--only 512]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from gradtune import dataparallel, trial
from gradtune.spec import SweepSpec, load

MODELS = {
    "quickstart (width 64, batch 64)": ({"depth": 20, "width": 64, "activation": "relu"}, 64),
    "width 512, batch 256": ({"depth": 20, "width": 512, "activation": "relu"}, 256),
}


def _spec(options: dict[str, Any], steps: int) -> SweepSpec:
    return load(None, {"training.steps": steps, "training.report_every": 10, "training.device": "cpu",
                       "workload.options": options})


def _config(batch: int) -> dict[str, Any]:
    return {"norm": "none", "init_scale": 1.0, "clip_method": "norm", "clip_threshold": 1.0,
            "batch_size": batch}


def _steps_per_s(spec: SweepSpec, config: dict[str, Any], rank: dataparallel.Rank | None = None) -> float:
    marks: list[tuple[int, float]] = []
    trial.train(spec, config, lambda m: marks.append((m["step"], time.perf_counter())), rank=rank)
    (s0, t0), (s1, t1) = marks[0], marks[-1]
    return (s1 - s0) / (t1 - t0)


def _rank_main(r: int, port: int, spec_data: dict[str, Any], config: dict[str, Any], out: str) -> None:
    torch.set_num_threads(1)
    me = dataparallel.join(r, 2, dataparallel.LOOPBACK, port, torch.device("cpu"))
    try:
        rate = _steps_per_s(SweepSpec.model_validate(spec_data), config, me)
    finally:
        dataparallel.leave()
    Path(out, f"rank{r}").write_text(str(rate))


def _two_ranks(spec: SweepSpec, config: dict[str, Any]) -> float:
    import torch.multiprocessing as mp
    from torch.distributed import TCPStore

    store = TCPStore(dataparallel.LOOPBACK, 0, 3, is_master=True, wait_for_workers=False,
                     timeout=datetime.timedelta(seconds=120))
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_rank_main, args=(store.port, spec.model_dump(mode="json"), config, out), nprocs=2)
        return float(Path(out, "rank0").read_text())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="only the models whose name contains this")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, float]] = {}
    print(f"{'model':32} {'1x1 steps/s':>12} {'1x2 steps/s':>12} {'2x1 steps/s':>12} {'2x1/1x1':>8} {'2x1/1x2':>8}")
    for name, (options, batch) in MODELS.items():
        if args.only not in name:
            continue
        spec, config = _spec(options, args.steps), _config(batch)
        runs: dict[str, list[float]] = {"1x1": [], "1x2": [], "2x1": []}
        for _ in range(args.repeats):
            torch.set_num_threads(1)
            runs["1x1"].append(_steps_per_s(spec, config))
            torch.set_num_threads(2)
            runs["1x2"].append(_steps_per_s(spec, config))
            torch.set_num_threads(1)
            runs["2x1"].append(_two_ranks(spec, config))
        med = {k: statistics.median(v) for k, v in runs.items()}
        med["speedup_vs_1x1"] = med["2x1"] / med["1x1"]
        med["speedup_vs_1x2"] = med["2x1"] / med["1x2"]
        results[name] = med
        print(f"{name:32} {med['1x1']:12.1f} {med['1x2']:12.1f} {med['2x1']:12.1f} "
              f"{med['speedup_vs_1x1']:8.2f} {med['speedup_vs_1x2']:8.2f}")
    line = {"steps": args.steps, "repeats": args.repeats, "models": results}
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main(sys.argv[1:])
