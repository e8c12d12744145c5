"""Cheap gradient and update statistics, computed on the device with foreach kernels and
returned as 0-dim tensors: no per-parameter ``.item()``, no host sync here.

NaN and inf propagate: a non-finite gradient or weight gives a non-finite statistic, which
the trial's divergence check then sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.utils import get_total_norm


class UpdateRatio:
    """``||w_after - w_before|| / ||w_before||`` over all ``weights`` for one optimizer step.

    Keeps one copy of the weights (allocated once); ``enabled=False`` skips the copy and
    yields NaN, which the update-ratio rule ignores. Zero weights give inf or NaN.
    """

    def __init__(self, weights: Sequence[Tensor], enabled: bool = True) -> None:
        self.weights = list(weights)
        self.enabled = enabled and bool(self.weights)
        self.before = [w.detach().clone() for w in self.weights] if self.enabled else []
        self.weight_norm: Tensor | None = None

    @torch.no_grad()
    def before_step(self) -> None:
        if self.enabled:
            torch._foreach_copy_(self.before, [w.detach() for w in self.weights])
            self.weight_norm = get_total_norm(self.before, 2.0)

    @torch.no_grad()
    def after_step(self) -> Tensor:
        if not self.enabled or self.weight_norm is None:
            device = self.weights[0].device if self.weights else None
            return torch.full((), float("nan"), device=device)
        deltas = torch._foreach_sub([w.detach() for w in self.weights], self.before)
        return get_total_norm(deltas, 2.0) / self.weight_norm
