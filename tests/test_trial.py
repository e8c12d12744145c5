"""The training loop on CPU, driven in-process (no Ray)."""

from __future__ import annotations

import math

import pytest
import torch

from gradtune import outcome, trial
from gradtune.spec import load


def spec(**overrides):
    base = {"training.steps": 30, "training.report_every": 5,
            "workload.options": {"depth": 6, "width": 32, "activation": "relu"}}
    return load(None, {**base, **overrides})


def run(config, **overrides):
    reports = []
    last = trial.train(spec(**overrides), config, reports.append)
    return reports, last


def test_reports_every_report_every_steps_with_all_metrics():
    reports, last = run({"norm": "layer"})
    assert [r["step"] for r in reports] == [5, 10, 15, 20, 25, 30]
    for key in ("train_loss", "grad_norm", "grad_norm_max", "clip_fraction", "val_loss",
                "val_accuracy", "update_ratio", "lr"):
        assert all(math.isfinite(r[key]) for r in reports), key
    assert last["final"] == 1 and last["diverged"] == 0
    assert [r["final"] for r in reports[:-1]] == [0] * 5


def test_grad_norm_is_the_pre_clip_norm():
    one = {"training.steps": 1, "training.report_every": 1}
    free, _ = run({"clip_method": "none"}, **one)
    clipped, _ = run({"clip_method": "norm", "clip_threshold": 1e-3}, **one)
    assert clipped[0]["grad_norm"] == pytest.approx(free[0]["grad_norm"], rel=1e-5)
    assert clipped[0]["grad_norm"] > 1e-3
    assert clipped[0]["clip_fraction"] == 1.0 and free[0]["clip_fraction"] == 0.0


def test_norm_clipping_bounds_the_update():
    one = {"training.steps": 1, "training.report_every": 1}
    free, _ = run({"clip_method": "none"}, **one)
    clipped, _ = run({"clip_method": "norm", "clip_threshold": 1e-3}, **one)
    # same weights and batch: the clipped step moves the weights much less
    assert clipped[0]["update_ratio"] < free[0]["update_ratio"] / 10


def test_value_clip_fraction_counts_steps_that_changed():
    reports, _ = run({"clip_method": "value", "clip_threshold": 1e6})
    assert all(r["clip_fraction"] == 0.0 for r in reports)
    reports, _ = run({"clip_method": "value", "clip_threshold": 1e-6})
    assert all(r["clip_fraction"] == 1.0 for r in reports)


def test_deep_plain_mlp_with_large_init_diverges_and_stops_at_once():
    reports, last = run({"norm": "none", "init_scale": 4.0},
                        **{"workload.options": {"depth": 20, "width": 64, "activation": "relu"},
                           "training.steps": 300})
    assert last["diverged"] == 1 and last["final"] == 1
    assert last["step"] == last["divergence_step"] < 300
    assert last["divergence_reason"]
    assert reports[-1] is last  # reported at once, nothing after


def test_a_verdict_report_carries_the_last_steps_before_it():
    reports, last = run({"norm": "none", "init_scale": 4.0},
                        **{"workload.options": {"depth": 20, "width": 64, "activation": "relu"},
                           "training.steps": 300, "divergence.window": 8})
    steps = [int(row[0]) for row in last[outcome.WINDOW]]
    # the report interval (5) or the rules' window (8), whichever is larger; up to the verdict
    assert steps == list(range(last["step"] - len(steps) + 1, last["step"] + 1))
    assert len(steps) == min(8, last["step"])
    assert last[outcome.WINDOW][-1][2:] == [last["grad_norm"], last["update_ratio"]]
    assert all(outcome.WINDOW not in r for r in reports[:-1])  # only on a verdict
    assert trial.last_steps(spec(**{"training.report_every": 50})) == 50
    assert trial.last_steps(spec(**{"divergence.window": 1000})) == outcome.MAX_WINDOW


