"""A tiny decoder-only byte-level language model on the standard library's own source.

The corpus is the running interpreter's standard library: its top-level ``*.py`` files
(``sysconfig.get_paths()["stdlib"]``) in sorted order, concatenated and cut at
``corpus_kb`` KiB, so nothing is downloaded and the text is the same on every run of the
same Python. It is split into 2 KiB blocks, 10% of them (a seeded choice) held out for
validation. Training batches are random ``context + 1``-byte windows; the loss is
next-byte cross-entropy in nats (divide by ln 2 for bits per byte). Chance level, the
yardstick of the loss rules, is the entropy of the training bytes' unigram distribution.

The model is a Pre-LN decoder (the trial's ``norm`` in each block and before the readout;
``layer`` for LayerNorm), no biases, GELU MLPs, learned positions. Attention is computed by
hand, so every forward pass keeps, as tensors on the device, the largest pre-softmax
attention logit and the smallest per-head attention entropy (nats; mean over the batch and
the query positions that see more than one key). :meth:`TinyLM.signals` returns them as
``attn_logit_max`` and ``attn_entropy_min``: at high learning rates the logits grow
without bound and the entropy collapses to zero (Wortsman et al. 2023, "Small-scale proxies
for large-scale Transformer training instabilities"); ``qk_norm`` (LayerNorm on each head's
queries and keys) prevents it. ``z_loss`` adds ``z_loss * mean((log Z)^2)`` of the output
logits to the training loss (the paper's fix for output-logit divergence); validation
reports the cross-entropy alone.
"""

from __future__ import annotations

import functools
import math
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gradtune.errors import GradtuneError
from gradtune.outcome import ATTN_ENTROPY_MIN, ATTN_LOGIT_MAX
from gradtune.workloads.base import Batch, Workload, chunks
from gradtune.workloads.catalog import BUILTIN, resolve
from gradtune.workloads.layers import scale_init, token_norm_layer

SCHEMA = BUILTIN["tiny_lm"].options
OPTIONS = BUILTIN["tiny_lm"].defaults()
BLOCK = 2048  # bytes per unit of the train/val split
VAL_FRACTION = 0.1
VAL_WINDOWS = 256  # validation windows evaluated at each report


@functools.lru_cache(maxsize=4)
def corpus(limit: int, root: str | None = None) -> bytes:
    """The first ``limit`` bytes of the standard library's top-level ``*.py`` files, in
    sorted order (``root``: another folder of ``*.py`` files)."""
    folder = Path(root or sysconfig.get_paths()["stdlib"])
    data = bytearray()
    for path in sorted(folder.glob("*.py")):
        data += path.read_bytes()
        if len(data) >= limit:
            break
    if len(data) < min(limit, 16 * 1024):
        raise GradtuneError(
            f"workload tiny_lm: found only {len(data)} bytes of Python source under {folder}"
        )
    return bytes(data[:limit])


def split(data: bytes, seed: int) -> tuple[Tensor, Tensor]:
    """``(train, val)`` byte tensors: a seeded 10% of the ``BLOCK``-byte blocks is held out;
    both keep the blocks in corpus order."""
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    blocks = list(torch.split(tokens, BLOCK))
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[: max(1, round(VAL_FRACTION * len(blocks)))])
    val = [b for i, b in enumerate(blocks) if i in held]
    train = [b for i, b in enumerate(blocks) if i not in held]
    return torch.cat(train), torch.cat(val)


def unigram_entropy(tokens: Tensor) -> float:
    """Entropy (nats) of the byte distribution of ``tokens``: the loss of the best model
    that ignores context."""
    p = torch.bincount(tokens, minlength=256).double() / tokens.numel()
    return float(torch.special.entr(p).sum())


def windows(tokens: Tensor, starts: Tensor, context: int) -> Batch:
    w = tokens[starts[:, None] + torch.arange(context + 1)]
    return w[:, :-1], w[:, 1:]


def random_windows(
    tokens: Tensor, batch: int, context: int, seed: int, device: torch.device
) -> Iterator[Batch]:
    gen = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, tokens.numel() - context, (batch,), generator=gen)
        x, y = windows(tokens, starts, context)
        yield x.to(device), y.to(device)


