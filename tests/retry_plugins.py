"""Plug-in workloads for tests/test_e2e_retry.py that fail on purpose, and leave a trace of
every attempt of their trial in files under ``options["dir"]``:

- ``attempts``: one line per attempt, the PID of the process that built the workload;
- ``forwards-<attempt>``: how many training steps (forward passes in training mode) that
  attempt ran, so a test can tell a resumed retry from one that started over.

Imported by the Ray workers as ``tests.retry_plugins`` (the repository root is on their path).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


class Counting(nn.Module):
    """A small MLP that writes how many training-mode forwards it ran."""

    def __init__(self, record: Path) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
        self.record = record
        self.forwards = 0

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.forwards += 1
            self.record.write_text(str(self.forwards))
        out: Tensor = self.net(x)
        return out


def _attempt(directory: Path) -> int:
    """Note this attempt (its PID); returns its number, from 1. Locked: the ranks of a
    data-parallel trial build their workloads at once, and an append then a count by each
    could both count the other's line (two ranks, one number)."""
    with open(directory / "attempts", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(f"{os.getpid()}\n")
        f.flush()
        f.seek(0)
        return len(f.read().split())


def _batches(seed: int, hook: Callable[[int], None]) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless seeded batches; ``hook(n)`` runs before the n-th batch is drawn."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 4, generator=gen)
    y = (x.sum(1) > 0).long()
    drawn = 0
    while True:
        drawn += 1
        hook(drawn)
        idx = torch.randint(0, 256, (32,), generator=gen)
        yield x[idx], y[idx]


def _workload(directory: Path, seed: int, hook: Callable[[int], None],
              attempt: int | None = None) -> dict[str, Any]:
    attempt = _attempt(directory) if attempt is None else attempt
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(128, 4, generator=gen)
    return {"model": Counting(directory / f"forwards-{attempt}"), "train": _batches(seed, hook),
            "val": [(x, (x.sum(1) > 0).long())], "loss": nn.functional.cross_entropy}


def killed_once(options: dict[str, Any], seed: int) -> dict[str, Any]:
    """Before drawing batch ``block_at`` the first time, writes its PID to ``dir/pid`` and
    sleeps (the test kills the process); later attempts go through."""
    directory = Path(options["dir"])
    pid_file = directory / "pid"

    def hook(drawn: int) -> None:
        if drawn == options["block_at"] and not pid_file.exists():
            tmp = directory / "pid.tmp"
            tmp.write_text(str(os.getpid()))
            tmp.rename(pid_file)
            time.sleep(options.get("sleep", 120))

    return _workload(directory, seed, hook)


def raises(options: dict[str, Any], seed: int) -> dict[str, Any]:
    """Raises ValueError before drawing batch ``raise_at``, on every attempt."""

    def hook(drawn: int) -> None:
        if drawn == options["raise_at"]:
            raise ValueError(f"boom at batch {drawn}")

    return _workload(Path(options["dir"]), seed, hook)


def by_start_order(options: dict[str, Any], seed: int) -> dict[str, Any]:
    """Three trials with three roles, by the order in which their trials first start: the
    first trains slowly (``sleep`` seconds a batch), the second raises once before batch
    ``raise_at``, the third trains plainly. Writes ``starts``: ``attempt pid trial_id``
    per attempt."""
    from ray import tune

    directory = Path(options["dir"])
    trial_id = tune.get_context().get_trial_id()
    attempt = _attempt(directory)
    with open(directory / "starts", "a") as f:
        f.write(f"{attempt} {os.getpid()} {trial_id}\n")
    seen: list[str] = []
    for line in (directory / "starts").read_text().splitlines():
        if line.split()[2] not in seen:
            seen.append(line.split()[2])
    role = seen.index(trial_id)
    raised = directory / "raised"

    def hook(drawn: int) -> None:
        if role == 0:
            time.sleep(options["sleep"])
        elif role == 1 and drawn == options["raise_at"] and not raised.exists():
            raised.write_text(trial_id)
            raise RuntimeError(f"raised once at batch {drawn}")

    return _workload(directory, seed, hook, attempt)


def raises_on_rank(options: dict[str, Any], seed: int) -> dict[str, Any]:
    """In a data-parallel trial: rank ``rank`` raises before drawing batch ``raise_at``,
    on the first attempt only (marker ``dir/raised``); the other ranks train on."""
    import torch.distributed as dist

    directory = Path(options["dir"])
    raised = directory / "raised"

    def hook(drawn: int) -> None:
        rank = dist.get_rank() if dist.is_initialized() else 0
        if rank == options["rank"] and drawn == options["raise_at"] and not raised.exists():
            raised.write_text(str(os.getpid()))
            raise RuntimeError(f"rank {rank} raised at batch {drawn}")

    return _workload(directory, seed, hook)
