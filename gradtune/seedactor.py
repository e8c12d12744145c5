"""A seed of a multi-seed trial in a Ray actor of its own, so the seeds train in parallel
(:mod:`gradtune.multiseed`; the sweep chooses it when the cluster has room, see
``sweep.parallel_seeds``).

The actor runs :func:`gradtune.trial.train` in a thread and hands its reports over a queue
of one: it computes its next report while the trial waits on the other seeds, and no
further. A process of its own keeps the seed's random generators its own, so its numbers
are those of a one-seed trial with the same seed (as in the lockstep mode). A checkpoint's
state is serialised before the loop goes on (it shares tensors with the model). The actor
is started in the trial's placement group (Tune schedules a trial's child actors there),
one bundle per seed; the trial's own process trains seed 0.
"""

from __future__ import annotations

import io
import queue
import threading
from typing import Any

import ray
import torch

from gradtune import trial
from gradtune.spec import SweepSpec


class SeedLoop:
    """The actor: one seed's loop, started at construction."""

    def __init__(self, spec_data: dict[str, Any], config: dict[str, Any], saving: bool,
                 resume: dict[str, Any] | None) -> None:
        spec = SweepSpec.model_validate(spec_data)
        torch.set_num_threads(max(1, int(spec.resources.cpu)))
        self.queue: queue.Queue[tuple[str, Any, bytes | None]] = queue.Queue(maxsize=1)
        self.thread = threading.Thread(target=self._run, args=(spec, config, saving, resume), daemon=True)
        self.thread.start()

    def _run(self, spec: SweepSpec, config: dict[str, Any], saving: bool, resume: dict[str, Any] | None) -> None:
        try:
            trial.train(spec, config, lambda m: self.queue.put(("report", m, None)),
                        save=self._save if saving else None, resume=resume)
        except BaseException as exc:  # raised on the trial's side by next()
            self.queue.put(("error", exc, None))
        else:
            self.queue.put(("end", None, None))

    def _save(self, metrics: dict[str, Any], state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(dict(state), buffer)  # a copy, before the next step changes the tensors
        self.queue.put(("report", metrics, buffer.getvalue()))

    def next(self) -> tuple[str, Any, bytes | None]:
        """The loop's next event: ``("report", metrics, state bytes or None)``, ``("end",
        None, None)`` or ``("error", exception, None)``."""
        return self.queue.get()


class RemoteSeed:
    """The :class:`gradtune.multiseed` runner of one seed in a :class:`SeedLoop` actor."""

    def __init__(self, index: int, spec: SweepSpec, config: dict[str, Any], train_fn: Any,
                 saving: bool, resume: dict[str, Any] | None) -> None:
        self.index = index
        self.report: dict[str, Any] | None = None
        self.state: dict[str, Any] | None = None
        self.ended = False
        r = spec.resources
        actor = ray.remote(SeedLoop).options(num_cpus=r.cpu, num_gpus=r.gpu, max_concurrency=2)
        # Any: Ray's stubs type a class's handle loosely (ActorHandle | type).
        self.actor: Any = actor.remote(spec.model_dump(mode="json"), config, saving, resume)

    def start(self) -> None:
        """Already started (the actor trains from its construction)."""

    def advance(self) -> dict[str, Any] | None:
        kind, value, state = ray.get(self.actor.next.remote())
        self.report, self.state = None, None
        if kind == "error":
            raise value
        if kind == "end":
            self.ended = True
            return None
        self.report = value
        if state is not None:
            self.state = torch.load(io.BytesIO(state), weights_only=True)
        return self.report

    def cancel(self) -> None:
        ray.kill(self.actor)
