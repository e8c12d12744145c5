"""The sweep report's figures, each made twice by well-kept libraries: a matplotlib figure
(saved as PNG, Agg backend) and a plotly figure (for the one HTML page).

- :func:`stability`: the stability map, one panel per pair of searched numeric knobs (log
  axes for log ranges), colour = outcome, marker size = objective (larger is better; ``x``
  for a trial without a finite objective), facets = the values of one categorical knob;
- :func:`traces`: every trial's pre-clip grad norm by step on a log axis, diverged in red
  with the onset marked;
- :func:`history`, :func:`slices`, :func:`parallel`: Optuna's own plots over
  :func:`gradtune.study.to_study` (diverged trials are infeasible there: drawn apart, at the
  worst objective); Optuna's parallel coordinates give log ranges a log axis and a trial
  without a conditional param (``clip_threshold`` under ``clip_method: none``) its own
  "None" tick below the axis' range, never its largest value;
- :func:`importance`: Optuna's fANOVA importance of each knob for the objective and for
  P(diverged) (:func:`gradtune.study.divergence_study`).

Too little data is not an error: a :class:`Plot` without figures carries a one-line
``note`` (no completed trial, one trial, fewer than two numeric knobs, no trace, ...).

NaN and inf: non-finite (and, on a log axis, non-positive) points are left out of a
trace, so a trial that went to NaN stops where its last finite norm was; its onset is marked
at the last finite norm at or before the divergence step. A 1e18 blow-up stays on the log
axis without flattening the other traces. Non-finite objectives never reach a plot
(``Row.value`` is ``None`` and the study holds no NaN).
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import matplotlib
import optuna
import plotly.graph_objects as go
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
from plotly.subplots import make_subplots

from gradtune.outcome import Outcome
from gradtune.spec import Range
from gradtune.study import divergence_study, to_study
from gradtune.table import Row, SweepTable

if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")  # files only, no display (a backend already in use is kept)

__all__ = ["Plot", "all_plots", "history", "importance", "importances", "parallel", "slices",
           "stability", "traces"]

COLOURS = {Outcome.COMPLETED.value: "#2a7ab9", Outcome.DIVERGED.value: "#d62728",
           Outcome.PRUNED.value: "#9a9a9a", Outcome.FAILED.value: "#222222"}
OTHER_COLOURS = ("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")  # outcomes yet to come (rescued)
MAX_NUMERIC = 3  # knobs in the stability map: at most 3 pairs


@dataclass(frozen=True)
class Plot:
    """One figure of the report: ``name`` (its file stem), a ``title``, the matplotlib
    ``png`` figure and the plotly ``html`` figure, or a ``note`` saying why there is none."""

    name: str
    title: str
    png: Any = None
    html: Any = None
    note: str | None = None


def colour(outcome: str) -> str:
    return COLOURS.get(outcome) or OTHER_COLOURS[hash(outcome) % len(OTHER_COLOURS)]


def _outcomes(table: SweepTable) -> list[str]:
    return list(dict.fromkeys(r.outcome for r in table.rows))


# --------------------------------------------------------------------- stability map
def _numeric(table: SweepTable) -> list[str]:
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
    cats = [n for n in table.searched() if n not in _numeric(table)]
    return "norm" if "norm" in cats else cats[0] if cats else None


def _sizes(table: SweepTable, rows: list[Row]) -> list[float]:
    """Marker areas: 20 (worst finite objective) to 140 (best); 40 without one."""
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
    title = "Stability map"
    numeric = _numeric(table)[:MAX_NUMERIC]
    if len(numeric) < 2:
        return Plot("stability", title, note=f"no stability map: it needs two searched numeric knobs, "
                                              f"the space has {len(_numeric(table))}")
    if not table.rows:
        return Plot("stability", title, note="no stability map: no trial ended")
    pairs = list(combinations(numeric, 2))
    facet = _facet(table)
    facets = [None] if facet is None else list(dict.fromkeys(r.params.get(facet) for r in table.rows))
    fig = Figure(figsize=(3.6 * len(facets) + 1.4, 3.0 * len(pairs) + 0.5))
    # Margins by hand: matplotlib's constrained layout doubled the cost of this figure.
    axes = fig.subplots(len(pairs), len(facets), squeeze=False, gridspec_kw={
        "left": 0.9 / fig.get_figwidth(), "right": 1 - 1.4 / fig.get_figwidth(),
        "bottom": 0.5 / fig.get_figheight(), "top": 1 - 0.6 / fig.get_figheight(),
        "hspace": 0.45, "wspace": 0.3})
    html = make_subplots(rows=len(pairs), cols=len(facets), subplot_titles=[
        f"{facet}={v}" if facet else "" for _ in pairs for v in facets])
    for i, (x, y) in enumerate(pairs):
        for j, value in enumerate(facets):
            ax = axes[i][j]
            rows = [r for r in table.rows if facet is None or r.params.get(facet) == value]
            shown = [r for r in rows if x in r.params and y in r.params]
            for outcome in _outcomes(table):
                group = [r for r in shown if r.outcome == outcome]
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
                    showlegend=(i, j) == (0, 0) or outcome not in {t.name for t in html.data},
                    marker={"color": colour(outcome), "size": [math.sqrt(s) * 1.4 for s in sizes],
                            "symbol": ["circle" if m == "o" else "x" for m in markers]},
                    text=[_hover(table, r) for r in group], hoverinfo="text"), row=i + 1, col=j + 1)
            absent = [n for n in (x, y) if any(n not in r.params for r in rows)]
            label = f"{facet}={value}" if facet else ""
            if absent:  # e.g. clip_threshold under clip_method none: not drawn anywhere on its axis
                label += f" ({len(rows) - len(shown)} without {' or '.join(absent)} not shown)"
            ax.set_title(label, fontsize=9)
            ax.set_xlabel(x)
            ax.set_ylabel(y)
            for name, axis in ((x, "xaxis"), (y, "yaxis")):
                log = _log(table, name)
                _scale(table, name, ax, axis, log)
                html.update_layout({_axis(axis, i, j, len(facets)): {"type": "log" if log else "linear",
                                                                    "title": {"text": name}}})
    fig.legend(handles=[Line2D([], [], ls="", marker="o", color=colour(o), label=o) for o in _outcomes(table)],
               loc="center right", title="outcome")
    fig.suptitle(f"{title}: marker size = {table.metric} (larger is better), x = no finite value",
                 x=0.02, ha="left")
    html.update_layout(title=f"{title} (marker size = {table.metric}, larger is better)",
                       height=320 * len(pairs) + 80)
    return Plot("stability", title, fig, html)


def _scale(table: SweepTable, name: str, ax: Any, which: str, log: bool) -> None:
    """Log for log ranges (plain numbers on the ticks); a numeric list has its values as ticks."""
    (ax.set_xscale if which == "xaxis" else ax.set_yscale)("log" if log else "linear")
    axis = getattr(ax, which)
    dim = table.spec.search.space[name]
    if isinstance(dim, list):
        axis.set_ticks(sorted(float(v) for v in dim), labels=[f"{v:g}" for v in sorted(float(v) for v in dim)])
        axis.set_minor_formatter(NullFormatter())
    elif log:
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(NullFormatter())


def _axis(axis: str, i: int, j: int, cols: int) -> str:
    k = i * cols + j + 1
    return axis if k == 1 else f"{axis}{k}"


def _hover(table: SweepTable, row: Row) -> str:
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in row.params.items() if k in table.searched())
    value = "-" if row.value is None else f"{row.value:.4g}"
    return f"#{row.number} {row.outcome} {table.metric}={value}<br>{params}" + (
        f"<br>{row.reason}" if row.reason else "")


# --------------------------------------------------------------------- grad-norm traces
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
                                  legendgroup=row.outcome, hovertext=_hover(table, row)))
        onset = _onset(row)
        if onset is not None:
            ax.scatter([onset[0]], [onset[1]], marker="X", s=60, color=colour(row.outcome), zorder=3)
            html.add_trace(go.Scatter(x=[onset[0]], y=[onset[1]], mode="markers", showlegend=False,
                                      marker={"symbol": "x", "size": 11, "color": colour(row.outcome)},
                                      hovertext=f"#{row.number} diverged at step {row.divergence_step}: "
                                                f"{row.reason}"))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("grad_norm (pre-clip, log)")
    ax.set_title(f"{title}: diverged in red, X = divergence onset")
    html.update_layout(title=f"{title} (diverged in red, x = divergence onset)", yaxis_type="log",
                       xaxis_title="step", yaxis_title="grad_norm (pre-clip)")
    return Plot("traces", title, fig, html)


# --------------------------------------------------------------------- Optuna's plots
def _optuna_plot(name: str, title: str, study: optuna.Study, plotly_fn: Any, mpl_fn: Any,
                 note: str | None, size: tuple[float, float] | None = None) -> Plot:
    if note is not None:
        return Plot(name, title, note=note)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning of the matplotlib backend
        html = plotly_fn(study)
        ax = mpl_fn(study)
    fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
    if size is not None:
        fig.set_size_inches(*size)
        fig.subplots_adjust(bottom=0.2, top=0.85)
    return Plot(name, title, fig, html)


def _complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _no_plot(study: optuna.Study, least: int, what: str) -> str | None:
    if _complete(study) < least:
        return f"no {what}: {least} trial(s) with an objective needed, the sweep has {_complete(study)}"
    if not study.trials or not any(t.params for t in study.trials):
        return f"no {what}: the space searched nothing"
    return None


def history(study: optuna.Study) -> Plot:
    from optuna.visualization import matplotlib as mpl
    from optuna.visualization import plot_optimization_history

    return _optuna_plot("history", "Optimization history", study, plot_optimization_history,
                        mpl.plot_optimization_history, _no_plot(study, 1, "optimization history"))


def slices(study: optuna.Study) -> Plot:
    from optuna.visualization import matplotlib as mpl
    from optuna.visualization import plot_slice

    return _optuna_plot("slice", "Objective by knob (slice)", study, plot_slice, mpl.plot_slice,
                        _no_plot(study, 1, "slice plot"))


def parallel(study: optuna.Study) -> Plot:
    from optuna.visualization import matplotlib as mpl
    from optuna.visualization import plot_parallel_coordinate

    return _optuna_plot("parallel", "Parallel coordinates", study, plot_parallel_coordinate,
                        mpl.plot_parallel_coordinate, _no_plot(study, 2, "parallel coordinates"), size=(10, 5))


# --------------------------------------------------------------------- importance
def importances(table: SweepTable, study: optuna.Study | None = None) -> dict[str, dict[str, float] | str]:
    """fANOVA importance (seeded) per knob for ``table.metric`` and for ``P(diverged)``;
    a target without enough data maps to a one-line note instead."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    out: dict[str, dict[str, float] | str] = {}
    targets = {table.metric: study or to_study(table), "P(diverged)": divergence_study(table)}
    for target, s in targets.items():
        values = {t.value for t in s.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}
        knobs = {p for t in s.trials for p in t.params}
        if _complete(s) < 2 or len(knobs) < 2:
            out[target] = f"no importance for {target}: needs 2 trials and 2 searched knobs"
        elif len(values) < 2:
            out[target] = f"no importance for {target}: every trial has the same value"
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[target] = get_param_importances(s, evaluator=FanovaImportanceEvaluator(seed=0))
    return out


