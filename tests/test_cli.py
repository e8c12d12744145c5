from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gradtune import cli

ROOT = Path(__file__).resolve().parent.parent


def test_validate_quickstart(capsys):
    assert cli.main(["validate", str(ROOT / "sweeps" / "quickstart.yaml")]) == 0
    assert "ok" in capsys.readouterr().out


@pytest.mark.parametrize("argv, expected", [
    (["sweep", "nope.yaml"], "nope.yaml: cannot read spec"),
    (["sweep", "--set", "training.steps=-1"], "training.steps"),
    (["sweep", "--set", "search.space.norm=[bogus]"], "search.space.norm"),
    (["sweep", "--trials", "zero"], "--trials: invalid int value"),
    (["sweep", "--bogus-flag"], "unrecognized arguments"),
    (["validate"], "the following arguments are required"),
    (["sweep", "--trials", "100000"],
     "error: search.trials: 100000 trials, more than 10000; add --yes to run it anyway"),
    (["sweep", "--set", "training.steps=1e12"],
     "error: training.steps: 1000000000000, more than 100000000; add --yes to run it anyway"),
    (["sweep", "--trials", "100000", "--set", "training.steps=1000000000000"],
     "error: search.trials: 100000 trials, more than 10000 (and 1 more); add --yes"),
    (["sweep", "--set", f"name={'n' * 300}"], "<defaults>: name: at most 224 characters"),
    (["sweep", "--experiment", "e" * 600], "<defaults>: tracking.experiment: at most 256 characters"),
    (["sweep", "--experiment", ""], "<defaults>: tracking.experiment: must not be empty"),
    (["sweep", "--set", "name=a/b"], "<defaults>: name: must not contain '/'"),
    (["validate", str(ROOT / "sweeps" / "quickstart.yaml"), "--set", "search.trials=20000"],
     "search.trials: 20000 trials, more than 10000; add --yes"),
])
def test_bad_input_is_one_line_exit_2_and_starts_nothing(in_tmp, capsys, argv, expected):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert err.count("\n") == 1
    assert list(in_tmp.iterdir()) == []  # no mlflow.db, no results


def test_an_alias_bomb_fails_validate_at_once(in_tmp, capsys):
    """Before: `validate` passed, then the sweep hung copying 10**9 strings, parent RUNNING."""
    from tests.test_spec import alias_bomb

    (in_tmp / "bomb.yaml").write_text(alias_bomb())
    for command in ("validate", "sweep"):
        assert cli.main([command, "bomb.yaml"]) == 2
        err = capsys.readouterr().err
        assert err == ("error: bomb.yaml: workload.options: more than 100000 values once YAML "
                       "aliases are expanded\n")
    assert sorted(p.name for p in in_tmp.iterdir()) == ["bomb.yaml"]


def test_yes_allows_sizes_beyond_the_limits(capsys):
    quickstart = str(ROOT / "sweeps" / "quickstart.yaml")
    assert cli.main(["validate", quickstart, "--set", "training.steps=1e9", "--yes"]) == 0
    assert "1000000000 steps each" in capsys.readouterr().out


