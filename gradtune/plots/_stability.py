"""The stability map: where the edge is. One panel per pair of searched numeric knobs (at
most :data:`MAX_NUMERIC` knobs; log axes for log ranges, a numeric list's values as ticks),
one column per value of a categorical knob (``norm`` when searched). Colour = outcome (for
a trial of several seeds that some diverged on, orange by P(diverged));
marker area = objective (larger is better), ``x`` for a trial without a finite objective
(NaN and inf never reach an axis). A trial without one of the panel's knobs
(``clip_threshold`` under ``clip_method: none``) is not drawn in that panel, and its title
says how many are left out."""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import plotly.graph_objects as go
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullLocator
from plotly.subplots import make_subplots

from gradtune.plots._base import Plot, colour, hover, outcomes
from gradtune.plots._base import group as drawn_as
from gradtune.spec import Range
from gradtune.table import Row, SweepTable

MAX_NUMERIC = 3  # knobs in the map: at most 3 pairs
MAX_FACETS = 4  # columns


def numeric(table: SweepTable) -> list[str]:
    """The searched knobs with numbers for values: ranges and lists of numbers."""
    out = []
    for name in table.searched():
        dim = table.spec.search.space[name]
        if isinstance(dim, Range) or (isinstance(dim, list) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in dim)):
            out.append(name)
    return out


def _log(table: SweepTable, name: str) -> bool:
    dim = table.spec.search.space[name]
    if isinstance(dim, Range):
        return dim.log
    values = [float(v) for v in dim] if isinstance(dim, list) else [float(dim)]
    return min(values) > 0 and max(values) / min(values) >= 4


def _facet(table: SweepTable) -> str | None:
    """The categorical knob whose values are the columns: ``norm`` if searched, else the
    first with at most :data:`MAX_FACETS` values; none beyond that (too many panels)."""
    cats = []
    for name in table.searched():
        dim = table.spec.search.space[name]
        if name not in numeric(table) and isinstance(dim, list) and len(dim) <= MAX_FACETS:
            cats.append(name)
    return "norm" if "norm" in cats else cats[0] if cats else None


def _sizes(table: SweepTable, rows: list[Row]) -> list[float]:
    """Marker areas: 20 (worst finite objective of the sweep) to 140 (best); 40 without one."""
    values = [r.value for r in table.rows if r.value is not None]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    out = []
    for r in rows:
        if r.value is None:
            out.append(40.0)
            continue
        good = 0.5 if hi == lo else (r.value - lo) / (hi - lo)
        out.append(20 + 120 * (1 - good if table.mode == "min" else good))
    return out


def stability(table: SweepTable) -> Plot:
    """The map (see the module docstring), or a note with fewer than two numeric knobs."""
    title = "Stability map"
    knobs = numeric(table)
    if len(knobs) < 2:
        return Plot("stability", title, note=f"no stability map: it needs two searched numeric knobs, "
                                              f"the space has {len(knobs)}")
    if not table.rows:
        return Plot("stability", title, note="no stability map: no trial ended")
    pairs = list(combinations(knobs[:MAX_NUMERIC], 2))
    facet = _facet(table)
    values = [None] if facet is None else list(dict.fromkeys(r.params.get(facet) for r in table.rows))
    fig = Figure(figsize=(3.6 * len(values) + 1.4, 3.0 * len(pairs) + 0.5))
    # Margins by hand: matplotlib's constrained layout doubled the cost of this figure.
    axes = fig.subplots(len(pairs), len(values), squeeze=False, gridspec_kw={
        "left": 0.9 / fig.get_figwidth(), "right": 1 - 1.4 / fig.get_figwidth(),
        "bottom": 0.5 / fig.get_figheight(), "top": 1 - 0.6 / fig.get_figheight(),
        "hspace": 0.45, "wspace": 0.3})
    html = make_subplots(rows=len(pairs), cols=len(values), subplot_titles=[
        f"{facet}={v}" if facet else "" for _ in pairs for v in values])
    layout: dict[str, Any] = {}  # every panel's axes, in one update (each costs plotly a validation)
    for i, pair in enumerate(pairs):
        for j, value in enumerate(values):
            rows = [r for r in table.rows if facet is None or r.params.get(facet) == value]
            _panel(table, pair, rows, axes[i][j], html, (i + 1, j + 1))
            axes[i][j].set_title((f"{facet}={value}" if facet else "") + _left_out(pair, rows), fontsize=9)
            for name, axis in zip(pair, ("xaxis", "yaxis")):
                _scale(table, name, axes[i][j], axis)
                layout[_axis(axis, i * len(values) + j + 1)] = {
                    "type": "log" if _log(table, name) else "linear", "title": {"text": name}}
    html.update_layout(layout)
    fig.legend(handles=[Line2D([], [], ls="", marker="o", color=colour(o), label=o) for o in outcomes(table)],
               loc="center right", title="outcome")
    fig.suptitle(f"{title}: marker size = {table.metric} (larger is better), x = no finite value",
                 x=0.02, ha="left")
    html.update_layout(title=f"{title} (marker size = {table.metric}, larger is better)",
                       height=320 * len(pairs) + 80)
    return Plot("stability", title, fig, html)


