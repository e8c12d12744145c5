"""The Ray cluster a sweep joins: its address and a quick look at its GCS port.

Ray itself retries a GCS that does not answer for about 12 minutes (20 attempts of 36 s)
and ignores SIGTERM meanwhile; :func:`probe` says in one line, at once, that nothing
answers at ``host:port``. Socket only: the CLI calls it before it imports Ray and torch.
"""

from __future__ import annotations

import os
import socket

from gradtune.errors import GradtuneError

PROBE_TIMEOUT_S = 10.0  # a host that drops packets: no answer at all


def target(address: str | None) -> str:
    """The cluster the sweep joins: ``address``, else ``RAY_ADDRESS``, else ``local``."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


def gcs_endpoint(target: str) -> tuple[str, int] | None:
    """``(host, port)`` of a cluster named as ``host:port``; None for a local Ray,
    ``auto``, ``ray://`` and anything else Ray resolves itself."""
    if target in ("local", "auto") or "://" in target:
        return None
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def probe(address: str | None) -> bool:
    """For a cluster at ``host:port``: connect to its GCS port once, and raise
    :class:`GradtuneError` in one line if nothing answers. True if there was a port to
    probe (a remote cluster), False for a local Ray."""
    name = target(address)
    gcs = gcs_endpoint(name)
    if gcs is None:
        return False
    try:
        socket.create_connection(gcs, timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise GradtuneError(f"Ray cluster {name}: cannot connect (nothing answers at "
                            f"{gcs[0]}:{gcs[1]}: {reason})") from None
    return True
