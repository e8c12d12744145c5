"""What every figure of the report shares: :class:`Plot`, the outcome colours, hover text.
matplotlib draws into files only (the Agg backend, unless a backend is already in use)."""

from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass
from typing import Any

import matplotlib

from gradtune.outcome import Outcome
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
    """The outcome's colour; one that is not known yet gets a fixed one of its own."""
    return COLOURS.get(outcome) or OTHER_COLOURS[zlib.crc32(outcome.encode()) % len(OTHER_COLOURS)]


def outcomes(table: SweepTable) -> list[str]:
    """The outcomes of the table, in order of first appearance."""
    return list(dict.fromkeys(r.outcome for r in table.rows))


def hover(table: SweepTable, row: Row) -> str:
    """A trial in a few words: number, outcome, objective, searched knobs, reason."""
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in row.params.items() if k in table.searched())
    value = "-" if row.value is None else f"{row.value:.4g}"
    return f"#{row.number} {row.outcome} {table.metric}={value}<br>{params}" + (
        f"<br>{row.reason}" if row.reason else "")
