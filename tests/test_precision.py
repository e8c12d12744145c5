"""``gradtune.precision.Precision`` on CPU: fp32 changes nothing, bf16 autocasts, fp16
scales the loss, unscales before clipping and says when the scaler skipped a step.

The CPU ``GradScaler`` of this torch runs the same unscale/skip/backoff logic as on CUDA,
so fp16 is tested here on CPU with numbers exactly representable in fp16."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradtune import clipping
from gradtune.precision import Precision

CPU = torch.device("cpu")


def tiny():
    """``Linear(2, 1)`` with weight (1, 2) and bias 0: on x = (1, 1), d(out)/d(w, b) = (1, 1, 1)."""
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.zero_()
    return model


def grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def step(amp, model, factor, lr=0.1):
    """One trial-loop step on ``loss = factor * model(x)``: autocast forward, backward,
    unscale, the pre-clip norm as the trial measures it, optimizer step. Returns the norm.

    The loss is fp32 (as autocast's loss functions give), so under fp16 the gradient that
    reaches the fp16 output is ``factor * scale``, which overflows from 65504 on."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with amp.autocast():
        loss = factor * model(torch.ones(1, 2)).float().sum()
    opt.zero_grad(set_to_none=True)
    amp.backward(loss)
    amp.unscale(opt)
    norm, _ = clipping.make("none")(list(model.parameters()))
    amp.step(opt)
    return float(norm)


def test_fp32_changes_nothing():
    amp = Precision("fp32", CPU)
    assert amp.dtype is None and amp.scaler is None
    model = tiny()
    with amp.autocast():
        assert model(torch.ones(1, 2)).dtype == torch.float32
    norm = step(amp, model, 0.5)
    assert grads(model).tolist() == [0.5, 0.5, 0.5]  # loss.backward() as is
    assert norm == pytest.approx(0.5 * math.sqrt(3))
    assert torch.allclose(model.weight, torch.tensor([[0.95, 1.95]]))


def test_bf16_autocasts_on_cpu_without_a_scaler():
    amp = Precision("bf16", CPU)
    assert amp.dtype == torch.bfloat16 and amp.scaler is None
    model = tiny()
    with amp.autocast():
        assert model(torch.ones(1, 2)).dtype == torch.bfloat16
    assert model(torch.ones(1, 2)).dtype == torch.float32  # only inside the context
    step(amp, model, 0.5)
    assert model.weight.grad.dtype == torch.float32  # parameters and gradients stay fp32
    assert grads(model).tolist() == [0.5, 0.5, 0.5]


def test_fp16_autocasts_and_scales_the_loss():
    amp = Precision("fp16", CPU)
    assert amp.dtype == torch.float16 and amp.scaler is not None
    model = tiny()
    with amp.autocast():
        loss = 0.25 * model(torch.ones(1, 2)).float().sum()
        assert model(torch.ones(1, 2)).dtype == torch.float16
    amp.backward(loss)
    scale = amp.scaler.get_scale()
    assert scale == 2.0**16
    assert grads(model).tolist() == [0.25 * scale] * 3  # scaled: what clipping must not see


def test_fp16_unscales_before_clipping_sees_the_gradients():
    amp = Precision("fp16", CPU)
    model = tiny()
    norm = step(amp, model, 0.25)
    assert grads(model).tolist() == [0.25, 0.25, 0.25]  # the true gradient, not x 65536
    assert norm == pytest.approx(0.25 * math.sqrt(3))
    assert not amp.overflowed(norm)
    assert torch.allclose(model.weight, torch.tensor([[0.975, 1.975]]))  # the step was taken
    assert amp.scaler.get_scale() == 2.0**16  # and the scale kept


def test_fp16_overflow_skips_the_step_and_lowers_the_scale():
    amp = Precision("fp16", CPU)
    model = tiny()
    # d(loss)/d(out) = 1 times the initial scale 2^16 is above fp16's largest, 65504: inf.
    norm = step(amp, model, 1.0)
    assert math.isinf(norm)
    assert amp.overflowed(norm)
    assert model.weight.tolist() == [[1.0, 2.0]] and model.bias.item() == 0.0  # step skipped
    assert amp.scaler.get_scale() == 2.0**15
    # At the lowered scale the same step fits: taken, with the true gradient.
    norm = step(amp, model, 1.0)
    assert not amp.overflowed(norm) and norm == pytest.approx(math.sqrt(3))
    assert torch.allclose(model.weight, torch.tensor([[0.9, 1.9]]))


@pytest.mark.parametrize("precision, expected", [("fp32", False), ("bf16", False), ("fp16", True)])
def test_only_fp16_calls_a_non_finite_norm_an_overflow(precision, expected):
    amp = Precision(precision, CPU)
    assert amp.overflowed(math.inf) is expected
    assert amp.overflowed(math.nan) is expected
    assert amp.overflowed(1e30) is False
