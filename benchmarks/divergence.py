"""Benchmark: how well does gradtune stop diverging trials, against Ray Tune's ASHA and
median stopping rule, on one fixed seeded set of configurations?

1. Ground truth: every configuration trains to its full budget with nothing stopping it
   (not even NaN); every step's loss and gradient norm and every report are recorded.
   A trial *diverged* if its loss or gradient became non-finite, or its final loss (mean of
   the last report window) exceeds 10x its initial loss or 10x the workload's reference
   (chance-level) loss. Its *onset* is the first step from which every later step meets
   that criterion.
2. Each method's decisions are replayed on the recorded trials with the real decision code:
   gradtune's per-step ``signals.Monitor`` on every step of the trace, then its
   ``DivergenceScheduler`` (cross-trial rule) on the reports; Ray Tune's
   ``AsyncHyperBandScheduler`` and ``MedianStoppingRule`` on the same reports. Trials run
   two at a time (the quickstart's ``max_concurrent``), reports interleaved in step order,
   so the cross-trial and performance rules see the cohort they would see live. A stopped
   trial's steps end at the step it was stopped.

Prints a table, then one JSON line: gradtune's figures at the top level, each baseline's
under its name, and the ground truth under ``ground_truth``.

    python benchmarks/divergence.py [--trials 48] [--seeds 0 1] [--steps 300] [--traces DIR]
                                    [--spec sweeps/rnn_adding.yaml] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import pickle
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from ray.tune.schedulers import AsyncHyperBandScheduler, MedianStoppingRule, TrialScheduler

from gradtune import signals, trial, workloads
from gradtune.scheduler import DivergenceScheduler
from gradtune.search_space import define_by_run
from gradtune.spec import SweepSpec, load, parse_set

optuna.logging.set_verbosity(optuna.logging.WARNING)


class Recorder:
    """A monitor that records every step and never stops the trial."""

    def __init__(self) -> None:
        self.loss: list[float] = []
        self.norm: list[float] = []
        self.ratio: list[float] = []

    def update(self, step: int, loss: float, grad_norm: float, ratio: float,
               extra: Any = None) -> None:
        self.loss.append(loss)
        self.norm.append(grad_norm)
        self.ratio.append(ratio)


@dataclass
class Trace:
    config: dict[str, Any]
    loss: list[float]
    norm: list[float]
    ratio: list[float]
    reports: list[dict[str, Any]]
    reference: float
    budget: int
    first_nonfinite: int | None = None  # 1-based step
    diverged: bool = False
    onset: int | None = None
    initial_loss: float = math.nan
    final_loss: float = math.nan
    seconds: float = 0.0

    def classify(self) -> None:
        bad = [i + 1 for i, (loss, norm) in enumerate(zip(self.loss, self.norm))
               if not (math.isfinite(loss) and math.isfinite(norm))]
        self.first_nonfinite = bad[0] if bad else None
        self.initial_loss = self.loss[0]
        self.final_loss = self.reports[-1]["train_loss"]

        def broken(value: float) -> bool:
            return not math.isfinite(value) or value > 10 * self.reference or (
                math.isfinite(self.initial_loss) and value > 10 * self.initial_loss)

        self.diverged = bool(bad) or broken(self.final_loss)
        if self.diverged:
            onset = self.budget
            for i in range(self.budget - 1, -1, -1):
                if broken(self.loss[i]) or not math.isfinite(self.norm[i]):
                    onset = i + 1
                else:
                    break
            self.onset = min(onset, self.first_nonfinite or onset)


def sample_configs(spec: SweepSpec, n: int, seed: int) -> list[dict[str, Any]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    fn = define_by_run(spec.search.space)
    configs = []
    for _ in range(n):
        t = study.ask()
        configs.append({**fn(t), **t.params})
        study.tell(t, 0.0)
    return configs


def ground_truth(spec: SweepSpec, configs: list[dict[str, Any]]) -> list[Trace]:
    traces = []
    reference = None
    for i, config in enumerate(configs):
        rec = Recorder()
        reports: list[dict[str, Any]] = []
        start = time.perf_counter()
        trial.train(spec, config, reports.append, monitor=rec)
        if reference is None:
            reference = _reference_loss(spec, config)
        tr = Trace(config, rec.loss, rec.norm, rec.ratio, reports, reference, spec.training.steps,
                   seconds=time.perf_counter() - start)
        tr.classify()
        traces.append(tr)
        print(f"  ground truth {i + 1:2d}/{len(configs)}: diverged={int(tr.diverged)} "
              f"first_nonfinite={tr.first_nonfinite} final_loss={tr.final_loss:.3g} "
              f"{_short(config)}", file=sys.stderr)
    return traces


def _reference_loss(spec: SweepSpec, config: dict[str, Any]) -> float:
    import torch

    from gradtune.params import trial_params

    wl = workloads.build(spec.workload.name, spec.workload.options, trial_params(spec, config),
                         spec.training.seed, torch.device("cpu"))
    return wl.reference_loss


def _short(config: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(config.items()))


# ---------------------------------------------------------------------------- replay


def in_trial_stop(spec: SweepSpec, tr: Trace) -> int | None:
    """The step at which gradtune's per-step monitor stops this trial, or None."""
    monitor = signals.Monitor(spec.divergence, reference_loss=tr.reference, budget=tr.budget)
    for step, (loss, norm, ratio) in enumerate(zip(tr.loss, tr.norm, tr.ratio), start=1):
        if monitor.update(step, loss, norm, ratio) is not None:
            return step
    return None


