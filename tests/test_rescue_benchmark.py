"""``benchmarks/rescue.py``'s accounting: the floor of a rescue's compute against a restart."""

from __future__ import annotations

import pytest

from tests import _benchmarks

B = _benchmarks.load("rescue")


@pytest.mark.parametrize(("d", "latest"), [(30, 10), (39, 10), (40, 20), (268, 240)])
def test_the_floor_rolls_back_to_the_latest_checkpoint_judged_healthy(d, latest):
    """Checkpoints every 10 steps, judged healthy a window (20) later: from a verdict at 268
    the latest is 240, as the benchmark's deep_mlp rescue measured (268 -> 240)."""
    assert (B.EVERY, B.WINDOW) == (10, 20)
    rescue, restart = B.floor_compute({"divergence_step": d, "steps": 300})
    assert (rescue, restart) == (d + 300 - latest, d + 300)


def test_the_floor_is_in_the_summary_and_bounds_the_target():
    """A blow-up at 60 of 300 steps can cost no less than (60 + 300 - 40) / 360 = 0.89 of a
    restart: the issue's 0.6 needs blow-ups late in the run."""
    row = {"family": "f", "mid": True, "divergence_step": 60, "steps": 300, "rescue_trained": True,
           "restart_trained": True, "rescue_compute": 330, "restart_compute": 360, "lineage": "60->40 lr x0.5",
           "stop_trained": False, "stop_val": None, "rescue_val": 0.1}
    summary = B.summary([row])
    assert summary["compute_floor_vs_restart"] == pytest.approx(320 / 360)
    assert summary["compute_vs_restart"] == pytest.approx(330 / 360)
