"""The rescue ladder: which remedy a diverging trial gets at each rollback, as pure
decisions over numbers (no torch); :mod:`gradtune.rollback` applies them to a live trial.

When a verdict fires and the trial has a healthy checkpoint (one the rules judged a whole
window past, :class:`gradtune.healthy.Marks`), a rescue (``divergence.rescue``, off unless
``attempts > 0``) rolls the trial back to it and adds the next remedy of the ladder, in this
order (rungs left out of the spec are skipped):

1. ``lr``: the learning rate times ``lr_factor`` (the schedule's base rates, so warm-up and
   any schedule keep their shape). First, because the mid-training blow-ups a sweep finds
   (SGD with momentum past the edge of stability, Adam at a high peak LR) are a step size
   too large for the curvature the net has grown into; a smaller step is what OPT-175B's
   logbook did, and it keeps the trial's own data and clipping.
2. ``clip``: add gradient clipping (``clip.method`` at ``clip.threshold``; ``null``: twice
   the median pre-clip norm of the healthy steps before the checkpoint), or tighten the
   trial's own clipping of that method to the lower of the two (half its own when it is
   already lower). Second: it bounds a single bad step whatever its cause.
3. ``skip``: skip the ``skip_batches`` batches the diverging attempt saw last before its
   verdict (PaLM's remedy for a spike caused by data). Last: it only helps when the data
   is the cause, which a sweep's divergences rarely are.

Remedies accumulate: the second rollback keeps the lowered LR and adds clipping. Attempts
beyond the ladder repeat its first rung (the LR is lowered again). A verdict after the last
attempt ends the trial ``diverged``, as does a verdict without a healthy checkpoint.

Where to: the healthy checkpoint, unless the trial had not learned by then (its training
loss there not at least 5% below chance): a rollback keeps such a net where it was (the
benchmark's deep MLPs sat at chance loss, then blew up), so the trial goes back to its
initial state, and the rescue is a restart of the remedied configuration inside the trial
(:meth:`gradtune.rollback.Rescuer.target`).

Budget: a rescued trial still ends at training step ``training.steps``, like every other
trial, so its objective is comparable; the rolled-back steps do not count against that
budget. They are compute spent, reported as ``steps_computed`` (rolled-back steps
included), and bounded for rollbacks to a checkpoint: a healthy checkpoint lies less than
``window + checkpoint_every`` steps before the verdict, so such a trial computes at most
``attempts * (window + checkpoint_every - 1)`` steps more than its budget
(:func:`extra_steps_bound`); a rollback to the initial state costs the verdict's step.

NaN and inf: the ladder never looks at the diverging steps' numbers; the automatic clip
threshold is the median of the *finite* healthy norms (1.0 when there are none).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from statistics import median
from typing import Any

__all__ = ["RUNGS", "Remedies", "Rescue", "extra_steps_bound", "lineage_line", "rung", "rungs"]

RUNGS: tuple[str, ...] = ("lr", "clip", "skip")
TIGHTEN = 0.5  # a clip threshold already below the rescue's is halved
AUTO_CLIP = 2.0  # x the median healthy norm, for ``clip.threshold: null``


def rungs(cfg: Any) -> list[str]:
    """The ladder of a ``divergence.rescue`` spec: :data:`RUNGS` that it configures."""
    present = {"lr": cfg.lr_factor is not None, "clip": cfg.clip is not None, "skip": cfg.skip_batches > 0}
    return [r for r in RUNGS if present[r]]


def rung(attempt: int, cfg: Any) -> str:
    """The remedy of rollback number ``attempt`` (1-based); beyond the ladder its first rung."""
    ladder = rungs(cfg)
    if not ladder:
        raise ValueError(f"a rescue needs at least one remedy, but got {cfg!r}")
    return ladder[attempt - 1] if attempt <= len(ladder) else ladder[0]


def clip_threshold(cfg_clip: Any, own_method: str, own_threshold: float | None,
                   healthy_norms: Sequence[float]) -> float:
    """The threshold of the clipping a rescue adds or tightens (see the module docstring)."""
    base = cfg_clip.threshold
    if base is None:
        finite = [n for n in healthy_norms if math.isfinite(n) and n > 0]
        base = AUTO_CLIP * median(finite) if finite else 1.0
    if own_method == cfg_clip.method and own_threshold is not None:
        return float(min(base, own_threshold) if base < own_threshold else own_threshold * TIGHTEN)
    return float(base)


@dataclass(frozen=True)
class Remedies:
    """Every remedy applied so far, cumulative: the LR multiplier, the clipping (method,
    threshold) that replaces the trial's own (``None``: its own), and the batches skipped."""

    lr_scale: float = 1.0
    clip: tuple[str, float] | None = None
    skipped: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"lr_scale": self.lr_scale, "clip": list(self.clip) if self.clip else None,
                "skipped": self.skipped}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Remedies:
        clip = data.get("clip")
        return cls(float(data["lr_scale"]), (str(clip[0]), float(clip[1])) if clip else None,
                   int(data["skipped"]))


