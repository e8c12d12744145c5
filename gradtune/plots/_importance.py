"""Which knobs matter: Optuna's fANOVA importance (seeded, so a report is reproducible) for
the objective and for P(diverged) (:func:`gradtune.study.divergence_study`: 1 for a
diverged trial, 0 for any other that did not fail). Only trials with an objective count
(Optuna's evaluators read COMPLETE trials; the study holds no NaN or inf), and a conditional
knob is ranked only when every such trial has it: ``clip_threshold`` drops out of the
ranking of a sweep that also tried ``clip_method: none`` (Optuna's intersection space)."""

from __future__ import annotations

import warnings

import optuna
import plotly.graph_objects as go
from matplotlib.figure import Figure
from plotly.subplots import make_subplots

from gradtune.plots._base import Plot
from gradtune.plots._optuna import complete
from gradtune.study import divergence_study, to_study
from gradtune.table import SweepTable


def importances(table: SweepTable, study: optuna.Study | None = None) -> dict[str, dict[str, float] | str]:
    """fANOVA importance (seeded) per knob for ``table.metric`` and for ``P(diverged)``;
    a target without enough data maps to a one-line note instead."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    out: dict[str, dict[str, float] | str] = {}
    targets = {table.metric: study or to_study(table), "P(diverged)": divergence_study(table)}
    for target, s in targets.items():
        values = {t.value for t in s.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}
        knobs = {p for t in s.trials for p in t.params}
        if complete(s) < 2 or len(knobs) < 2:
            out[target] = f"no importance for {target}: needs 2 trials and 2 searched knobs"
        elif len(values) < 2:
            out[target] = f"no importance for {target}: every trial has the same value"
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found = get_param_importances(s, evaluator=FanovaImportanceEvaluator(seed=0))
                out[target] = {name: float(v) for name, v in found.items()}
    return out


def importance(table: SweepTable, study: optuna.Study | None = None) -> Plot:
    """One bar chart per target (most important knob on top); a target without enough data
    is a note."""
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
