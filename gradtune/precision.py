"""Mixed precision for the trial loop: autocast plus, for fp16, a gradient scaler.

Clipping and the gradient telemetry must see the true gradients, so :meth:`Precision.unscale`
runs before them (``GradScaler.unscale_``), as PyTorch's AMP recipe prescribes.

NaN and inf under fp16: an inf/NaN gradient after unscaling is the scaler's overflow signal,
not divergence; the scaler skips that optimizer step and lowers its scale. :meth:`overflowed`
says so for the step, so the trial leaves it out of the divergence rules. A run that
overflows on every step is caught by the trial's consecutive-overflow limit.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    def __init__(self, precision: str, device: torch.device) -> None:
        self.dtype = DTYPES.get(precision)
        self.device = device
        self.scaler = (
            torch.amp.GradScaler(device.type) if precision == "fp16" else None
        )

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self.dtype):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)  # skipped when the unscaled gradients are not finite
            self.scaler.update()

    def overflowed(self, grad_norm: float) -> bool:
        """True when fp16 loss scaling overflowed this step (the step was skipped)."""
        return self.scaler is not None and not math.isfinite(grad_norm)
