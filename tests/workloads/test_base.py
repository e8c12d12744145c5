"""``gradtune.workloads.base``: the pieces built-in workloads and plug-ins share."""

from __future__ import annotations

import torch
from torch import nn

from gradtune.workloads import base


def test_rescale_init_multiplies_existing_weights():
    model = nn.Sequential(nn.Linear(3, 4), nn.Conv2d(1, 2, 3))
    before = [m.weight.clone() for m in model]
    base.rescale_init(model, 3.0)
    for m, w in zip(model, before):
        assert torch.allclose(m.weight, 3 * w)
