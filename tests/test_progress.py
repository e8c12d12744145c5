"""One terminal line per finished trial, from the ledger's record (no Ray needed)."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

from gradtune import progress
from gradtune.outcome import Ledger, Verdict
from gradtune.spec import SweepSpec

KNOBS = {"norm": "none", "clip_method": "none", "init_scale": 3.2, "batch_size": 64}


def test_lines_say_outcome_knobs_and_objective_or_reason():
    ledger = Ledger()
    ledger.judge("d", Verdict("loss is nan", 20))
    diverged = ledger.end("d", KNOBS, {"step": 20, "final": 1, "val_loss": math.nan})
    assert progress.line(diverged, 3, 24, "val_loss") == (
        "[ 3/24] diverged   norm=none clip=none init=3.2 bs=64  at step 20: loss is nan")
    done = ledger.end("c", KNOBS, {"step": 300, "final": 1, "val_loss": 0.14932})
    assert progress.line(done, 4, 24, "val_loss").endswith(
        "completed  norm=none clip=none init=3.2 bs=64  val_loss=0.1493")
    pruned = ledger.end("p", KNOBS, {"step": 30, "final": 0, "val_loss": math.inf})
    assert progress.line(pruned, 5, 24, "val_loss").endswith("val_loss=inf at step 30")
    failed = ledger.end("f", KNOBS, None, errored=True)
    assert progress.line(failed, 6, 24, "val_loss").endswith(
        "failed     norm=none clip=none init=3.2 bs=64  val_loss=-")


def test_the_callback_writes_each_trial_once():
    out = io.StringIO()
    ledger = Ledger()
    cb = progress.Progress(SweepSpec(), ledger, 2, out)
    trial = SimpleNamespace(trial_id="a", config={"norm": "layer"},
                            last_result={"step": 300, "final": 1, "val_loss": 0.2})
    cb.on_trial_complete(0, [], trial)
    cb.on_trial_complete(0, [], trial)
    assert out.getvalue().count("\n") == 1 and out.getvalue().startswith("[1/2] completed")
    assert out.getvalue().endswith("val_loss=0.2  | 1 completed\n")
    ledger.judge("b", Verdict("loss is nan", 7))
    cb.on_trial_complete(0, [], SimpleNamespace(trial_id="b", config={}, last_result={"step": 7, "final": 1}))
    assert out.getvalue().splitlines()[1].endswith("at step 7: loss is nan  | 1 completed, 1 diverged")
    assert ledger.records["a"].params["norm"] == "layer"
    assert "stream" in cb.__getstate__() and cb.__getstate__()["stream"] is None


def test_the_line_ends_with_the_outcomes_so_far():
    ledger = Ledger()
    record = ledger.end("c", KNOBS, {"step": 300, "final": 1, "val_loss": 0.5})
    counts = {"completed": 10, "diverged": 2, "pruned": 1, "failed": 0}
    assert progress.line(record, 13, 24, "val_loss", counts).endswith(
        "val_loss=0.5  | 10 completed, 2 diverged, 1 pruned")


def test_a_rescued_trial_says_its_rollbacks():
    ledger = Ledger()
    lineage = '[{"attempt": 1, "from_step": 120, "to_step": 80, "remedy": "lr x0.5", "reason": "r"}]'
    record = ledger.end("r", KNOBS, {"step": 300, "final": 1, "val_loss": 0.2, "rescue_attempts": 1,
                                     "rescues": lineage})
    assert progress.line(record, 1, 2, "val_loss").endswith(
        "rescued    norm=none clip=none init=3.2 bs=64  val_loss=0.2  after 120->80 lr x0.5")
