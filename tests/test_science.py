"""The published gradient-explosion results that reproduce on CPU in seconds, each with its
tolerance. The experiments are those of ``benchmarks/science.py`` (which prints the tables
in ``docs/science.md`` over three seeds); here they run with seed 0."""

from __future__ import annotations

import math

import pytest

from gradtune.workloads.rnn_adding import TRIVIAL_MSE
from tests import _benchmarks

S = _benchmarks.load("science")
LN10 = math.log(10)


# ----------------------------------------------------------------------------- deep_mlp


def test_relu_mlp_weight_gradient_grows_like_init_scale_to_the_depth():
    """He 2015 / Schoenholz 2017: the per-layer multiplier is sigma_w^2/2 = init_scale^2, so
    ||grad W|| ~ init_scale^(L-1) with L = 21 weight layers. Tolerance: slope within 15% of
    20 (measured 21.0-21.4 over seeds and widths 64/256)."""
    slope = S.deep_mlp_slope(seed=0)["slope"]
    assert slope == pytest.approx(20.0, rel=0.15)


@pytest.mark.slow
def test_relu_mlp_diverges_above_critical_init_and_stalls_below():
    above = S.train("deep_mlp", {"depth": 20}, {"init_scale": 2.0})
    assert above.outcome == "diverged" and above.step <= 20
    below = S.train("deep_mlp", {"depth": 20}, {"init_scale": 0.5}, steps=200)
    assert below.outcome == "no progress"
    assert below.val_loss == pytest.approx(LN10, rel=0.02)  # stays at chance, ln 10
    critical = S.train("deep_mlp", {"depth": 20}, {"init_scale": 1.0})
    assert critical.outcome == "trains"


@pytest.mark.slow
def test_batchnorm_mlp_gradient_explodes_backwards_yet_stays_finite():
    """Yang et al. 2019: BatchNorm itself makes the gradient grow with depth backwards
    (first/last hidden layer ratio ~ 1.21^19 = 38 in the large-batch limit; measured
    17-49): assert > 10. The network still trains without a NaN."""
    assert S.deep_mlp_bn_ratio(seed=0) > 10
    run = S.train("deep_mlp", {"depth": 20}, {"norm": "batch"}, steps=100)
    assert run.outcome != "diverged" and math.isfinite(run.val_loss)


# ----------------------------------------------------------------------------- rnn_adding


@pytest.mark.slow
def test_rnn_sgd_explodes_without_clipping_where_norm_clipping_does_not():
    """Pascanu et al. 2013, tanh RNN on the T=20 adding problem, SGD lr 0.2."""
    free = S.train("rnn_adding", {}, {"clip_method": "none"}, lr=S.RNN_LR)
    assert free.outcome == "diverged" and free.step <= 20
    clipped = S.train("rnn_adding", {}, {"clip_method": "norm", "clip_threshold": 1.0}, lr=S.RNN_LR)
    assert clipped.outcome != "diverged"
    assert clipped.val_loss < 1.5 * TRIVIAL_MSE  # bounded near or below the trivial 0.167
    assert clipped.grad_norm0 == pytest.approx(free.grad_norm0)  # same start, pre-clip norm


# ----------------------------------------------------------------------------- resmlp


def test_residual_stream_grows_sqrt3_per_block_without_norm():
    """He init, branch W2 relu(W1 x): Var(x + f(x)) = 3 Var(x). Tolerance 10% (measured
    1.67-1.71); at init_scale 0.5 the prediction is sqrt(1 + 2 * 0.5^4) = 1.06."""
    assert S.resmlp_growth(seed=0) == pytest.approx(math.sqrt(3), rel=0.10)
    assert S.resmlp_growth(seed=0, init_scale=0.5) == pytest.approx(math.sqrt(1.125), rel=0.05)


@pytest.mark.slow
def test_resmlp_diverges_without_norm_and_trains_with_pre_ln_or_fixup():
    assert S.train("resmlp", {}, {}, steps=100).outcome == "diverged"
    pre = S.train("resmlp", {"norm_position": "pre"}, {"norm": "layer"}, steps=100)
    assert pre.outcome == "trains" and pre.val_accuracy > 0.8
    fixup = S.train("resmlp", {"fixup": True}, {}, steps=100)
    assert fixup.outcome == "trains" and fixup.val_accuracy > 0.8


# ----------------------------------------------------------------------------- transformer


@pytest.mark.slow
def test_post_ln_fails_without_warmup_where_pre_ln_trains():
    """Xiong et al. 2020, 4-layer encoder on sequence reversal, Adam lr 0.02, 150 steps:
    Post-LN stays at chance (ln 16 = 2.77), Pre-LN solves it. Its cause: at init the
    Post-LN gradient near the output is larger (measured ~3x Pre-LN's)."""
    adam = {"optimizer": "adam", "lr": S.TRANSFORMER_LR, "steps": 150}
    post = S.train("transformer", {"norm_position": "post"}, {"norm": "layer"}, **adam)
    pre = S.train("transformer", {"norm_position": "pre"}, {"norm": "layer"}, **adam)
    assert post.outcome == "no progress" and post.val_loss > 0.9 * math.log(16)
    assert pre.outcome == "trains" and pre.val_accuracy > 0.95
    assert S.transformer_last_grad("post", 0) > 2 * S.transformer_last_grad("pre", 0)


# ----------------------------------------------------------------------------- cnn


@pytest.mark.slow
def test_unnormalised_resnet_grows_per_block_and_batchnorm_stops_it():
    """De & Smith 2020: without a norm a He-initialised residual stream doubles its variance
    per block (sqrt(2) = 1.41 in scale; measured 1.29-1.44); BatchNorm keeps it ~flat."""
    assert S.cnn_growth("none", seed=0) == pytest.approx(math.sqrt(2), rel=0.15)
    assert S.cnn_growth("batch", seed=0) < 1.1