def importance(table: SweepTable, study: optuna.Study | None = None) -> Plot:
    title = "Knob importance (fANOVA)"
    found = importances(table, study)
    drawn = {t: v for t, v in found.items() if isinstance(v, dict)}
    notes = "; ".join(v for v in found.values() if isinstance(v, str)) or None
    if not drawn:
        return Plot("importance", title, note=notes)
    fig = Figure(figsize=(4.6 * len(drawn), 3.2))
    axes = fig.subplots(1, len(drawn), squeeze=False, gridspec_kw={
        "left": 0.2, "right": 0.97, "bottom": 0.16, "top": 0.8, "wspace": 0.6})[0]
    html = make_subplots(rows=1, cols=len(drawn), subplot_titles=list(drawn))
    for k, (target, values) in enumerate(drawn.items()):
        names = list(values)[::-1]  # most important on top
        axes[k].barh(names, [values[n] for n in names], color="#d62728" if "diverged" in target else "#2a7ab9")
        axes[k].set_title(f"for {target}")
        axes[k].set_xlabel("importance")
        html.add_trace(go.Bar(x=[values[n] for n in names], y=names, orientation="h", name=target),
                       row=1, col=k + 1)
    fig.suptitle(title)
    html.update_layout(title=title + (f" ({notes})" if notes else ""), showlegend=False)
    return Plot("importance", title, fig, html, note=notes)


def all_plots(table: SweepTable, study: optuna.Study | None = None) -> list[Plot]:
    """Every figure of the report, ``study`` made once (:func:`gradtune.study.to_study`)."""
    study = study or to_study(table)
    return [stability(table), traces(table), history(study), slices(study), parallel(study),
            importance(table, study)]
