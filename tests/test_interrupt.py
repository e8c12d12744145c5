"""Ctrl-C and SIGTERM: the handler on its own (signals sent to this process), then a real
sweep stopped cleanly (exit 130 / 143, runs KILLED, nothing left RUNNING) and continued by
``--resume``: every trial exactly once in MLflow, no metric step logged twice. The driver
is a real ``python -m gradtune`` process, signalled by PID."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from gradtune.interrupt import Interrupt, Interrupted
from gradtune.outcome import Outcome
from gradtune.runview import RUN_STATUS
from tests._servers import clean_env, gradtune, kill_sessions, tail

TRIALS = 4


def test_the_first_signal_asks_tune_to_stop_the_second_forces():
    told: list[int] = []
    before = signal.signal(signal.SIGUSR1, lambda signum, frame: told.append(signum))  # Tune's stand-in
    # Whatever held them before (Python's default, or Ray's handler if an earlier test in
    # this process called ray.init) must hold them again after uninstall.
    held = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupt = Interrupt()
    try:
        interrupt.install()
        with pytest.raises(Interrupted) as outside:  # no Tune run to stop gracefully yet
            os.kill(os.getpid(), signal.SIGTERM)
        assert outside.value.signum == signal.SIGTERM and interrupt.signum is None
        with interrupt.tuning():
            os.kill(os.getpid(), signal.SIGINT)
            assert interrupt.signum == signal.SIGINT and told == [signal.SIGUSR1]
            with pytest.raises(Interrupted) as forced:
                os.kill(os.getpid(), signal.SIGTERM)
            assert forced.value.signum == signal.SIGTERM
    finally:
        interrupt.uninstall()
        signal.signal(signal.SIGUSR1, before)
    assert {s: signal.getsignal(s) for s in held} == held


def sweep_args(tmp: Path) -> list[str]:
    return [
        "--trials", str(TRIALS), "--storage", str(tmp / "results"),
        "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}",
        "--set", "training.steps=1500", "--set", "training.report_every=10",
        "--set", "workload.options={depth: 6, width: 32}", "--set", "search.max_concurrent=2",
    ]


def runs(tmp: Path) -> list:
    if not list((tmp / "results").glob("*/gradtune-sweep.json")):
        return []  # the driver is still creating the store: reading now would race it
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name("quickstart")
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


def start(tmp: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    log = tmp / f"driver-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(gradtune("sweep", *args), cwd=tmp, env=clean_env(), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return proc, log


def wait_for_metrics(tmp: Path, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    """Until some child run has logged a metric: the sweep is mid-flight."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, tail(log)
        if any(r.data.metrics for r in runs(tmp) if r.data.tags.get("gradtune.role") == "trial"):
            return
        time.sleep(1.0)
    raise AssertionError(f"no metrics after {timeout}s:\n{tail(log)}")


WORKER_LINE = re.compile(r"^(\x1b\[\d+m)?\(\w+ pid=\d+(, ip=[\d.]+)?\)")


def driver_lines(out: str) -> str:
    """``out`` without the lines Ray forwards from worker processes (``(trainable pid=N)
    ...``). At ``ray.shutdown`` Ray SIGTERMs its idle workers, and its own handler's
    SystemExit, raised inside whatever the worker was running (a weakref callback, say),
    can print "Exception ignored ... Traceback": Ray's teardown, not the driver's. A
    trial's own error reaches the driver as Tune's trial error, in the driver's lines."""
    return "\n".join(line for line in out.splitlines() if not WORKER_LINE.match(line))


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> tuple[int, str]:
    try:
        code = proc.wait(timeout=timeout)
    finally:
        kill_sessions([proc.pid], grace=2.0)  # whatever the driver left in its session
    return code, log.read_text(errors="replace")


