"""One configuration, N training seeds, one trial: the seeds' loops run in lockstep.

With ``search.seeds: N`` (> 1) a trial trains seeds ``training.seed + i`` for ``i < N``,
each through the unchanged :func:`gradtune.trial.train`, and reports what
:func:`gradtune.seeds.aggregate` makes of each round: every live seed runs to its next
report, then the trial reports once. So Tune, the scheduler and the searcher see one trial
whose steps advance as one seed's do, and MLflow keeps one child run per configuration.

How the seeds share the trial: each seed's loop runs in a thread of its own, but only one
runs at a time; a seed hands over at each report (a baton), keeping the global random
generators of its own across the hand-over, so seed ``i`` trains exactly as a one-seed
trial with ``training.seed + i`` would (tests/test_seeds.py checks it on CPU). The seeds
take turns on the trial's CPUs or GPU share: N seeds cost N times one seed's compute, with
no extra resources reserved and no processes started. With ``resources.parallel_seeds``
(and room in the cluster) seeds 1 to N-1 run in Ray actors instead
(:class:`gradtune.seedactor.RemoteSeed`, passed as ``remote``), each a report ahead at
most, while this process trains seed 0: the same reports, sooner where cores are free. A
seed's divergence verdict ends that seed's loop at once (no compute after it) while the
others go on.

Checkpoints: when every live seed reached a checkpoint step (each through
:func:`trial.train`'s own ``save``), the trial saves one state holding each live seed's
state and the last report of each ended seed; a retried trial goes on from it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from gradtune import checkpoint, outcome, seeds, trial
from gradtune.spec import SweepSpec

log = logging.getLogger(__name__)

KIND = "seeds"  # the kind of a multi-seed trial's checkpoint state
TrainFn = Callable[..., dict[str, Any]]  # trial.train's signature


class Runner(Protocol):
    """One seed's loop as the trial drives it: :class:`_Seed` (a thread of this process) or
    ``seedactor.RemoteSeed`` (a Ray actor, in parallel)."""

    index: int
    state: dict[str, Any] | None
    ended: bool

    def start(self) -> None: ...
    def advance(self) -> dict[str, Any] | None: ...
    def cancel(self) -> None: ...


MakeRunner = Callable[[int, SweepSpec, dict[str, Any], TrainFn, bool, "dict[str, Any] | None"], Runner]


class _Cancelled(BaseException):
    """Unwinds a waiting seed's loop when the trial ends before it (a stop, an error)."""


