"""Measurements at initialisation, without training: the gradient norms of one batch and the
activation scale after chosen modules. ``tests/test_science.py`` and
``benchmarks/science.py`` check the published claims with them.

NaN and inf are returned as measured: an overflowing network gives inf or NaN norms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gradtune import params as params_mod
from gradtune import workloads
from gradtune.workloads.base import Workload


def make(name: str, options: dict[str, Any] | None = None, seed: int = 0, **params: Any) -> Workload:
    """A workload on CPU with the registry defaults (:mod:`gradtune.params`) overridden by
    ``params``."""
    return workloads.build(name, options or {}, {**params_mod.defaults(), **params}, seed,
                           torch.device("cpu"))


@dataclass
class Gradients:
    loss: float
    total: float  # global L2 norm over all parameters
    per_parameter: dict[str, float]  # L2 norm per named parameter


def first_gradients(workload: Workload) -> Gradients:
    """The loss and gradient norms of the first training batch, in training mode."""
    model = workload.model.train()
    model.zero_grad(set_to_none=True)
    x, y = next(workload.train_batches)
    loss = workload.loss_fn(model(x), y)
    loss.backward()
    per = {n: float(p.grad.norm()) for n, p in model.named_parameters() if p.grad is not None}
    total = float(torch.linalg.vector_norm(torch.tensor(list(per.values()))))
    model.zero_grad(set_to_none=True)
    return Gradients(float(loss.detach()), total, per)


@torch.no_grad()
def output_scales(workload: Workload, modules: list[nn.Module]) -> list[float]:
    """RMS of each module's output on the first validation batch (training-mode norms)."""
    scales: list[float] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: scales.append(
        float(out.float().pow(2).mean().sqrt()))) for m in modules]
    try:
        workload.model.train()(workload.val_batches[0][0])
    finally:
        for h in hooks:
            h.remove()
    return scales


def log_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ln y`` against ``ln x``."""
    lx = torch.tensor(xs, dtype=torch.float64).log()
    ly = torch.tensor(ys, dtype=torch.float64).log()
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return float((lx * ly).sum() / (lx * lx).sum())
