from __future__ import annotations

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
])
def test_bad_input_is_one_line_exit_2_and_starts_nothing(in_tmp, capsys, argv, expected):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert err.count("\n") == 1
    assert list(in_tmp.iterdir()) == []  # no mlflow.db, no results


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
