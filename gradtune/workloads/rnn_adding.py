"""A vanilla RNN on the adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015).

Each input step is ``(value, marker)``: values are uniform in [0, 1], exactly two markers are
1 (one in each half of the sequence) and the target is the sum of the two marked values.
Predicting 1 every time scores MSE 1/6 = 0.167, the reference loss; below 0.04 counts as
solved. Data is synthetic, seeded and made in memory: each training batch is fresh.

Cells: ``tanh`` (LeCun init), ``relu`` (He init) and ``irnn`` (ReLU with an identity
recurrent matrix, Le et al. 2015). ``init_scale`` multiplies every weight's init, the
identity included, so it sets the spectral radius of the recurrence: above 1 gradients
through time explode (Pascanu, Mikolov & Bengio 2013). ``norm`` normalises the
pre-activation at every step (a LayerNorm-RNN for ``layer``, Ba et al. 2016).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from gradtune.workloads.base import Batch, GeneratedBatches, Workload, chunks
from gradtune.workloads.catalog import BUILTIN, resolve
from gradtune.workloads.layers import GAINS, norm_layer, scale_init

SCHEMA = BUILTIN["rnn_adding"].options
OPTIONS = BUILTIN["rnn_adding"].defaults()
TRIVIAL_MSE = 1.0 / 6.0  # Var(U1 + U2) for the constant prediction E[U1 + U2] = 1
VAL_SIZE = 1000


def adding_batch(batch: int, seq_len: int, gen: torch.Generator) -> Batch:
    """``x``: (batch, seq_len, 2) of (value, marker); ``y``: (batch, 1), the marked sum."""
    values = torch.rand(batch, seq_len, generator=gen)
    half = seq_len // 2
    first = torch.randint(0, half, (batch,), generator=gen)
    second = torch.randint(half, seq_len, (batch,), generator=gen)
    markers = torch.zeros(batch, seq_len)
    rows = torch.arange(batch)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = torch.stack([values, markers], dim=-1)
    y = (values * markers).sum(dim=1, keepdim=True)
    return x, y


def fresh_batches(
    batch: int, seq_len: int, seed: int, device: torch.device
) -> GeneratedBatches:
    return GeneratedBatches(lambda gen: adding_batch(batch, seq_len, gen), seed, device)


class RNN(nn.Module):
    """``h_t = act(norm(W_x x_t + W_h h_{t-1} + b))``, read out linearly from the last step."""

    def __init__(self, hidden: int, cell: str, norm: str) -> None:
        super().__init__()
        self.inp = nn.Linear(2, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.norm = norm_layer(norm, hidden)
        self.act: nn.Module = nn.Tanh() if cell == "tanh" else nn.ReLU()
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        drive = self.inp(x)  # every step's input term in one matmul
        h = torch.zeros(x.shape[0], self.rec.in_features, device=x.device, dtype=drive.dtype)
        for t in range(x.shape[1]):
            h = self.act(self.norm(drive[:, t] + self.rec(h)))
        # Calling a module is typed Any (nn.Module.__call__): the annotation says what it is.
        out: Tensor = self.out(h)
        return out


@torch.no_grad()
def init(model: RNN, cell: str, scale: float) -> None:
    """Every weight's init std times ``scale``; biases zero."""
    scale_init(model, scale, GAINS["tanh" if cell == "tanh" else "relu"])
    # The readout feeds no nonlinearity: LeCun-scaled.
    nn.init.normal_(model.out.weight, std=scale / math.sqrt(model.out.in_features))
    if cell == "irnn":  # Le et al. 2015, section 4.1: identity recurrence, N(0, 0.001^2) elsewhere
        model.rec.weight.copy_(torch.eye(model.rec.in_features) * scale)
        nn.init.normal_(model.inp.weight, std=1e-3 * scale)
        nn.init.normal_(model.out.weight, std=1e-3 * scale)


def build(
    options: dict[str, Any], params: dict[str, Any], seed: int, device: torch.device
) -> Workload:
    opts = resolve(SCHEMA, options)
    cell, hidden, seq_len = opts["cell"], opts["hidden"], opts["seq_len"]
    torch.manual_seed(seed)
    model = RNN(hidden, cell, params["norm"])
    init(model, cell, params["init_scale"])
    val_x, val_y = adding_batch(VAL_SIZE, seq_len, torch.Generator().manual_seed(seed + 1))
    return Workload(
        model=model.to(device),
        train_batches=fresh_batches(params["batch_size"], seq_len, seed, device),
        val_batches=chunks(val_x.to(device), val_y.to(device)),
        loss_fn=nn.functional.mse_loss,
        task="regression",
        reference_loss=TRIVIAL_MSE,
    )