def test_bad_tracking_uri_is_one_line(in_tmp, capsys):
    assert cli.main(["sweep", "--tracking-uri", "bogus-scheme://x", "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert "tracking.uri" in err and err.count("\n") == 1


def test_workloads_lists_builtins(capsys):
    assert cli.main(["workloads"]) == 0
    assert "deep_mlp" in capsys.readouterr().out


@pytest.mark.e2e
def test_module_entry_point_runs_a_sweep(tmp_path):
    """The README's first command, shortened: `python -m gradtune sweep` on the defaults."""
    proc = subprocess.run(
        [sys.executable, "-m", "gradtune", "sweep", "--trials", "2", "--set", "training.steps=20",
         "--storage", str(tmp_path / "results")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "gradtune sweep 'quickstart': 2 trials" in proc.stdout
    assert "python -m gradtune ui --tracking-uri sqlite:///" in proc.stdout
    assert (tmp_path / "mlflow.db").exists()
    # gradtune's own lines, without -v none of Tune's (its box, its table)
    assert proc.stdout.startswith("[1/2] "), proc.stdout[:500]
    assert "Configuration for experiment" not in proc.stdout and "Trial status" not in proc.stdout


@pytest.mark.parametrize("verbose, before, during", [
    (0, None, "0"),  # Tune's legacy output: silent at verbosity 0
    (1, None, None),  # -v: Tune's own output, as it comes
    (0, "1", "1"),  # the user's setting stands
])
def test_tune_is_quiet_unless_asked(monkeypatch, verbose, before, during):
    from gradtune import sweep

    if before is None:
        monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    else:
        monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", before)
    with sweep._quiet_tune(verbose):
        assert os.environ.get("RAY_AIR_NEW_OUTPUT") == during
    assert os.environ.get("RAY_AIR_NEW_OUTPUT") == before


@pytest.mark.parametrize("argv, expected", [
    (["sweep", "--resume", "no-such-sweep"], "--resume no-such-sweep: not a gradtune sweep folder"),
    (["sweep", "--resume", "x", "--trials", "3"], "--resume continues a sweep as it was started; --trials"),
])
def test_resume_of_nothing_is_one_line(in_tmp, capsys, argv, expected):
    assert cli.main([*argv, "--storage", str(in_tmp / "results")]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


@pytest.mark.slow  # an MLflow store, real training or every figure: seconds
def test_ui_prints_the_link_to_an_experiments_runs_table(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id = MlflowClient(tracking_uri=uri).create_experiment("team")
    lines = cli.ui_lines(uri, "127.0.0.1", 5001, "team")
    assert lines == [f"MLflow UI for {uri} at http://127.0.0.1:5001",
                     f"  runs of 'team': http://127.0.0.1:5001/#/experiments/{exp_id}/runs?workflowType=machine_learning"]
    assert cli.ui_lines(uri, "127.0.0.1", 5000, None) == [f"MLflow UI for {uri} at http://127.0.0.1:5000"]
    assert cli.main(["ui", "--tracking-uri", uri, "--experiment", "nope"]) == 2
    assert "--experiment nope: no such experiment in sqlite:///" in capsys.readouterr().err


@pytest.mark.slow  # an MLflow store, real training or every figure: seconds
def test_report_of_an_unknown_experiment_run_or_store_is_one_line_exit_2(in_tmp, capsys):
    from tests import _tables

    uri = f"sqlite:///{in_tmp / 'mlflow.db'}"
    assert cli.main(["report", "--tracking-uri", uri]) == 2  # no store: none is created
    assert capsys.readouterr().err.strip() == f"error: no MLflow store at {uri} (no file {in_tmp / 'mlflow.db'})"
    assert not (in_tmp / "mlflow.db").exists()
    _tables.log_sweep(uri, _tables.sweep(3))
    capsys.readouterr()
    for argv, expected in ((["nope"], "error: no experiment 'nope' in "),
                           (["--run", "abc"], "error: no run 'abc' in ")):
        assert cli.main(["report", *argv, "--tracking-uri", uri]) == 2
        err = capsys.readouterr().err
        assert err.startswith(expected) and err.count("\n") == 1


@pytest.mark.slow  # renders every figure: seconds
def test_report_prints_the_table_and_the_files(in_tmp, capsys):
    from tests import _tables

    uri = f"sqlite:///{in_tmp / 'mlflow.db'}"
    parent = _tables.log_sweep(uri, _tables.sweep(4))
    assert cli.main(["report", "hand", "--tracking-uri", uri, "--out", "rep"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("sweep hand (hand): 4 trials")
    assert out[-2:] == ["rep/report.html", "rep/optuna-study.jsonl"]
    assert cli.main(["report", "--run", parent, "--tracking-uri", uri]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"gradtune-report/hand-{parent[:8]}/optuna-study.jsonl"
