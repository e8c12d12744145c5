"""The MLflow spool file: records the writer could not send, kept in order on disk until
the tracking server answers again (:mod:`gradtune.writer`, ``gradtune sync``).

JSON lines, append-only, strict JSON. The first line is a header
(``{"spool": 1, "tracking_uri": ...}``, credentials redacted), then, in the order they
happened: records (``{"seq": n, "op": ..., "run": key, ...}``), run ids the writer knows
(``{"ids": {key: run_id}}``) and acknowledgements (``{"acked": n, "ids": {...}}``: every
record up to ``n`` is in MLflow, with the runs it created). A record is pending while no
ack covers its sequence number.

NaN and inf metric values are written as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` and read back as the same floats; finite floats round-trip exactly (Python
writes the shortest repr that reads back to the same double). Pure: json and os only.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from typing import Any, NamedTuple

SPOOL_NAME = "mlflow-spool.jsonl"  # in the sweep's Tune experiment directory
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class Point(NamedTuple):
    """One metric value at a training step; ``timestamp`` in ms, fixed when it was put, so
    a point sent twice is the same point (MLflow keeps one)."""

    key: str
    value: float
    timestamp: int
    step: int


def encode(line: dict[str, Any]) -> dict[str, Any]:
    """``line`` as strict JSON: a metric record's non-finite values as strings."""
    if line.get("op") != "metrics":
        return line
    points = [[k, v if math.isfinite(v) else json.dumps(v), t, s] for k, v, t, s in line["points"]]
    return {**line, "points": points}


def decode(line: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`encode`; metric points become :class:`Point`."""
    if line.get("op") != "metrics":
        return line
    points = [Point(k, _NONFINITE[v] if isinstance(v, str) else float(v), t, s)
              for k, v, t, s in line["points"]]
    return {**line, "points": points}


def append(path: str | os.PathLike[str], lines: Iterable[dict[str, Any]]) -> None:
    """Append ``lines`` (encoded) to the spool at ``path``; the file is opened and closed
    each time, so what was written is on disk even if the sweep dies next."""
    text = "".join(json.dumps(encode(line), allow_nan=False) + "\n" for line in lines)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def read(path: str | os.PathLike[str]) -> tuple[str, dict[str, str], list[dict[str, Any]]]:
    """(tracking URI as recorded, run ids known, records not yet acknowledged, in order)."""
    uri, ids, records, acked = "", {}, [], 0
    with open(path, encoding="utf-8") as f:
        for text in f:
            if not text.strip():
                continue
            line = json.loads(text)
            uri = line.get("tracking_uri", uri)
            ids.update(line.get("ids", {}))
            acked = max(acked, line.get("acked", 0))
            if "op" in line:
                records.append(decode(line))
    return uri, ids, [r for r in records if r["seq"] > acked]
