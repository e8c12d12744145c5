"""Trial checkpoints: what a trial needs to go on exactly where it stopped, and which of its
checkpoints is the last healthy one.

What goes in (:func:`capture`): each part of the trial that keeps state, by name, through
its own ``state_dict()`` (the model, the optimizer, the LR schedule, the fp16 gradient
scaler, the clipper's statistics, the divergence judge with its monitor, the report window,
the data position, the checkpoint marks) or, for a plain dict (the latest evaluation), a
copy; a part without state (``None``, a clipper that keeps none) is left out. Then the random
number generators: torch's CPU generator and every CUDA device's, Python's ``random`` and
NumPy's global one. :func:`restore` puts it all back, the generators last, and returns the
checkpoint's step: the loop goes on at the next step and, on CPU, reports and ends exactly
as the uninterrupted trial would (tests/test_checkpoint.py checks it bit for bit).

The data position: a batch stream with its own ``state_dict`` (the built-in workloads') is
restored from it; any other (a plug-in's) is rebuilt from its seed and fast-forwarded by
drawing the batches it had given (:class:`Position`), which is exact when the stream's
randomness is its own (a seeded generator, as gradtune's batching of a ``Dataset`` has) and
costs the time to read those batches again.

Saving copies every tensor to the host (a sync point, as a report is) and writes one file
with ``torch.save``; loading uses ``torch.load(weights_only=True)``, tensors going back to
the device they were saved from. Plain functions over the trial's objects: no Ray here (the
trainable hands the directory to Tune, which keeps the last few in the sweep's storage).

NaN and inf: the trial takes a checkpoint only at a report step whose loss and gradient norm
are finite, and never at or after a verdict (an fp16 overflow step, whose gradient norm is
inf, is skipped too), so no checkpoint holds a state the divergence rules have condemned.
A checkpoint becomes *healthy* once the trial has run the rules' ``window`` steps past it
without a verdict (:class:`gradtune.healthy.Marks`): what a rescue would roll back to. Values inside the
state (a monitor's NaN, an AutoClip history with NaN for a non-finite norm) are saved as
they are.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch

STATE_FILE = "trial_state.pt"
VERSION = 1

T = TypeVar("T")


@runtime_checkable
class Stateful(Protocol):
    """Anything with torch's ``state_dict`` / ``load_state_dict`` pair."""

    def state_dict(self) -> Any: ...
    def load_state_dict(self, state: Any) -> Any: ...


def rng_state() -> dict[str, Any]:
    """The global random generators: torch CPU, CUDA (each device, when CUDA is in use),
    Python's ``random`` and NumPy's (when NumPy is installed)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    # Only where CUDA is in use: get_rng_state_all would start CUDA in a CPU trial.
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with torch and scikit-learn
        return state
    legacy = np.random.get_state(legacy=True)
    assert isinstance(legacy, tuple)  # legacy=True: ('MT19937', keys, pos, has_gauss, cached)
    name, keys, pos, has_gauss, cached = legacy
    state["numpy"] = (name, keys.tolist(), pos, has_gauss, cached)  # plain ints: weights_only loads them
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
    if "numpy" in state:
        import numpy as np

        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def capture(step: int, parts: Mapping[str, object], healthy_step: int = 0) -> dict[str, Any]:
    """The state of a trial after ``step``: each part's ``state_dict()`` (a dict part:
    copied; a part without ``state_dict``: left out) and the random generators.

    The state shares tensors with the live parts (``model.state_dict()`` does): write it
    (:func:`save`) before the next step changes them."""
    saved: dict[str, Any] = {}
    for name, part in parts.items():
        if isinstance(part, Stateful):
            saved[name] = part.state_dict()
        elif isinstance(part, dict):
            saved[name] = dict(part)
    return {"version": VERSION, "step": step, "healthy_step": healthy_step, "parts": saved,
            "rng": rng_state()}


def restore(state: Mapping[str, Any], parts: Mapping[str, object]) -> int:
    """Load ``state`` (from :func:`capture`) into ``parts``, then the random generators;
    returns the checkpoint's step. A part that keeps state but has none in the checkpoint is
    an error (the checkpoint is of another kind of trial)."""
    if state.get("version") != VERSION:
        raise ValueError(f"a trial checkpoint of version {VERSION} was expected, but got {state.get('version')!r}")
    saved = state["parts"]
    for name, part in parts.items():
        if not isinstance(part, (Stateful, dict)):
            continue
        if name not in saved:
            raise ValueError(f"the trial checkpoint has no state for {name!r}; it has {sorted(saved)}")
        if isinstance(part, Stateful):
            part.load_state_dict(saved[name])
        else:
            part.clear()
            part.update(saved[name])
    set_rng_state(state["rng"])
    return int(state["step"])


def save(state: Mapping[str, Any], directory: str | Path) -> Path:
    """Write ``state`` into ``directory`` (one file, :data:`STATE_FILE`); returns its path."""
    path = Path(directory) / STATE_FILE
    torch.save(dict(state), path)
    return path


def load(directory: str | Path) -> dict[str, Any]:
    """The state :func:`save` wrote into ``directory`` (tensors back on the device they were
    saved from; nothing but tensors and plain values is unpickled)."""
    state: dict[str, Any] = torch.load(Path(directory) / STATE_FILE, weights_only=True)
    return state


class Position(Iterator[T]):
    """A batch stream that knows its position: ``drawn`` counts the batches it gave.

    Its state is the source's own ``state_dict()`` when the source has one, else only the
    count; then :meth:`load_state_dict` fast-forwards a freshly built source by drawing that
    many batches (it cannot go back)."""

    def __init__(self, source: Iterator[T]) -> None:
        self.source = source
        self.drawn = 0

    def __next__(self) -> T:
        batch = next(self.source)
        self.drawn += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        own = self.source.state_dict() if isinstance(self.source, Stateful) else None
        return {"drawn": self.drawn, "source": own}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        drawn = int(state["drawn"])
        if state["source"] is not None and isinstance(self.source, Stateful):
            self.source.load_state_dict(state["source"])
        elif drawn < self.drawn:
            raise ValueError(f"cannot rewind a batch stream from batch {self.drawn} to {drawn}")
        else:
            for _ in range(drawn - self.drawn):
                next(self.source)
        self.drawn = drawn
