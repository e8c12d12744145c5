"""tiny_lm: attention-logit growth at high learning rates, qk-layernorm, and gradtune's
attention rules, measured over a learning-rate grid (Wortsman et al. 2023).

Each run trains the ``tiny_lm`` workload for its whole budget with ``gradtune.trial.train``
(no Ray) and a monitor that records every step and stops nothing; gradtune's divergence
monitor (``signals.Monitor`` with the spec's default ``divergence`` section, attention rules
included) is then replayed on the recorded steps. The rules are pure functions of the steps
so far, so the replay stops a run exactly where a live sweep would, and the full run still
gives the final loss the LR sensitivity needs.

LR sensitivity as in Wortsman et al. (2023, section 3.1): the mean over the learning-rate
grid of ``min(final loss, initial loss) - best final loss``, with the final validation loss
in nats and the initial loss that of the untrained model.

    python benchmarks/science_lm.py [--seeds 0 1] [--lrs 1e-3 1e-2 1e-1 0.3 1] [--steps 300]

prints one line per run and a Markdown table; ``benchmarks/science.py --only tiny_lm``
prints the rows of ``docs/science.md``.
"""

from __future__ import annotations

import argparse
import math
import pickle
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gradtune import signals, trial, workloads
from gradtune.outcome import ATTN_ENTROPY_MIN, ATTN_LOGIT_MAX, Verdict
from gradtune.spec import DivergenceSpec, SweepSpec, validate
from gradtune.workloads import probes

LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)  # half-decades, as the paper's sweeps
STEPS = 300
WARMUP = 30
BATCH = 16
CONFIG = {"norm": "layer", "batch_size": BATCH, "clip_method": "norm", "clip_threshold": 1.0}
LABEL = (f"2 layers, width 64, 4 heads, context 64, LayerNorm, batch {BATCH}, AdamW (betas "
         f"0.9/0.999, no weight decay), clip norm 1, warmup {WARMUP}, {STEPS} steps")


class Recorder:
    """A monitor that records every step and never stops the trial."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, float, float, float, dict[str, float]]] = []

    def update(self, step: int, loss: float, grad_norm: float, ratio: float,
               extra: Mapping[str, float] | None = None) -> None:
        self.steps.append((step, loss, grad_norm, ratio, dict(extra or {})))


@dataclass
class LMRun:
    lr: float
    qk_norm: bool
    seed: int
    val_loss: float  # nats, after the whole budget
    initial_loss: float  # the untrained model's validation loss
    logit_max: float  # the largest attn_logit_max over the run
    entropy_min: float  # the smallest attn_entropy_min over the run
    grad_spike: bool  # a pre-clip gradient norm above 10x the median of the first 10 steps
    verdict: Verdict | None  # gradtune's monitor, replayed on the recorded steps
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # steps: every recorded step

    @property
    def grad_norm0(self) -> float:
        return float(self.extra["steps"][0][2])

    @property
    def bits(self) -> float:
        return self.val_loss / math.log(2)


def spec_for(lr: float, qk_norm: bool, seed: int, steps: int = STEPS) -> SweepSpec:
    return validate({
        "workload": {"name": "tiny_lm", "options": {"qk_norm": qk_norm}},
        "training": {
            "steps": steps, "report_every": steps, "eval_every": steps, "seed": seed,
            "device": "cpu", "warmup_steps": WARMUP, "optimizer": {"name": "adamw", "lr": lr},
        },
    })


def lm_run(lr: float, qk_norm: bool, seed: int, steps: int = STEPS) -> LMRun:
    spec = spec_for(lr, qk_norm, seed, steps)
    start = time.perf_counter()
    rec = Recorder()
    last = trial.train(spec, CONFIG, lambda _m: None, monitor=rec)
    seconds = time.perf_counter() - start
    untrained = probes.make("tiny_lm", {"qk_norm": qk_norm}, seed=seed, **CONFIG)
    initial = workloads.evaluate(untrained)["val_loss"]
    recorded = {"steps": rec.steps, "reference": untrained.reference_loss}
    norms = [s[2] for s in rec.steps]
    early = sorted(norms[:10])[len(norms[:10]) // 2]
    return LMRun(
        lr, qk_norm, seed, last["val_loss"], initial,
        max(s[4][ATTN_LOGIT_MAX] for s in rec.steps),
        min(s[4][ATTN_ENTROPY_MIN] for s in rec.steps),
        any(n > 10 * early for n in norms), replay(recorded, spec.divergence), seconds, recorded)


def replay(recorded: Mapping[str, Any], divergence: Any = None) -> Verdict | None:
    """The verdict of gradtune's monitor (``divergence``: the spec's section, default
    the spec's defaults) on a run's recorded steps, or ``None``."""
    steps = recorded["steps"]
    monitor = signals.Monitor(divergence or DivergenceSpec(), reference_loss=recorded["reference"],
                              budget=len(steps))
    for step, loss, norm, ratio, extra in steps:
        verdict = monitor.update(step, loss, norm, ratio, extra)
        if verdict is not None:
            return verdict
    return None


def lr_sensitivity(runs: Sequence[LMRun]) -> float:
    """Mean over the runs (one per learning rate) of ``min(final, initial) - best final``;
    a non-finite final loss counts as the initial loss."""
    finals = [min(r.val_loss, r.initial_loss) if math.isfinite(r.val_loss) else r.initial_loss
              for r in runs]
    best = min(finals)
    return sum(f - best for f in finals) / len(finals)


def grid(seeds: Sequence[int], lrs: Sequence[float] = LRS, steps: int = STEPS,
         log: Any = None) -> list[LMRun]:
    runs = []
    for seed in seeds:
        for qk in (False, True):
            for lr in lrs:
                run = lm_run(lr, qk, seed, steps)
                runs.append(run)
                if log is not None:
                    print(line(run), file=log, flush=True)
    return runs


RULES = {"attention logits": "attention logits ran away", "attention entropy":
         "attention entropy collapsed", "loss rose": "loss 10x its best",
         "loss stayed": "loss far above chance", "grad_norm": "gradient norm",
         "one update": "update ratio"}


def rule(reason: str) -> str:
    """Which rule a verdict's reason comes from, in a few words."""
    return next((name for start, name in RULES.items() if reason.startswith(start)), reason)


