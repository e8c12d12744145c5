"""``gradtune.telemetry.UpdateRatio``: ``||w_after - w_before|| / ||w_before||`` of one
optimizer step, on a model small enough to work out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradtune.telemetry import UpdateRatio, flatten_, sgd_direction


@pytest.fixture(params=["flat", "foreach"])
def ratio_of(request):
    """An ``UpdateRatio`` over the given weights, on one flat buffer or tensor by tensor:
    every test below holds for both."""
    def make(weights, enabled=True):
        weights = list(weights)
        flat = flatten_(weights) if request.param == "flat" else None
        return UpdateRatio(weights, enabled=enabled, flat=flat)
    return make


def tiny(weight=(3.0, 4.0), bias=0.0):
    """``Linear(2, 1)`` with the given weights: ``||(w, b)|| = 5`` by default."""
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([weight]))
        model.bias.fill_(bias)
    return model


def sgd_step(model, ratio, lr=0.1, x=(1.0, 1.0)):
    """One SGD step on ``loss = model(x)``, whose gradient is ``x`` for the weight and 1 for
    the bias, measured by ``ratio``."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opt.zero_grad()
    model(torch.tensor([x])).sum().backward()
    ratio.before_step()
    opt.step()
    return ratio.after_step()


def test_ratio_is_the_step_norm_over_the_weight_norm(ratio_of):
    model = tiny()
    value = sgd_step(model, ratio_of(list(model.parameters())), lr=0.1)
    # The step is -0.1 * (1, 1, 1); the weights before it were (3, 4, 0).
    assert value.ndim == 0 and value.dtype == torch.float32
    assert value.item() == pytest.approx(0.1 * math.sqrt(3) / 5, rel=1e-6)


def test_ratio_covers_only_the_weights_it_was_given(ratio_of):
    model = tiny(bias=12.0)
    value = sgd_step(model, ratio_of([model.weight]), lr=0.1)
    assert value.item() == pytest.approx(0.1 * math.sqrt(2) / 5, rel=1e-6)  # the bias left out


def test_each_step_is_measured_from_its_own_starting_weights(ratio_of):
    model = tiny()
    ratio = ratio_of([model.weight])
    first = sgd_step(model, ratio, lr=0.1).item()
    second = sgd_step(model, ratio, lr=0.1).item()
    assert first == pytest.approx(0.1 * math.sqrt(2) / 5, rel=1e-6)
    # From (2.9, 3.9): the same step over the new norm, not the two steps over the first.
    assert second == pytest.approx(0.1 * math.sqrt(2) / math.hypot(2.9, 3.9), rel=1e-6)


def test_the_copy_is_taken_at_before_step_not_at_construction(ratio_of):
    model = tiny()
    ratio = ratio_of([model.weight])
    with torch.no_grad():
        model.weight.mul_(2)  # (6, 8) by the time the step starts
    assert sgd_step(model, ratio, lr=0.1).item() == pytest.approx(0.1 * math.sqrt(2) / 10, rel=1e-6)


def test_disabled_is_nan_and_keeps_no_copy(ratio_of):
    model = tiny()
    ratio = ratio_of(list(model.parameters()), enabled=False)
    assert ratio.before == []
    assert math.isnan(sgd_step(model, ratio).item())


def test_no_weights_is_nan(ratio_of):
    ratio = ratio_of([])
    assert not ratio.enabled
    ratio.before_step()
    assert math.isnan(ratio.after_step().item())


def test_after_step_without_before_step_is_nan(ratio_of):
    model = tiny()
    assert math.isnan(ratio_of([model.weight]).after_step().item())


@pytest.mark.parametrize("bad, check", [(math.nan, math.isnan), (math.inf, math.isinf)])
def test_a_non_finite_gradient_gives_a_non_finite_ratio(bad, check, ratio_of):
    model = tiny()
    ratio = ratio_of([model.weight])
    model.weight.grad = torch.tensor([[bad, 1.0]])
    ratio.before_step()
    torch.optim.SGD([model.weight], lr=0.1).step()
    assert check(ratio.after_step().item())


def test_a_non_finite_weight_before_the_step_gives_nan(ratio_of):
    model = tiny(weight=(math.inf, 4.0))
    assert math.isnan(sgd_step(model, ratio_of([model.weight])).item())  # inf - inf


def test_zero_weights_give_inf_or_nan(ratio_of):
    model = tiny(weight=(0.0, 0.0))
    assert math.isinf(sgd_step(model, ratio_of([model.weight])).item())  # a step from zero
    model = tiny(weight=(0.0, 0.0))
    assert math.isnan(sgd_step(model, ratio_of([model.weight]), x=(0.0, 0.0)).item())  # 0 / 0


def test_flatten_keeps_the_values_and_makes_the_weights_views_of_one_buffer():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    before = [p.detach().clone() for p in model.parameters()]
    flat = flatten_(list(model.parameters()))
    assert flat is not None and flat.numel() == sum(p.numel() for p in before)
    for p, old in zip(model.parameters(), before):
        assert torch.equal(p, old) and p.data_ptr() >= flat.data_ptr()
    with torch.no_grad():
        flat.zero_()
    assert all(not p.any() for p in model.parameters())  # views, not copies


