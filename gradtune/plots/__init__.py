"""The sweep report's figures, each made twice by well-kept libraries: a matplotlib figure
(saved as PNG, Agg backend) and a plotly figure (for the one HTML page).

- :func:`stability`: the stability map, one panel per pair of searched numeric knobs (log
  axes for log ranges), colour = outcome, marker size = objective (larger is better; ``x``
  for a trial without a finite objective), facets = the values of one categorical knob;
- :func:`traces`: every trial's pre-clip grad norm by step on a log axis, diverged in red
  with the onset marked;
- :func:`onset`: where divergences started, a panel per trial with a recorded onset (up to
  4, diverged and rescued first): its layers' grad norms by step on a log axis, the onset
  layer first and in red, the onset step marked (:mod:`gradtune.onset`);
- :func:`history`, :func:`slices`, :func:`parallel`: Optuna's own plots over
  :func:`gradtune.study.to_study` (diverged trials are infeasible there: drawn apart, at the
  worst objective); Optuna's parallel coordinates give log ranges a log axis and a trial
  without a conditional param (``clip_threshold`` under ``clip_method: none``) its own
  "None" tick below the axis' range, never its largest value;
- :func:`importance`: Optuna's fANOVA importance of each knob for the objective and for
  P(diverged) (:func:`gradtune.study.divergence_study`).

Too little data is not an error: a :class:`Plot` without figures carries a one-line
``note`` (no completed trial, one trial, fewer than two numeric knobs, no trace, ...).

One figure per private module (``_stability``, ``_traces``, ``_onset``, ``_optuna``, ``_importance``;
``_base`` the :class:`Plot` and the outcome colours).

NaN and inf: non-finite (and, on a log axis, non-positive) points are left out of a
trace, so a trial that went to NaN stops where its last finite norm was; its onset is marked
at the last finite norm at or before the divergence step. In the onset panels a NaN, inf or
``null`` norm is a gap in its layer's line. A 1e18 blow-up stays on the log
axis without flattening the other traces. Non-finite objectives never reach a plot
(``Row.value`` is ``None`` and the study holds no NaN).
"""

from __future__ import annotations

import optuna

from gradtune.plots._base import COLOURS, Plot, close, colour
from gradtune.plots._importance import importance, importances
from gradtune.plots._onset import onset
from gradtune.plots._optuna import history, parallel, slices
from gradtune.plots._stability import stability
from gradtune.plots._traces import traces
from gradtune.study import to_study
from gradtune.table import SweepTable

__all__ = ["COLOURS", "Plot", "all_plots", "close", "colour", "history", "importance", "importances",
           "onset", "parallel", "slices", "stability", "traces"]


def all_plots(table: SweepTable, study: optuna.Study | None = None) -> list[Plot]:
    """Every figure of the report, ``study`` made once (:func:`gradtune.study.to_study`)."""
    study = study or to_study(table)
    return [stability(table), traces(table), onset(table), history(study), slices(study), parallel(study),
            importance(table, study)]
