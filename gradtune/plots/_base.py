"""What every figure of the report shares: :class:`Plot`, the outcome colours, hover text.
matplotlib draws into files only (the Agg backend, unless a backend is already in use)."""

from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass
from typing import Any

import matplotlib
import matplotlib.colors

from gradtune.outcome import P_DIVERGED, Outcome
from gradtune.table import Row, SweepTable

if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

COLOURS = {Outcome.COMPLETED.value: "#2a7ab9", Outcome.DIVERGED.value: "#d62728",
           Outcome.PRUNED.value: "#9a9a9a", Outcome.FAILED.value: "#222222"}
OTHER_COLOURS = ("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")  # outcomes yet to come (rescued)


@dataclass(frozen=True)
class Plot:
    """One figure of the report: ``name`` (its file stem), a ``title``, the matplotlib
    ``png`` figure and the plotly ``html`` figure, or a ``note`` saying why there is none
    (a figure may also carry a note on what it leaves out)."""

    name: str
    title: str
    png: Any = None
    html: Any = None
    note: str | None = None


def close(plot: Plot) -> None:
    """Free the PNG figure: Optuna's are pyplot's, kept until closed (ours are not: a no-op)."""
    from matplotlib import pyplot

    if plot.png is not None:
        pyplot.close(plot.png)


def colour(outcome: str) -> str:
    """The outcome's colour; a trial some seeds diverged on is orange, darker the more did
    (:func:`group`); one not known yet gets a fixed one of its own."""
    if ", P(diverged)=" in outcome:
        p = float(outcome.rsplit("=", 1)[1])
        return matplotlib.colors.to_hex((1.0, 0.75 - 0.45 * p, 0.2 - 0.2 * p))
    return COLOURS.get(outcome) or OTHER_COLOURS[zlib.crc32(outcome.encode()) % len(OTHER_COLOURS)]


def group(row: Row) -> str:
    """What a trial is drawn as: its outcome, or for a trial of several seeds
    (``search.seeds``) that some of its seeds diverged on, ``completed, P(diverged)=0.33``."""
    p = row.metrics.get(P_DIVERGED)
    if p is not None and 0 < p < 1 and row.outcome != Outcome.DIVERGED.value:
        return f"{row.outcome}, P(diverged)={p:.2g}"
    return row.outcome


def outcomes(table: SweepTable) -> list[str]:
    """The groups (:func:`group`) of the table, in order of first appearance."""
    return list(dict.fromkeys(group(r) for r in table.rows))


def hover(table: SweepTable, row: Row) -> str:
    """A trial in a few words: number, outcome, objective, searched knobs, reason."""
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in row.params.items() if k in table.searched())
    value = "-" if row.value is None else f"{row.value:.4g}"
    return f"#{row.number} {row.outcome} {table.metric}={value}<br>{params}" + (
        f"<br>{row.reason}" if row.reason else "")