@dataclass(frozen=True)
class Rescue:
    """One rollback: the verdict's step and reason, the checkpoint's step, the remedy added
    (one line, e.g. ``lr x0.5``) and where the divergence started (the onset layer)."""

    attempt: int
    from_step: int
    to_step: int
    remedy: str
    reason: str
    onset_layer: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "from_step": self.from_step, "to_step": self.to_step,
                "remedy": self.remedy, "reason": self.reason, "onset_layer": self.onset_layer}


def next_remedies(done: Remedies, which: str, cfg: Any, own_clip: tuple[str, float | None],
                  healthy_norms: Sequence[float]) -> tuple[Remedies, str]:
    """``done`` plus the remedy ``which`` (a rung), and that remedy in one line.
    ``own_clip`` is the clipping the trial runs with now (method, threshold)."""
    if which == "lr":
        scale = done.lr_scale * cfg.lr_factor
        return replace(done, lr_scale=scale), f"lr x{scale:.3g}"
    if which == "clip":
        threshold = clip_threshold(cfg.clip, own_clip[0], own_clip[1], healthy_norms)
        return replace(done, clip=(cfg.clip.method, threshold)), f"clip {cfg.clip.method}@{threshold:.3g}"
    if which == "skip":
        return replace(done, skipped=done.skipped + cfg.skip_batches), f"skip {cfg.skip_batches} batches"
    raise ValueError(f"unknown rescue remedy {which!r}; known: {', '.join(RUNGS)}")


def skip_at(verdict_step: int, checkpoint_step: int, batches: int) -> tuple[int, int]:
    """Where a rolled-back trial skips ``batches`` batches: ``(step, count)``, so that the
    steps from ``step`` on get no batch the diverging attempt saw in its last ``batches``
    steps before the verdict. Never before the first step after the checkpoint."""
    count = max(0, min(batches, verdict_step - checkpoint_step))
    return verdict_step - count + 1, count


def extra_steps_bound(attempts: int, window: int, checkpoint_every: int) -> int:
    """The most steps a rescued trial computes beyond its budget (module docstring)."""
    return attempts * (window + checkpoint_every - 1)


def lineage_line(rescues: Sequence[Mapping[str, Any]]) -> str:
    """The rollbacks in one line, e.g. ``120->80 lr x0.5; 150->100 clip norm@1``."""
    return "; ".join(f"{r['from_step']}->{r['to_step']} {r['remedy']}" for r in rescues)


def parse(text: Any) -> list[dict[str, Any]]:
    """The rollbacks of a result's ``rescues`` (JSON text); ``[]`` for anything else."""
    if not isinstance(text, str):
        return []
    try:
        found = json.loads(text)
    except ValueError:
        return []
    return [r for r in found if isinstance(r, dict)] if isinstance(found, list) else []
