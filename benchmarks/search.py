"""Benchmark: does the search learn to avoid the unstable region?

Runs a sweep (real Ray Tune trials, gradtune's trial loop and scheduler; by default the
quickstart workload over the ``EDGE`` space, see below) with three searchers, over several
seeds, and compares the share of diverged trials in the second half of each sweep and the
best validation accuracy found:

- ``gradtune``: TPE told about divergence (a violated constraint, see gradtune/searcher.py),
  its proposals screened by a divergence-risk classifier (gradtune/feasibility.py);
- ``optuna_plain``: Ray Tune's ``OptunaSearch`` as Ray ships it (same space, default TPE with
  the same seed), whose ``tell`` of a NaN objective fails and is only logged;
- ``random``: Optuna's random sampler.

Prints a table, then one JSON line with, for each searcher, ``second_half_diverged`` (mean
share over seeds) and ``best_val_accuracy`` (mean over seeds).

    python benchmarks/search.py [--seeds 0 1 2] [--trials 40] [--steps 150]
                                [--space edge|stress|quickstart] [--methods gradtune ...]

Why ``edge`` is the default: the question is whether the search keeps away from an unstable
region that borders its best configurations, which is where the edge space puts it (and
where a practitioner's sweep usually ends up). On ``stress`` the unstable region is far from
the best trials, and TPE's second half avoids it whether or not it is told about divergence.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any

import optuna
import ray
from ray.tune.search.optuna import OptunaSearch

from gradtune import sweep
from gradtune.outcome import Outcome
from gradtune.search_space import define_by_run
from gradtune.spec import SweepSpec, load

optuna.logging.set_verbosity(optuna.logging.WARNING)
METHODS = ("gradtune", "optuna_plain", "random")


# The quickstart space, widened the way a user facing an unknown model would: init scales up
# to 8x and the learning rate searched up to 1.0, so that enough random configurations
# diverge for "does the search learn to avoid them" to be measurable in one sweep.
STRESS = {
    "clip_method": ["none", "norm"],
    "clip_threshold": {"low": 0.1, "high": 10.0, "log": True},
    "init_scale": {"low": 0.25, "high": 8.0, "log": True},
    "norm": ["none", "batch", "layer"],
    "batch_size": [32, 64, 128],
    "lr": {"low": 0.01, "high": 1.0, "log": True},
}


# The edge of stability: a plain 20-layer ReLU MLP (no norm, no clipping). Below an init
# scale of about 1 the signal vanishes through the depth and the net learns slowly; above
# about 1.15 it explodes (and large learning rates lower that bound): the best
# configurations sit just below the ones that blow up, as in most init/learning-rate sweeps.
EDGE = {
    "clip_method": "none",
    "norm": "none",
    "batch_size": 64,
    "init_scale": {"low": 0.5, "high": 2.0, "log": True},
    "lr": {"low": 0.01, "high": 3.0, "log": True},
}
SPACES = {"stress": STRESS, "edge": EDGE, "quickstart": None}


def make_spec(method: str, seed: int, trials: int, steps: int, tmp: Path, space: str) -> SweepSpec:
    overrides = {"search.space": SPACES[space]} if SPACES[space] else {}
    return load(None, {
        **overrides,
        "name": f"bench-search-{method}-{seed}",
        "training.seed": seed,
        "training.steps": steps,
        "search.trials": trials,
        "search.sampler": "random" if method == "random" else "tpe",
        "tracking.uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "storage": str(tmp / "ray_results"),
    })


def plain_optuna(spec: SweepSpec) -> OptunaSearch:
    return OptunaSearch(
        space=define_by_run(spec.search.space), metric=spec.search.metric, mode=spec.search.mode,
        sampler=optuna.samplers.TPESampler(seed=spec.search_seed),
    )


def one_sweep(method: str, seed: int, trials: int, steps: int, tmp: Path, space: str) -> dict[str, Any]:
    spec = make_spec(method, seed, trials, steps, tmp, space)
    result = sweep.run(spec, search=plain_optuna(spec) if method == "optuna_plain" else None, verbose=0)
    # Trials are numbered in the order the searcher suggested them.
    ordered = result.trials
    second = ordered[len(ordered) // 2:]
    accs = [t.result.get("val_accuracy", 0.0) for t in ordered if t.outcome is Outcome.COMPLETED]
    return {
        "second_half_diverged": sum(t.outcome is Outcome.DIVERGED for t in second) / len(second),
        "diverged": sum(t.outcome is Outcome.DIVERGED for t in ordered),
        "best_val_accuracy": max(accs, default=0.0),
        "trials": len(ordered),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--space", choices=list(SPACES), default="edge")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    args = p.parse_args(argv)

    ray.init(include_dashboard=False, logging_level=logging.WARNING)
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for seed in args.seeds:
                for method in args.methods:
                    row = one_sweep(method, seed, args.trials, args.steps, Path(tmp), args.space)
                    rows[method].append(row)
                    print(f"seed {seed} {method:13s} {row}", flush=True)
    finally:
        ray.shutdown()

    summary = {
        m: {
            "second_half_diverged": round(statistics.mean(r["second_half_diverged"] for r in rows[m]), 4),
            "best_val_accuracy": round(statistics.mean(r["best_val_accuracy"] for r in rows[m]), 4),
            "diverged_total": sum(r["diverged"] for r in rows[m]),
        }
        for m in args.methods
    }
    print(f"{'searcher':14s} {'second_half_diverged':>22s} {'best_val_accuracy':>18s} {'diverged (all seeds)':>22s}")
    for m, s in summary.items():
        print(f"{m:14s} {s['second_half_diverged']:>22.4f} {s['best_val_accuracy']:>18.4f} {s['diverged_total']:>22d}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
