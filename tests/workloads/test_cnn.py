"""``gradtune.workloads.cnn``: the ConvNet and the ResNet, their stages and their init."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradtune.workloads import cnn
from tests.workloads._helpers import SMALL, build, one_step


def test_convnet_has_two_stages_of_depth_convs_doubling_the_width():
    wl = build("cnn", {**SMALL["cnn"], "width": 4, "depth": 2}, norm="batch")
    convs = [m for m in wl.model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [
        (1, 4, 2), (4, 4, 1), (4, 8, 2), (8, 8, 1)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in wl.model.modules()) == 4  # one per conv
    x, _ = next(wl.train_batches)
    assert wl.model[:-2](x).shape[1:] == (8, 1, 1)  # 28 -> 14 -> 7, then pooled
    assert wl.model(x).shape == (x.shape[0], 10)


def test_resnet_blocks_with_a_projection_where_the_shape_changes():
    wl = build("cnn", {**SMALL["cnn"], "arch": "resnet", "width": 4, "depth": 2}, norm="group")
    blocks = [m for m in wl.model.modules() if isinstance(m, cnn.BasicBlock)]
    assert len(blocks) == 4
    # The first block of each stage halves the resolution and changes the channels: a 1x1
    # projection with its norm; the others add their input as is.
    assert [not isinstance(b.shortcut, nn.Identity) for b in blocks] == [True, False, True, False]
    assert isinstance(blocks[2].shortcut[1], nn.GroupNorm) and blocks[2].shortcut[0].stride == (2, 2)
    x, _ = next(wl.train_batches)
    assert wl.model(x).shape == (x.shape[0], 10)
    assert math.isfinite(one_step(wl))


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_init_scale_multiplies_the_he_std_of_every_conv(scale):
    wl = build("cnn", {**SMALL["cnn"], "width": 32, "depth": 1}, init_scale=scale)
    second = [m for m in wl.model.modules() if isinstance(m, nn.Conv2d)][1]  # 32 -> 64 channels
    fan_in = 32 * 3 * 3
    assert second.weight.std().item() == pytest.approx(scale * math.sqrt(2 / fan_in), rel=0.05)
    assert torch.count_nonzero(second.bias) == 0
