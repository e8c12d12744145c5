"""End-to-end: trials that lose their worker process (SIGKILL by PID) or raise, in a real
Ray Tune sweep. Retries resume from the trial's checkpoint; a trial that keeps failing ends
``failed`` with its reason in MLflow."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from gradtune import summary, sweep
from gradtune.outcome import Outcome

pytestmark = pytest.mark.e2e

PLUGINS = "tests.retry_plugins"


def plugin_spec(tiny_spec, name, factory, options, **overrides):
    return tiny_spec(**{
        "name": name,
        "workload.name": f"{PLUGINS}:{factory}",
        "workload.options": options,
        "search.sampler": "grid",
        "search.space": {"norm": "none", "clip_method": "none", "init_scale": 1.0, "batch_size": 32},
        "training.steps": 40,
        "training.report_every": 5,
        "training.checkpoint_every": 10,
        **overrides,
    })


class Killer(threading.Thread):
    """Waits for the trial to write its PID, then SIGKILLs exactly that process."""

    def __init__(self, pid_file: Path, timeout: float = 180.0) -> None:
        super().__init__(daemon=True)
        self.pid_file, self.timeout = pid_file, timeout
        self.killed: int | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self.pid_file.exists():
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)
        pid = int(self.pid_file.read_text())
        assert pid != os.getpid()
        time.sleep(1.0)  # the trial is asleep in its batch stream; let Tune settle the last report
        os.kill(pid, signal.SIGKILL)
        self.killed = pid


def attempts(directory: Path) -> list[int]:
    return [int(p) for p in (directory / "attempts").read_text().split()]


def forwards(directory: Path, attempt: int) -> int:
    return int((directory / f"forwards-{attempt}").read_text())


def only_run(result):
    (record,) = result.trials
    client = MlflowClient(result.tracking_uri)
    return record, client, client.get_run(result.runs[record.trial_id])


def test_a_killed_worker_is_retried_from_its_checkpoint(ray_session, tiny_spec, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    # Checkpoints at steps 10 and 20; the worker is killed while drawing batch 25.
    spec = plugin_spec(tiny_spec, "e2e-kill", "killed_once", {"dir": str(marks), "block_at": 25},
                       **{"resources.max_failures": 1})
    killer = Killer(marks / "pid")
    killer.start()
    result = sweep.run(spec, verbose=0)
    killer.join(timeout=5)

    assert killer.killed is not None and attempts(marks)[0] == killer.killed
    assert len(attempts(marks)) == 2 and attempts(marks)[1] != killer.killed  # a new worker
    # The first attempt trained steps 1-24; the retry only 21-40: it went on from step 20.
    assert forwards(marks, 1) == 24 and forwards(marks, 2) == 20

    record, client, run = only_run(result)
    assert record.outcome is Outcome.COMPLETED and record.failures == 1 and record.error is None
    assert run.info.status == "FINISHED"
    assert run.data.tags["gradtune.outcome"] == "completed" and run.data.tags["gradtune.failures"] == "1"
    assert "gradtune.failure" not in run.data.tags
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == list(range(5, 41, 5))  # one run, each step once
    assert "healthy_checkpoint_step" not in run.data.metrics
    assert "error.txt" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_a_trial_that_keeps_raising_fails_with_its_reason(ray_session, tiny_spec, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = plugin_spec(tiny_spec, "e2e-raise", "raises", {"dir": str(marks), "raise_at": 12},
                       **{"resources.max_failures": 2})
    result = sweep.run(spec, verbose=0)

    assert len(attempts(marks)) == 3  # max_failures + 1
    # Each retry resumed from the checkpoint at step 10: step 11 once more, then the raise.
    assert [forwards(marks, a) for a in (1, 2, 3)] == [11, 1, 1]

    record, client, run = only_run(result)
    assert record.outcome is Outcome.FAILED and record.failures == 3
    assert record.error == "ValueError: boom at batch 12"
    assert run.info.status == "FAILED"
    tags = run.data.tags
    assert tags["gradtune.outcome"] == "failed" and tags["gradtune.failure"] == "ValueError: boom at batch 12"
    assert tags["gradtune.failures"] == "3"
    artifact = Path(client.download_artifacts(run.info.run_id, "error.txt", str(tmp_path)))
    text = artifact.read_text()
    assert "Failure # 3" in text and text.count("ValueError: boom at batch 12") >= 3
    assert 'retry_plugins.py", line' in text and "\x1b[" not in text  # the traceback, uncoloured
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [5, 10]
    assert "    failed: ValueError: boom at batch 12" in summary.render(result).splitlines()


def test_a_killed_worker_without_retries_fails_as_a_lost_worker(ray_session, tiny_spec, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = plugin_spec(tiny_spec, "e2e-kill-once", "killed_once", {"dir": str(marks), "block_at": 8},
                       **{"resources.max_failures": 0})
    killer = Killer(marks / "pid")
    killer.start()
    result = sweep.run(spec, verbose=0)
    killer.join(timeout=5)

    assert killer.killed is not None and attempts(marks) == [killer.killed]
    record, _, run = only_run(result)
    assert record.outcome is Outcome.FAILED and record.failures == 1
    assert record.error is not None and record.error.startswith("worker died")
    assert run.data.tags["gradtune.failure"] == record.error and run.info.status == "FAILED"


def test_a_retry_resumes_on_a_reused_actor(ray_session, tiny_spec, tmp_path):
    """Tune reuses actors (reuse_actors=True): with both CPUs busy, the failed trial waits
    for a slot, and gets the worker process another trial finished on; it still resumes
    from its own checkpoint."""
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = plugin_spec(tiny_spec, "e2e-reuse", "by_start_order",
                       {"dir": str(marks), "sleep": 0.15, "raise_at": 12},
                       **{"search.space": {"norm": "none", "clip_method": "none", "batch_size": 32,
                                           "init_scale": [0.5, 1.0, 2.0]},
                          "search.max_concurrent": 3, "resources.max_failures": 1})
    result = sweep.run(spec, verbose=0)

    assert [r.outcome for r in result.trials] == [Outcome.COMPLETED] * 3
    starts = [line.split() for line in (marks / "starts").read_text().splitlines()]
    raiser = (marks / "raised").read_text()
    mine = [(int(a), int(pid)) for a, pid, t in starts if t == raiser]
    others = {int(pid) for _, pid, t in starts if t != raiser}
    assert len(mine) == 2 and mine[1][1] in others  # the retry ran in another trial's worker
    assert forwards(marks, mine[0][0]) == 11 and forwards(marks, mine[1][0]) == 30  # from step 10
    (record,) = [r for r in result.trials if r.trial_id == raiser]
    assert record.failures == 1
