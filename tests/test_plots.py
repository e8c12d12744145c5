"""The report's figures: honest axes, NaN/inf that do not break them, notes for thin data."""

from __future__ import annotations

import math

import pytest

from gradtune import plots, study
from tests import _tables


def test_parallel_coordinates_put_clip_none_apart_not_at_the_largest_threshold():
    fig = plots.parallel(study.to_study(_tables.sweep(12))).html
    lines = [t for t in fig.data if t.customdata is not None]  # one per trial shown
    axis = [c[0] for c in lines[0].customdata].index("clip_threshold")
    at = {t.customdata[axis][1]: t.y[axis] for t in lines}
    assert at["None"] == 0.0 and 0.0 < min(y for text, y in at.items() if text != "None")
    assert max(at, key=lambda text: at[text]) != "None"
    ticks = {(a.x, a.text): a.y for a in fig.layout.annotations}
    assert ticks[(axis, "None")] == 0.0  # labelled as what it is
    init = [c[0] for c in lines[0].customdata].index("init_scale")
    assert ticks[(init, "1")] == 0.5  # 1 halfway between 0.25 and 4: a log axis


def test_stability_map_has_log_axes_for_log_ranges_and_leaves_clip_none_out_of_threshold_panels():
    swept = _tables.sweep(12)
    plot = plots.stability(swept)
    axes = plot.png.axes
    scales = {(ax.get_xlabel(), ax.get_xscale()) for ax in axes} | {(ax.get_ylabel(), ax.get_yscale()) for ax in axes}
    assert ("init_scale", "log") in scales and ("clip_threshold", "log") in scales
    assert ("batch_size", "linear") in scales
    drawn = sum(len(t.x) for t in plot.html.data if t.xaxis in ("x", "x2"))  # clip_threshold x init_scale
    assert drawn == sum(1 for r in swept.rows if "clip_threshold" in r.params)
    assert plot.html.layout.xaxis.type == "log" and plot.html.layout.yaxis.type == "log"
    assert any("without clip_threshold" in ax.get_title() for ax in axes)


def test_traces_survive_nan_inf_and_blow_ups_on_a_log_axis():
    rows = [_tables.row(0, "completed"), _tables.row(1, "diverged", None)]
    plot = plots.traces(_tables.table(rows))
    (ax,) = plot.png.axes
    assert ax.get_yscale() == "log" and plot.html.layout.yaxis.type == "log"
    diverged = next(t for t in plot.html.data if t.name == "#1 diverged")
    assert list(diverged.y) == [1.5, 1e18]  # NaN and inf left out
    onset = next(t for t in plot.html.data if t.mode == "markers")
    assert (list(onset.x), list(onset.y)) == ([15], [1e18])
    plot.png.savefig(_tmp_png := __import__("io").BytesIO(), format="png")
    assert _tmp_png.getvalue()[:4] == b"\x89PNG"


def test_a_trace_of_only_nan_is_a_note():
    row = _tables.row(0, "diverged", None)
    nan = _tables.table([type(row)(**{**row.__dict__, "trace": ((5, math.nan), (10, math.inf))})])
    plot = plots.traces(nan)
    assert plot.png is None and "no grad-norm traces" in (plot.note or "")


@pytest.mark.slow  # an MLflow store, real training or every figure: seconds
def test_onset_panels_draw_the_onset_layer_first_and_keep_nan_as_gaps():
    from dataclasses import replace

    from gradtune import onset
    from gradtune.plots._onset import MAX_LAYERS, headline

    grads = [[1.0] * 12 + [math.nan, math.inf, math.nan]] + [[0.5 * 2.0 ** max(0, s - 10) for s in range(1, 16)]] * 7
    # not through JSON: NaN and inf as floats
    raw = onset.analyse(_tables.LAYERS, list(range(1, 16)), grads, [[1.0] * 15] * 8, verdict_step=15)
    rows = [_tables.row(0, "completed"), _tables.row(1, "diverged", None),
            replace(_tables.row(2, "diverged", None), onset=raw), _tables.row(3, "rescued", 1.2)]
    rows[3] = replace(rows[3], onset=_tables.onset(first="net.3.weight"))
    plot = plots.onset(_tables.table(rows))
    assert plot.note is None and len(plot.png.axes) == 3
    first = plot.png.axes[0]
    assert first.get_title() == "#1 onset: net.1.weight grew 243x by step 13" == headline(rows[1])
    assert first.get_yscale() == "log" and [t.get_text() for t in first.get_legend().get_texts()][0] == "net.1.weight"
    assert len(first.get_lines()) == MAX_LAYERS + 1 and list(first.get_lines()[-1].get_xdata()) == [13, 13]
    assert plot.png.axes[2].get_title().startswith("#3 onset: net.3.weight")
    traces = [t for t in plot.html.data if t.legendgroup == "#1"]
    assert traces[0].name == "#1 net.1.weight" and traces[0].line.width == 3
    head = next(t for t in traces if t.name == "#1 head.weight")
    assert head.y[-1] is None and all(v is not None and v > 0 for v in head.y[:-1])  # NaN: a gap
    assert all(ax.type == "log" for ax in (plot.html.layout.yaxis, plot.html.layout.yaxis2))
    assert plot.png.axes[1].get_title() == "#2 onset: embed.weight grew 1x by step 13"  # non-finite first
    embed = next(t for t in plot.html.data if t.name == "#2 embed.weight")
    assert list(embed.y[-4:]) == [1.0, None, None, None]  # NaN and inf as floats: gaps too
    plot.png.savefig(png := __import__("io").BytesIO(), format="png")
    assert png.getvalue()[:4] == b"\x89PNG"


