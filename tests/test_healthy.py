"""``gradtune.healthy``: which checkpoint is the last healthy one, and how many Tune keeps."""

from __future__ import annotations

import pytest

from gradtune import healthy


def test_marks_name_the_last_checkpoint_a_window_old():
    marks = healthy.Marks(window=20)
    assert marks.healthy(100) == 0
    for step in (10, 20, 30, 40, 50):
        marks.add(step)
    assert marks.healthy(50) == 30 and marks.healthy(59) == 30 and marks.healthy(60) == 40
    assert marks.steps == [30, 40, 50]  # older ones are no longer needed
    copy = healthy.Marks(window=20)
    copy.load_state_dict(marks.state_dict())
    assert copy.healthy(70) == 50


@pytest.mark.parametrize("every,window,keep", [(10, 20, 3), (50, 20, 2), (5, 20, 5), (20, 20, 2),
                                               (0, 20, None), (None, 20, None)])
def test_tune_keeps_enough_checkpoints_for_the_healthy_one(every, window, keep):
    assert healthy.keep(every, window) == keep
    if every:  # checkpoints at every multiple: the healthy one is among the newest `keep`
        for now in range(every, 400, every):
            taken = list(range(every, now + 1, every))
            last_healthy = max((s for s in taken if s <= now - window), default=None)
            assert last_healthy is None or last_healthy in taken[-keep:]
