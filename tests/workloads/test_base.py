"""``gradtune.workloads.base``: feeding a workload's batches and evaluating it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradtune.workloads import base


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
