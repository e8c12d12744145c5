"""``gradtune.workloads.layers``: norm layers by name, and initialisation at a scale."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradtune.workloads import layers


def test_rescale_init_multiplies_existing_weights():
    model = nn.Sequential(nn.Linear(3, 4), nn.Conv2d(1, 2, 3))
    before = [m.weight.clone() for m in model]
    layers.rescale_init(model, 3.0)
    for m, w in zip(model, before):
        assert torch.allclose(m.weight, 3 * w)


def test_group_norm_takes_up_to_32_groups_that_divide_the_width():
    assert layers.norm_layer("group", 64).num_groups == 32
    assert layers.norm_layer("group", 48).num_groups == 24
    assert layers.norm_layer("group", 7).num_groups == 7
    assert layers.conv_norm_layer("layer", 12).num_groups == 1  # LayerNorm over (C, H, W)


def test_token_norms_fold_the_tokens_into_the_batch():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4) * 7 + 2
    out = layers.token_norm_layer("batch", 4).train()(x)
    flat = out.reshape(-1, 4)
    assert torch.allclose(flat.mean(0), torch.zeros(4), atol=1e-5)  # per feature, over 15 tokens
    assert torch.allclose(flat.var(0, unbiased=False), torch.ones(4), atol=1e-3)


def test_channel_rms_norm_divides_each_example_by_its_rms():
    x = torch.full((2, 3, 2, 2), 2.0)
    x[1] = -0.5
    out = layers.ChannelRMSNorm(3, eps=0.0)(x)
    assert torch.allclose(out, torch.sign(x))


def test_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="unknown norm 'weight'"):
        layers.conv_norm_layer("weight", 4)
