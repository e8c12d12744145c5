"""The workload contract: what a workload gives a trial (:class:`Workload`), how its
training batches are fed, and how it is evaluated. Model building blocks are in
:mod:`gradtune.workloads.layers`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

Batch = tuple[Tensor, Tensor]


@dataclass
class Workload:
    """A model, its data and its loss, ready to train on ``device``.

    ``train_batches`` never ends (the trial counts steps, not epochs). ``val_batches`` is
    a finite list evaluated whole. ``reference_loss`` is the loss of a trivial predictor
    (chance level for classification), the yardstick for "far above chance".
    ``warmup_steps`` is the LR warmup the workload asks for (the transformer's option); the
    trial uses it only where the spec's own ``warmup_steps`` is 0.

    ``signals``, if given, returns extra per-step stability signals of the latest training
    forward pass (``tiny_lm``: ``attn_logit_max``, ``attn_entropy_min``), each a 0-dim
    tensor on the device: the trial reads them in its one host sync per step, reports them
    as metrics of that name and gives them to the divergence monitor. Computing them must
    not sync (no ``.item()``).
    """

    model: nn.Module
    train_batches: Iterator[Batch]
    val_batches: list[Batch]
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    task: str  # "classification" | "regression"
    reference_loss: float
    warmup_steps: int = 0
    signals: Callable[[], dict[str, Tensor]] | None = None


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
    targets = 0
    for x, y in workload.val_batches:
        out = model(x)
        total_loss = total_loss + workload.loss_fn(out, y).detach().cpu() * x.shape[0]
        if workload.task == "classification":
            # Per target, not per example: a sequence model predicts one token per position.
            correct = correct + (out.argmax(dim=-1) == y).sum().cpu()
            targets += y.numel()
        count += x.shape[0]
    model.train(was_training)
    metrics = {"val_loss": float(total_loss) / max(count, 1)}
    if workload.task == "classification":
        metrics["val_accuracy"] = float(correct) / max(targets, 1)
    return metrics
