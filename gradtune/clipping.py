"""Gradient clipping methods. Each clipper modifies ``p.grad`` in place and returns the
global L2 gradient norm *before* clipping and whether clipping changed the gradient, both
as 0-dim tensors on the gradients' device: nothing here forces a host sync.

``clip_threshold`` is each method's natural parameter:

=========  ==========================================================================
none       ignored
norm       max global L2 norm (``torch.nn.utils.clip_grad_norm_``)
value      max absolute element (``torch.nn.utils.clip_grad_value_``)
agc        lambda: unit-wise ``||G_i|| <= lambda * max(||W_i||, 1e-3)`` (Brock et al. 2021),
           on every parameter (the paper exempts the classifier; a clipper sees no layers)
autoclip   percentile (0, 100] of the history of pre-clip norms (Seetharaman et al. 2020)
zclip      z-score over an EMA of the norm; outliers are scaled to
           ``mean + z^2 std / z_t`` (Kumar et al. 2025, "adaptive scaling"), after 25 warm-up steps
=========  ==========================================================================

``autoclip`` and ``zclip`` keep state (the history of norms; the EMA), which a trial
checkpoint saves with ``state_dict()`` and restores with ``load_state_dict()``; the other
methods keep none.

NaN and inf: a non-finite gradient norm is returned as it is (the trial's divergence check
acts on it). What the clipper then leaves in the gradients (unchanged, or their finite part
scaled to 0 on an inf norm) does not matter: the trial stops, or under fp16 loss scaling the
step is skipped. ``autoclip`` and ``zclip`` keep non-finite norms out of their statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.nn.utils import clip_grad_value_, get_total_norm

Params = Sequence[Tensor]


class Clipper(Protocol):
    """A gradient clipper: ``clipper(params)`` clips the ``p.grad`` of ``params`` in place.

    Returns ``(norm, clipped)``: the global L2 gradient norm *before* clipping and whether
    clipping changed the gradient, both 0-dim tensors on the gradients' device (no host sync).

    NaN and inf: a non-finite norm is returned as it is (the trial's divergence check acts
    on it). What the clipper then leaves in the gradients (unchanged, or their finite part
    scaled to 0 on an inf norm) does not matter: the trial stops, or under fp16 loss scaling
    the step is skipped. A clipper that keeps statistics of past norms keeps non-finite
    norms out of them.
    """

    def __call__(self, params: Sequence[Tensor]) -> tuple[Tensor, Tensor]: ...


def _grads(params: Params) -> list[Tensor]:
    return [p.grad for p in params if p.grad is not None]


def _coef(norm: Tensor, limit: Tensor | float) -> Tensor:
    """What gradients of global norm ``norm`` are multiplied by to be at most ``limit``: 1 at
    or under the limit (``limit / (norm + 1e-6)`` alone would shrink a norm equal to the
    limit by a hair), so ``clipped`` means changed."""
    return torch.where(norm > limit, limit / (norm + 1e-6), torch.ones_like(norm))


def _scale_to(grads: list[Tensor], limit: Tensor | float, norm: Tensor) -> Tensor:
    """Scale ``grads`` so their global norm is at most ``limit``, without a host sync
    (``clip_grads_with_norm_`` would call ``float()`` on a tensor limit). Returns the factor
    (:func:`_coef`)."""
    coef = _coef(norm, limit)
    if grads:
        torch._foreach_mul_(grads, coef)
    return coef


def _no(norm: Tensor) -> Tensor:
    return torch.zeros((), dtype=torch.bool, device=norm.device)


class NoClip:
    def __call__(self, params: Params) -> tuple[Tensor, Tensor]:
        norm = get_total_norm(_grads(params), 2.0)
        self.after = norm  # see norm_after
        return norm, _no(norm)


class NormClip:
    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def __call__(self, params: Params) -> tuple[Tensor, Tensor]:
        grads = _grads(params)
        norm = get_total_norm(grads, 2.0)
        self.after = norm * _scale_to(grads, self.threshold, norm)  # see norm_after
        return norm, norm > self.threshold


class ValueClip:
    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def __call__(self, params: Params) -> tuple[Tensor, Tensor]:
        grads = _grads(params)
        norm = get_total_norm(grads, 2.0)
        largest = get_total_norm(grads, float("inf"))
        clip_grad_value_(params, self.threshold)
        return norm, largest > self.threshold


def unitwise_norm(x: Tensor) -> Tensor:
    """L2 norm per output unit: over all dims but the first; a vector or scalar is one unit."""
    # torch.linalg's functions are typed Any: the annotation states what they return.
    if x.ndim <= 1:
        norm: Tensor = torch.linalg.vector_norm(x)
    else:
        norm = torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)
    return norm


class AdaptiveClip:
    """AGC: scale each unit's gradient so that ``||G_i|| / max(||W_i||, eps) <= lambda``."""

    def __init__(self, threshold: float, eps: float = 1e-3) -> None:
        self.threshold = threshold
        self.eps = eps

    def __call__(self, params: Params) -> tuple[Tensor, Tensor]:
        with_grad = [p for p in params if p.grad is not None]
        norm = get_total_norm(_grads(with_grad), 2.0)
        clipped = _no(norm)
        for p in with_grad:
            g = p.grad
            assert g is not None
            max_norm = unitwise_norm(p.detach()).clamp_min(self.eps) * self.threshold
            g_norm = unitwise_norm(g)
            over = g_norm > max_norm
            scale = torch.where(over, max_norm / g_norm.clamp_min(1e-6), torch.ones_like(g_norm))
            g.mul_(scale)
            clipped = clipped | over.any()
        return norm, clipped


