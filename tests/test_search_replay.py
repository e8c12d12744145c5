"""``benchmarks/search_replay.py``'s replay, on a small hand-made landscape: it drives the
real searchers (gradtune's, Ray's ``OptunaSearch``, random) through Tune's ``Searcher``
API, so an API change there fails here rather than in a 15-minute benchmark run."""

from __future__ import annotations

import math

import pytest

from tests import _benchmarks

R = _benchmarks.load("search_replay")
INITS = [0.5, 0.7, 1.0, 1.4, 2.0]
LRS = [0.01, 0.1, 1.0, 3.0]


def row(init: float, lr: float) -> dict:
    """Above init 1.2 the net diverges at step 3 (NaN loss); below, accuracy rises with the
    init scale."""
    if init > 1.2:
        return {"init_scale": init, "lr": lr, "outcome": "diverged", "step": 3,
                "val_loss": math.nan, "val_accuracy": 0.1, "diverged": 1}
    return {"init_scale": init, "lr": lr, "outcome": "completed", "step": 150,
            "val_loss": 2.3 - init, "val_accuracy": init / 1.2, "diverged": 0}


LAND = R.Landscape([row(i, lr) for i in INITS for lr in LRS])


def test_a_suggestion_is_answered_by_the_nearest_grid_point_in_log_space():
    assert LAND.lookup({"init_scale": 0.85, "lr": 0.04})["init_scale"] == 1.0  # log-midpoint 0.84
    assert LAND.lookup({"init_scale": 0.83, "lr": 0.02})["lr"] == 0.01


class Recorded(R.Landscape):
    """The landscape, keeping each configuration it is asked for: trial k's is ``asked[k]``
    (the replay numbers trials in the order it starts them)."""

    def __init__(self, rows: list[dict]) -> None:
        super().__init__(rows)
        self.asked: list[dict] = []

    def lookup(self, config: dict) -> dict:
        self.asked.append(dict(config))
        return super().lookup(config)


def nearest_init(init: float) -> float:
    """The grid's init scale nearest to ``init`` in log space, worked out here rather than
    by ``Landscape``."""
    return min(INITS, key=lambda grid: abs(math.log(grid / init)))


@pytest.mark.parametrize("method", ["gradtune", "optuna_plain", "random"])
def test_replay_runs_each_searcher_over_the_landscape(method):
    # Seed 1: for some searchers the first half diverges less often than the second, and
    # counting in completion order (diverged trials finish first) gives another figure, so
    # counting the wrong trials fails here.
    land = Recorded([row(i, lr) for i in INITS for lr in LRS])
    out = R.replay(method, seed=1, land=land, trials=16)
    assert len(land.asked) == 16
    inits = [nearest_init(config["init_scale"]) for config in land.asked]
    assert 0.0 <= out["second_half_diverged"] <= 1.0
    # Trials 8-15 are the second half; a trial diverges where its grid point's init is above 1.2.
    assert out["second_half_diverged"] == sum(init > 1.2 for init in inits[8:]) / 8
    # The best completed trial's accuracy is one of the table's stable ones: the best asked for.
    assert out["best_val_accuracy"] in {i / 1.2 for i in INITS if i <= 1.2}
    assert out["best_val_accuracy"] == max(init / 1.2 for init in inits if init <= 1.2)
