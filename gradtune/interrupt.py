"""Ctrl-C and SIGTERM during a sweep: stop cleanly and say so, so the sweep can be resumed.

Ray Tune stops gracefully on SIGINT by itself, but then returns as if the sweep had ended
and leaves nothing to tell the caller; on SIGTERM the driver dies. :class:`Interrupt`
takes both signals and hands the first to Tune's graceful stop; the sweep then marks its
runs KILLED and the CLI exits 128 + the signal (130, 143).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


class Interrupted(KeyboardInterrupt):
    """A second Ctrl-C / SIGTERM: stop now, without Tune's graceful stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Interrupt:
    """Ctrl-C (SIGINT) and SIGTERM during a sweep. While Tune runs, the first asks Tune to
    stop gracefully through its own SIGUSR1 handler (it saves the experiment state with the
    running trials as they are, so a resume continues them, and stops the trials);
    ``signum`` remembers which signal it was. A second one, or one outside Tune's run,
    raises :class:`Interrupted` at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._tuning = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Take SIGINT and SIGTERM. Call again after ``ray.init``: Ray's core worker puts a
        C++ handler on SIGTERM that dumps a stack trace and aborts the driver."""
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers (Tune then sets none either)
        # Tune's SIGINT handler would stop without telling us; ours calls its SIGUSR1 one.
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for s in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(s, self._handle)
            self._previous.setdefault(s, previous)

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    @contextlib.contextmanager
    def tuning(self) -> Iterator[None]:
        self._tuning = True
        try:
            yield
        finally:
            self._tuning = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None or not self._tuning:
            raise Interrupted(signum)
        self.signum = signum
        log.warning("%s: stopping the sweep and saving its state (again to stop at once)",
                    signal.Signals(signum).name)
        os.kill(os.getpid(), signal.SIGUSR1)
