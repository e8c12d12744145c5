"""Benchmark: benchmarks/search.py's searchers over many seeds, replayed on measured landscapes.

``benchmarks/search.py`` runs real sweeps, so a seed costs a minute and, on the ``edge``
space, the best accuracy a searcher finds varies more between seeds (0.53 to 0.84) than
between searchers: ten seeds cannot tell apart searchers a few points apart. This script
measures instead of sampling:

1. **Landscape**: for each training seed, every point of a grid over the ``edge`` space
   (48 init scales x 24 learning rates by default) is trained once by a real grid sweep
   (gradtune's trial loop and divergence rules, 150 steps), recording its outcome, final
   metrics and last step. Cached in ``--cache`` (about 10 minutes per landscape on 2 cores).
2. **Replay**: the real searchers (gradtune's ``DivergenceAwareSearch``, Ray's
   ``OptunaSearch`` as shipped, random search) are driven through Tune's ``Searcher`` API,
   two trials at a time as in the real sweep; a trial finishes after as many steps as its
   grid point ran (a diverged one early) and reports its grid point's final result, the
   nearest in log-space to what was suggested. Each (landscape, seed) pair is a 40-trial
   sweep.

Same figures as ``benchmarks/search.py`` (second-half diverged share, best validation
accuracy among completed trials; means over landscapes and seeds) with their standard
errors; prints a table, then one JSON line.

    python benchmarks/search_replay.py [--landscapes 0 1 2] [--seeds 100] [--trials 40]
                                       [--grid 48 24] [--cache benchmarks/.cache]

What the replay leaves out: the landscape is piecewise constant between grid points, and
Tune's completion order comes from the step counts rather than wall-clock time.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).parent))
from search import EDGE, METHODS, make_spec, plain_optuna  # noqa: E402  (a sibling script)

from gradtune import searcher, sweep  # noqa: E402
from gradtune.spec import load  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.ERROR)
# Ray's OptunaSearch logs every NaN it fails to tell; that is the behaviour measured here.
logging.getLogger("ray.tune.search.optuna.optuna_search").setLevel(logging.ERROR)
STEPS = 150


class Landscape:
    """The measured grid of one training seed: ``lookup`` answers a suggested config with
    the final result and step count of the nearest grid point (log scale)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.inits = np.log(sorted({r["init_scale"] for r in rows}))
        self.lrs = np.log(sorted({r["lr"] for r in rows}))
        self.rows = {(self._i(r["init_scale"]), self._j(r["lr"])): r for r in rows}

    def _i(self, init: float) -> int:
        return int(np.argmin(np.abs(self.inits - math.log(init))))

    def _j(self, lr: float) -> int:
        return int(np.argmin(np.abs(self.lrs - math.log(lr))))

    def lookup(self, config: dict[str, Any]) -> dict[str, Any]:
        return self.rows[(self._i(config["init_scale"]), self._j(config["lr"]))]


def grid_spec(seed: int, grid: tuple[int, int], tmp: Path):
    low_i, high_i = EDGE["init_scale"]["low"], EDGE["init_scale"]["high"]
    low_l, high_l = EDGE["lr"]["low"], EDGE["lr"]["high"]
    space = {**EDGE,
             "init_scale": [float(x) for x in np.geomspace(low_i, high_i, grid[0])],
             "lr": [float(x) for x in np.geomspace(low_l, high_l, grid[1])]}
    return load(None, {
        "name": "bench-landscape", "search.space": space, "search.sampler": "grid",
        "training.seed": seed, "training.steps": STEPS,
        "tracking.uri": f"sqlite:///{tmp / 'mlflow.db'}", "storage": str(tmp / "ray_results"),
    })


def landscape(seed: int, grid: tuple[int, int], cache: Path) -> Landscape:
    with tempfile.TemporaryDirectory() as tmp:
        spec = grid_spec(seed, grid, Path(tmp))
        # The table depends on everything but where the sweep logged (a fresh folder each run).
        key = hashlib.sha1(json.dumps(spec.model_dump(exclude={"tracking", "storage"}),
                                      sort_keys=True, default=str).encode()).hexdigest()[:10]
        path = cache / f"landscape-{key}-seed{seed}.json"
        if not path.exists():
            print(f"measuring landscape {seed}: {grid[0] * grid[1]} configurations ...", flush=True)
            result = sweep.run(spec, verbose=0)
            # A verdict reached on the driver is in the record, not in the trial's result.
            rows = [{**t.result, **(t.verdict.keys() if t.verdict else {}),
                     "init_scale": t.params["init_scale"], "lr": t.params["lr"],
                     "outcome": t.outcome.value} for t in result.trials]
            cache.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rows))
    return Landscape(json.loads(path.read_text()))