def reports_until(tr: Trace, stop: int | None) -> list[dict[str, Any]]:
    """The reports the trial would have sent if it stopped itself at ``stop``."""
    if stop is None:
        return tr.reports
    kept = [dict(r) for r in tr.reports if r["step"] < stop]
    last = dict(next(r for r in tr.reports if r["step"] >= stop))
    last.update(step=stop, diverged=1, final=1)
    return kept + [last]


@dataclass(eq=False)  # hashable by identity, like Tune's Trial (the median rule keeps a set)
class _Trial:
    trial_id: str
    status: str = "RUNNING"
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Controller:
    """The one thing Ray's median rule asks of the Tune controller."""

    live: Any

    def get_live_trials(self) -> list[_Trial]:
        return self.live()


@dataclass
class Outcome:
    stop: dict[int, int] = field(default_factory=dict)  # trial index -> step stopped at


def simulate(scheduler: TrialScheduler, streams: list[list[dict[str, Any]]], budget: int,
             concurrent: int = 2) -> Outcome:
    """Run trials ``concurrent`` at a time through ``scheduler``; each tick every running
    trial sends its next report. Returns where each stopped trial stopped."""
    out = Outcome()
    pending = list(range(len(streams)))
    running: dict[int, int] = {}  # trial index -> next report position
    trials = {i: _Trial(f"t{i}") for i in pending}
    controller = _Controller(lambda: [trials[i] for i in running])
    while pending or running:
        while pending and len(running) < concurrent:
            i = pending.pop(0)
            scheduler.on_trial_add(controller, trials[i])
            running[i] = 0
        for i in list(running):
            pos = running[i]
            result = dict(streams[i][pos], training_iteration=pos + 1)
            decision = scheduler.on_trial_result(controller, trials[i], result)
            last = pos + 1 == len(streams[i])
            if decision == TrialScheduler.STOP and not (last and result["step"] >= budget):
                out.stop[i] = int(result["step"])
                scheduler.on_trial_complete(controller, trials[i], result)
                del running[i]
            elif last:
                if result["step"] < budget:  # stopped itself (in-trial verdict)
                    out.stop[i] = int(result["step"])
                scheduler.on_trial_complete(controller, trials[i], result)
                del running[i]
            else:
                running[i] = pos + 1
    return out


def figures(traces: list[Trace], stop: dict[int, int], budget: int) -> dict[str, Any]:
    diverged = [i for i, t in enumerate(traces) if t.diverged]
    flagged = sorted(stop)
    steps_with = sum(stop.get(i, budget) for i in range(len(traces)))
    steps_without = budget * len(traces)
    hit = [i for i in flagged if traces[i].diverged]
    false_prunes = [i for i in flagged if not traces[i].diverged
                    and traces[i].final_loss < traces[i].initial_loss]
    before = [i for i in hit if traces[i].first_nonfinite is None or stop[i] < traces[i].first_nonfinite]
    leads = [(traces[i].first_nonfinite or budget) - stop[i] for i in hit]
    wasted = sum(max(0, stop.get(i, budget) - (traces[i].onset or budget)) for i in diverged)
    return {
        "recall": round(len(hit) / len(diverged), 4) if diverged else 1.0,
        "false_prunes": len(false_prunes),
        "flagged_before_nonfinite": round(len(before) / len(hit), 4) if hit else 0.0,
        "median_lead_steps": statistics.median(leads) if leads else 0,
        "wasted_step_fraction": round(wasted / steps_with, 4),
        "step_savings": round(1 - steps_with / steps_without, 4),
        "stopped_non_diverged": len([i for i in flagged if not traces[i].diverged]),
        "flagged": len(flagged),
    }


