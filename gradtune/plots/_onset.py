"""Where divergences started: for up to :data:`MAX_TRIALS` trials with a recorded onset
(``Row.onset``, :mod:`gradtune.onset`; diverged and rescued trials first), a panel each of
the per-layer pre-clip gradient norm by step over the verdict's window, on a log axis, for
the first :data:`MAX_LAYERS` layers of its ranking: the onset layer first, thick and red,
the others thin; a dashed line at the onset step. NaN, inf, ``None`` (a JSON ``null``) and
non-positive norms are gaps in a line (a log axis has no place for them), never an error."""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator
from plotly.subplots import make_subplots

from gradtune.onset import onset_row
from gradtune.outcome import Outcome
from gradtune.plots._base import Plot
from gradtune.table import Row, SweepTable

MAX_TRIALS = 4
MAX_LAYERS = 6
ONSET_COLOUR = "#d62728"
OTHERS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#7f7f7f")  # no red: that is the onset's
NOTE = "no onset recorded: set divergence.onset: true, or a rescue records it"
FIRST = (Outcome.DIVERGED.value, Outcome.RESCUED.value)


def shown(table: SweepTable) -> list[Row]:
    """The trials drawn: those with an onset, diverged and rescued first, then by number."""
    rows = [r for r in table.rows if r.onset]
    return sorted(rows, key=lambda r: (r.outcome not in FIRST, r.number))[:MAX_TRIALS]


def layers(found: dict[str, Any]) -> list[str]:
    """The layers of a panel: the onset layer, then the ranking's next, :data:`MAX_LAYERS` in all."""
    ranked = [r.get("layer") for r in found.get("table") or []]
    first = found.get("onset_layer")
    names = [first] if first else []
    names += [n for n in ranked if isinstance(n, str) and n != first]
    return names[:MAX_LAYERS]


def positive(values: Any) -> list[float]:
    """A layer's norms for a log axis: NaN (a gap) for ``None``, NaN, inf and anything <= 0."""
    out = []
    for v in values if isinstance(values, list) else []:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        out.append(float(v) if ok else math.nan)
    return out


def headline(row: Row) -> str:
    """``#<n> onset: <layer> grew <growth>x by step <s>`` (the verdict's step when the layer
    never crossed the factor; ``?`` for a growth that is not a finite number)."""
    found = row.onset or {}
    layer = found.get("onset_layer") or "?"
    top = onset_row(found)
    growth = top.get("growth")
    grew = f"{growth:.3g}x" if isinstance(growth, (int, float)) and math.isfinite(growth) else "?x"
    step = top.get("onset_step") if top.get("onset_step") is not None else found.get("verdict_step")
    return f"#{row.number} onset: {layer} grew {grew} by step {step}"


def _onset_step(found: dict[str, Any]) -> int | None:
    step = onset_row(found).get("onset_step")
    return int(step) if isinstance(step, (int, float)) and math.isfinite(step) else None


def onset(table: SweepTable) -> Plot:
    """The panels (see the module docstring), or a note when no trial has an onset."""
    title = "Where divergences started"
    rows = shown(table)
    if not rows:
        return Plot("onset", title, note=NOTE)
    cols = min(2, len(rows))
    nrows = math.ceil(len(rows) / cols)
    fig = Figure(figsize=(6.0 * cols, 3.8 * nrows + 0.4))
    axes = fig.subplots(nrows, cols, squeeze=False, gridspec_kw={
        "left": 0.08 if cols == 2 else 0.12, "right": 0.98, "bottom": 0.5 / fig.get_figheight(),
        "top": 1 - 0.7 / fig.get_figheight(), "hspace": 0.45, "wspace": 0.25})
    html = make_subplots(rows=nrows, cols=cols, subplot_titles=[headline(r) for r in rows])
    for k, row in enumerate(rows):
        _panel(row, axes[k // cols][k % cols], html, (k // cols + 1, k % cols + 1))
    for k in range(len(rows), nrows * cols):
        fig.delaxes(axes[k // cols][k % cols])
    fig.suptitle(f"{title}: per-layer grad norm before the verdict, onset layer in red", x=0.02, ha="left")
    html.update_yaxes(type="log", title_text="grad norm (pre-clip)")
    html.update_xaxes(title_text="step")
    html.update_layout(title=f"{title} (per-layer grad norm before the verdict, onset layer in red)",
                       height=380 * nrows + 80)
    more = len([r for r in table.rows if r.onset]) - len(rows)
    return Plot("onset", title, fig, html, note=f"{more} more trial(s) with an onset not drawn" if more > 0 else None)


def _panel(row: Row, ax: Any, html: Any, at: tuple[int, int]) -> None:
    found = row.onset or {}
    steps = list(found.get("steps") or [])
    names = list(found.get("layers") or [])
    grads = list(found.get("grad_norm") or [])
    first = found.get("onset_layer")
    for k, name in enumerate(layers(found)):  # the onset layer first (on top in the PNG: its zorder)
        if name not in names or names.index(name) >= len(grads):
            continue
        values = positive(grads[names.index(name)])
        xs = steps[: len(values)]
        hot = name == first
        colour = ONSET_COLOUR if hot else OTHERS[k % len(OTHERS)]
        ax.plot(xs, values[: len(xs)], lw=2.2 if hot else 0.9, color=colour, alpha=1.0 if hot else 0.7,
                label=name, zorder=3 if hot else 2)
        html.add_trace(go.Scatter(x=xs, y=[None if math.isnan(v) else v for v in values[: len(xs)]],
                                  mode="lines", name=f"#{row.number} {name}", legendgroup=f"#{row.number}",
                                  line={"width": 3 if hot else 1, "color": colour}), row=at[0], col=at[1])
    ax.legend(fontsize=7, loc="upper left")
    step = _onset_step(found)
    if step is not None:
        ax.axvline(step, color=ONSET_COLOUR, ls="--", lw=1)
        html.add_vline(x=step, line={"color": ONSET_COLOUR, "dash": "dash", "width": 1}, row=at[0], col=at[1])
    ax.set_yscale("log")
    ax.yaxis.set_minor_locator(NullLocator())  # decades only: minor ticks cost, and say little
    ax.set_xlabel("step")
    ax.set_ylabel("grad norm (pre-clip, log)")
    ax.set_title(headline(row), fontsize=9)
