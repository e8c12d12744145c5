"""A residual MLP on scikit-learn's bundled digits.

Each block adds a two-layer ReLU branch ``W2 relu(W1 x)`` to its input. With He init and no
normalisation the branch adds twice the input's variance, so the activation scale grows
~sqrt(3) per block (``(1 + 2 s^4)^(1/2)`` at ``init_scale`` s) and a deep stack blows up.
Cures: the trial's ``norm`` inside the block before the branch (``norm_position: pre``,
Pre-LN) or after the sum (``post``, Post-LN as in the original ResNet/Transformer), or
``fixup`` (Zhang, Dauphin & Ma 2019): the last layer of every branch and the classifier
start at zero, the first branch layer is scaled by ``blocks^(-1/2)``, and scalar biases and
a scalar multiplier are added around each branch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from gradtune.workloads.base import Workload, chunks, shuffled_batches
from gradtune.workloads.catalog import BUILTIN, resolve
from gradtune.workloads.deep_mlp import digits
from gradtune.workloads.layers import GAINS, norm_layer, scale_init

SCHEMA = BUILTIN["resmlp"].options
OPTIONS = BUILTIN["resmlp"].defaults()


class Block(nn.Module):
    def __init__(self, width: int, norm: str, position: str, fixup: bool) -> None:
        super().__init__()
        self.position = position
        self.norm = norm_layer(norm, width)
        self.fc1 = nn.Linear(width, width, bias=not fixup)
        self.fc2 = nn.Linear(width, width, bias=not fixup)
        self.fixup = fixup
        if fixup:  # Fixup's scalar biases (before each layer and activation) and multiplier
            self.bias = nn.Parameter(torch.zeros(4))
            self.scale = nn.Parameter(torch.ones(1))

    def branch(self, x: Tensor) -> Tensor:
        # Calling a module is typed Any (nn.Module.__call__): the annotations say what it is.
        if not self.fixup:
            out: Tensor = self.fc2(torch.relu(self.fc1(x)))
            return out
        b = self.bias
        h = torch.relu(self.fc1(x + b[0]) + b[1])
        out = self.fc2(h + b[2])
        return out * self.scale + b[3]

    def forward(self, x: Tensor) -> Tensor:
        if self.position == "pre":
            return x + self.branch(self.norm(x))
        out: Tensor = self.norm(x + self.branch(x))
        return out


class ResMLP(nn.Module):
    def __init__(
        self, n_in: int, n_out: int, blocks: int, width: int, norm: str, position: str,
        fixup: bool,
    ) -> None:
        super().__init__()
        self.stem = nn.Linear(n_in, width)
        self.blocks = nn.Sequential(*(Block(width, norm, position, fixup) for _ in range(blocks)))
        # Pre-LN ends with a norm, as Pre-LN transformers do; Post-LN's last block already has.
        self.final = norm_layer(norm, width) if position == "pre" else nn.Identity()
        self.head = nn.Linear(width, n_out)

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.head(self.final(self.blocks(self.stem(x))))
        return logits


@torch.no_grad()
def fixup_init(model: ResMLP, blocks: int) -> None:
    """Zhang et al. 2019 with m=2 layers per branch: first layer x L^(-1/(2m-2)) = L^(-1/2),
    last layer of each branch and the classifier zero."""
    for block in model.blocks:
        assert isinstance(block, Block)
        block.fc1.weight.mul_(blocks ** -0.5)
        nn.init.zeros_(block.fc2.weight)
    nn.init.zeros_(model.head.weight)


def build(
    options: dict[str, Any], params: dict[str, Any], seed: int, device: torch.device
) -> Workload:
    opts = resolve(SCHEMA, options)
    blocks, width, fixup = opts["blocks"], opts["width"], opts["fixup"]
    x_tr, y_tr, x_va, y_va = digits(seed, device)
    torch.manual_seed(seed)
    model = ResMLP(x_tr.shape[1], 10, blocks, width, params["norm"], opts["norm_position"], fixup)
    scale_init(model, params["init_scale"], GAINS["relu"])
    if fixup:
        fixup_init(model, blocks)
    return Workload(
        model=model.to(device),
        train_batches=shuffled_batches(x_tr, y_tr, params["batch_size"], seed),
        val_batches=chunks(x_va, y_va),
        loss_fn=nn.functional.cross_entropy,
        task="classification",
        reference_loss=math.log(10),
    )
