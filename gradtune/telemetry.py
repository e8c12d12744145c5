"""Cheap gradient and update statistics, computed on the device and returned as 0-dim
tensors: no per-parameter ``.item()``, no host sync here.

The update ratio needs the weights before and after each optimizer step. Copying and
differencing a model's tensors one by one costs as much as a small model's forward pass
(measured: 1.4 ms of a 12 ms step), so :func:`flatten_` first makes the weights views of
one flat buffer: then the copy is one ``copy_`` and the statistic one ``torch.dist``. For
torch's SGD (the default optimizer) no copy is needed at all: its step is the learning rate
times a tensor it keeps (the gradient or the momentum buffer), whose norm is the step's.

NaN and inf propagate: a non-finite gradient or weight gives a non-finite statistic, which
the trial's divergence check then sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils import get_total_norm

from gradtune import onset


@torch.no_grad()
def flatten_(weights: Sequence[Tensor]) -> Tensor | None:
    """Move ``weights`` into one contiguous buffer, in place: each weight's ``.data``
    becomes a view of the returned flat tensor, with its values unchanged. Call it before
    the optimizer is made (so its state is allocated for the views). Returns ``None``, and
    changes nothing, when there are no weights or they differ in dtype or device."""
    if not weights or len({(w.dtype, w.device) for w in weights}) != 1:
        return None
    flat = torch.cat([w.detach().reshape(-1) for w in weights])
    offset = 0
    for w in weights:
        n = w.numel()
        w.data = flat[offset : offset + n].view_as(w)
        offset += n
    return flat


def sgd_direction(optimizer: torch.optim.Optimizer | None, weights: Sequence[Tensor]) -> bool:
    """True when ``optimizer`` is torch's SGD over exactly ``weights`` (float32/float64), in a
    form whose step is ``w -= lr * d``, with ``d`` the momentum buffer after the step (with
    momentum) or the gradient (without momentum and weight decay): then ``||dw|| = lr * ||d||``
    and :class:`UpdateRatio` needs no copy of the weights. Nesterov, ``maximize``, and weight
    decay without momentum add terms to ``d``; those, other optimizers, half-precision weights
    and an optimizer over other parameters are measured by copying."""
    if type(optimizer) is not torch.optim.SGD or not weights:
        return False
    for group in optimizer.param_groups:
        if group["nesterov"] or group["maximize"] or (not group["momentum"] and group["weight_decay"]):
            return False
    stepped = {id(p) for g in optimizer.param_groups for p in g["params"] if p.requires_grad}
    return stepped == {id(w) for w in weights} and all(w.dtype in (torch.float32, torch.float64) for w in weights)


class UpdateRatio:
    """``||w_after - w_before|| / ||w_before||`` over all ``weights`` for one optimizer step.

    Three ways, cheapest first:

    - ``optimizer`` given and :func:`sgd_direction` holds: ``||dw||`` is the step's learning
      rate times the norm of what SGD subtracts (its momentum buffers, or the gradients, whose
      norm after clipping ``after_step`` may be handed). No copy: one norm of the weights
      and at most one of the buffers a step, where the copy costs a write and two reads of
      the weights on top (measured in the trial loop: 2.0 ms of a 20 ms step on a 1.3M-weight
      MLP). It is the step SGD computes, so where ``lr * d`` is below the weights' rounding
      it can differ from what the subtraction left; in float32 at ratios of 1e-3 they agree
      to ~1e-4 (tests/test_telemetry.py).
    - ``flat``, the buffer :func:`flatten_` made of ``weights``: a copy before the step and a
      ``torch.dist`` after it.
    - otherwise the weights are copied and differenced tensor by tensor with foreach kernels.

    The copying ways keep one copy of the weights (allocated once). ``enabled=False`` skips
    everything and yields NaN, which the update-ratio rule ignores. Zero weights give inf or
    NaN; a non-finite gradient gives a non-finite ratio; a non-finite weight gives NaN when
    copying and 0 or NaN from SGD's step (the loss is non-finite then, which the trial acts on).
    """

    def __init__(self, weights: Sequence[Tensor], enabled: bool = True, flat: Tensor | None = None,
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        self.weights = list(weights)
        self.enabled = enabled and bool(self.weights)
        self.optimizer = optimizer if self.enabled and sgd_direction(optimizer, self.weights) else None
        self.flat = flat if self.enabled else None
        self.before: list[Tensor] = []
        if self.optimizer is None and self.enabled:
            self.before = [self.flat.clone()] if self.flat is not None else [w.detach().clone() for w in self.weights]
        self.weight_norm: Tensor | None = None
        self.lrs: list[Any] = []

    @torch.no_grad()
    def before_step(self) -> None:
        if not self.enabled:
            return
        if self.optimizer is not None:
            self.lrs = [g["lr"] for g in self.optimizer.param_groups]  # the rates this step uses
            self.weight_norm = (torch.linalg.vector_norm(self.flat) if self.flat is not None
                                else get_total_norm([w.detach() for w in self.weights], 2.0))
        elif self.flat is not None:
            self.before[0].copy_(self.flat)
            self.weight_norm = torch.linalg.vector_norm(self.before[0])
        else:
            torch._foreach_copy_(self.before, [w.detach() for w in self.weights])
            self.weight_norm = get_total_norm(self.before, 2.0)

    @torch.no_grad()
    def after_step(self, grad_norm: Tensor | None = None) -> Tensor:
        """The ratio of the step since :meth:`before_step`. ``grad_norm``: the global norm of
        the gradients the step used (after clipping), when known; used only by plain SGD
        (no momentum) with one parameter group, which otherwise takes the norm itself."""
        if not self.enabled or self.weight_norm is None:
            device = self.weights[0].device if self.weights else None
            return torch.full((), float("nan"), device=device)
        if self.optimizer is not None:
            return self._sgd_step_norm(grad_norm) / self.weight_norm
        if self.flat is not None:
            return torch.dist(self.flat, self.before[0]) / self.weight_norm
        deltas = torch._foreach_sub([w.detach() for w in self.weights], self.before)
        return get_total_norm(deltas, 2.0) / self.weight_norm

    def _sgd_step_norm(self, grad_norm: Tensor | None) -> Tensor:
        assert self.optimizer is not None
        groups = self.optimizer.param_groups
        if grad_norm is not None and len(groups) == 1 and not groups[0]["momentum"]:
            step: Tensor = self.lrs[0] * grad_norm
            return step
        squares = []
        for group, lr in zip(groups, self.lrs):
            # SGD steps only the weights that have a gradient this step; another's buffer,
            # left from an earlier step, does not move it.
            stepped = [p for p in group["params"] if p.grad is not None]
            if group["momentum"]:
                state = self.optimizer.state
                d = [state[p]["momentum_buffer"] for p in stepped
                     if p in state and state[p].get("momentum_buffer") is not None]
            else:
                d = [p.grad for p in stepped]
            if d:
                squares.append((lr * get_total_norm(d, 2.0)) ** 2)
        if not squares:
            return torch.zeros((), device=self.weights[0].device)
        total: Tensor = torch.stack(squares).sum().sqrt()
        return total


class LayerNorms:
    """The last ``size`` steps' per-parameter gradient and weight L2 norms, kept on the
    device in a ring buffer: :meth:`record` costs one foreach norm (gradients and weights)
    and one copy into the buffer, no host sync; :meth:`read` (at a verdict only) copies it to the host.

    Call :meth:`record` after the gradients are unscaled and before clipping, so the norms
    are the pre-clip ones, and the weights those the gradients were computed at. A
    parameter without a gradient counts 0. NaN and inf are kept as they are. Its state is
    part of the trial checkpoint (a few KB: ``size x 2 x parameters`` floats)."""

    def __init__(self, names: Sequence[str], params: Sequence[Tensor], size: int) -> None:
        self.names = list(names)
        self.params = list(params)
        self.size = max(1, size)
        device = self.params[0].device if self.params else None
        self.buffer = torch.zeros(self.size, 2, len(self.params), device=device)
        self.steps = [0] * self.size  # the step of each slot (host ints)
        self.count = 0  # records since the start (or the last forget)

    @torch.no_grad()
    def record(self, step: int) -> None:
        if not self.params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        norms = torch._foreach_norm(grads + [p.detach() for p in self.params])  # one call
        slot = self.count % self.size
        self.buffer[slot].copy_(torch.stack(norms).view(2, -1))
        self.steps[slot] = step
        self.count += 1

    def state_dict(self) -> dict[str, Any]:
        """The buffer (a copy) and which steps it holds: in the trial checkpoint, so a
        restored or rolled-back trial's verdict sees the steps before it."""
        return {"buffer": self.buffer.detach().clone(), "steps": list(self.steps), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.copy_(state["buffer"])
        self.steps = [int(s) for s in state["steps"]]
        self.count = int(state["count"])

    def where_it_started(self, verdict_step: int) -> dict[str, Any] | None:
        """The per-layer onset of a verdict (:func:`gradtune.onset.analyse`) from the buffer
        (its one host copy); ``None`` when it holds no step yet."""
        if not self.count or not self.params:
            return None
        steps, grads, weights = self.read()
        return onset.analyse(self.names, steps, grads, weights, verdict_step)

    def read(self) -> tuple[list[int], list[list[float]], list[list[float]]]:
        """``(steps, grad_norms, weight_norms)``: steps oldest first, norms ``[layer][step]``.
        The one host sync of this class."""
        n = min(self.count, self.size)
        order = [(self.count - n + i) % self.size for i in range(n)]
        if not order or not self.params:
            return [], [[] for _ in self.names], [[] for _ in self.names]
        rows = self.buffer[order].float().cpu()  # [step, 2, layer]
        return ([self.steps[i] for i in order], rows[:, 0, :].t().tolist(),
                rows[:, 1, :].t().tolist())
