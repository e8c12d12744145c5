"""Every trial's pre-clip gradient norm by step, on a log axis: diverged in red, the onset
marked. Non-finite and non-positive points are left out (a log axis has no place for
them), so a trial that went to NaN ends at its last finite norm; the onset is marked at the
last finite norm at or before the divergence step. A 1e18 blow-up does not flatten the other
traces: the axis is logarithmic."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from gradtune.outcome import Outcome
from gradtune.plots._base import Plot, colour, hover
from gradtune.table import Row, SweepTable


def _finite_trace(row: Row) -> tuple[list[int], list[float]]:
    points = [(s, v) for s, v in row.trace if math.isfinite(v) and v > 0]
    return [s for s, _ in points], [v for _, v in points]


def _onset(row: Row) -> tuple[int, float] | None:
    if row.divergence_step is None:
        return None
    steps, values = _finite_trace(row)
    before = [(s, v) for s, v in zip(steps, values) if s <= row.divergence_step]
    return before[-1] if before else None


def traces(table: SweepTable) -> Plot:
    """The traces (see the module docstring), or a note when no trial has a finite point."""
    title = "Gradient norm by step"
    rows = [r for r in table.rows if _finite_trace(r)[0]]
    if not rows:
        return Plot("traces", title, note="no grad-norm traces: no trial has a finite grad_norm point")
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots(gridspec_kw={"left": 0.1, "right": 0.97, "bottom": 0.12, "top": 0.92})
    html = go.Figure()
    # Diverged last, so the red lines are on top.
    for row in sorted(rows, key=lambda r: (r.outcome == Outcome.DIVERGED.value, r.number)):
        steps, values = _finite_trace(row)
        diverged = row.outcome == Outcome.DIVERGED.value
        ax.plot(steps, values, color=colour(row.outcome), lw=1.2 if diverged else 0.8,
                alpha=0.9 if diverged else 0.5)
        html.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=f"#{row.number} {row.outcome}",
                                  line={"color": colour(row.outcome), "width": 1.5 if diverged else 1},
                                  legendgroup=row.outcome, hovertext=hover(table, row)))
        onset = _onset(row)
        if onset is not None:
            ax.scatter([onset[0]], [onset[1]], marker="X", s=60, color=colour(row.outcome), zorder=3)
            html.add_trace(go.Scatter(x=[onset[0]], y=[onset[1]], mode="markers", showlegend=False,
                                      marker={"symbol": "x", "size": 11, "color": colour(row.outcome)},
                                      hovertext=f"#{row.number} diverged at step {row.divergence_step}: "
                                                f"{row.reason}"))
    ax.set_yscale("log")
    ax.yaxis.set_minor_locator(NullLocator())  # decades only: minor ticks cost, and say little
    ax.set_xlabel("step")
    ax.set_ylabel("grad_norm (pre-clip, log)")
    ax.set_title(f"{title}: diverged in red, X = divergence onset")
    html.update_layout(title=f"{title} (diverged in red, x = divergence onset)", yaxis_type="log",
                       xaxis_title="step", yaxis_title="grad_norm (pre-clip)")
    return Plot("traces", title, fig, html)
