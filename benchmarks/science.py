"""Reproduce the published gradient-explosion results on gradtune's built-in workloads.

Every experiment runs in-process on CPU (``gradtune.trial.train``, no Ray) and returns rows:
the published claim, the configuration, what was measured and whether they agree. The
output is the Markdown in ``docs/science.md``; ``tests/test_science.py`` checks the same
experiments (one seed) with stated tolerances.

    python benchmarks/science.py [--seeds 3] [--only deep_mlp,rnn_adding,...]

Outcomes: ``diverged`` (the trial's divergence rules fired: non-finite, or exploding loss or
gradient), ``no progress`` (final validation loss above 90% of the trivial predictor's),
``trains`` (otherwise). A run's initial gradient norm is its step-1 pre-clip global norm.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gradtune import trial
from gradtune.spec import DivergenceSpec, validate
from gradtune.workloads import probes


@dataclass
class Outcome:
    grad_norm0: float
    outcome: str  # diverged | no progress | trains
    val_loss: float
    val_accuracy: float
    step: int  # last step run (the divergence step for a diverged run)
    reason: str = ""


def train(
    workload: str, options: dict[str, Any], config: dict[str, Any], *, steps: int = 300,
    optimizer: str = "sgd", lr: float = 0.05, momentum: float = 0.0, warmup_steps: int = 0,
    seed: int = 0,
) -> Outcome:
    """One trial, reporting every step (evaluating only at the end)."""
    spec = validate({
        "workload": {"name": workload, "options": options},
        "training": {
            "steps": steps, "report_every": 1, "eval_every": steps, "seed": seed,
            "device": "cpu", "warmup_steps": warmup_steps,
            "optimizer": {"name": optimizer, "lr": lr, "momentum": momentum},
        },
    })
    reports: list[dict[str, Any]] = []
    last = trial.train(spec, config, reports.append)
    reference = probes.make(workload, options, seed=seed, **config).reference_loss
    val = last.get("val_loss", math.nan)
    if last["diverged"]:
        outcome = "diverged"
    elif not math.isfinite(val) or val > 0.9 * reference:
        outcome = "no progress"
    else:
        outcome = "trains"
    return Outcome(reports[0]["grad_norm"], outcome, val, last.get("val_accuracy", math.nan),
                   last["step"], last.get("divergence_reason", ""))


def weight_grad_norm(workload: str, options: dict[str, Any], seed: int = 0, **params: Any) -> float:
    """Global norm of the weight (not bias) gradients of the first batch."""
    g = probes.first_gradients(probes.make(workload, options, seed=seed, **params))
    return math.sqrt(sum(v**2 for k, v in g.per_parameter.items() if k.endswith("weight")))


def per_block_growth(scales: list[float]) -> float:
    """exp of the least-squares slope of ln(scale) against the block index."""
    n = len(scales)
    xs = list(range(n))
    ys = [math.log(s) for s in scales]
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return math.exp(slope)


# ----------------------------------------------------------------------------- experiments

Row = dict[str, str]
INIT_SCALES = [0.5, 0.7, 1.0, 1.4, 2.0]


def deep_mlp_slope(seed: int) -> dict[str, float]:
    """Depth-20 ReLU MLP, no norm: d ln||grad W|| / d ln(init_scale); predicted L-1 = 20."""
    norms = [weight_grad_norm("deep_mlp", {"depth": 20}, seed, init_scale=s) for s in INIT_SCALES]
    return {"slope": probes.log_slope(INIT_SCALES, norms),
            **{f"s={s}": n for s, n in zip(INIT_SCALES, norms)}}


def deep_mlp_bn_ratio(seed: int, steps: int = 0) -> float:
    """Depth-20 BatchNorm ReLU MLP at He init: ‖grad W_1‖ / ‖grad W_20‖ (hidden layers),
    after ``steps`` SGD steps at lr 0.05."""
    wl = probes.make("deep_mlp", {"depth": 20}, seed=seed, norm="batch")
    opt = torch.optim.SGD(wl.model.parameters(), lr=0.05)
    for _ in range(steps):
        x, y = next(wl.train_batches)
        opt.zero_grad()
        wl.loss_fn(wl.model(x), y).backward()
        opt.step()
    g = probes.first_gradients(wl)
    return g.per_parameter["0.weight"] / g.per_parameter["57.weight"]  # Linear, BN, ReLU x 20


def resmlp_growth(seed: int, init_scale: float = 1.0) -> float:
    wl = probes.make("resmlp", {"blocks": 16}, seed=seed, init_scale=init_scale)
    return per_block_growth(probes.output_scales(wl, list(wl.model.blocks)))


def transformer_last_grad(position: str, seed: int) -> float:
    """Initial gradient norm of the last block's second FFN weight (4 layers, LayerNorm)."""
    wl = probes.make("transformer", {"norm_position": position}, seed=seed, norm="layer")
    return probes.first_gradients(wl).per_parameter["blocks.3.mlp.2.weight"]


