"""A plug-in workload that blows up at a known batch, for the rescue, onset and replay tests.

``poisoned``: a classifier made of parallel branches (``branches.<name>``), each reading its
own slice of the input, summed into the logits. The batch stream (restorable, so a rollback
rewinds it) is plain Gaussian data except that, from batch ``poison_at`` on, the ``hot``
branch's slice is multiplied by ``poison`` (one batch, or with ``ramp: true`` every batch
after it, growing ``poison`` x per batch). Only the hot branch's weight gradient sees the
scale (the other branches' gradients are bounded by the cross-entropy's), so it is the layer
that grows first, and the blow-up comes at a known step.

Imported by Ray workers as ``tests.rescue_plugins`` (the repository root is on their path).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from gradtune.workloads.base import Workload

BRANCHES = ("cold", "warm", "hot", "cool")
WIDTH = 4  # input features per branch
CLASSES = 3


class Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.branches = nn.ModuleDict({n: nn.Linear(WIDTH, CLASSES) for n in BRANCHES})

    def forward(self, x: Tensor) -> Tensor:
        parts = x.split(WIDTH, dim=1)
        out: Tensor = sum(b(p) for b, p in zip(self.branches.values(), parts))  # type: ignore[assignment]
        return out


class PoisonedBatches:
    """Endless seeded batches; restorable (the generator's state and the count)."""

    def __init__(self, seed: int, batch: int, poison_at: int, poison: float, ramp: bool,
                 device: torch.device) -> None:
        self.device = device
        self.gen = torch.Generator().manual_seed(seed)
        self.teacher = torch.randn(WIDTH * len(BRANCHES), CLASSES, generator=self.gen)
        self.batch, self.poison_at, self.poison, self.ramp = batch, poison_at, poison, ramp
        self.drawn = 0

    def __iter__(self) -> PoisonedBatches:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        self.drawn += 1
        x = torch.randn(self.batch, WIDTH * len(BRANCHES), generator=self.gen)
        y = (x @ self.teacher).argmax(1)
        late = self.drawn - self.poison_at
        if late == 0 or (self.ramp and late > 0):
            hot = BRANCHES.index("hot") * WIDTH
            x[:, hot : hot + WIDTH] *= self.poison ** (late + 1)
        return x.to(self.device), y.to(self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.gen.get_state(), "drawn": self.drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["rng"])
        self.drawn = int(state["drawn"])


def poisoned(options: dict[str, Any], seed: int, device: torch.device) -> Workload:
    torch.manual_seed(seed)
    model = Branches().to(device)
    val_gen = torch.Generator().manual_seed(seed + 1)
    stream = PoisonedBatches(seed, 32, int(options.get("poison_at", 60)), float(options.get("poison", 1e4)),
                             bool(options.get("ramp", False)), device)
    x = torch.randn(128, WIDTH * len(BRANCHES), generator=val_gen)
    val = [(x.to(device), (x @ stream.teacher).argmax(1).to(device))]
    return Workload(model=model, train_batches=stream, val_batches=val,
                    loss_fn=nn.functional.cross_entropy, task="classification",
                    reference_loss=math.log(CLASSES))

