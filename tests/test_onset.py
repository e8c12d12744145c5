"""Where a divergence started: the per-layer analysis (pure), the device ring buffer, and a
trial whose one branch was made to blow up first (tests/rescue_plugins.py)."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
import torch

from gradtune import onset, outcome, telemetry, trial
from gradtune.spec import load

STEPS = list(range(101, 121))


def grow(start_at: int, rate: float, base: float = 1.0) -> list[float]:
    return [base * (rate ** max(0, s - start_at)) for s in STEPS]


def test_the_layer_that_grew_first_is_the_onset_layer():
    names = ["a", "b", "c", "d"]
    grads = [grow(112, 2.0), grow(105, 1.5, base=3.0), [1.0] * 20, grow(112, 4.0)]
    weights = [[1.0] * 20 for _ in names]
    found = onset.analyse(names, STEPS, grads, weights, verdict_step=120)
    table = found["table"]
    assert found["onset_layer"] == "b"
    assert [r["layer"] for r in table] == ["b", "d", "a", "c"]  # d and a cross together: d grew more
    assert table[0]["onset_step"] == 111  # 1.5^6 = 11.4 > 10
    assert table[-1]["onset_step"] is None and table[-1]["growth"] == 1.0
    assert [r["rank"] for r in table] == [1, 2, 3, 4]


def test_a_layer_that_went_nonfinite_first_started_it_and_json_keeps_nan_as_null():
    names = ["x", "y"]
    nan_first = [1.0] * 10 + [math.nan] * 10
    grads = [grow(110, 10.0), nan_first]  # x crosses at 111, y is NaN from 111
    found = onset.analyse(names, STEPS, grads, [[1.0] * 20] * 2, verdict_step=120)
    assert found["onset_layer"] == "y"
    row = found["table"][0]
    assert row["nonfinite_step"] == 111 and row["grad_last"] == 1.0
    text = onset.to_json(found)
    back = onset.from_json(text)
    assert back is not None and back["grad_norm"][1][-1] is None
    assert onset.from_json("[]") is None and onset.from_json(None) is None
    rows = list(csv.DictReader(io.StringIO(onset.to_csv(found))))
    assert tuple(rows[0]) == onset.COLUMNS and rows[0]["layer"] == "y" and rows[1]["nonfinite_step"] == ""


def test_the_ring_buffer_keeps_the_last_steps_in_order_on_the_device():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    ring = telemetry.LayerNorms(["a", "b"], [a, b], size=3)
    for step in range(1, 6):
        a.grad = torch.full((2,), float(step))
        b.grad = None  # no gradient: counts 0
        ring.record(step)
    steps, grads, weights = ring.read()
    assert steps == [3, 4, 5]
    assert grads[0] == pytest.approx([math.sqrt(2) * s for s in (3, 4, 5)]) and grads[1] == [0.0, 0.0, 0.0]
    assert weights[1] == pytest.approx([math.sqrt(3)] * 3)
    state = ring.state_dict()
    ring.record(6)
    ring.load_state_dict(state)
    assert ring.read()[0] == [3, 4, 5]


def test_a_trial_names_the_branch_that_was_made_to_blow_up_first():
    spec = load(None, {"workload.name": "tests.rescue_plugins:poisoned", "search.space": {},
                       "workload.options": {"poison_at": 60, "ramp": True, "poison": 1.5},
                       "training.steps": 120, "training.report_every": 10, "training.device": "cpu",
                       "training.optimizer": {"name": "sgd", "lr": 0.1}, "divergence.onset": True})
    last = trial.train(spec, {}, lambda m: None)
    assert last[outcome.DIVERGED] == 1
    found = json.loads(last[outcome.ONSET])
    assert found["onset_layer"] == "branches.hot.weight"
    assert found["steps"][-1] == last["divergence_step"] and len(found["steps"]) == trial.last_steps(spec)
    hot = found["table"][0]
    assert hot["onset_step"] < last["divergence_step"] and hot["growth"] > 100
    assert all(r["onset_step"] is None for r in found["table"][1:])


def test_per_layer_norms_are_opt_in():
    spec = load(None, { "training.steps": 20, "training.device": "cpu",
                       "workload.options": {"depth": 20, "width": 64, "activation": "relu"},
                       "search.space": {}, "training.optimizer": {"name": "sgd", "lr": 50.0}})
    last = trial.train(spec, {}, lambda m: None)
    assert last[outcome.DIVERGED] == 1 and outcome.ONSET not in last