def stopped(run: LMRun) -> str:
    if run.verdict is None:
        return "-"
    return f"step {run.verdict.step}: {rule(run.verdict.reason)}"


def line(run: LMRun) -> str:
    return (f"lr {run.lr:g} qk_norm {run.qk_norm!s:5s} seed {run.seed}: val {run.bits:.2f} "
            f"bits/byte, max logit {run.logit_max:.3g}, min entropy {run.entropy_min:.3g}, "
            f"grad spike {run.grad_spike}, stopped {stopped(run)} ({run.seconds:.0f} s)")


def table(runs: Sequence[LMRun]) -> str:
    """One row per (lr, qk_norm), seeds side by side."""
    rows = ["| lr | qk_norm | val bits/byte | max attention logit | min attention entropy "
            "| stopped by gradtune (step: rule) |", "|---|---|---|---|---|---|"]
    keys = sorted({(r.qk_norm, r.lr) for r in runs})
    for qk, lr in keys:
        group = [r for r in runs if (r.qk_norm, r.lr) == (qk, lr)]
        rows.append(
            f"| {lr:g} | {'yes' if qk else 'no'} | {'/'.join(f'{r.bits:.2f}' for r in group)} | "
            f"{'/'.join(f'{r.logit_max:.3g}' for r in group)} | "
            f"{'/'.join(f'{r.entropy_min:.2g}' for r in group)} | "
            f"{'; '.join(stopped(r) for r in group)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    import sys

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--save", help="pickle the runs, every recorded step included, to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    runs = grid(args.seeds, args.lrs, args.steps, log=sys.stderr)
    if args.save:
        with open(args.save, "wb") as f:
            pickle.dump(runs, f)
    print(table(runs))
    for seed in args.seeds:
        for qk in (False, True):
            group = [r for r in runs if r.seed == seed and r.qk_norm == qk]
            print(f"LR sensitivity seed {seed} qk_norm {qk}: {lr_sensitivity(group):.3f} nats")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
