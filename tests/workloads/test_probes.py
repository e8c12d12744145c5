"""``gradtune.workloads.probes``: measurements at initialisation, on models small enough to
work out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradtune import params as params_mod
from gradtune.workloads import base, probes


def hand_made(model, x, y, loss_fn=nn.functional.mse_loss):
    return base.Workload(model, iter([(x, y)]), [(x, y)], loss_fn, "regression", 1.0)


def linear(weight, bias):
    model = nn.Linear(len(weight), 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([weight]))
        model.bias.fill_(bias)
    return model


def test_first_gradients_are_the_loss_and_norms_of_the_first_batch():
    # out = 1*1 + 2*2 + 0.5 = 5.5 against 1.5: loss 16; d/d out = 2 * 4 = 8.
    wl = hand_made(linear([1.0, 2.0], 0.5), torch.tensor([[1.0, 2.0]]), torch.tensor([[1.5]]))
    grads = probes.first_gradients(wl)
    assert grads.loss == pytest.approx(16.0)
    assert grads.per_parameter == pytest.approx({"weight": 8 * math.sqrt(5), "bias": 8.0})
    assert grads.total == pytest.approx(math.sqrt(64 * 5 + 64))


def test_first_gradients_leave_no_gradient_and_train_mode_behind():
    wl = hand_made(nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.5), nn.Linear(3, 1)).eval(),
                   torch.ones(4, 2), torch.zeros(4, 1))
    probes.first_gradients(wl)
    assert wl.model.training
    assert all(p.grad is None for p in wl.model.parameters())


def test_output_scales_are_the_rms_of_each_hooked_output():
    first = linear([3.0, -4.0], 0.0)
    model = nn.Sequential(first, nn.ReLU())
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # first's outputs 3 and -4; after ReLU 3 and 0
    wl = hand_made(model, x, torch.zeros(2, 1))
    scales = probes.output_scales(wl, [first, model[1]])
    assert scales == pytest.approx([math.sqrt((9 + 16) / 2), math.sqrt(9 / 2)])
    assert not first._forward_hooks and not model[1]._forward_hooks  # removed again


def test_log_slope_of_a_power_law_is_its_exponent():
    xs = [1.0, 2.0, 4.0, 8.0]
    assert probes.log_slope(xs, [3 * x**2 for x in xs]) == pytest.approx(2.0)
    assert probes.log_slope(xs, [5 / x for x in xs]) == pytest.approx(-1.0)


def test_make_overrides_the_trial_defaults_it_is_given():
    wl = probes.make("deep_mlp", {"depth": 1, "width": 8}, batch_size=5, norm="layer")
    x, _ = next(wl.train_batches)
    assert x.shape[0] == 5
    assert any(isinstance(m, nn.LayerNorm) for m in wl.model.modules())
    plain = probes.make("deep_mlp", {"depth": 1, "width": 8})  # the defaults: batch 64, no norm
    assert next(plain.train_batches)[0].shape[0] == params_mod.defaults()["batch_size"] == 64
    assert not any(isinstance(m, nn.LayerNorm) for m in plain.model.modules())
