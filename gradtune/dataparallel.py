"""One rank of a data-parallel trial (``resources.workers`` > 1): what the training loop
does differently when it is one of N processes training one model together.

:func:`gradtune.trial.train` takes a :class:`Rank` and asks it three things:

- :meth:`Rank.wrap`: the model in ``DistributedDataParallel`` (gloo on CPU, NCCL on GPU).
  Its backward all-reduces (averages) the gradients, so after ``backward`` every rank
  holds the same gradient: clipping and the pre-clip norm act on that all-reduced
  gradient, and the norm is the same on every rank (``strict`` checks it at every step).
- :meth:`Rank.shard`: this rank's part of the step's batch. Every rank draws the same
  batch of ``batch_size`` from the same seeded stream and keeps its contiguous
  ``1/N`` slice; so the global batch is ``batch_size`` whatever N is, a configuration
  means the same training with 1 or N workers (up to float summation order and
  BatchNorm's per-rank statistics), and every rank's data position, and its random
  generators, are rank 0's (a checkpoint of rank 0 is the whole job's state).
- :meth:`Rank.reduce`: the step's small statistics vector, gathered from every rank in
  one collective and combined the same way on every rank (:func:`combine`), before the
  loop's one host sync. The rules then see the same numbers on every rank, so every rank
  reaches the same verdict at the same step and stops there: no rank is left waiting in
  a collective.

NaN and inf: a non-finite gradient on any rank is non-finite on every rank after the
all-reduce; a non-finite loss on any rank makes the mean loss non-finite; ``max`` and
``min`` columns propagate NaN (``torch.amax``/``amin``). So a non-finite value anywhere is
a verdict everywhere, at the same step.

Ray is not needed here: :mod:`gradtune.rankactor` starts the ranks in Ray actors and
calls :func:`join`; the tests run two ranks as plain processes.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

# torch's stubs leave TCPStore out of torch.distributed's exports (it is public API there).
from torch.distributed import TCPStore  # type: ignore[attr-defined]
from torch.nn.parallel import DistributedDataParallel

LOOPBACK = "127.0.0.1"
TIMEOUT_S = 600  # a collective that waits longer raises (a rank that hangs without dying)

# How each column of the step's statistics is combined over the ranks: the loss is each
# rank's mean over its shard, so their mean is the global batch's mean loss. The gradient
# norm, the clip flag and the update ratio are the same on every rank after DDP's
# all-reduce: rank 0's is taken. A workload's own signals by their names' suffix.
SAME = ("grad_norm", "clipped", "update_ratio")


def rule(name: str) -> str:
    """``mean``, ``max``, ``min`` or ``same`` (rank 0's) for the statistic ``name``."""
    if name in SAME:
        return "same"
    if name.endswith("_max"):
        return "max"
    if name.endswith("_min"):
        return "min"
    return "mean"


def combine(rows: Tensor, rules: Sequence[str]) -> Tensor:
    """``rows`` (one per rank, one column per statistic) -> one value per column, by
    ``rules`` (:func:`rule`). Pure: every rank holds the same ``rows`` after the gather, so
    every rank gets the same values, bit for bit. NaN propagates in every rule (``same``:
    rank 0's value, which after DDP's all-reduce is every rank's)."""
    if rows.ndim != 2 or rows.shape[1] != len(rules):
        raise ValueError(f"rows must be ranks x {len(rules)}, but got {tuple(rows.shape)}")
    picks = {"mean": rows.mean(0), "max": rows.amax(0), "min": rows.amin(0), "same": rows[0]}
    return torch.stack([picks[how][j] for j, how in enumerate(rules)])


def disagreement(rows: Tensor, rules: Sequence[str]) -> int | None:
    """The first ``same`` column whose value differs between ranks (NaN equals NaN), or
    ``None``. A host sync: ``strict`` mode only."""
    for j, how in enumerate(rules):
        if how == "same":
            col = rows[:, j]
            equal = (col == col[0]) | (torch.isnan(col) & torch.isnan(col[0]))
            if not bool(equal.all()):
                return j
    return None


def shard(batch: Any, rank: int, world: int) -> Any:
    """This rank's contiguous slice (dim 0) of every tensor in ``batch`` (a tensor or a
    tuple/list of them). A batch not divisible by ``world`` gives slices one row apart
    (the spec requires divisible batch sizes; a plug-in's last partial batch may not be);
    a batch smaller than ``world`` is an error, as a rank would get no rows."""
    if isinstance(batch, (tuple, list)):
        return type(batch)(shard(b, rank, world) for b in batch)
    if not isinstance(batch, Tensor):
        raise TypeError(f"a data-parallel trial splits tensors, but got a batch of {type(batch).__name__}")
    if batch.shape[0] < world:
        raise ValueError(f"a batch of {batch.shape[0]} rows cannot be split between {world} ranks")
    return batch.tensor_split(world)[rank]


class Rank:
    """This process's rank in the trial's process group (:func:`join` made it)."""

    def __init__(self, rank: int, world: int, strict: bool = False) -> None:
        self.rank = rank
        self.world = world
        self.strict = strict  # check the ``same`` statistics at every step (tests)
        self._rules: dict[tuple[str, ...], list[str]] = {}

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in DDP. Rank 0's weights and buffers are broadcast, in place (the
        loop's flat weight buffer stays the weights' storage); BatchNorm buffers are
        broadcast from rank 0 at every forward (DDP's default), so evaluation agrees."""
        return DistributedDataParallel(model)

    def shard(self, batch: Any) -> Any:
        return shard(batch, self.rank, self.world)

    def reduce(self, stats: Tensor, extra: Sequence[str] = ()) -> Tensor:
        """The loop's statistics vector ``[loss, grad_norm, clipped, update_ratio,
        *extra]`` combined over the ranks: one ``all_gather``, no host sync (except
        ``strict``, which checks that the ``same`` columns agree and raises if not)."""
        names = ("loss", *SAME, *extra)
        rules = self._rules.get(names)
        if rules is None:
            rules = self._rules[names] = [rule(n) for n in names]
        parts = [torch.empty_like(stats) for _ in range(self.world)]
        dist.all_gather(parts, stats)
        rows = torch.stack(parts)
        if self.strict:
            j = disagreement(rows, rules)
            if j is not None:
                raise RuntimeError(f"ranks disagree on {names[j]}: {rows[:, j].tolist()}")
        return combine(rows, rules)


def backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def rendezvous(host: str, world: int) -> TCPStore:
    """Rank 0's store on ``host`` at a free port (``store.port``); the other ranks
    connect to it in :func:`join`. Keep it alive until the group is made."""
    return TCPStore(host, 0, world, is_master=True, wait_for_workers=False,
                         timeout=datetime.timedelta(seconds=TIMEOUT_S))


def join(rank: int, world: int, host: str, port: int, device: torch.device,
         store: TCPStore | None = None, strict: bool = False) -> Rank:
    """Join the trial's process group (the default one of this process) as ``rank``;
    rank 0 passes its :func:`rendezvous` store. On ``127.0.0.1`` gloo is bound to the
    loopback interface, so a local trial listens on nothing else."""
    if store is None:
        store = TCPStore(host, port, world, is_master=False,
                              timeout=datetime.timedelta(seconds=TIMEOUT_S))
    with _loopback(host == LOOPBACK):
        dist.init_process_group(backend(device), store=store, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=TIMEOUT_S))
    return Rank(rank, world, strict)


def leave() -> None:
    """Destroy this process's process group, if any (a Tune actor is reused by the next
    trial, which makes its own)."""
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def _loopback(on: bool) -> Iterator[None]:
    name = "GLOO_SOCKET_IFNAME"
    if not on or name in os.environ:
        yield
        return
    os.environ[name] = "lo"
    try:
        yield
    finally:
        os.environ.pop(name, None)