def test_flatten_refuses_mixed_dtypes_and_changes_nothing():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2, dtype=torch.float64))
    pointers = (a.data_ptr(), b.data_ptr())
    assert flatten_([a, b]) is None and flatten_([]) is None
    assert (a.data_ptr(), b.data_ptr()) == pointers


def test_a_flat_model_trains_exactly_as_the_original():
    def losses(flat):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        if flat:
            flatten_(list(model.parameters()))
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        x, y = torch.randn(32, 8), torch.randn(32, 1)
        out = []
        for _ in range(5):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            out.append(loss.item())
        return out
    assert losses(flat=True) == losses(flat=False)


# --------------------------------------------- SGD's own step instead of a copy
def two_layer(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def measured_and_read(model, make_opt, steps=6, norm_of=None):
    """Each step's ratio measured by copying the weights and read from SGD's step, side by
    side on the same steps."""
    weights = list(model.parameters())
    flat = flatten_(weights)
    opt = make_opt(model)
    copy, read = UpdateRatio(weights, flat=flat), UpdateRatio(weights, flat=flat, optimizer=opt)
    assert copy.optimizer is None and copy.before and read.optimizer is opt and not read.before
    pairs = []
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(32, 8)).pow(2).mean().backward()
        given = norm_of(weights) if norm_of else None
        copy.before_step()
        read.before_step()
        opt.step()
        pairs.append((copy.after_step().item(), read.after_step(given).item()))
    return pairs


@pytest.mark.parametrize("make_opt", [
    lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
    lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
    lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01, dampening=0.5),
    lambda m: torch.optim.SGD([{"params": m[0].parameters(), "lr": 0.3},
                               {"params": m[2].parameters(), "momentum": 0.5}], lr=0.05),
], ids=["plain", "momentum", "decay-dampening", "two-groups"])
def test_sgds_step_gives_the_ratio_a_copy_measures(make_opt):
    for copied, read in measured_and_read(two_layer(), make_opt):
        assert read == pytest.approx(copied, rel=1e-4)


def test_a_given_gradient_norm_is_used_by_plain_sgd():
    """Plain SGD steps by the gradient: handed the gradients' norm (after clipping), the
    ratio needs no norm of its own, and agrees with the copy."""
    def grad_norm(weights):
        return torch.linalg.vector_norm(torch.cat([w.grad.reshape(-1) for w in weights]))
    pairs = measured_and_read(two_layer(), lambda m: torch.optim.SGD(m.parameters(), lr=0.2),
                              norm_of=grad_norm)
    for copied, read in pairs:
        assert read == pytest.approx(copied, rel=1e-4)


@pytest.mark.parametrize("make_opt", [
    lambda m: torch.optim.Adam(m.parameters(), lr=0.1),
    lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True),
    lambda m: torch.optim.SGD(m.parameters(), lr=0.1, maximize=True),
    lambda m: torch.optim.SGD(m.parameters(), lr=0.1, weight_decay=0.01),  # decay, no momentum
    lambda m: torch.optim.SGD(m[0].parameters(), lr=0.1),  # other weights than the ratio's
], ids=["adam", "nesterov", "maximize", "decay-without-momentum", "other-weights"])
def test_other_steps_are_measured_by_copying(make_opt):
    model = two_layer()
    weights = list(model.parameters())
    assert not sgd_direction(make_opt(model), weights)
    ratio = UpdateRatio(weights, optimizer=make_opt(model))
    assert ratio.before and ratio.optimizer is None


def test_half_precision_weights_are_measured_by_copying():
    model = two_layer().to(torch.bfloat16)
    weights = list(model.parameters())
    assert not sgd_direction(torch.optim.SGD(weights, lr=0.1), weights)


def test_sgd_ratio_of_a_non_finite_gradient_is_not_finite():
    model = tiny()
    opt = torch.optim.SGD([model.weight], lr=0.1, momentum=0.9)
    ratio = UpdateRatio([model.weight], optimizer=opt)
    model.weight.grad = torch.tensor([[math.nan, 1.0]])
    ratio.before_step()
    opt.step()
    assert math.isnan(ratio.after_step().item())


def test_a_weight_without_a_gradient_this_step_is_not_counted_with_momentum():
    """SGD leaves a weight whose gradient is None alone, whatever its momentum buffer holds
    from an earlier step: the read ratio agrees with the copy on such a step."""
    model = two_layer()
    weights = list(model.parameters())
    opt = torch.optim.SGD(weights, lr=0.1, momentum=0.9)
    copy, read = UpdateRatio(weights), UpdateRatio(weights, optimizer=opt)
    for only_first in (False, True):
        opt.zero_grad(set_to_none=True)
        model(torch.randn(32, 8)).pow(2).mean().backward()
        if only_first:
            for w in weights[2:]:
                w.grad = None  # the last layer had no gradient this step
        copy.before_step()
        read.before_step()
        opt.step()
        assert read.after_step().item() == pytest.approx(copy.after_step().item(), rel=1e-4)