class AutoClip:
    """Clip the global norm at the ``threshold``-th percentile of all pre-clip norms so far
    (the current one included). Non-finite norms are left out of the history."""

    def __init__(self, threshold: float) -> None:
        if not 0 < threshold <= 100:
            raise ValueError(f"autoclip needs a percentile in (0, 100], but got {threshold=}.")
        self.q = threshold / 100.0
        self.history: list[Tensor] = []

    def __call__(self, params: Params) -> tuple[Tensor, Tensor]:
        grads = _grads(params)
        norm = get_total_norm(grads, 2.0)
        self.history.append(torch.where(torch.isfinite(norm), norm, torch.nan))
        limit = torch.nanquantile(torch.stack(self.history), self.q)
        # All-NaN history (every step so far non-finite): no finite limit, leave grads alone.
        limit = torch.where(torch.isnan(limit), torch.inf, limit)
        _scale_to(grads, limit, norm)
        return norm, norm > limit

    def state_dict(self) -> dict[str, Any]:
        """The history of norms, one tensor (NaN where a norm was not finite)."""
        history = torch.stack(self.history) if self.history else torch.zeros(0)
        return {"history": history.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state["history"].unbind())


class ZClip:
    """Z-score clipping over an EMA of the gradient norm (mean and variance).

    The first ``warmup`` finite norms initialise the statistics without clipping; after
    that, a norm whose z-score exceeds ``threshold`` is scaled down to
    ``mean + threshold**2 * std / z`` and the EMA is updated with the clipped norm.
    """

    def __init__(self, threshold: float, alpha: float = 0.97, warmup: int = 25) -> None:
        self.z = threshold
        self.alpha = alpha
        self.warmup = warmup
        self.buffer: list[Tensor] = []
        self.mean: Tensor | None = None
        self.var: Tensor | None = None

    def __call__(self, params: Params) -> tuple[Tensor, Tensor]:
        grads = _grads(params)
        norm = get_total_norm(grads, 2.0)
        if self.mean is None or self.var is None:
            self.buffer.append(norm)
            if len(self.buffer) >= self.warmup:
                warm = torch.stack(self.buffer)
                warm = warm[torch.isfinite(warm)]  # a sync, once, at the end of warm-up
                self.mean = warm.mean() if warm.numel() else torch.zeros_like(norm)
                self.var = warm.var(unbiased=False) if warm.numel() else torch.zeros_like(norm)
            return norm, _no(norm)
        std = self.var.sqrt()
        z = (norm - self.mean) / (std + 1e-6)
        over = z > self.z
        limit = torch.where(over, self.mean + self.z**2 * std / z.clamp_min(1e-6), torch.inf)
        _scale_to(grads, limit, norm)
        effective = torch.where(over, limit, norm)
        effective = torch.where(torch.isfinite(effective), effective, self.mean)
        self.mean = self.alpha * self.mean + (1 - self.alpha) * effective
        self.var = self.alpha * self.var + (1 - self.alpha) * (effective - self.mean) ** 2
        return norm, over

    def state_dict(self) -> dict[str, Any]:
        """The warm-up norms so far and the EMA mean and variance (``None`` in warm-up)."""
        def copy(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().clone()
        buffer = torch.stack(self.buffer).detach().clone() if self.buffer else torch.zeros(0)
        return {"buffer": buffer, "mean": copy(self.mean), "var": copy(self.var)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer = list(state["buffer"].unbind())
        self.mean, self.var = state["mean"], state["var"]


def norm_after(clipper: Clipper) -> Tensor | None:
    """The gradients' global norm after ``clipper``'s last call, where it follows from the
    pre-clip norm (no clipping; norm clipping at a fixed threshold: both keep it, as
    ``after``), else ``None``. A non-finite pre-clip norm gives a non-finite one."""
    return clipper.after if isinstance(clipper, (NoClip, NormClip)) else None


# The clip methods that take a threshold, by name, in the order error messages list them;
# ``none`` (no clipping, no threshold) is the one other method.
CLIPPERS: dict[str, Callable[[float], Clipper]] = {
    "norm": NormClip,
    "value": ValueClip,
    "agc": AdaptiveClip,
    "autoclip": AutoClip,
    "zclip": ZClip,
}


def make(method: str, threshold: float | None = None) -> Clipper:
    """The clipper for ``method``; raises ``ValueError`` for an unknown method or a
    missing/non-positive threshold."""
    if method == "none":
        return NoClip()
    if threshold is None or not threshold > 0:
        raise ValueError(f"clip method {method!r} needs clip_threshold > 0, but got {threshold=}.")
    if method not in CLIPPERS:
        raise ValueError(f"unknown clip method {method!r}; known: none, {', '.join(CLIPPERS)}.")
    return CLIPPERS[method](threshold)