def test_onset_of_no_trial_is_a_note_and_of_more_than_four_says_so():
    from dataclasses import replace

    none = plots.onset(_tables.table([_tables.row(0, "completed"), _tables.row(1, "failed", None)]))
    assert none.png is None and none.html is None
    assert none.note == "no onset recorded: set divergence.onset: true, or a rescue records it"
    six = [replace(_tables.row(i, "completed"), onset=_tables.onset()) for i in range(5)] + [
        _tables.row(5, "diverged", None)]
    plot = plots.onset(_tables.table(six))
    assert [ax.get_title().split()[0] for ax in plot.png.axes] == ["#5", "#0", "#1", "#2"]
    assert plot.note == "2 more trial(s) with an onset not drawn"


def test_importance_is_given_for_the_objective_and_for_p_diverged():
    found = plots.importances(_tables.sweep(24))
    assert set(found) == {"val_loss", "P(diverged)"}
    for values in found.values():
        assert isinstance(values, dict) and "init_scale" in values
        assert math.isclose(sum(values.values()), 1.0)
    plot = plots.importance(_tables.sweep(24))
    assert len(plot.png.axes) == 2 and plot.note is None


@pytest.mark.parametrize("rows, space", [
    ([_tables.row(0, "completed")], None),  # one trial
    ([_tables.row(0, "diverged", None), _tables.row(1, "failed", None)], None),  # no completed trial
    ([_tables.row(0, "completed", 1.0), _tables.row(1, "diverged", 2.0, init_scale=4.0)],
     {"init_scale": {"low": 0.25, "high": 4.0, "log": True}}),  # a space of one knob
    ([], None),  # nothing ended
])
def test_too_little_data_gives_notes_not_errors(rows, space):
    figures = plots.all_plots(_tables.table(rows, space))
    assert [p.name for p in figures] == ["stability", "traces", "onset", "history", "slice", "parallel",
                                         "importance"]
    assert any(p.note for p in figures)
    for p in figures:
        assert (p.png is None) == (p.html is None)
        assert p.png is not None or p.note


def test_a_space_of_one_knob_says_why_there_is_no_map_or_importance():
    one = _tables.table([_tables.row(0, "completed", 1.0), _tables.row(1, "completed", 2.0, init_scale=2.0)],
                        {"init_scale": {"low": 0.25, "high": 4.0, "log": True}})
    assert "two searched numeric knobs" in (plots.stability(one).note or "")
    assert "2 searched knobs" in (plots.importance(one).note or "")
    assert plots.slices(study.to_study(one)).png is not None


def test_optunas_plots_leave_matplotlibs_style_as_it_was():
    import matplotlib

    before = dict(matplotlib.rcParams)
    plots.all_plots(_tables.sweep(8))
    assert dict(matplotlib.rcParams) == before


def test_a_trial_some_seeds_diverged_on_is_drawn_by_its_p_diverged():
    from dataclasses import replace

    from gradtune.plots._base import colour, group

    swept = _tables.sweep(6)
    shaky = replace(swept.rows[0], metrics={**swept.rows[0].metrics, "p_diverged": 1 / 3})
    swept = replace(swept, rows=(shaky, *swept.rows[1:]))
    assert group(shaky) == "completed, P(diverged)=0.33" and group(swept.rows[3]) == "completed"
    assert colour(group(shaky)) not in {colour("completed"), colour("diverged")}
    legend = [t.get_text() for t in plots.stability(swept).png.legends[0].get_texts()]
    assert "completed, P(diverged)=0.33" in legend and "completed" in legend
