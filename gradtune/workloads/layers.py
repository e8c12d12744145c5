"""Building blocks the built-in workloads share: normalisation layers by name, activations
with their variance-preserving gains, and initialisation at a chosen scale (the
``norm`` and ``init_scale`` knobs). Plug-in models get only :func:`rescale_init`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn


def norm_layer(norm: str, width: int) -> nn.Module:
    """The normalisation layer after a linear layer of ``width`` features."""
    if norm == "none":
        return nn.Identity()
    if norm == "batch":
        return nn.BatchNorm1d(width)
    if norm == "layer":
        return nn.LayerNorm(width)
    if norm == "group":
        return nn.GroupNorm(_groups(width), width)
    if norm == "rms":
        return nn.RMSNorm(width)
    raise ValueError(f"unknown norm {norm!r}; known: none, batch, layer, group, rms.")


def _groups(width: int) -> int:
    # 32 groups as in Wu & He (2018) where the width allows, else the largest divisor <= 32.
    return max(g for g in range(1, min(32, width) + 1) if width % g == 0)


class Features(nn.Module):
    """Applies a feature-wise norm to ``(..., width)`` by folding the leading dims into the
    batch: for BatchNorm and GroupNorm on tokens, whose own layout is ``(N, C, *)``."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        # Calling a module is typed Any (nn.Module.__call__): the annotation says what it is.
        out: Tensor = self.norm(x.reshape(-1, x.shape[-1]))
        return out.reshape(x.shape)


def token_norm_layer(norm: str, width: int) -> nn.Module:
    """The norm for ``(batch, tokens, width)`` activations (statistics per token)."""
    layer = norm_layer(norm, width)
    return Features(layer) if norm in ("batch", "group") else layer


class ChannelRMSNorm(nn.Module):
    """RMSNorm over (C, H, W) with a per-channel gain: the conv analogue of LayerNorm as
    ``GroupNorm(1, C)``, without the mean subtraction."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        rms = x.pow(2).mean(dim=(1, 2, 3), keepdim=True).add(self.eps).rsqrt()
        return x * rms * self.weight


def conv_norm_layer(norm: str, channels: int) -> nn.Module:
    """The norm after a conv layer: batch, group (Wu & He), layer (over C, H, W) or rms."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(_groups(channels), channels)
    if norm == "layer":
        return nn.GroupNorm(1, channels)
    if norm == "rms":
        return ChannelRMSNorm(channels)
    return norm_layer(norm, channels)  # none, or the unknown-norm error


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}
# Variance-preserving gain per activation: He for ReLU, LeCun for tanh (sigma_w^2 = 2 or 1).
GAINS = {"relu": math.sqrt(2.0), "tanh": 1.0, "linear": 1.0}


def scale_init(model: nn.Module, init_scale: float, gain: float) -> None:
    """Re-initialise every Linear/Conv weight with std ``init_scale * gain / sqrt(fan_in)``
    and zero biases. ``init_scale=1`` is the critical (He/LeCun) initialisation."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            fan_in = module.weight[0].numel()
            nn.init.normal_(module.weight, std=init_scale * gain / math.sqrt(fan_in))
            if module.bias is not None:
                nn.init.zeros_(module.bias)


WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Bilinear)


@torch.no_grad()
def rescale_init(model: nn.Module, init_scale: float) -> None:
    """Multiply the initial weight of every Linear/Conv/Bilinear layer by ``init_scale``:
    a multiplier on whatever init the model chose (used for plug-in models)."""
    if init_scale == 1.0:
        return
    for module in model.modules():
        if isinstance(module, WEIGHT_LAYERS):
            module.weight.mul_(init_scale)