@pytest.mark.e2e
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_sweep_killed_and_resumable(tmp_path, sig, code):
    proc, log = start(tmp_path, *sweep_args(tmp_path))
    wait_for_metrics(tmp_path, proc, log)
    os.kill(proc.pid, sig)
    rc, out = finish(proc, log)
    assert rc == code, out[-3000:]
    assert "Traceback" not in driver_lines(out), out[-3000:]
    assert "--resume" in out and "python -m gradtune sweep --resume" in out
    everything = runs(tmp_path)
    assert [r.info.status for r in everything if r.info.status == "RUNNING"] == []
    (parent,) = [r for r in everything if r.data.tags.get("gradtune.role") == "sweep"]
    assert parent.info.status == "KILLED"
    stopped = [r for r in everything if r.data.tags.get("gradtune.outcome") == "interrupted"]
    assert stopped and all(r.info.status == "KILLED" for r in stopped)

    if sig != signal.SIGINT:
        return
    # --resume continues the same parent and child runs.
    folder = next(line.split("--resume", 1)[1].strip() for line in out.splitlines()
                  if "python -m gradtune sweep --resume" in line)
    proc, log = start(tmp_path, "--resume", folder, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    rc, out = finish(proc, log, timeout=600)
    assert rc == 0, out[-3000:]
    everything = runs(tmp_path)
    parents = [r for r in everything if r.data.tags.get("gradtune.role") == "sweep"]
    kids = [r for r in everything if r.data.tags.get("gradtune.role") == "trial"]
    assert [p.info.run_id for p in parents] == [parent.info.run_id]
    assert parents[0].info.status == "FINISHED"
    assert len(kids) == TRIALS and len({k.data.tags["gradtune.trial_id"] for k in kids}) == TRIALS
    assert all(k.data.tags["gradtune.outcome"] in {"completed", "diverged", "pruned"} for k in kids)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for kid in kids:
        steps = [m.step for m in client.get_metric_history(kid.info.run_id, "train_loss")]
        assert steps and steps == sorted(set(steps)), (kid.data.tags["gradtune.trial_id"], steps)
        assert kid.info.status == RUN_STATUS[Outcome(kid.data.tags["gradtune.outcome"])]
    assert "trials in" in out


@pytest.mark.e2e
def test_a_killed_driver_is_resumed_without_rerunning_or_duplicating(tmp_path):
    """``kill -9`` of the driver leaves RUNNING runs and no summary; ``--resume`` continues
    the same parent, does not rerun a trial Tune had saved as finished, and ends every run."""
    proc, log = start(tmp_path, *sweep_args(tmp_path))
    deadline, done, folder = time.monotonic() + 400, None, None
    while time.monotonic() < deadline and done is None:
        assert proc.poll() is None, tail(log)
        finished = [r for r in runs(tmp_path) if r.info.end_time  # the writer sends the tag first
                    and r.data.tags.get("gradtune.outcome") in {"completed", "diverged"}]
        states = sorted((tmp_path / "results").glob("*/experiment_state-*.json"))
        ended = {r.data.tags.get("gradtune.trial_id") for r in runs(tmp_path) if r.info.end_time}
        checkpointed = {d.parent.name.split("_")[1]  # trainable_<trial id>_...
                        for d in (tmp_path / "results").glob("*/trainable_*/checkpoint_*")} - ended
        if (finished and states and checkpointed
                and states[-1].stat().st_mtime * 1000 > finished[0].info.end_time + 1000):
            done, folder = finished[0], states[-1].parent
        time.sleep(0.5)
    assert done is not None, tail(log)
    os.kill(proc.pid, signal.SIGKILL)
    finish(proc, log)
    assert any(r.info.status == "RUNNING" for r in runs(tmp_path))  # what a crash leaves

    proc, log = start(tmp_path, "--resume", str(folder), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    rc, out = finish(proc, log, timeout=600)
    assert rc == 0, out[-3000:]
    everything = runs(tmp_path)
    assert [r.info.status for r in everything if r.info.status == "RUNNING"] == []
    (parent,) = [r for r in everything if r.data.tags.get("gradtune.role") == "sweep"]
    assert parent.info.status == "FINISHED"
    kids = {r.data.tags["gradtune.trial_id"]: r for r in everything if r.data.tags.get("gradtune.role") == "trial"}
    live = [k for k in kids.values() if k.data.tags["gradtune.outcome"] != "interrupted"]
    assert len(live) == TRIALS
    again = kids[done.data.tags["gradtune.trial_id"]]
    assert again.info.end_time == done.info.end_time  # not rerun
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for kid in live:
        steps = [m.step for m in client.get_metric_history(kid.info.run_id, "train_loss")]
        assert steps and steps == sorted(set(steps)), steps
    # A trial cut off in flight went on from its checkpoint: its first report after the
    # restart is past the first report of its first start (Tune counts from 1 again).
    starts = [[r["step"] for r in map(json.loads, result.read_text().splitlines())
               if r.get("iterations_since_restore") == 1] for result in folder.glob("trainable_*/result.json")]
    restarted = [s for s in starts if len(s) >= 2]
    assert restarted and any(s[-1] > s[0] for s in restarted), starts
