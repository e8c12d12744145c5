"""``gradtune.workloads.transformer``: the tiny encoder on sequence reversal."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradtune import workloads
from gradtune.errors import GradtuneError
from tests.workloads._helpers import SMALL, build


def test_transformer_reverses_and_counts_accuracy_per_token():
    wl = build("transformer")
    x, y = wl.val_batches[0]
    assert torch.equal(y, x.flip(1))
    assert wl.reference_loss == pytest.approx(math.log(6))

    class Oracle(nn.Module):  # predicts the reversed token everywhere but position 0
        def forward(self, x):
            out = nn.functional.one_hot(x.flip(1), 6).float() * 10
            out[:, 0] = 0
            out[:, 0, 5] = 10  # class 5 at position 0
            return out

    wl.model = Oracle()
    acc = workloads.evaluate(wl)["val_accuracy"]
    first_right = (y[:, 0] == 5).float().mean().item()
    assert acc == pytest.approx((4 + first_right) / 5, abs=1e-6)  # per token, not per sequence


def test_transformer_heads_must_divide_d_model():
    with pytest.raises(GradtuneError, match="workload.options.heads"):
        build("transformer", {"d_model": 10, "heads": 4})


def test_transformer_warmup_option_is_carried():
    assert build("transformer", {**SMALL["transformer"], "warmup_steps": 7}).warmup_steps == 7
