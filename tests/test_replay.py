"""``gradtune replay``: a trial logged to MLflow (the tracking callback fed by an in-process
trial, no Ray) is rebuilt from the store and diverges again at the recorded step."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest

from gradtune import cli, replay, tracking, trial
from gradtune.outcome import Ledger
from gradtune.spec import Range, load


def logged_trial(tmp_path, rescue_cfg=None):
    """A store holding one sweep with one trial of the poisoned plug-in (diverges at 60)."""
    overrides = {"workload.name": "tests.rescue_plugins:poisoned", "workload.options": {"poison_at": 60},
                 "search.space": {"lr": [0.05, 0.1], "clip_method": ["none"]}, "training.steps": 120,
                 "training.report_every": 10, "training.checkpoint_every": 10, "training.device": "cpu",
                 "training.seed": 3, "divergence.onset": True}
    if rescue_cfg:
        overrides["divergence.rescue"] = rescue_cfg
    spec = load(None, overrides)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = tracking.MLflowTracking(spec, uri, "exp", Ledger(), spool=str(tmp_path / "spool"), drain_s=30)
    tracker.start()
    t = SimpleNamespace(trial_id="t1", config={"lr": 0.1, "clip_method": "none"}, last_result=None,
                        num_failures=0)
    tracker.on_trial_start(0, [], t)
    t.last_result = trial.train(spec, t.config, lambda m: tracker.on_trial_result(0, [], t, dict(m)))
    tracker.on_trial_complete(0, [], t)
    assert tracker.finish() == 0
    return uri, tracker.run_ids()["t1"]


@pytest.mark.parametrize("rescue_cfg,healthy", [
    (None, "no healthy checkpoint"),  # in-process without checkpoints (save=None)
    ({"attempts": 2}, "healthy checkpoint at step 40"),  # a rescue keeps checkpoints in memory
])
@pytest.mark.slow  # an MLflow store, real training or every figure: seconds
def test_replay_reproduces_the_recorded_divergence_step(tmp_path, capsys, rescue_cfg, healthy):
    uri, run_id = logged_trial(tmp_path, rescue_cfg)
    out = tmp_path / "replay"
    code = cli.main(["replay", run_id, "--tracking-uri", uri, "--out", str(out), "--tolerance", "0"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"recorded: diverged at step 60 on cpu, {healthy}, onset batches 41-60" in printed
    assert "reproduced: diverged at step 60 (+0 steps, tolerance 0)" in printed
    assert "1. branches.hot.weight" in printed
    with open(out / "steps.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 61))  # every step up to the onset
    found = json.loads((out / "onset.json").read_text())
    assert found["steps"] == list(range(1, 61)) and found["onset_layer"] == "branches.hot.weight"
    assert (out / "onset_window.csv").read_text().splitlines()[1].split(",")[1] == "branches.hot.weight"


@pytest.mark.slow  # an MLflow store, real training or every figure: seconds
def test_an_unknown_run_is_one_line_and_exit_2(tmp_path, capsys):
    uri, _ = logged_trial(tmp_path)
    capsys.readouterr()
    assert cli.main(["replay", "0123456789abcdef", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: run 0123456789abcdef: not found in sqlite:///")


def test_logged_params_come_back_typed():
    assert replay.typed("0.1", [0.05, 0.1], "lr") == 0.1
    assert replay.typed("True", [True, False], "flag") is True
    assert replay.typed("64", Range(low=16, high=128), "batch_size") == 64
    assert replay.typed("0.3", Range(low=0.1, high=1.0), "lr") == 0.3
    with pytest.raises(Exception, match="none of the space's choices"):
        replay.typed("7", [1, 2], "depth")
