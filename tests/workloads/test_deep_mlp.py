"""``gradtune.workloads.deep_mlp``: the plain MLP on scikit-learn digits."""

from __future__ import annotations

import math

import pytest

from gradtune.workloads import probes


def test_init_scale_multiplies_the_he_std():
    # 256 -> 256 hidden layers: the sample std of the weights is close to the target.
    for scale in (0.5, 2.0):
        wl = probes.make("deep_mlp", {"depth": 2, "width": 256}, init_scale=scale)
        w = wl.model[3].weight  # the second hidden Linear
        assert w.std().item() == pytest.approx(scale * math.sqrt(2 / 256), rel=0.05)