class Attention(nn.Module):
    """Causal self-attention computed by hand, keeping ``stats``: this forward pass's
    largest pre-softmax logit and smallest per-head mean entropy (0-dim, detached)."""

    mask: Tensor  # (context, context), True where a query may see a key

    def __init__(self, width: int, heads: int, context: int, qk_norm: bool) -> None:
        super().__init__()
        self.heads = heads
        head = width // heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.q_norm = nn.LayerNorm(head, bias=False) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head, bias=False) if qk_norm else nn.Identity()
        self.register_buffer("mask", torch.ones(context, context, dtype=torch.bool).tril(),
                             persistent=False)
        self.stats = (torch.full((), math.nan), torch.full((), math.nan))

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        logits = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        logits = logits.masked_fill(~self.mask[:t, :t], -math.inf)
        probs = logits.softmax(dim=-1)
        with torch.no_grad():  # on the device, no sync: the trial reads them with the loss
            entropy = torch.special.entr(probs.float()).sum(dim=-1)  # (b, heads, t); 0 ln 0 = 0
            self.stats = (logits.amax().float(), entropy[..., 1:].mean(dim=(0, 2)).amin())
        projected: Tensor = self.proj((probs @ v).transpose(1, 2).reshape(b, t, d))
        return projected


class Block(nn.Module):
    def __init__(self, width: int, heads: int, context: int, qk_norm: bool, norm: str) -> None:
        super().__init__()
        self.norm1 = token_norm_layer(norm, width)
        self.attn = Attention(width, heads, context, qk_norm)
        self.norm2 = token_norm_layer(norm, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width, bias=False), nn.GELU(),
                                 nn.Linear(4 * width, width, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        out: Tensor = x + self.mlp(self.norm2(x))
        return out


class TinyLM(nn.Module):
    def __init__(self, depth: int, width: int, heads: int, context: int, qk_norm: bool,
                 norm: str) -> None:
        super().__init__()
        self.tokens = nn.Embedding(256, width)
        self.positions = nn.Parameter(torch.randn(context, width))
        self.blocks = nn.ModuleList(Block(width, heads, context, qk_norm, norm) for _ in range(depth))
        self.final = token_norm_layer(norm, width)
        self.head = nn.Linear(width, 256, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.tokens(x) + self.positions[: x.shape[1]]
        for block in self.blocks:
            h = block(h)
        logits: Tensor = self.head(self.final(h))  # (batch, context, 256)
        return logits

    def signals(self) -> dict[str, Tensor]:
        """The latest forward pass's ``attn_logit_max`` (over layers, heads, positions) and
        ``attn_entropy_min`` (over layers and heads), as 0-dim tensors: no host sync."""
        stats = [m.stats for m in self.modules() if isinstance(m, Attention)]
        return {
            ATTN_LOGIT_MAX: torch.stack([s[0] for s in stats]).amax(),
            ATTN_ENTROPY_MIN: torch.stack([s[1] for s in stats]).amin(),
        }


class LMLoss:
    """Next-byte cross-entropy; while the model trains, plus ``z_loss * mean((log Z)^2)``
    (evaluation reports the cross-entropy alone)."""

    def __init__(self, model: nn.Module, z_loss: float) -> None:
        self.model = model
        self.z_loss = z_loss

    def __call__(self, logits: Tensor, target: Tensor) -> Tensor:
        flat = logits.flatten(0, 1).float()
        loss = nn.functional.cross_entropy(flat, target.flatten())
        if self.z_loss and self.model.training:
            loss = loss + self.z_loss * flat.logsumexp(dim=-1).pow(2).mean()
        return loss


def build(
    options: dict[str, Any], params: dict[str, Any], seed: int, device: torch.device
) -> Workload:
    opts = resolve(SCHEMA, options)
    width, heads, context = opts["width"], opts["heads"], opts["context"]
    if width % heads:
        raise GradtuneError(f"workload.options.heads: {heads} heads do not divide width={width}")
    train, val = split(corpus(opts["corpus_kb"] * 1024), seed)
    if val.numel() <= context + 1:
        raise GradtuneError(
            f"workload.options.context: {context} bytes do not fit in the {val.numel()} "
            "held-out bytes; raise corpus_kb"
        )
    torch.manual_seed(seed)
    model = TinyLM(opts["depth"], width, heads, context, opts["qk_norm"], params["norm"])
    # LeCun fan-in init (std 1/sqrt(fan_in)) times init_scale on every linear layer;
    # embeddings stay N(0, 1).
    scale_init(model, params["init_scale"], gain=1.0)
    starts = torch.arange(0, val.numel() - context, context)[:VAL_WINDOWS]
    val_x, val_y = windows(val, starts, context)
    model = model.to(device)
    return Workload(
        model=model,
        train_batches=random_windows(train, params["batch_size"], context, seed, device),
        val_batches=chunks(val_x.to(device), val_y.to(device), size=128),
        loss_fn=LMLoss(model, opts["z_loss"]),
        task="classification",
        reference_loss=unigram_entropy(train),
        signals=model.signals,
    )