def _panel(table: SweepTable, pair: tuple[str, str], rows: list[Row], ax: Any, html: Any,
           at: tuple[int, int]) -> None:
    """The trials of ``rows`` that have both knobs of ``pair``, by outcome, in both figures."""
    x, y = pair
    shown = [r for r in rows if x in r.params and y in r.params]
    for outcome in outcomes(table):
        group = [r for r in shown if drawn_as(r) == outcome]
        if not group:
            continue
        xs, ys, sizes = [r.params[x] for r in group], [r.params[y] for r in group], _sizes(table, group)
        markers = ["o" if r.value is not None else "x" for r in group]
        for marker in set(markers):
            pick = [k for k, m in enumerate(markers) if m == marker]
            ax.scatter([xs[k] for k in pick], [ys[k] for k in pick], s=[sizes[k] for k in pick],
                       c=colour(outcome), marker=marker, alpha=0.75)
        html.add_trace(go.Scatter(
            x=xs, y=ys, mode="markers", name=outcome, legendgroup=outcome,
            showlegend=outcome not in {t.name for t in html.data},
            marker={"color": colour(outcome), "size": [math.sqrt(s) * 1.4 for s in sizes],
                    "symbol": ["circle" if m == "o" else "x" for m in markers]},
            text=[hover(table, r) for r in group], hoverinfo="text"), row=at[0], col=at[1])
    ax.set_xlabel(x)
    ax.set_ylabel(y)


def _left_out(pair: tuple[str, str], rows: list[Row]) -> str:
    absent = [n for n in pair if any(n not in r.params for r in rows)]
    if not absent:
        return ""
    missing = sum(1 for r in rows if any(n not in r.params for n in pair))
    return f" ({missing} without {' or '.join(absent)} not shown)"


def _scale(table: SweepTable, name: str, ax: Any, which: str) -> None:
    """Log for log ranges (plain numbers on the ticks); a numeric list has its values as ticks."""
    log = _log(table, name)
    (ax.set_xscale if which == "xaxis" else ax.set_yscale)("log" if log else "linear")
    axis = getattr(ax, which)
    dim = table.spec.search.space[name]
    if isinstance(dim, list):
        ticks = sorted(float(v) for v in dim)
        axis.set_ticks(ticks, labels=[f"{v:g}" for v in ticks])
        axis.set_minor_locator(NullLocator())
    elif log:
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FormatStrFormatter("%g"))
        # No minor ticks: the 2s and 5s are major ones already, and a log axis' minor
        # ticks were a third of this figure's drawing time.
        axis.set_minor_locator(NullLocator())


def _axis(axis: str, k: int) -> str:
    """plotly's name of subplot ``k``'s (1-based) x or y axis."""
    return axis if k == 1 else f"{axis}{k}"
