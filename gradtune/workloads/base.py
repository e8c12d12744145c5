"""The workload contract: what a workload gives a trial (:class:`Workload`), how its
training batches are fed, and how it is evaluated. Model building blocks are in
:mod:`gradtune.workloads.layers`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

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


class ShuffledBatches(Iterator[Batch]):
    """Endless seeded epochs over in-memory tensors: cheaper than a DataLoader for small data.

    Restorable: ``state_dict()`` is the generator's state at the start of the current epoch
    and the position in it, so ``load_state_dict`` redraws that epoch's order and goes on
    with exactly the batches an uninterrupted stream would give."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seed: int, drop_last: bool = True) -> None:
        self.x, self.y = x, y
        self.gen = torch.Generator().manual_seed(seed)
        n = x.shape[0]
        self.size = min(batch_size, n)
        self.starts = range(0, n - self.size + 1 if drop_last else n, self.size)
        self.epoch_rng = self.gen.get_state()
        self.order = self._shuffle()
        self.position = 0  # index into starts of the next batch

    def _shuffle(self) -> Tensor:
        return torch.randperm(self.x.shape[0], generator=self.gen).to(self.x.device)

    def __next__(self) -> Batch:
        if self.position == len(self.starts):
            self.epoch_rng = self.gen.get_state()
            self.order = self._shuffle()
            self.position = 0
        start = self.starts[self.position]
        self.position += 1
        idx = self.order[start : start + self.size]
        return self.x[idx], self.y[idx]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_rng": self.epoch_rng.clone(), "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["epoch_rng"])
        self.epoch_rng = self.gen.get_state()
        self.order = self._shuffle()
        self.position = int(state["position"])


def shuffled_batches(
    x: Tensor, y: Tensor, batch_size: int, seed: int, drop_last: bool = True
) -> ShuffledBatches:
    """Endless seeded epochs over in-memory tensors (:class:`ShuffledBatches`)."""
    return ShuffledBatches(x, y, batch_size, seed, drop_last)


class GeneratedBatches(Iterator[Batch]):
    """Endless fresh batches ``make(gen)`` from a seeded generator, moved to ``device``.
    Restorable: the state is the generator's."""

    def __init__(self, make: Callable[[torch.Generator], Batch], seed: int, device: torch.device) -> None:
        self.make = make
        self.gen = torch.Generator().manual_seed(seed)
        self.device = device

    def __next__(self) -> Batch:
        x, y = self.make(self.gen)
        return x.to(self.device), y.to(self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["rng"])


class RestorableBatches(Protocol):
    """An endless batch stream that can say where it is and go back there."""

    def __next__(self) -> Batch: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class MappedBatches(Iterator[Batch]):
    """``fn`` applied to each batch of a restorable ``source`` (``fn`` a pure function, e.g.
    normalisation); the state is the source's."""

    def __init__(self, source: RestorableBatches, fn: Callable[[Batch], Batch]) -> None:
        self.source = source
        self.fn = fn

    def __next__(self) -> Batch:
        return self.fn(next(self.source))

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)


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
