"""The report: files written, a self-contained page, the terminal table."""

from __future__ import annotations

import re

import optuna
import pytest

from gradtune import report
from tests import _tables


@pytest.mark.slow  # renders every figure: seconds
def test_write_gives_pngs_one_offline_page_and_the_journal(tmp_path):
    paths = report.write(_tables.sweep(24), tmp_path / "out")
    names = [p.name for p in paths]
    assert names == ["stability.png", "traces.png", "onset.png", "history.png", "slice.png", "parallel.png",
                     "importance.png", "report.html", "optuna-study.jsonl"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths if p.suffix == ".png")
    page = (tmp_path / "out" / "report.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc=", page)  # nothing fetched: works offline
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(paths[-1])))
    assert len(optuna.load_study(study_name="hand", storage=storage).trials) == 24


@pytest.mark.slow  # renders every figure: seconds
def test_plotly_js_is_embedded_once(tmp_path):
    report.write(_tables.sweep(6), tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert page.count("window.PlotlyConfig") == 1
    assert page.count('class="plotly-graph-div"') == 7


@pytest.mark.slow  # an MLflow store, real training or every figure: seconds
def test_thin_data_writes_notes_in_the_page(tmp_path):
    paths = report.write(_tables.table([_tables.row(0, "diverged", None)]), tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "no optimization history" in page and "no importance" in page
    assert [p.name for p in paths if p.suffix == ".png"] == ["stability.png", "traces.png", "onset.png"]


def test_text_sorts_completed_by_objective_then_the_rest_with_reasons():
    rows = [_tables.row(0, "completed", 2.0), _tables.row(1, "diverged", 0.1), _tables.row(2, "completed", 1.0),
            _tables.row(3, "failed", None)]
    lines = report.text(_tables.table(rows)).splitlines()
    assert lines[0].startswith("sweep hand (hand): 4 trials, 2 completed, 1 diverged, 1 failed")
    assert [int(line.split()[0]) for line in lines[2:6]] == [2, 0, 1, 3]
    assert lines[4].endswith("[grad norm 1e18 x its early median @ step 15]")
    assert lines[5].endswith("[RuntimeError: boom]") and " - " in lines[5]
    assert "clip_threshold=1" in lines[2] and "lr=" not in lines[2]  # searched knobs only


def test_max_mode_sorts_largest_first():
    rows = [_tables.row(0, "completed", 0.5), _tables.row(1, "completed", 0.9)]
    lines = report.text(_tables.table(rows, mode="max")).splitlines()
    assert [int(line.split()[0]) for line in lines[2:]] == [1, 0]




def test_where_divergences_started_is_a_table_when_a_trial_has_an_onset(tmp_path):
    from dataclasses import replace

    long = "transformer.h.11.attention.c_attn.qkv_projection.weight"
    odd = {**_tables.onset(), "onset_layer": long, "verdict_step": None}  # no row of its own: "-"
    rows = [_tables.row(0, "completed"), _tables.row(1, "diverged", None),
            replace(_tables.row(2, "rescued", 1.5), onset=odd)]
    lines = report.text(_tables.table(rows)).splitlines()
    at = lines.index("Where divergences started (the first verdict's onset layer):")
    assert lines[at + 1].split() == ["#", "outcome", "onset", "step", "verdict", "onset", "layer", "growth"]
    assert lines[at + 2].split() == ["1", "diverged", "13", "15", "net.1.weight", "243x"]
    assert lines[at + 3].split() == ["2", "rescued", "-", "-", "..." + long[-37:], "-"]
    assert len(lines) == at + 4
    clean = [_tables.row(0, "completed"), _tables.row(1, "failed", None)]
    assert "Where divergences started" not in report.text(_tables.table(clean))
    page = report._page(_tables.table(rows), [])
    assert "Where divergences started (the first verdict&#x27;s onset layer):" in page
