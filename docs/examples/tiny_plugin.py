"""A gradtune plug-in: a small MLP on synthetic three-arm spirals.

Run it from the repository root (no install needed; gradtune puts the current directory on
the import path):

    python -m gradtune sweep sweeps/plugin_example.yaml

The spec names this factory as ``workload: {name: "docs.examples.tiny_plugin:make_workload"}``.
Plain PyTorch: nothing here imports gradtune.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import TensorDataset

NORMS = {
    "none": lambda width: nn.Identity(),
    "batch": nn.BatchNorm1d,
    "layer": nn.LayerNorm,
    "rms": nn.RMSNorm,
}


def spirals(n: int, classes: int, noise: float, gen: torch.Generator) -> TensorDataset:
    """``n`` points on ``classes`` interleaved spiral arms in the plane."""
    label = torch.randint(0, classes, (n,), generator=gen)
    radius = torch.rand(n, generator=gen)
    angle = 4.0 * radius + label * (2 * math.pi / classes)
    angle = angle + noise * torch.randn(n, generator=gen)
    x = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return TensorDataset(x, label)


def make_workload(options: dict, seed: int, norm: str = "none") -> dict:
    """gradtune calls this with the spec's ``workload.options``, the trial seed and the
    trial's ``norm``. It does not take ``init_scale``, so gradtune multiplies the initial
    weights of the Linear layers by it."""
    depth = int(options.get("depth", 4))
    width = int(options.get("width", 64))
    classes = int(options.get("classes", 3))
    if norm not in NORMS:
        raise ValueError(f"tiny_plugin supports norm in {sorted(NORMS)}, not {norm!r}")
    layers: list[nn.Module] = []
    n_in = 2
    for _ in range(depth):
        layers += [nn.Linear(n_in, width), NORMS[norm](width), nn.ReLU()]
        n_in = width
    layers.append(nn.Linear(n_in, classes))
    gen = torch.Generator().manual_seed(seed)
    return {
        "model": nn.Sequential(*layers),
        "train": spirals(4096, classes, 0.1, gen),  # a Dataset: gradtune batches it
        "val": spirals(1024, classes, 0.1, gen),
        "loss": nn.functional.cross_entropy,
        "task": "classification",  # reference loss: ln(classes), found from the model
    }
