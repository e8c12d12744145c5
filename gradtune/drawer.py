"""A process of its own that draws sweep reports (:func:`gradtune.report.write`).

Why a process: the report is drawn while Ray shuts down, and in the driver a drawing thread
shares one GIL with the MLflow writer's thread, which is sending the sweep's last records
then; a process draws on a core of its own (a local ``ray.shutdown`` leaves the cores ~95%
idle). And the driver never imports matplotlib, plotly and Optuna's visualization (~1.3 s):
the drawer loads them, and draws a tiny figure with each (fonts, templates), as soon as
:func:`start` is called at the sweep's start, while Ray starts and the cores are half idle.

The drawer is ``python -m gradtune.drawer``, not a multiprocessing child: a spawned child
would import the caller's main module again, which a script that runs a sweep without an
``if __name__ == "__main__"`` guard does not survive. Requests and answers are pickles on
its stdin and stdout, one at a time. One drawer serves every sweep of a Python process (a
test session runs many); one that has died is replaced at the next :func:`start` or
:func:`draw`. A Ctrl-C stops the sweep, whose report is still drawn: the drawer runs in a
session of its own, so the terminal's SIGINT does not reach it, and ignores SIGINT sent to
it. It ends when its stdin closes: at :func:`stop`, or when the driver's process ends,
however it ends.
"""

from __future__ import annotations

import importlib
import io
import logging
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gradtune.table import SweepTable

__all__ = ["DrawerError", "draw", "start", "stop"]

log = logging.getLogger(__name__)

_lock = threading.Lock()  # one request at a time, and one process
_proc: subprocess.Popen[bytes] | None = None
_waiter: ThreadPoolExecutor | None = None  # waits for the drawer's answers


class DrawerError(RuntimeError):
    """The drawer's process died, or could not be reached, before it answered; or the
    report could not be sent to it (not picklable). The driver can still draw it."""


def start() -> None:
    """Start the drawer's process, unless it runs; it loads its libraries at once."""
    with _lock:
        _ensure()


def draw(table: SweepTable, out: str | Path) -> Future[tuple[list[str], float]]:
    """Write ``table``'s report into ``out`` in the drawer's process. The future's result:
    the paths written (as :func:`gradtune.report.write` returns them) and when the drawing
    ended (``time.monotonic``: system-wide on Linux and macOS, so comparable with the
    driver's). It raises :class:`DrawerError` when the process died or the table could not
    be sent, or ``RuntimeError`` with the drawer's traceback when ``report.write`` raised
    there."""
    global _waiter
    with _lock:
        if _waiter is None:
            _waiter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradtune-drawer")
        return _waiter.submit(_request, table, str(out))


def stop(timeout_s: float = 1.0) -> None:
    """End the drawer's process: its stdin closes; killed if it has not ended in ``timeout_s``."""
    global _proc
    with _lock:
        proc, _proc = _proc, None
    if proc is not None:
        _close(proc, timeout_s)


def _ensure() -> subprocess.Popen[bytes]:
    global _proc
    if _proc is None or _proc.poll() is not None:
        # A session of its own: a Ctrl-C at the terminal goes to the sweep, not to it.
        _proc = subprocess.Popen([sys.executable, "-m", "gradtune.drawer"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, start_new_session=True)
    return _proc


def _request(table: SweepTable, out: str) -> tuple[list[str], float]:
    global _proc
    try:  # whole, before the pipe sees a byte: a half-written request would derail the next
        request = pickle.dumps((table, out), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise DrawerError(f"the report could not be sent to its process: {exc}") from exc
    with _lock:
        proc = _ensure()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(request)
            proc.stdin.flush()
            answer = pickle.load(proc.stdout)
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            _proc = None
            _close(proc, 1.0)
            raise DrawerError(f"the report's process ended before it answered (exit code {proc.returncode})") from exc
    if answer[0] == "error":
        raise RuntimeError(f"the report's process failed:\n{answer[1]}")
    return answer[1], answer[2]


def _close(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    try:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _warm() -> None:
    """Import what :func:`gradtune.report.write` draws with and draw one tiny figure with
    each library (their first figure loads fonts and templates, ~0.2 s). A failure here is
    the report's to report, when it is drawn."""
    try:
        # gradtune.plots first: it chooses matplotlib's Agg backend before Optuna's
        # matplotlib plots import pyplot; Optuna's importance brings scikit-learn (fANOVA).
        for name in ("gradtune.plots", "gradtune.report", "optuna.visualization.matplotlib",
                     "optuna.importance"):
            importlib.import_module(name)
        import plotly.graph_objects as go
        from matplotlib.figure import Figure

        fig = Figure(figsize=(1, 1))
        ax = fig.subplots()
        ax.plot([1, 2], [1, 10])
        ax.set_yscale("log")
        ax.set_title("warm-up")
        fig.savefig(io.BytesIO(), format="png", dpi=50)
        go.Figure(go.Scatter(x=[1], y=[1])).to_html(full_html=False, include_plotlyjs=False)
    except Exception:
        log.debug("warming the drawer up failed", exc_info=True)


def main() -> None:
    """The drawer's process: answer each request on stdin until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not land among the answers
    _warm()
    from gradtune import report

    while True:
        try:
            table, out = pickle.load(requests)
        except (EOFError, pickle.UnpicklingError):  # the driver has gone
            return
        answer: tuple[Any, ...]
        try:
            answer = ("ok", [str(p) for p in report.write(table, out)], time.monotonic())
        except Exception:
            answer = ("error", traceback.format_exc())
        try:
            pickle.dump(answer, answers, protocol=pickle.HIGHEST_PROTOCOL)
            answers.flush()
        except BrokenPipeError:  # the driver has gone
            return


if __name__ == "__main__":
    main()
