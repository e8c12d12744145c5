"""A data-parallel trial (``resources.workers: N`` > 1) inside Ray Tune: the Tune trial's
own process is rank 0, ranks 1 to N-1 are Ray actors started in the trial's placement
group (``sweep._trial_resources``: N bundles of ``resources.cpu``/``gpu``, packed).

Why not Ray Train's ``TorchTrainer`` inside the trial: with Train V2 (the default since
Ray 2.5x) a trainer started in a Tune trial reserves its workers outside the trial's
placement group, reports to Tune only through a callback that passes a checkpoint's path
as a metric, and keeps its own storage and retries; gradtune's checkpoints, healthy marks
and retries are Tune's. ``ray.train.torch.prepare_model`` needs a Train worker. Plain
actors and ``torch.distributed`` keep the trial one Tune trial: rank 0 reports to Tune and
saves Tune checkpoints exactly as a one-process trial does, and Tune reserves every rank.

Rendezvous: rank 0 opens a ``TCPStore`` on a free port (``127.0.0.1`` when every rank is on
its node, and gloo then binds to loopback; else the node's IP) and the actors join.

Every rank runs :func:`gradtune.trial.train` with its :class:`dataparallel.Rank`; only rank
0 reports. Before rank 0's last report goes to Tune (completed or a verdict), it waits for
the other ranks' ends and checks that every rank stopped at the same step with the same
verdict (:func:`agree`): a disagreement fails the trial instead of being reported.

Failures: a rank that raises or dies ends the trial: a watcher thread kills every rank
actor, which breaks rank 0 out of its collective (gloo: the peers' sockets close; NCCL:
after :data:`dataparallel.TIMEOUT_S`), and rank 0 raises that rank's error, so Tune retries
the trial from its last checkpoint. The checkpoint is rank 0's state, which is every
rank's (same weights, optimizer, clipper, monitor, data position and random generators:
each rank draws the same batches and keeps its slice); a retry gives it to every rank.
A trial that Tune stops (the scheduler) kills its rank actors on its way out.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import ray
import torch

from gradtune import dataparallel, outcome, trial
from gradtune.spec import SweepSpec

log = logging.getLogger(__name__)

END_TIMEOUT_S = 300  # how long rank 0 waits at its last step for the other ranks' ends


def ending(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What a rank's last report says about how it stopped: the step and the verdict."""
    return {outcome.STEP: metrics.get(outcome.STEP), outcome.DIVERGED: metrics.get(outcome.DIVERGED),
            "reason": metrics.get("divergence_reason"), "at": metrics.get("divergence_step")}


def agree(first: Mapping[str, Any], others: list[dict[str, Any]]) -> None:
    """Raise ``RuntimeError`` unless every rank's :func:`ending` is rank 0's (``first``)."""
    mine = ending(first)
    for i, theirs in enumerate(others, start=1):
        if theirs != mine:
            raise RuntimeError(f"the ranks of a data-parallel trial stopped apart: rank 0 {mine}, rank {i} {theirs}")


class RankLoop:
    """The actor of one rank >= 1."""

    def node(self) -> str:
        return str(ray.get_runtime_context().get_node_id())

    def train(self, spec_data: dict[str, Any], config: dict[str, Any], resume: dict[str, Any] | None,
              host: str, port: int, rank: int, world: int) -> dict[str, Any]:
        """This rank's loop; its reports go nowhere. Returns its :func:`ending`."""
        spec = SweepSpec.model_validate(spec_data)
        torch.set_num_threads(max(1, int(spec.resources.cpu)))
        device = trial.resolve_device(spec.training.device)
        me = dataparallel.join(rank, world, host, port, device)
        try:
            return ending(trial.train(spec, config, lambda metrics: None, resume=resume, rank=me))
        finally:
            dataparallel.leave()


class _Watch:
    """Waits on the rank actors' ends; the first that fails kills them all."""

    def __init__(self, futures: list[Any], actors: list[Any]) -> None:
        self.futures, self.actors = futures, actors
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="gradtune-ranks", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        pending = list(self.futures)
        while pending and not self.done.is_set():
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for ref in ready:
                try:
                    ray.get(ref)
                except BaseException as exc:
                    self.error = exc
                    kill(self.actors)
                    return

    def stop(self) -> None:
        self.done.set()


def kill(actors: list[Any]) -> None:
    for actor in actors:
        ray.kill(actor, no_restart=True)


def train(spec: SweepSpec, config: dict[str, Any], report: trial.Report, save: trial.Save | None = None,
          resume: dict[str, Any] | None = None, strict: bool = False) -> dict[str, Any]:
    """Rank 0 of a ``resources.workers``-rank trial, in the Tune trial's process; the
    other ranks in actors of the trial's placement group. ``report``, ``save`` and
    ``resume`` as in :func:`trial.train` (rank 0's). ``strict``: every rank checks at every
    step that the gradient norm agrees (a host sync; tests)."""
    world, r = spec.resources.workers, spec.resources
    remote = ray.remote(RankLoop).options(num_cpus=r.cpu, num_gpus=r.gpu)
    # Any: Ray's stubs type a class's handle loosely (ActorHandle | type).
    actors: list[Any] = [remote.remote() for _ in range(world - 1)]
    watch: _Watch | None = None
    try:
        here = ray.get_runtime_context().get_node_id()
        local = all(node == here for node in ray.get([a.node.remote() for a in actors]))
        # Ray leaves get_node_ip_address unannotated; it returns the node's IP as a str.
        host = dataparallel.LOOPBACK if local else str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]
        store = dataparallel.rendezvous(host, world)
        data = spec.model_dump(mode="json")
        futures = [a.train.remote(data, config, resume, host, store.port, i, world)
                   for i, a in enumerate(actors, start=1)]
        watch = _Watch(futures, actors)
        device = trial.resolve_device(spec.training.device)
        me = dataparallel.join(0, world, host, store.port, device, store=store, strict=strict)

        def report0(metrics: dict[str, Any]) -> None:
            if metrics.get(outcome.FINAL):  # every rank has stopped: at the same step?
                agree(metrics, ray.get(futures, timeout=END_TIMEOUT_S))
            report(metrics)

        return trial.train(spec, config, report0, save=save, resume=resume, rank=me)
    except Exception as exc:
        if watch is not None and watch.error is not None:  # the cause, not rank 0's broken collective
            raise watch.error from exc
        raise
    finally:
        if watch is not None:
            watch.stop()
        kill(actors)
        dataparallel.leave()
