"""The sweep as a table, from the driver's ledger and from MLflow alone."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from gradtune import spec as spec_mod
from gradtune import table
from gradtune.errors import GradtuneError
from gradtune.outcome import Ledger, Verdict
from tests import _tables


@pytest.mark.parametrize("name, text, expected", [
    ("batch_size", "32", 32),
    ("init_scale", "0.123456789", 0.123456789),
    ("clip_method", "norm", "norm"),
    ("lr", "0.05", 0.05),
    ("warmup_steps", "0", 0),
    ("qk_norm", "True", True),
    ("unknown_option", "x", "x"),
])
def test_params_are_typed_back_from_their_mlflow_text(name, text, expected):
    spec = spec_mod.load(None, {"search.space": {**_tables.SPACE, "qk_norm": [False, True]}})
    value = table.typed(spec, name, text)
    assert value == expected and type(value) is type(expected)


def test_from_ledger_keeps_outcome_reason_step_value_and_metrics():
    spec = spec_mod.load(None, {"name": "led"})
    ledger = Ledger()
    ledger.end("b", {"init_scale": 4.0}, {"step": 40, "val_loss": 0.5, "grad_norm": 2.0, "final": 1})
    ledger.judge("a", Verdict("grad norm 1e4 x its early median", 15))
    ledger.end("a", {"init_scale": 8.0}, {"step": 15, "val_loss": math.nan, "grad_norm": math.inf})
    ledger.end("c", {"init_scale": 1.0}, None, errored=True, error="RuntimeError: boom\n  at line 3")
    got = table.from_ledger(spec, ledger, {"a": "run-a"}, {"a": [(10, 1.0), (5, 0.5)]},
                            {"a": _tables.onset()}, experiment_id="7", parent_run_id="p")
    b, a, c = got.rows
    assert [r.number for r in got.rows] == [0, 1, 2] and got.experiment == "led"
    assert (b.outcome, b.value, b.metrics, b.reason, b.trace) == ("completed", 0.5, {"val_loss": 0.5, "grad_norm": 2.0},
                                                                   None, ())
    assert (a.outcome, a.value, a.divergence_step, a.run_id) == ("diverged", None, 15, "run-a")
    assert a.reason == "grad norm 1e4 x its early median" and a.metrics["grad_norm"] == math.inf
    assert a.trace == ((5, 0.5), (10, 1.0))
    assert a.onset == _tables.onset() and b.onset is None and c.onset is None
    assert (c.outcome, c.reason, c.value) == ("failed", "RuntimeError: boom at line 3", None)


@pytest.mark.slow  # an MLflow store, real training or every figure: seconds
def test_from_mlflow_reads_back_what_was_logged(tmp_path):
    expected = _tables.sweep(6)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = _tables.log_sweep(uri, expected)
    got = table.from_mlflow(uri, parent)
    assert (got.parent_run_id, got.experiment) == (parent, "hand")
    run_ids = {r.trial_id: r.run_id for r in got.rows}
    _tables.same(replace(expected, rows=tuple(replace(r, run_id=run_ids[r.trial_id]) for r in expected.rows)), got)
    assert "interrupted" not in run_ids  # a run stopped in flight is no row
    assert table.latest_sweep(uri, "hand") == parent == table.latest_sweep(uri)


@pytest.mark.slow  # an MLflow store, real training or every figure: seconds
def test_from_mlflow_reads_the_first_verdicts_onset_of_tagged_runs_only(tmp_path):
    from mlflow.tracking import MlflowClient

    from gradtune import onset

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = _tables.log_sweep(uri, _tables.sweep(6))
    first = table.from_mlflow(uri, parent)
    diverged = [r for r in first.rows if r.outcome == "diverged"]
    assert diverged and all(r.onset == _tables.onset() for r in diverged)
    assert diverged[0].onset is not None and diverged[0].onset["grad_norm"][-1][-1] is None  # NaN as null
    assert all(r.onset is None for r in first.rows if r.outcome != "diverged")
    client = MlflowClient(uri)
    rescued = diverged[0].run_id
    assert rescued is not None
    later = _tables.onset(verdict_step=40, first="net.3.weight")
    client.log_text(rescued, onset.to_json({**later, "verdict": 10}), "onset/verdict_10_step_40.json")
    client.log_text(rescued, onset.to_json({**later, "verdict": 2}), "onset/verdict_2_step_40.json")
    untagged = next(r.run_id for r in first.rows if r.outcome == "completed")
    assert untagged is not None
    client.log_text(untagged, onset.to_json(later), "onset/verdict_1_step_40.json")  # no tag: not read
    again = {r.run_id: r for r in table.from_mlflow(uri, parent).rows}
    assert again[rescued].onset == _tables.onset() and again[untagged].onset is None


@pytest.mark.slow  # an MLflow store, real training or every figure: seconds
def test_without_summary_numbers_follow_start_order(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = _tables.log_sweep(uri, _tables.sweep(3), summary=False)
    got = table.from_mlflow(uri, parent)
    assert [r.number for r in got.rows] == [0, 1, 2]
    assert [r.trial_id for r in got.rows] == ["t00002", "t00001", "t00000"]  # logged last to first


@pytest.mark.slow  # an MLflow store, real training or every figure: seconds
def test_unknown_runs_experiments_and_stores_are_one_line_errors(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(GradtuneError, match="no MLflow store"):
        table.latest_sweep(uri)
    assert not (tmp_path / "mlflow.db").exists()
    parent = _tables.log_sweep(uri, _tables.sweep(2))
    with pytest.raises(GradtuneError, match="no experiment 'nope'"):
        table.latest_sweep(uri, "nope")
    with pytest.raises(GradtuneError, match="no run 'nope'"):
        table.from_mlflow(uri, "nope")
    child = next(r for r in table.from_mlflow(uri, parent).rows).run_id
    assert child is not None
    with pytest.raises(GradtuneError, match="not a gradtune sweep"):
        table.from_mlflow(uri, child)


@pytest.mark.e2e
def test_a_real_sweep_gives_the_same_table_from_memory_and_from_mlflow(ray_session, tiny_spec):
    from mlflow.tracking import MlflowClient

    from gradtune import sweep

    spec = tiny_spec(**{
        "name": "e2e-table",
        "search.sampler": "grid",
        "search.space": {"init_scale": [1.0, 4.0], "norm": ["none", "layer"], "clip_method": ["none", "norm"],
                         "clip_threshold": [1.0], "batch_size": 32},
        "workload.options": {"depth": 20, "width": 32, "activation": "relu"},
        "training.steps": 30,
        "training.report_every": 5,
        "search.trials": 3,
    })
    result = sweep.run(spec)
    experiment_id = MlflowClient(result.tracking_uri).get_experiment_by_name(result.experiment).experiment_id
    traces = getattr(result, "traces", None)  # the in-memory traces, once tracking keeps them
    memory = table.from_ledger(spec, result.ledger, result.runs, traces, experiment=result.experiment,
                               experiment_id=experiment_id, parent_run_id=result.parent_run_id)
    stored = table.from_mlflow(result.tracking_uri, result.parent_run_id)
    assert len(memory.rows) == 8 and {r.outcome for r in memory.rows} >= {"completed", "diverged"}
    assert (stored.experiment_id, stored.parent_run_id) == (experiment_id, result.parent_run_id)
    _tables.same(memory, stored, traces=bool(traces))
    assert all(r.trace for r in stored.rows)
    assert all("clip_threshold" not in r.params for r in stored.rows if r.params["clip_method"] == "none")
