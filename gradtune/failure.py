"""Why a trial failed, in one line: an exception the training raised, or a worker process
that died under it (killed for memory, SIGKILL, a lost node), which Ray reports as a
``RayActorError``. Read from what Ray Tune keeps of a failed trial: the last exception
(pickled) and the text of every failure (``error.txt``, tracebacks included).

The one line is ``ExceptionType: message`` for an exception and ``worker died
(ActorDiedError): <Ray's exit detail>`` for a lost worker (``worker died (out of memory)
...`` when Ray says its memory monitor killed it; a SIGKILL from outside, the kernel's OOM
killer included, reads as a plain worker death, as Ray cannot tell them apart). Cut to
:data:`outcome.MAX_ERROR` characters by :func:`outcome.failure_line`.

Ray is imported only by the functions that read Ray's objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradtune.outcome import NO_ERROR, failure_line

# Ray's memory monitor says so when it kills a worker; a SIGKILL's message only lists the
# OOM killer among "potential root causes", which is no evidence.
MEMORY_KILL = re.compile(r"low on memory|memory pressure|OutOfMemoryError", re.IGNORECASE)


@dataclass(frozen=True)
class Failure:
    reason: str  # one line
    details: str  # every failure of the trial, with tracebacks ("" when Tune kept none)


def exception_line(error: BaseException) -> str:
    """``Type: message`` (``Type`` alone for an empty message), on one line."""
    message = str(error).strip()
    return failure_line(f"{type(error).__name__}: {message}" if message else type(error).__name__)


def worker_detail(message: str) -> str:
    """The informative part of Ray's worker-death message: after ``Worker exit detail:``
    when present, else the message without Ray's standard first sentence."""
    _, found, detail = message.partition("Worker exit detail:")
    if found:
        return detail
    lines = [line for line in message.splitlines() if line.strip()]
    return " ".join(lines[1:] or lines)


def reason(error: BaseException | None) -> str:
    """The one-line reason for the exception Tune got from a failed trial."""
    from ray import exceptions as rex

    if error is None:
        return NO_ERROR
    if isinstance(error, rex.RayTaskError):
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException) and not isinstance(cause, rex.RayTaskError):
            return exception_line(cause)
        return exception_line(error)
    lost = (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError, rex.LocalRayletDiedError,
            rex.OutOfMemoryError)
    if isinstance(error, lost):
        message = str(error)
        kind = "worker died (out of memory)" if MEMORY_KILL.search(message) or isinstance(
            error, rex.OutOfMemoryError) else "worker died"
        return failure_line(f"{kind} ({type(error).__name__}): {worker_detail(message)}")
    return exception_line(error)


def reason_from_text(details: str) -> str:
    """A reason from ``error.txt`` alone (the pickled exception could not be read): its
    last ``Type: message`` line, else its last line."""
    lines = [line.strip() for line in details.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\w*(: |$)", line):
            return failure_line(line)
    return failure_line(lines[-1]) if lines else NO_ERROR


def of_trial(trial: Any) -> Failure:
    """What Tune kept of a trial's failures (``trial.pickled_error_file``, the last
    exception; ``trial.error_file``, every failure as text)."""
    details = _read_text(getattr(trial, "error_file", None))
    error = _read_pickled(getattr(trial, "pickled_error_file", None))
    line = reason(error) if error is not None else reason_from_text(details)
    return Failure(reason=line, details=details)


ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the task name in its tracebacks


def _read_text(path: str | None) -> str:
    try:
        return ANSI.sub("", Path(path).read_text(errors="replace")) if path else ""
    except OSError:
        return ""


def _read_pickled(path: str | None) -> BaseException | None:
    if not path:
        return None
    try:
        from ray import cloudpickle

        with open(path, "rb") as f:
            error = cloudpickle.load(f)
    except Exception:  # a missing file, or a class the driver cannot import: use the text
        return None
    return error if isinstance(error, BaseException) else None
