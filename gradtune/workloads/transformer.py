"""A tiny transformer encoder on synthetic sequence reversal.

The input is ``seq_len`` random tokens; the target at position i is the token at position
``seq_len - 1 - i`` (one prediction per position, cross-entropy over the vocabulary; chance
is ``ln(vocab)``). Data is seeded and made in memory: every training batch is fresh.

Each block is attention then an MLP, each a residual branch with the trial's ``norm``
(LayerNorm for ``layer``) placed as ``norm_position`` says: ``post`` normalises after the
residual sum (the original Transformer), ``pre`` normalises the branch input and adds a
final norm before the readout. Xiong et al. (2020): at initialisation Post-LN has large
gradients near the output, so without LR warmup it fails at learning rates where Pre-LN
trains. ``warmup_steps`` is this workload's LR warmup, used when the spec sets none
(``training.warmup_steps`` or ``search.space.warmup_steps`` win when non-zero).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from gradtune.errors import GradtuneError
from gradtune.workloads.base import Batch, GeneratedBatches, Workload, chunks
from gradtune.workloads.catalog import BUILTIN, resolve
from gradtune.workloads.layers import scale_init, token_norm_layer

SCHEMA = BUILTIN["transformer"].options
OPTIONS = BUILTIN["transformer"].defaults()
VAL_SIZE = 256


def reversal_batch(batch: int, seq_len: int, vocab: int, gen: torch.Generator) -> Batch:
    x = torch.randint(0, vocab, (batch, seq_len), generator=gen)
    return x, x.flip(1)


def fresh_batches(
    batch: int, seq_len: int, vocab: int, seed: int, device: torch.device
) -> GeneratedBatches:
    return GeneratedBatches(lambda gen: reversal_batch(batch, seq_len, vocab, gen), seed, device)


class Attention(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)  # bidirectional
        # Calling a module is typed Any (nn.Module.__call__): the annotation says what it is.
        projected: Tensor = self.proj(out.transpose(1, 2).reshape(b, t, d))
        return projected


class Block(nn.Module):
    def __init__(self, d_model: int, heads: int, norm: str, position: str) -> None:
        super().__init__()
        self.position = position
        self.attn = Attention(d_model, heads)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )
        self.norm1 = token_norm_layer(norm, d_model)
        self.norm2 = token_norm_layer(norm, d_model)

    def forward(self, x: Tensor) -> Tensor:
        if self.position == "pre":
            x = x + self.attn(self.norm1(x))
            out: Tensor = x + self.mlp(self.norm2(x))
        else:
            x = self.norm1(x + self.attn(x))
            out = self.norm2(x + self.mlp(x))
        return out


class Transformer(nn.Module):
    def __init__(
        self, vocab: int, seq_len: int, layers: int, d_model: int, heads: int, norm: str,
        position: str,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Parameter(torch.randn(seq_len, d_model))
        self.blocks = nn.Sequential(*(Block(d_model, heads, norm, position) for _ in range(layers)))
        self.final = token_norm_layer(norm, d_model) if position == "pre" else nn.Identity()
        self.head = nn.Linear(d_model, vocab)

    def forward(self, x: Tensor) -> Tensor:
        h = self.tokens(x) + self.positions[: x.shape[1]]
        logits: Tensor = self.head(self.final(self.blocks(h)))  # (batch, seq_len, vocab)
        return logits


def sequence_cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    return nn.functional.cross_entropy(output.flatten(0, 1), target.flatten())


def build(
    options: dict[str, Any], params: dict[str, Any], seed: int, device: torch.device
) -> Workload:
    opts = resolve(SCHEMA, options)
    d_model, heads, seq_len, vocab = opts["d_model"], opts["heads"], opts["seq_len"], opts["vocab"]
    if d_model % heads:
        raise GradtuneError(
            f"workload.options.heads: {heads} heads do not divide d_model={d_model}"
        )
    torch.manual_seed(seed)
    model = Transformer(
        vocab, seq_len, opts["layers"], d_model, heads, params["norm"], opts["norm_position"]
    )
    # LeCun fan-in init (std 1/sqrt(fan_in)) times init_scale on every linear layer;
    # embeddings stay N(0, 1).
    scale_init(model, params["init_scale"], gain=1.0)
    val_x, val_y = reversal_batch(VAL_SIZE, seq_len, vocab, torch.Generator().manual_seed(seed + 1))
    return Workload(
        model=model.to(device),
        train_batches=fresh_batches(params["batch_size"], seq_len, vocab, seed, device),
        val_batches=chunks(val_x.to(device), val_y.to(device)),
        loss_fn=sequence_cross_entropy,
        task="classification",
        reference_loss=math.log(vocab),
        warmup_steps=opts["warmup_steps"],
    )
