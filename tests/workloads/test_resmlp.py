"""``gradtune.workloads.resmlp``: the residual MLP, its norm position and Fixup."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.workloads._helpers import build


def test_resmlp_fixup_zeroes_each_branch_output_and_the_head():
    wl = build("resmlp", {"blocks": 3, "width": 16, "fixup": True})
    for block in wl.model.blocks:
        assert block.fc2.weight.abs().sum() == 0
    assert wl.model.head.weight.abs().sum() == 0
    # So every block is the identity at init.
    x = torch.randn(4, 16)
    assert torch.allclose(wl.model.blocks(x), x)


@pytest.mark.parametrize("position", ["pre", "post"])
def test_norm_position_places_the_norm(position):
    wl = build("resmlp", {"blocks": 1, "width": 16, "norm_position": position}, norm="layer")
    assert isinstance(wl.model.final, nn.LayerNorm if position == "pre" else nn.Identity)
