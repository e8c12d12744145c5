"""A deep plain MLP on scikit-learn's bundled digits (8x8 images, 10 classes).

Without normalisation, the per-layer gradient multiplier of a ReLU MLP is
``sigma_w^2 / 2`` (He et al. 2015): ``init_scale`` above 1 makes gradients grow
geometrically with depth and training blow up; below 1 they vanish.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from numpy.typing import ArrayLike
from torch import Tensor, nn

from gradtune.workloads.base import Workload, chunks, shuffled_batches
from gradtune.workloads.catalog import BUILTIN, resolve
from gradtune.workloads.layers import ACTIVATIONS, GAINS, norm_layer, scale_init

SCHEMA = BUILTIN["deep_mlp"].options
OPTIONS = BUILTIN["deep_mlp"].defaults()


def digits(seed: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digits as float tensors in [0, 1], split 80/20 with a seeded, stratified split:
    ``(x_train, y_train, x_val, y_val)``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_va, y_tr, y_va = train_test_split(
        x / 16.0, y, test_size=0.2, random_state=seed, stratify=y
    )

    def as_x(a: ArrayLike) -> Tensor:
        return torch.tensor(a, dtype=torch.float32, device=device)

    def as_y(a: ArrayLike) -> Tensor:
        return torch.tensor(a, dtype=torch.long, device=device)

    return as_x(x_tr), as_y(y_tr), as_x(x_va), as_y(y_va)


def mlp(
    n_in: int, n_out: int, depth: int, width: int, activation: str, norm: str
) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else width, width), norm_layer(norm, width)]
        layers.append(ACTIVATIONS[activation]())
    layers.append(nn.Linear(width if depth else n_in, n_out))
    return nn.Sequential(*layers)


def build(
    options: dict[str, Any], params: dict[str, Any], seed: int, device: torch.device
) -> Workload:
    opts = resolve(SCHEMA, options)
    depth, width, activation = opts["depth"], opts["width"], opts["activation"]
    x_tr, y_tr, x_va, y_va = digits(seed, device)
    torch.manual_seed(seed)
    model = mlp(x_tr.shape[1], 10, depth, width, activation, params["norm"]).to(device)
    scale_init(model, params["init_scale"], GAINS[activation])
    return Workload(
        model=model,
        train_batches=shuffled_batches(x_tr, y_tr, params["batch_size"], seed),
        val_batches=chunks(x_va, y_va),
        loss_fn=nn.functional.cross_entropy,
        task="classification",
        reference_loss=math.log(10),
    )