class _Seed:
    """One seed's training loop in a thread that runs only while it holds the baton:
    :meth:`advance` runs it to its next report (or its end) and waits for that."""

    def __init__(self, index: int, spec: SweepSpec, config: dict[str, Any], train_fn: TrainFn,
                 saving: bool, resume: dict[str, Any] | None) -> None:
        self.index = index
        self.report: dict[str, Any] | None = None
        self.state: dict[str, Any] | None = None  # set when the report carries a checkpoint
        self.ended = False
        self.cancelled = False
        self.error: BaseException | None = None
        self._go = threading.Semaphore(0)
        self._back = threading.Semaphore(0)
        self._rng: dict[str, Any] = {}
        self._args = (spec, config, train_fn, saving, resume)
        self.thread = threading.Thread(target=self._run, name=f"gradtune-seed{index}", daemon=True)

    def _run(self) -> None:
        spec, config, train_fn, saving, resume = self._args
        self._go.acquire()
        try:
            if not self.cancelled:
                train_fn(spec, config, self._report, save=self._save if saving else None, resume=resume)
        except _Cancelled:
            pass
        except BaseException as exc:  # handed to the trial's thread, which raises it
            self.error = exc
        finally:
            self.ended = True
            self._back.release()

    def _report(self, metrics: dict[str, Any]) -> None:
        self._pause(metrics, None)

    def _save(self, metrics: dict[str, Any], state: dict[str, Any]) -> None:
        # The state shares tensors with the loop, which waits here until it is written.
        self._pause(metrics, state)

    def _pause(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        self.report, self.state = dict(metrics), state
        self._rng = checkpoint.rng_state()  # this seed's generators, kept while others run
        self._back.release()
        self._go.acquire()
        if self.cancelled:
            raise _Cancelled
        checkpoint.set_rng_state(self._rng)

    def start(self) -> None:
        self.thread.start()

    def advance(self) -> dict[str, Any] | None:
        """Run the seed to its next report and return it; ``None`` when the loop ended
        without another. A seed's exception is raised here."""
        self.report = self.state = None
        self._go.release()
        self._back.acquire()
        if self.error is not None:
            raise self.error
        return None if self.ended else self.report

    def cancel(self) -> None:
        self.cancelled = True
        self._go.release()
        if self.thread.ident is not None:  # started
            self.thread.join()


def seed_spec(spec: SweepSpec, index: int) -> SweepSpec:
    """``spec`` for seed ``index``: ``training.seed + index``."""
    training = spec.training.model_copy(update={"seed": spec.training.seed + index})
    return spec.model_copy(update={"training": training})


def train(spec: SweepSpec, config: dict[str, Any], report: trial.Report, save: trial.Save | None = None,
          resume: Mapping[str, Any] | None = None, train_fn: TrainFn = trial.train,
          remote: MakeRunner | None = None) -> dict[str, Any]:
    """Train ``config`` with ``spec.search.seeds`` seeds in lockstep (the module
    docstring); ``report``, ``save`` and ``resume`` as in :func:`trial.train`, with the
    aggregated reports (:func:`seeds.aggregate`) and a checkpoint state of all the seeds
    (``resume``: one that this function saved). Returns the last report.

    ``remote`` (``seedactor.RemoteSeed``) runs seeds 1 to N-1 in parallel, each in a
    process of its own, while this one trains seed 0; the reports are the same."""
    n = spec.search.seeds
    finals: dict[int, dict[str, Any]] = {}
    states: dict[int, dict[str, Any]] = {}
    if resume is not None:
        if resume.get("kind") != KIND:
            raise ValueError(f"a checkpoint of a {n}-seed trial was expected, but got one of one seed")
        finals = {int(i): dict(r) for i, r in resume["ended"].items()}
        states = {int(i): s for i, s in resume["seeds"].items()}
    runners: list[Runner] = []
    last: dict[str, Any] = {}
    s = spec.search
    try:
        for i in range(n):
            if i not in finals:
                make: MakeRunner = _Seed if remote is None or i == 0 else remote
                runners.append(make(i, seed_spec(spec, i), config, train_fn, save is not None, states.get(i)))
        for runner in runners:
            runner.start()
        live = list(runners)
        while live:
            round_: dict[int, dict[str, Any]] = {}
            saved: dict[int, dict[str, Any]] = {}
            for runner in live:
                got = runner.advance()
                if got is None:
                    continue
                round_[runner.index] = got
                if runner.state is not None:
                    saved[runner.index] = runner.state
                if got.get(outcome.FINAL):  # its last report: let its loop return
                    finals[runner.index] = got
                    runner.advance()
            live = [r for r in live if not r.ended]
            if not round_:
                break
            last = seeds.aggregate(round_, finals, n, s.metric, s.mode, s.seed_aggregate)
            if save is not None and live and all(r.index in saved for r in live):
                save(last, _state(last, saved, finals))
            else:
                report(last)
    finally:
        for runner in runners:
            runner.cancel()
    return last


def _state(report: Mapping[str, Any], saved: Mapping[int, Mapping[str, Any]],
           finals: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """The trial's checkpoint state: each live seed's, each ended seed's last report."""
    return {
        "kind": KIND, "step": report[outcome.STEP],
        "healthy_step": min(int(s["healthy_step"]) for s in saved.values()),
        "seeds": {str(i): dict(s) for i, s in saved.items()},
        "ended": {str(i): dict(r) for i, r in finals.items()},
    }
