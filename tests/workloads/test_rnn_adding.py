"""``gradtune.workloads.rnn_adding``: a vanilla RNN on the adding problem."""

from __future__ import annotations

import pytest
import torch

from gradtune.workloads.rnn_adding import TRIVIAL_MSE, adding_batch
from tests.workloads._helpers import build


def test_adding_problem_data():
    x, y = adding_batch(500, 10, torch.Generator().manual_seed(0))
    markers = x[..., 1]
    assert (markers.sum(1) == 2).all()
    assert (markers[:, :5].sum(1) == 1).all() and (markers[:, 5:].sum(1) == 1).all()
    assert torch.allclose(y.squeeze(1), (x[..., 0] * markers).sum(1))
    # The trivial predictor (always 1) scores about 1/6.
    assert ((y - 1) ** 2).mean().item() == pytest.approx(TRIVIAL_MSE, rel=0.15)


def test_irnn_starts_from_the_identity():
    wl = build("rnn_adding", {"cell": "irnn", "hidden": 8}, init_scale=0.9)
    assert torch.allclose(wl.model.rec.weight, 0.9 * torch.eye(8))
    assert wl.model.inp.weight.abs().max() < 0.01
