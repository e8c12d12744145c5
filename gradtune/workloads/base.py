"""What a workload gives a trial, and the pieces built-in workloads share."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

Batch = tuple[Tensor, Tensor]


@dataclass
class Workload:
    """A model, its data and its loss, ready to train on ``device``.

    ``train_batches`` never ends (the trial counts steps, not epochs). ``val_batches`` is
    a finite list evaluated whole. ``reference_loss`` is the loss of a trivial predictor
    (chance level for classification), the yardstick for "far above chance".
    """

    model: nn.Module
    train_batches: Iterator[Batch]
    val_batches: list[Batch]
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    task: str  # "classification" | "regression"
    reference_loss: float


def shuffled_batches(
    x: Tensor, y: Tensor, batch_size: int, seed: int, drop_last: bool = True
) -> Iterator[Batch]:
    """Endless seeded epochs over in-memory tensors: cheaper than a DataLoader for small data."""
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=gen).to(x.device)
        stop = n - size + 1 if drop_last else n
        for start in range(0, stop, size):
            idx = order[start : start + size]
            yield x[idx], y[idx]


def chunks(x: Tensor, y: Tensor, size: int = 1024) -> list[Batch]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, x.shape[0], size)]


def norm_layer(norm: str, width: int) -> nn.Module:
    """The normalisation layer after a linear layer of ``width`` features."""
    if norm == "none":
        return nn.Identity()
    if norm == "batch":
        return nn.BatchNorm1d(width)
    if norm == "layer":
        return nn.LayerNorm(width)
    if norm == "group":
        return nn.GroupNorm(_groups(width), width)
    if norm == "rms":
        return nn.RMSNorm(width)
    raise ValueError(f"unknown norm {norm!r}; known: none, batch, layer, group, rms.")


def _groups(width: int) -> int:
    # 32 groups as in Wu & He (2018) where the width allows, else the largest divisor <= 32.
    return max(g for g in range(1, min(32, width) + 1) if width % g == 0)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}
# Variance-preserving gain per activation: He for ReLU, LeCun for tanh (sigma_w^2 = 2 or 1).
GAINS = {"relu": math.sqrt(2.0), "tanh": 1.0, "linear": 1.0}


def scale_init(model: nn.Module, init_scale: float, gain: float) -> None:
    """Re-initialise every Linear/Conv weight with std ``init_scale * gain / sqrt(fan_in)``
    and zero biases. ``init_scale=1`` is the critical (He/LeCun) initialisation."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            fan_in = module.weight[0].numel()
            nn.init.normal_(module.weight, std=init_scale * gain / math.sqrt(fan_in))
            if module.bias is not None:
                nn.init.zeros_(module.bias)


@torch.no_grad()
def evaluate(workload: Workload) -> dict[str, float]:
    """Validation loss (mean over samples) and, for classification, accuracy.

    A non-finite output gives a non-finite ``val_loss``, reported as is."""
    model = workload.model
    was_training = model.training
    model.eval()
    total_loss = torch.zeros(())
    correct = torch.zeros(())
    count = 0
    for x, y in workload.val_batches:
        out = model(x)
        total_loss = total_loss + workload.loss_fn(out, y).detach().cpu() * x.shape[0]
        if workload.task == "classification":
            correct = correct + (out.argmax(dim=-1) == y).sum().cpu()
        count += x.shape[0]
    model.train(was_training)
    metrics = {"val_loss": float(total_loss) / max(count, 1)}
    if workload.task == "classification":
        metrics["val_accuracy"] = float(correct) / max(count, 1)
    return metrics


def option(options: dict[str, Any], name: str, default: Any, kind: type) -> Any:
    """Read a workload option with its type checked; ``ValueError`` names the option."""
    value = options.get(name, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"workload option {name}: expected {kind.__name__}, but got {value!r}")
    return value
