"""Which of a trial's checkpoints is healthy, and how many to keep: pure bookkeeping of
steps (no torch), read by the trial loop and by the sweep's Tune ``CheckpointConfig``.

A checkpoint is taken only at a step with finite loss and gradient norm (see
:mod:`gradtune.checkpoint`); it becomes *healthy* once the divergence rules have judged a
whole window after it without a verdict: what a rescue would roll back to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class Marks:
    """The steps of a trial's checkpoints and which one is healthy: the last one taken at
    least ``window`` steps (the divergence rules' window) before the current step, so the
    rules have judged a whole window after it without a verdict. Steps older than that one
    are forgotten (their checkpoints can go). ``0`` means no healthy checkpoint yet."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.steps: list[int] = []

    def add(self, step: int) -> None:
        """A checkpoint was taken after ``step`` (a step with finite loss and gradient norm)."""
        self.steps.append(step)
        healthy = self.healthy(step)
        self.steps = [s for s in self.steps if s >= healthy]

    def healthy(self, step: int) -> int:
        """The step of the last healthy checkpoint at ``step``, else 0."""
        return max((s for s in self.steps if s <= step - self.window), default=0)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = [int(s) for s in state["steps"]]


def keep(every: int | None, window: int) -> int | None:
    """How many checkpoints a trial must keep so that its last healthy one is among them:
    the newest and those less than ``window`` steps before it, one every ``every`` steps.
    ``None`` (keep all) when checkpoints are off."""
    if not every:
        return None
    return math.ceil(window / every) + 1
