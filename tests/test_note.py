"""The parent run's note, best metrics and UI links, from a ledger filled by hand."""

from __future__ import annotations

import math

import pytest

from gradtune import note
from gradtune.outcome import Ledger, Verdict

KNOBS = ("norm", "init_scale")


def ledger() -> Ledger:
    book = Ledger()
    book.end("good", {"norm": "layer", "init_scale": 1.0}, {"final": 1, "val_loss": 0.15, "val_accuracy": 0.96})
    book.end("ok", {"norm": "batch", "init_scale": 0.5}, {"final": 1, "val_loss": 0.4})
    book.judge("boom", Verdict("grad_norm grew 1.2e+05x in 20 steps", 31))
    book.end("boom", {"norm": "none", "init_scale": 4.0}, {"final": 1, "val_loss": math.nan})
    book.judge("boom2", Verdict("grad_norm grew 3.0e+03x in 20 steps", 22))
    book.end("boom2", {"norm": "none", "init_scale": 2.5}, {"final": 1})
    book.judge("nan", Verdict("loss is nan", 7))
    book.end("nan", {"norm": "none", "init_scale": 3.0}, {"final": 1})
    book.end("cut", {"norm": "layer", "init_scale": 0.3}, {"final": 0, "val_loss": 2.0})
    return book


def test_the_note_explains_the_sweep():
    text = note.render(ledger(), "quickstart", "val_loss", "min", KNOBS, {"good": "run-abc"}, "7")
    lines = text.splitlines()
    assert lines[0] == ("**gradtune sweep `quickstart`**: 6 trials — "
                        "2 completed, 3 diverged, 0 rescued, 1 pruned, 0 failed")
    assert "[trial 0](#/experiments/7/runs/run-abc): val_loss = 0.15, val_accuracy = 0.96" in lines
    assert "| norm | layer |" in lines and "| init_scale | 1 |" in lines
    assert "| grad_norm grew #x in # steps | 2 | 22 |" in lines
    assert "| loss is nan | 1 | 7 |" in lines
    assert lines.index("| grad_norm grew #x in # steps | 2 | 22 |") < lines.index("| loss is nan | 1 | 7 |")
    assert "| norm | batch, layer | none |" in lines
    assert "| init_scale | 0.5 – 1 | 2.5 – 4 |" in lines


def test_the_note_without_a_best_trial_or_a_run_id():
    book = Ledger()
    book.judge("a", Verdict("loss is inf", 3))
    book.end("a", {"norm": "none"}, {"final": 1})
    text = note.render(book, "s", "val_loss", "min", ["norm", "lr"], {}, "1")
    assert "No trial completed with a finite val_loss." in text
    assert "| norm | - | none |" in text and "| lr | - | - |" in text
    book.end("b", {"norm": "layer"}, {"final": 1, "val_loss": 0.3})
    assert "trial 1: val_loss = 0.3" in note.render(book, "s", "val_loss", "min", [], {}, "1")


def test_a_long_note_is_cut_to_what_mlflow_takes():
    book = Ledger()
    for i in range(300):
        book.judge(f"t{i}", Verdict(f"rule number {chr(65 + i % 26)}{i:x} fired", i))
        book.end(f"t{i}", {"norm": "none"}, {"final": 1})
    text = note.render(book, "s", "val_loss", "min", ["norm"], {}, "1")
    assert len(text) == note.MAX_NOTE and text.endswith("\n...")


@pytest.mark.parametrize(("reason", "kind"), [
    ("grad_norm 1e5 is 1e4x the cohort median at step 20", "grad_norm # is #x the cohort median at step #"),
    ("fp16 gradients overflowed 20 steps in a row", "fp16 gradients overflowed # steps in a row"),
    ("loss is nan", "loss is nan"),
    ("one update moved the weights 3.2x their norm", "one update moved the weights #x their norm"),
])
def test_reason_kinds_drop_the_numbers(reason, kind):
    assert note.reason_kind(reason) == kind


def test_best_metrics_are_the_best_completed_trials_finite_ones():
    assert note.best_metrics(ledger(), "val_loss", "min") == {"best_val_loss": 0.15, "best_val_accuracy": 0.96}
    assert note.best_metrics(ledger(), "val_accuracy", "max") == {
        "best_val_accuracy": 0.96, "best_val_loss": 0.15}
    assert note.best_metrics(Ledger(), "val_loss", "min") == {}


def test_the_link_opens_the_runs_table_in_model_training_mode():
    tail = "/#/experiments/3/runs?workflowType=machine_learning"
    assert note.ui_link("https://alice:s3cret@mlflow.example.com/", "3") == "https://***@mlflow.example.com" + tail
    assert note.ui_link("http://127.0.0.1:5000", "3") == "http://127.0.0.1:5000" + tail
    assert note.ui_link("sqlite:////tmp/m.db", "3") == "http://127.0.0.1:5000" + tail
    assert note.ui_link("sqlite:////tmp/m.db", "3", base="http://0.0.0.0:8080") == "http://0.0.0.0:8080" + tail
    assert note.ui_link("sqlite:////tmp/m.db", None) == "http://127.0.0.1:5000"


def test_the_note_lists_rescued_trials():
    from gradtune.outcome import Ledger

    ledger_ = Ledger()
    lineage = '[{"attempt": 1, "from_step": 120, "to_step": 80, "remedy": "lr x0.5", "reason": "r"}]'
    ledger_.end("s", {"norm": "none"}, {"final": 1, "val_loss": 0.2, "rescue_attempts": 1, "rescues": lineage})
    text = note.render(ledger_, "q", "val_loss", "min", ["norm"], {"s": "run-s"}, "7")
    assert "| [trial 0](#/experiments/7/runs/run-s) | 120->80 lr x0.5 | 0.2 |" in text
