"""Optuna's own plots, both backends, over the sweep's study (:func:`gradtune.study.to_study`):
optimization history, slice, parallel coordinates. Diverged trials are infeasible there
(drawn apart, at the worst objective); in the parallel coordinates a log range has a log
axis, and a trial without a conditional param (``clip_threshold`` under ``clip_method:
none``) sits on its own "None" tick below that axis, never at its largest value. The study
holds no NaN or inf (see :mod:`gradtune.study`)."""

from __future__ import annotations

import warnings
from typing import Any

import matplotlib
import optuna

from gradtune.plots._base import Plot


def _optuna_plot(name: str, title: str, study: optuna.Study, plotly_fn: Any, mpl_fn: Any,
                 note: str | None, size: tuple[float, float] | None = None) -> Plot:
    if note is not None:
        return Plot(name, title, note=note)
    # Optuna's matplotlib plots switch the process to the "ggplot" style: rc_context takes it back.
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore")  # ExperimentalWarning of the matplotlib backend
        html = plotly_fn(study)
        axes = mpl_fn(study)
        ax = axes.flat[0] if hasattr(axes, "flat") else axes
        fig = ax.figure
        if size is not None:
            fig.set_size_inches(*size)
            fig.subplots_adjust(bottom=0.2, top=0.85)
            ax.set_title(ax.get_title(), pad=22)  # clear of the feasible/infeasible legend
    return Plot(name, title, fig, html)


def complete(study: optuna.Study) -> int:
    """How many trials of ``study`` are COMPLETE (have an objective)."""
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _no_plot(study: optuna.Study, least: int, what: str) -> str | None:
    if complete(study) < least:
        return f"no {what}: {least} trial(s) with an objective needed, the sweep has {complete(study)}"
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