def cnn_growth(norm: str, seed: int) -> float:
    wl = probes.make("cnn", {"dataset": "fake", "arch": "resnet", "depth": 4}, seed=seed, norm=norm)
    blocks = [m for m in wl.model if m.__class__.__name__ == "BasicBlock"]
    return per_block_growth(probes.output_scales(wl, blocks))


RNN_LR = 0.2  # SGD on the T=20 adding problem: explodes unclipped
RNN_STEPS = 600
RNN_CLIPS: list[tuple[str, float]] = [
    ("none", 0.0), ("norm", 1.0), ("value", 0.1), ("agc", 0.05), ("autoclip", 10.0),
    ("zclip", 2.5),
]
TRANSFORMER_LR = 0.02  # Adam, 4-layer, d_model 32


# ----------------------------------------------------------------------------- tables


@dataclass
class Run:
    label: str  # the configuration, as shown
    workload: str
    options: dict[str, Any]
    config: dict[str, Any]
    expect: tuple[str, ...]  # the outcomes the claim allows; () for a measurement without one
    kwargs: dict[str, Any]


def run_row(claim: str, run: Run, seeds: list[int]) -> Row:
    outs = [train(run.workload, run.options, run.config, seed=s, **run.kwargs) for s in seeds]
    counts: dict[str, int] = {}
    for o in outs:
        counts[o.outcome] = counts.get(o.outcome, 0) + 1
    outcome = ", ".join(f"{k} {v}/{len(outs)}" for k, v in counts.items())
    diverged = [o.step for o in outs if o.outcome == "diverged"]
    if diverged:
        outcome += f" (step {min(diverged)}-{max(diverged)})" if len(set(diverged)) > 1 else f" (step {diverged[0]})"
    return {
        "claim": claim, "config": run.label,
        "grad0": _spread([o.grad_norm0 for o in outs]),
        "outcome": outcome,
        "final": _spread([o.val_loss for o in outs]),
        "agrees": _agrees([o.outcome for o in outs], run.expect),
    }


def _agrees(outcomes: list[str], expect: tuple[str, ...]) -> str:
    if not expect:
        return "n/a (no claim)"
    hits = sum(o in expect for o in outcomes)
    return "yes" if hits == len(outcomes) else f"no ({hits}/{len(outcomes)} {' or '.join(expect)})"


def measure_row(claim: str, config: str, values: list[float], predicted: float, tol: float,
                what: str) -> Row:
    """A measurement without training: agrees when the median is within ``tol`` (relative)
    of ``predicted``."""
    mid = statistics.median(values)
    return check_row(claim, config, values, what, abs(mid / predicted - 1) <= tol,
                     f"predicted {predicted:.3g}")


def check_row(claim: str, config: str, values: list[float], what: str, ok: bool,
              expected: str) -> Row:
    return {"claim": claim, "config": config, "grad0": "", "outcome": f"{what} {_spread(values)}",
            "final": "", "agrees": "yes" if ok else f"no ({expected})"}