def make_search(method: str, seed: int, trials: int) -> Any:
    spec = make_spec(method, seed, trials, STEPS, Path(tempfile.gettempdir()), "edge")
    return plain_optuna(spec) if method == "optuna_plain" else searcher.make(spec)[0]


def replay(method: str, seed: int, land: Landscape, trials: int, workers: int = 2) -> dict[str, Any]:
    """One sweep of ``trials`` trials, ``workers`` at a time, answered by ``land``."""
    search = make_search(method, seed, trials)
    running: list[tuple[int, int, str, dict[str, Any]]] = []  # (finish step, number, outcome, result)
    outcomes: list[tuple[int, str, float | None]] = []
    now = started = 0

    def start() -> None:
        nonlocal started
        row = land.lookup(search.suggest(str(started)))
        result = {k: v for k, v in row.items() if k not in ("init_scale", "lr", "outcome")}
        result["final"] = int(row["outcome"] == "completed")
        heapq.heappush(running, (now + int(row.get("step") or STEPS), started, row["outcome"], result))
        started += 1

    for _ in range(min(workers, trials)):
        start()
    while running:
        now, number, outcome, result = heapq.heappop(running)
        search.on_trial_complete(str(number), result=result)
        outcomes.append((number, outcome, result.get("val_accuracy")))
        if started < trials:
            start()
    outcomes.sort()
    second = outcomes[len(outcomes) // 2:]
    accs = [a for _, o, a in outcomes if o == "completed" and a is not None and math.isfinite(a)]
    return {"second_half_diverged": sum(o == "diverged" for _, o, _ in second) / len(second),
            "best_val_accuracy": max(accs, default=0.0)}


def sem(values: list[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--landscapes", type=int, nargs="+", default=[0, 1, 2],
                   help="training seeds, one measured landscape each")
    p.add_argument("--seeds", type=int, default=100, help="searcher seeds per landscape")
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--grid", type=int, nargs=2, default=[48, 24], metavar=("INITS", "LRS"))
    p.add_argument("--cache", type=Path, default=Path(__file__).parent / ".cache")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    args = p.parse_args(argv)

    begin = time.perf_counter()
    lands = {s: landscape(s, tuple(args.grid), args.cache) for s in args.landscapes}
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
    print(f"{'landscape':>9s} {'searcher':14s} {'second_half_diverged':>22s} {'best_val_accuracy':>18s}")
    for s, land in lands.items():
        for m in args.methods:
            runs = [replay(m, seed, land, args.trials) for seed in range(args.seeds)]
            rows[m] += runs
            print(f"{s:>9d} {m:14s} {statistics.mean(r['second_half_diverged'] for r in runs):>22.4f} "
                  f"{statistics.mean(r['best_val_accuracy'] for r in runs):>18.4f}", flush=True)

    summary: dict[str, Any] = {}
    for m, runs in rows.items():
        shd = [r["second_half_diverged"] for r in runs]
        acc = [r["best_val_accuracy"] for r in runs]
        summary[m] = {"second_half_diverged": round(statistics.mean(shd), 4),
                      "second_half_diverged_sem": round(sem(shd), 4),
                      "best_val_accuracy": round(statistics.mean(acc), 4),
                      "best_val_accuracy_sem": round(sem(acc), 4)}
    print(f"{'all':>9s} {'searcher':14s} {'second_half_diverged':>22s} {'best_val_accuracy':>18s}")
    for m, s in summary.items():
        print(f"{'':>9s} {m:14s} {s['second_half_diverged']:>14.4f} +- {s['second_half_diverged_sem']:.4f} "
              f"{s['best_val_accuracy']:>10.4f} +- {s['best_val_accuracy_sem']:.4f}")
    summary["replay"] = {"landscapes": args.landscapes, "seeds": args.seeds, "trials": args.trials,
                         "grid": args.grid, "seconds": round(time.perf_counter() - begin, 1)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
