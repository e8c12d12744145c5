"""``gradtune.workloads.base``: the pieces built-in workloads and plug-ins share."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradtune.workloads import base


def test_rescale_init_multiplies_existing_weights():
    model = nn.Sequential(nn.Linear(3, 4), nn.Conv2d(1, 2, 3))
    before = [m.weight.clone() for m in model]
    base.rescale_init(model, 3.0)
    for m, w in zip(model, before):
        assert torch.allclose(m.weight, 3 * w)


def test_shuffled_batches_cover_each_epoch_once_and_drop_the_short_last_batch():
    x = torch.arange(10.0).unsqueeze(1)
    batches = base.shuffled_batches(x, x.squeeze(1).long(), batch_size=4, seed=0)
    epoch = [next(batches) for _ in range(2)]  # 10 // 4 full batches; the other 2 dropped
    seen = torch.cat([xb.squeeze(1) for xb, _ in epoch])
    assert len(seen) == 8 and len(set(seen.tolist())) == 8
    assert all(torch.equal(xb.squeeze(1).long(), yb) for xb, yb in epoch)  # pairs kept together
    again = base.shuffled_batches(x, x.squeeze(1).long(), batch_size=4, seed=0)
    assert all(torch.equal(next(again)[0], xb) for xb, _ in epoch)  # seeded
    kept = base.shuffled_batches(x, x, batch_size=4, seed=0, drop_last=False)
    assert [next(kept)[0].shape[0] for _ in range(3)] == [4, 4, 2]


def test_group_norm_takes_up_to_32_groups_that_divide_the_width():
    assert base.norm_layer("group", 64).num_groups == 32
    assert base.norm_layer("group", 48).num_groups == 24
    assert base.norm_layer("group", 7).num_groups == 7
    assert base.conv_norm_layer("layer", 12).num_groups == 1  # LayerNorm over (C, H, W)


def test_token_norms_fold_the_tokens_into_the_batch():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4) * 7 + 2
    out = base.token_norm_layer("batch", 4).train()(x)
    flat = out.reshape(-1, 4)
    assert torch.allclose(flat.mean(0), torch.zeros(4), atol=1e-5)  # per feature, over 15 tokens
    assert torch.allclose(flat.var(0, unbiased=False), torch.ones(4), atol=1e-3)


def test_channel_rms_norm_divides_each_example_by_its_rms():
    x = torch.full((2, 3, 2, 2), 2.0)
    x[1] = -0.5
    out = base.ChannelRMSNorm(3, eps=0.0)(x)
    assert torch.allclose(out, torch.sign(x))


def test_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="unknown norm 'weight'"):
        base.conv_norm_layer("weight", 4)


def test_evaluate_averages_over_samples_and_restores_training_mode():
    model = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0], [-1.0]]))  # class 0 for x > 0, 1 for x < 0
    x = torch.tensor([[1.0], [2.0], [-1.0]])
    y = torch.tensor([0, 1, 1])
    wl = base.Workload(model, iter(()), [(x[:2], y[:2]), (x[2:], y[2:])],
                       nn.functional.cross_entropy, "classification", 1.0)
    expected = nn.functional.cross_entropy(model(x), y).item()  # the mean over all 3
    metrics = base.evaluate(wl)
    assert metrics["val_loss"] == pytest.approx(expected)
    assert metrics["val_accuracy"] == pytest.approx(2 / 3)
    assert model.training


def test_evaluate_reports_a_non_finite_loss_as_is():
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(math.inf)
    wl = base.Workload(model, iter(()), [(torch.ones(2, 1), torch.zeros(2, 1))],
                       nn.functional.mse_loss, "regression", 1.0)
    assert not math.isfinite(base.evaluate(wl)["val_loss"])