def test_without_a_rule_that_reads_it_the_update_ratio_is_measured_on_report_steps_only():
    diverging = {"workload.options": {"depth": 10, "width": 32, "activation": "relu"},
                 "training.steps": 100, "divergence.window": 8,
                 "training.optimizer": {"name": "sgd", "lr": 0.4, "momentum": 0.9}}
    on_reports, on = run({"norm": "none"}, **diverging)
    off_reports, off = run({"norm": "none"}, **diverging, **{"divergence.update_ratio": None,
                                                              "divergence.loss_factor": None})
    assert on["divergence_reason"].startswith("one update moved the weights")
    assert off["divergence_step"] > on["divergence_step"]  # a gradient rule, a step later
    # The same trajectory: each report's last step has the same ratio.
    assert len(off_reports) > 4
    for a, b in zip(on_reports[:-1], off_reports[:-1]):
        assert b["update_ratio"] == pytest.approx(a["update_ratio"], rel=1e-6)
    assert all(math.isfinite(r[3]) for r in on[outcome.WINDOW])
    # Without the rules, only the report steps' ratios were measured (the verdict's not).
    assert [math.isfinite(r[3]) for r in off[outcome.WINDOW]] == [
        int(r[0]) % 5 == 0 for r in off[outcome.WINDOW]]
    assert math.isnan(off["update_ratio"])


@pytest.mark.slow
def test_same_with_layer_norm_does_not_diverge():
    _, last = run({"norm": "layer", "init_scale": 4.0},
                  **{"workload.options": {"depth": 20, "width": 64, "activation": "relu"},
                     "training.steps": 300, "training.report_every": 50})
    assert last["diverged"] == 0 and last["step"] == 300
    assert last["val_loss"] < math.log(10)


def test_warmup_ramps_the_learning_rate():
    reports, _ = run({"warmup_steps": 20})
    assert reports[0]["lr"] == pytest.approx(0.05 * 5 / 20)
    assert reports[-1]["lr"] == pytest.approx(0.05)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_optimizers(optimizer):
    _, last = run({"optimizer": optimizer, "lr": 1e-3, "norm": "layer"})
    assert last["final"] == 1


def test_window_keeps_nan_visible():
    w = trial.Window()
    w.add(1.0, 2.0, False)
    w.add(1.0, math.nan, True)
    w.add(1.0, 3.0, False)
    m = w.metrics()
    assert math.isnan(m["grad_norm_max"]) and m["clip_fraction"] == pytest.approx(1 / 3)


def test_device_resolution():
    assert trial.resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert trial.resolve_device("auto").type == expected


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_clips_unscaled_gradients(precision):
    one = {"training.steps": 1, "training.report_every": 1}
    ref, _ = run({"norm": "layer"}, **one)
    amp, last = run({"norm": "layer"}, **{**one, "training.precision": precision})
    # the clip/telemetry norm is of the true (unscaled) gradient, not of loss * 65536
    assert amp[0]["grad_norm"] == pytest.approx(ref[0]["grad_norm"], rel=0.1)
    _, last = run({"norm": "layer", "clip_method": "norm", "clip_threshold": 0.5},
                  **{"training.precision": precision, "training.steps": 10})
    assert last["final"] == 1 and last["diverged"] == 0


def test_fp16_overflow_steps_are_the_scalers_business_unless_endless():
    from gradtune import signals
    from gradtune.precision import Precision
    from gradtune.spec import DivergenceSpec

    monitor = signals.Monitor(DivergenceSpec(), reference_loss=2.3, budget=100)
    judge = trial.Judge(monitor, Precision("fp16", torch.device("cpu")))
    verdicts = [judge(step, 2.3, math.inf, math.nan) for step in range(1, trial.MAX_OVERFLOWS)]
    assert verdicts == [None] * (trial.MAX_OVERFLOWS - 1)
    assert judge(trial.MAX_OVERFLOWS, 2.3, math.inf, math.nan) is not None
    assert trial.Judge(monitor, Precision("fp16", torch.device("cpu")))(1, math.nan, math.inf, 0.0) is not None
    # fp32: an inf gradient is divergence at once
    assert trial.Judge(monitor, Precision("fp32", torch.device("cpu")))(1, 2.3, math.inf, 0.0) is not None
