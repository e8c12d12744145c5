"""A rescue inside a live trial: host-memory copies of its checkpoints, the rollback to the
healthy one, and the remedies of :mod:`gradtune.rescue` applied to the optimizer, the LR
schedule, the clipper and the batch stream.

Why host memory: Tune keeps the trial's checkpoints in the sweep's storage for retries, but
the trial itself needs the state at once, on the worker, and a benchmark runs without Tune.
At each checkpoint step (``training.checkpoint_every``) the trial's state
(:func:`gradtune.checkpoint.capture`) is copied to the host (:func:`to_host`, one copy of
the model and optimizer; a device sync, as a Tune checkpoint is) and kept while it may
still become or be the healthy one (:class:`gradtune.healthy.Marks`): at most
``ceil(window / checkpoint_every) + 1`` copies. Cost: docs/performance.md.

A rollback (:meth:`Rescuer.rollback`) restores every part of the trial from that copy
(weights, optimizer, schedule, scaler, clipper statistics, the divergence monitor, the
report window, the latest evaluation, the data position, the random generators) except
the rescue's own account, then applies the remedies so far. A plug-in batch stream without
``state_dict`` cannot go back: it goes on forward, so the rolled-back steps see new batches.

NaN and inf: a copy is only taken at a checkpoint step (finite loss and gradient norm, no
verdict), so no rollback lands on a state the rules condemned.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gradtune import checkpoint, clipping, outcome, rescue
from gradtune.rescue import Remedies, Rescue

log = logging.getLogger(__name__)

# A trial "has learned" by a checkpoint whose training loss is at most this share of the
# chance-level loss; else a rescue rolls back to the initial state (Rescuer.target).
LEARNED = 0.95


@dataclass(frozen=True)
class _Held:
    """A tensor copied to the host, with the device it came from."""

    tensor: torch.Tensor
    device: torch.device


def to_host(value: Any) -> Any:
    """``value`` (a captured state) with every tensor copied to host memory; the copy no
    longer shares anything with the live trial. :func:`back` undoes it."""
    if isinstance(value, torch.Tensor):
        return _Held(value.detach().to("cpu", copy=True), value.device)
    if isinstance(value, dict):
        return {k: to_host(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_host(v) for v in value)
    return value


def back(value: Any) -> Any:
    """A :func:`to_host` copy with its tensors on their devices again (fresh tensors)."""
    if isinstance(value, _Held):
        return value.tensor.to(value.device, copy=True)
    if isinstance(value, dict):
        return {k: back(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(back(v) for v in value)
    return value


def host_bytes(value: Any) -> int:
    """Bytes of tensor data in a :func:`to_host` copy."""
    if isinstance(value, _Held):
        return value.tensor.numel() * value.tensor.element_size()
    if isinstance(value, dict):
        return sum(host_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(host_bytes(v) for v in value)
    return 0


class Rescuer:
    """The rescue of one trial (``cfg``: the spec's ``divergence.rescue``): its copies of
    the checkpoints, the rollbacks so far, the remedies in force, the batches to skip and
    the steps computed (rolled-back ones included). Its ``state_dict`` goes into the
    trial's Tune checkpoints (the copies do not), so a retried trial keeps its remedies."""

    def __init__(self, cfg: Any, optimizer: torch.optim.Optimizer,
                 schedule: torch.optim.lr_scheduler.LambdaLR, own_clip: tuple[str, float | None]) -> None:
        self.cfg = cfg
        self.optimizer = optimizer
        self.schedule = schedule
        self.base_lrs = list(schedule.base_lrs)  # as proposed
        self.own_clip = own_clip
        self.copies: dict[int, Any] = {}  # checkpoint step -> to_host(capture)
        self.losses: dict[int, float] = {}  # checkpoint step -> the training loss reported there
        self.remedies = Remedies()
        self.rescues: list[Rescue] = []
        self.skips: dict[int, int] = {}  # step -> batches to skip before it
        self.computed = 0
        self.replay: str | None = None  # the first verdict's outcome.REPLAY text

    # ------------------------------------------------------------------ copies
    def keep(self, step: int, state: Mapping[str, Any], keep: Sequence[int], loss: float = math.nan) -> None:
        """Keep a host copy of ``state`` (captured after ``step``, with the training loss of
        the report at that step) and drop the copies whose steps are not in ``keep`` (the
        checkpoint marks); the copy at step 0 (the initial state) stays."""
        self.copies[step] = to_host(state)
        self.losses[step] = loss
        self.copies = {s: c for s, c in self.copies.items() if s in keep or s == 0}
        self.losses = {s: v for s, v in self.losses.items() if s in self.copies}

    def target(self, healthy_step: int, reference_loss: float) -> int | None:
        """Where a verdict rolls back to, ``None`` when it cannot be rescued (no attempts
        left, no healthy checkpoint): the healthy checkpoint, or the initial state (step 0)
        when the trial had not learned by then (its loss at the healthy checkpoint was not
        :data:`LEARNED` x the chance-level ``reference_loss`` or lower; NaN counts as not
        learned), since rolling
        back to a net that never trained keeps it there; the rescue is then a restart of
        the remedied configuration inside the trial."""
        if len(self.rescues) >= self.cfg.attempts or healthy_step not in self.copies or healthy_step <= 0:
            return None
        loss = self.losses.get(healthy_step, math.nan)
        learned = math.isfinite(reference_loss) and loss < LEARNED * reference_loss
        return healthy_step if learned or 0 not in self.copies else 0

    # ------------------------------------------------------------------ rollback
    def rollback(self, verdict_step: int, reason: str, healthy_step: int,
                 parts: MutableMapping[str, Any], onset_layer: str | None = None) -> Rescue:
        """Restore ``parts`` (the trial's state dict) from the copy at ``healthy_step``, add
        the next remedy and put the remedies in force on the optimizer and schedule; returns
        the rollback's record. The caller goes on at ``healthy_step + 1`` with the clipper
        :meth:`apply` gives (a new one when a remedy set the clipping)."""
        attempt = len(self.rescues) + 1
        restorable = {k: v for k, v in parts.items() if k != "rescue"}
        data = parts.get("data")
        if isinstance(data, checkpoint.Position) and not isinstance(data.source, checkpoint.Stateful):
            restorable.pop("data")  # cannot rewind a plug-in stream: it goes on forward
        checkpoint.restore(back(self.copies[healthy_step]), restorable)
        self.copies = {s: c for s, c in self.copies.items() if s <= healthy_step}
        healthy_norms = [row[2] for row in getattr(parts.get("last"), "rows", [])]
        which = rescue.rung(attempt, self.cfg)
        self.remedies, remedy = rescue.next_remedies(
            self.remedies, which, self.cfg, self.clip_now(), healthy_norms)
        if which == "skip":
            at, count = rescue.skip_at(verdict_step, healthy_step, self.cfg.skip_batches)
            if count:
                self.skips[at] = self.skips.get(at, 0) + count
        self.apply(None)
        record = Rescue(attempt, verdict_step, healthy_step, remedy, reason, onset_layer)
        self.rescues.append(record)
        log.info("trial rescued at step %d (%s): back to step %d, %s", verdict_step, reason,
                 healthy_step, remedy)
        return record

    def clip_now(self) -> tuple[str, float | None]:
        return self.remedies.clip or self.own_clip

    def apply(self, clipper: clipping.Clipper | None) -> clipping.Clipper | None:
        """Put the remedies in force on the optimizer and schedule; returns the clipper to
        use (a new one when a remedy set the clipping, else ``clipper``)."""
        scale = self.remedies.lr_scale
        schedule = self.schedule
        schedule.base_lrs = [b * scale for b in self.base_lrs]
        for group, base, lam in zip(self.optimizer.param_groups, schedule.base_lrs, schedule.lr_lambdas):
            group["initial_lr"] = base
            group["lr"] = base * lam(schedule.last_epoch)
        schedule._last_lr = [g["lr"] for g in self.optimizer.param_groups]  # what get_last_lr says
        if self.remedies.clip is None:
            return clipper
        return clipping.make(*self.remedies.clip)

    def keys(self) -> dict[str, Any]:
        """What every report of a trial with a rescue carries (:data:`outcome.RESCUE_ATTEMPTS`,
        :data:`outcome.STEPS_COMPUTED` and, after a rollback, :data:`outcome.RESCUES`)."""
        keys: dict[str, Any] = {outcome.RESCUE_ATTEMPTS: len(self.rescues), outcome.STEPS_COMPUTED: self.computed}
        if self.rescues:
            keys[outcome.RESCUES] = json.dumps([r.to_json() for r in self.rescues])
        return keys

    def skip(self, step: int) -> int:
        """How many batches to draw and drop before ``step``'s (the skip remedy)."""
        return self.skips.get(step, 0)

    # ------------------------------------------------------------------ Tune checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"remedies": self.remedies.to_json(), "rescues": [r.to_json() for r in self.rescues],
                "skips": [[s, n] for s, n in self.skips.items()], "computed": self.computed, "replay": self.replay}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.remedies = Remedies.from_json(state["remedies"])
        self.rescues = [Rescue(**r) for r in state["rescues"]]
        self.skips = {int(s): int(n) for s, n in state["skips"]}
        self.computed = int(state["computed"])
        self.replay = state.get("replay")