def run_methods(spec: SweepSpec, traces: list[Trace]) -> dict[str, dict[int, int]]:
    """Where each method stopped each trial (trial index -> step), for one sweep."""
    budget, every = spec.training.steps, spec.training.report_every
    metric, mode = spec.search.metric, spec.search.mode

    # gradtune: per-step monitor inside the trial, then the driver scheduler on the reports
    own = [in_trial_stop(spec, t) for t in traces]
    streams = [reports_until(t, s) for t, s in zip(traces, own)]
    gradtune = simulate(DivergenceScheduler(spec), streams, budget)

    raw = [t.reports for t in traces]  # nothing stops a trial by itself under the baselines
    asha = simulate(AsyncHyperBandScheduler(time_attr="step", metric=metric, mode=mode,
                                            max_t=budget, grace_period=every), raw, budget)
    median = simulate(MedianStoppingRule(time_attr="step", metric=metric, mode=mode,
                                         grace_period=3 * every, min_samples_required=3), raw, budget)
    return {"gradtune": gradtune.stop, "asha": asha.stop, "median": median.stop}


def sweep_traces(spec: SweepSpec, n: int, seed: int, cache: Path | None) -> list[Trace]:
    configs = sample_configs(spec, n, seed)
    # The traces depend on everything but the divergence rules, which are only replayed.
    key = hashlib.sha1(json.dumps(spec.model_dump(exclude={"divergence"}), sort_keys=True,
                                  default=str).encode()).hexdigest()[:10]
    path = cache / f"{spec.name}-{key}-seed{seed}-{n}.pkl" if cache else None
    if path is not None and path.exists():
        traces = [Trace(**d) for d in pickle.loads(path.read_bytes())]
        assert [t.config for t in traces] == configs, f"{path} holds other configurations"
        return traces
    traces = ground_truth(spec, configs)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps([vars(t) for t in traces]))
    return traces


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=48, help="configurations per seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="one sweep of --trials configurations per seed; figures are pooled")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--traces", type=Path, help="cache the ground-truth traces in this folder "
                   "(a later run re-evaluates only the rules)")
    p.add_argument("--spec", type=Path, help="a sweep file whose workload and search space to "
                   "sample (default: the quickstart)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, as in `gradtune sweep --set` (e.g. "
                   "divergence.loss_vs_best=null to see a rule's share)")
    args = p.parse_args(argv)
    overrides = dict(parse_set(item) for item in args.set)

    start = time.perf_counter()
    traces: list[Trace] = []
    stops: dict[str, dict[int, int]] = {"gradtune": {}, "asha": {}, "median": {}}
    for seed in args.seeds:
        spec = load(args.spec, {**overrides, "training.steps": args.steps, "training.seed": seed})
        sweep = sweep_traces(spec, args.trials, seed, args.traces)
        for name, stop in run_methods(spec, sweep).items():
            stops[name].update({len(traces) + i: s for i, s in stop.items()})
        traces += sweep
    methods = {name: figures(traces, stop, args.steps) for name, stop in stops.items()}

    diverged = [t for t in traces if t.diverged]
    truth = {
        "trials": len(traces),
        "diverged": len(diverged),
        "nonfinite": sum(t.first_nonfinite is not None for t in traces),
        "diverged_step_share": round(len(diverged) / len(traces), 4),
        "seeds": args.seeds,
        "seconds": round(time.perf_counter() - start, 1),
    }
    cols = ["recall", "false_prunes", "flagged_before_nonfinite", "median_lead_steps",
            "wasted_step_fraction", "step_savings", "stopped_non_diverged"]
    print(f"{len(traces)} {spec.name}-space configurations (seeds {args.seeds}), {args.steps} steps: "
          f"{truth['diverged']} diverged ({truth['nonfinite']} to NaN/inf)")
    print(f"{'method':10s} " + " ".join(f"{c:>24s}" for c in cols))
    for name, fig in methods.items():
        print(f"{name:10s} " + " ".join(f"{fig[c]!s:>24s}" for c in cols))
    print(json.dumps({**methods["gradtune"], "asha": methods["asha"], "median": methods["median"],
                      "ground_truth": truth}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