def _spread(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "nan"
    mid = statistics.median(finite)
    extra = "" if len(finite) == len(values) else f", {len(values) - len(finite)} nan"
    if len(finite) == 1 or min(finite) == max(finite):
        return f"{mid:.3g}{extra}"
    return f"{mid:.3g} ({min(finite):.3g}-{max(finite):.3g}{extra})"


def deep_mlp(seeds: list[int]) -> list[Row]:
    slopes = [deep_mlp_slope(s)["slope"] for s in seeds]
    ratios = [deep_mlp_bn_ratio(s) for s in seeds]
    he = "He 2015; Schoenholz et al. 2017"
    mlp = {"depth": 20, "width": 64, "activation": "relu"}
    runs = [
        ("init_scale 2.0 (sigma_w^2/2 = 4): diverges within a few steps", "diverged", 2.0),
        ("init_scale 0.5 (sigma_w^2/2 = 0.25): gradients vanish, loss stays at ln 10", "no progress", 0.5),
        ("init_scale 1.0 (He, critical): trains", "trains", 1.0),
    ]
    rows = [measure_row(
        f"{he}: without a norm the weight gradient grows like init_scale^(L-1), L-1 = 20",
        "depth 20, width 64, ReLU, no norm; ‖grad W‖ at init_scale 0.5-2.0, fitted log-log slope",
        slopes, 20.0, 0.15, "slope")]
    for claim, expect, s in runs:
        rows.append(run_row(f"{he}: {claim}", Run(
            f"depth 20 ReLU, init_scale {s}, SGD lr 0.05, batch 64, 300 steps", "deep_mlp", mlp,
            {"init_scale": s}, (expect,), {}), seeds))
    rows.append(measure_row(
        "Yang et al. 2019: BatchNorm makes gradients explode backwards with depth at any init "
        "(ReLU: x sqrt(pi/(pi-1)) = 1.21 per layer in norm, large-batch limit)",
        "depth 20, width 64, norm batch, He init; ‖grad W_1‖ / ‖grad W_20‖",
        ratios, 1.21**19, 1.0, "ratio"))
    trained = [deep_mlp_bn_ratio(s, steps=10) for s in seeds]
    rows.append(check_row(
        "Yang et al. 2019: once optimisation starts, the gradients' dynamic range shrinks",
        "same, after 10 SGD steps at lr 0.05", trained, "ratio",
        all(t < r / 2 for t, r in zip(trained, ratios)), "less than half the ratio at init"))
    rows.append(run_row(
        "Yang et al. 2019: ... and at this depth the network stays finite and trains",
        Run("depth 20, norm batch, SGD lr 0.05, 300 steps", "deep_mlp", mlp, {"norm": "batch"},
            ("trains",), {}), seeds))
    return rows


def rnn_adding(seeds: list[int]) -> list[Row]:
    rows = []
    for method, thr in RNN_CLIPS:
        cfg = {"clip_method": method} | ({"clip_threshold": thr} if method != "none" else {})
        if method == "none":
            claim, expect = "Pascanu et al. 2013: unclipped SGD explodes", ("diverged",)
        elif method == "norm":
            claim = "Pascanu et al. 2013: norm clipping at ~1 trains where unclipped SGD explodes"
            expect = ("trains",)
        else:
            claim, expect = f"(measured only) {method} at the same learning rate", ()
        rows.append(run_row(claim, Run(
            f"tanh, hidden 64, T 20, SGD lr {RNN_LR}, clip {method}"
            + (f" {thr:g}" if method != "none" else "") + f", {RNN_STEPS} steps",
            "rnn_adding", {}, cfg, expect, {"lr": RNN_LR, "steps": RNN_STEPS}), seeds))
    rows.append(run_row(
        "Le et al. 2015: an IRNN (identity recurrence, ReLU) trained with SGD and clipping "
        "solves the adding problem", Run(
            "irnn, hidden 64, T 20, SGD lr 0.01, clip norm 1, 1000 steps", "rnn_adding",
            {"cell": "irnn"}, {"clip_method": "norm", "clip_threshold": 1.0}, ("trains",),
            {"lr": 0.01, "steps": 1000}), seeds))
    return rows


def resmlp(seeds: list[int]) -> list[Row]:
    rows = [measure_row(
        "He init, no norm: the residual stream grows ~sqrt(3) = 1.73 per block",
        "16 blocks, width 64, no norm; RMS after each block at init, fitted growth",
        [resmlp_growth(s) for s in seeds], math.sqrt(3), 0.1, "growth per block")]
    runs = [
        ("without normalisation training diverges", {}, {}, ("diverged",)),
        ("Pre-LN trains", {"norm_position": "pre"}, {"norm": "layer"}, ("trains",)),
        ("(measured only) Post-LN", {"norm_position": "post"}, {"norm": "layer"}, ()),
        ("Fixup (Zhang et al. 2019) trains without normalisation", {"fixup": True}, {},
         ("trains",)),
    ]
    for claim, opts, cfg, expect in runs:
        label = ", ".join([f"{k} {v}" for k, v in {**opts, **cfg}.items()] or ["no norm"])
        rows.append(run_row(claim, Run(f"16 blocks, {label}, SGD lr 0.05, 300 steps", "resmlp",
                                       {"blocks": 16, **opts}, cfg, expect, {}), seeds))
    return rows


def transformer(seeds: list[int]) -> list[Row]:
    post = [transformer_last_grad("post", s) for s in seeds]
    pre = [transformer_last_grad("pre", s) for s in seeds]
    rows = [measure_row(
        "Xiong et al. 2020: at init Post-LN's gradients near the output are larger than Pre-LN's",
        "4 layers, d_model 32, LayerNorm; ‖grad‖ of the last FFN weight, Post / Pre",
        [a / b for a, b in zip(post, pre)], 3.0, 0.67, "ratio")]
    xiong = "Xiong et al. 2020"
    runs = [
        (f"{xiong}: Post-LN without warmup fails", "post", 0, ("no progress", "diverged")),
        (f"{xiong}: Pre-LN trains at the same learning rate", "pre", 0, ("trains",)),
        (f"{xiong}: warmup lets Post-LN train", "post", 100, ("trains",)),
    ]
    runs.append(("(measured only) a shallower Post-LN at the same learning rate", "post", 0, ()))
    for claim, pos, warm, expect in runs:
        layers = 2 if claim.startswith("(measured only)") else 4
        rows.append(run_row(claim, Run(
            f"{pos.capitalize()}-LN, {layers} layers, Adam lr {TRANSFORMER_LR}, warmup {warm}, "
            "300 steps", "transformer", {"norm_position": pos, "layers": layers},
            {"norm": "layer"}, expect,
            {"optimizer": "adam", "lr": TRANSFORMER_LR, "warmup_steps": warm}), seeds))
    return rows


def cnn(seeds: list[int]) -> list[Row]:
    rows = [measure_row(
        "De & Smith 2020: an unnormalised ResNet's activations grow ~sqrt(2) per block at He init",
        "ResNet, 2 stages x 4 basic blocks, width 16, FakeData; RMS after each block",
        [cnn_growth("none", s) for s in seeds], math.sqrt(2), 0.15, "growth per block")]
    rows.append(measure_row(
        "... with BatchNorm in the branch the growth is sub-exponential",
        "same, norm batch", [cnn_growth("batch", s) for s in seeds], 1.0, 0.1,
        "growth per block"))
    opts = {"dataset": "fake", "arch": "resnet", "depth": 4}
    for claim, cfg, expect in (
        ("Ioffe & Szegedy 2015: BatchNorm allows much higher learning rates",
         {"norm": "batch"}, ("trains",)),
        ("... without it the same run fails", {}, ("diverged", "no progress")),
    ):
        rows.append(run_row(claim, Run(
            f"ResNet 2x4 blocks, {'norm batch' if cfg else 'no norm'}, SGD lr 0.05 momentum 0.9",
            "cnn", opts, cfg, expect, {"lr": 0.05, "momentum": 0.9}), seeds))
    return rows


def tiny_lm(seeds: list[int]) -> list[Row]:
    """The LR grid of ``benchmarks/science_lm.py``, both variants, every seed: claims about
    the attention logits, LR sensitivity, and where gradtune's rules stop a run."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # science_lm sits beside this file
    import science_lm as lm

    runs = lm.grid(seeds, log=sys.stderr)

    def at(qk: bool, cond: Callable[[float], bool]) -> list[Any]:
        return [r for r in runs if r.qk_norm is qk and cond(r.lr)]

    def attention(group: list[Any]) -> str:
        return (f"max logit {_spread([r.logit_max for r in group])}, min entropy "
                f"{_spread([r.entropy_min for r in group])} nats")

    def stops(group: list[Any], verdicts: list[Any]) -> str:
        hit = [v for v in verdicts if v is not None]
        text = f"stopped {len(hit)}/{len(group)}"
        if hit:
            steps = sorted(v.step for v in hit)
            kinds = sorted({lm.rule(v.reason) for v in hit})
            text += f" (step {steps[0]}-{steps[-1]}: {'; '.join(kinds)})"
        return text

    def row(claim: str, config: str, group: list[Any], outcome: str, ok: bool | None,
            expected: str = "") -> Row:
        """``group``: the runs of one configuration, for the initial grad norm and final loss."""
        return {"claim": claim, "config": config,
                "grad0": _spread([r.grad_norm0 for r in group]) if group else "",
                "outcome": outcome, "final": _spread([r.val_loss for r in group]) if group else "",
                "agrees": "n/a (no claim)" if ok is None else "yes" if ok else f"no ({expected})"}

    wortsman = "Wortsman et al. 2023"
    plain, normed = at(False, lambda lr: lr == 0.3), at(True, lambda lr: lr == 0.3)
    high, safe = at(False, lambda lr: lr >= 0.3), at(True, lambda lr: lr <= 0.3)
    safe += at(False, lambda lr: lr <= 1e-2)
    sens = {qk: [lm.lr_sensitivity([r for r in runs if r.qk_norm is qk and r.seed == s])
                 for s in seeds] for qk in (False, True)}
    off = DivergenceSpec(attn_logit_growth=None, attn_entropy_drop=None)
    rows = [
        row(f"{wortsman}: without qk-layernorm, at a high learning rate the attention logits "
            "grow without bound and the attention entropy collapses",
            f"{lm.LABEL}; lr 0.3, no qk-norm", plain, attention(plain),
            all(r.logit_max > 1e3 and r.entropy_min < 0.01 for r in plain),
            "max logit > 1e3 and entropy < 0.01 in every seed"),
        row(f"{wortsman}: qk-layernorm keeps them bounded at the same learning rate",
            "same, qk_norm true", normed, attention(normed), all(r.logit_max < 200 for r in normed),
            "max logit < 200 in every seed"),
        row(f"{wortsman}: qk-layernorm lowers LR sensitivity (mean over the learning rates of "
            "min(final, initial loss) - best final loss; val loss, nats)",
            f"same, {len(lm.LRS)} learning rates {', '.join(f'{lr:g}' for lr in lm.LRS)}", [],
            f"no qk-norm {_spread(sens[False])}, qk-norm {_spread(sens[True])}",
            all(b < a for a, b in zip(sens[False], sens[True])), "lower with qk-norm in every seed"),
        row("gradtune: the attention rules stop every run at lr >= 0.3 without qk-norm",
            "same, lr 0.3 and 1; the spec's default divergence section", [],
            stops(high, [r.verdict for r in high]), all(r.verdict is not None for r in high),
            "every run stopped"),
        row("gradtune: ... and no run with qk-norm at lr <= 0.3, nor any run at lr <= 0.01",
            "same, lr 0.001-0.3 with qk-norm, 0.001-0.01 without", [],
            stops(safe, [r.verdict for r in safe]), all(r.verdict is None for r in safe),
            "no run stopped"),
        row("(measured only) the gradient and loss rules alone at lr >= 0.3 without qk-norm",
            "same, attention rules off", [], stops(high, [lm.replay(r.extra, off) for r in high]),
            None),
    ]
    for qk in (False, True):
        for lr in lm.LRS:
            group = at(qk, lambda x, lr=lr: x == lr)
            rows.append(row("(measured only)", f"lr {lr:g}, qk_norm {str(qk).lower()}", group,
                            f"{attention(group)}; {stops(group, [r.verdict for r in group])}", None))
    return rows


EXPERIMENTS: dict[str, Callable[[list[int]], list[Row]]] = {
    "deep_mlp": deep_mlp, "rnn_adding": rnn_adding, "resmlp": resmlp,
    "transformer": transformer, "cnn": cnn, "tiny_lm": tiny_lm,
}
COLUMNS = ("claim", "config", "grad0", "outcome", "final", "agrees")
HEADER = ("Published claim", "Configuration", "Initial grad norm", "Outcome (seeds)",
          "Final val loss", "Agrees")


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--only", default=",".join(EXPERIMENTS))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    for name in args.only.split(","):
        started = time.monotonic()
        rows = EXPERIMENTS[name](seeds)
        print(f"### {name}\n\n{markdown(rows)}\n")
        print(f"({name}: {time.monotonic() - started:.0f} s, seeds {seeds})\n", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
