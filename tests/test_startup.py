"""What happens before the first trial: the order of the sweep's start (tracking store
reached, Ray connected, resources checked, and only then the MLflow parent run), a dead or
wrong Ray address, a GPU no node has, and two sweeps creating a new SQLite store at once.

The sweeps that must fail run as subprocesses of the CLI (exit code, output and time are
what a user sees); the missing GPU runs in-process on the tests' shared local Ray.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from gradtune import sweep
from gradtune.errors import GradtuneError
from tests._servers import ROOT, clean_env, free_port, gradtune, run_watched

pytestmark = pytest.mark.e2e


def all_runs(uri: str) -> list:
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, max_results=100) if ids else []


class FirstLine:
    """When a line holding ``text`` first appeared in the log of a running command."""

    def __init__(self, log: Path, text: str) -> None:
        self.log, self.text, self.at = log, text, None

    def __call__(self, session: int) -> None:
        if self.at is None and self.log.exists() and self.text in self.log.read_text(errors="replace"):
            self.at = time.monotonic()


def failing_sweep(tmp_path: Path, address: str, watch: FirstLine | None = None
                  ) -> tuple[subprocess.CompletedProcess, float, str]:
    """``gradtune sweep --address ADDRESS`` that must fail: (process, seconds, MLflow URI)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    started = time.monotonic()
    proc = run_watched(
        gradtune("sweep", "--address", address, "--tracking-uri", uri, "--trials", "1",
                 "--storage", str(tmp_path / "results")),
        env=clean_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"), cwd=tmp_path, timeout=180,
        log=tmp_path / "sweep.log", watch=watch,
    )
    return proc, time.monotonic() - started, uri


def test_a_dead_cluster_is_one_line_at_once_and_leaves_no_run(tmp_path):
    port = free_port()  # nothing listens there
    proc, seconds, uri = failing_sweep(tmp_path, f"127.0.0.1:{port}")
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert proc.stdout.splitlines() == [
        f"error: Ray cluster 127.0.0.1:{port}: cannot connect (nothing answers at "
        f"127.0.0.1:{port}: Connection refused)"
    ]
    assert seconds < 30, seconds
    assert all_runs(uri) == []
    assert not (tmp_path / "results").exists()


def test_a_port_that_is_no_ray_gcs_fails_in_one_attempt(tmp_path):
    """Something accepts connections there (the dashboard's port given by mistake, say),
    but never answers Ray's handshake: Ray alone retries for about 12 minutes; gradtune
    makes it one attempt of about 20 s. Ray's own warnings come first (the first one 5 s
    into the attempt: the clock of the bound, as Python's imports before it take long on a
    busy machine); the last line is the error."""
    first_warning = FirstLine(tmp_path / "sweep.log", "Failed to connect to GCS")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        proc, seconds, uri = failing_sweep(tmp_path, f"127.0.0.1:{port}", first_warning)
    ended = time.monotonic()
    assert proc.returncode == 2, proc.stdout[-3000:]
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert errors and errors[0].startswith(f"error: Ray cluster 127.0.0.1:{port}: cannot connect")
    assert len(errors) == 1 and proc.stdout.rstrip().endswith(errors[0]), proc.stdout[-3000:]
    assert first_warning.at is not None
    assert 5 + ended - first_warning.at < 30, (ended - first_warning.at, seconds)
    assert all_runs(uri) == []


def test_a_gpu_no_node_has_is_one_line_and_leaves_no_run(ray_session, tiny_spec):
    spec = tiny_spec(**{"resources.gpu": 1, "search.trials": 1})
    if any(n["Resources"].get("GPU") for n in ray_session.nodes() if n["Alive"]):
        pytest.skip("this Ray has a GPU")
    with pytest.raises(GradtuneError) as info:
        sweep.run(spec, verbose=0)
    message = str(info.value)
    assert message.startswith("resources.cpu and resources.gpu: each trial needs 1 CPU, 1 GPU "
                              "on one node, but no node of the Ray cluster has that")
    assert "\n" not in message
    assert all_runs(spec.tracking.uri) == []
    assert ray_session.is_initialized()  # the shared Ray is left as it was


_START = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from gradtune import tracking
    from gradtune.outcome import Ledger
    from gradtune.spec import SweepSpec

    uri, step, ready, go = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    tracker = tracking.MLflowTracking(SweepSpec(tracking={"uri": uri}), uri, "race", Ledger())
    ready.touch()
    while not go.exists():
        time.sleep(0.001)
    if step == "check_store":
        tracking.check_store(uri)
    else:
        tracker.start()
        tracker.finish()
    print("ok")
""")


@pytest.mark.parametrize("step", ["check_store", "start"])
def test_two_sweeps_creating_a_new_sqlite_store_at_once_both_succeed(tmp_path, step):
    """Two real processes create the same new store at the same moment (the way two
    sweeps start on a fresh ``sqlite:///mlflow.db``): without the lock, one of them dies
    with "table experiments already exists" or on the experiment's unique name."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    go = tmp_path / "go"
    procs = []
    for i in range(2):
        ready = tmp_path / f"ready{i}"
        log = open(tmp_path / f"p{i}.log", "w+")
        procs.append((subprocess.Popen(
            [sys.executable, "-c", _START, uri, step, str(ready), str(go)], cwd=tmp_path,
            env=clean_env(PYTHONPATH=str(ROOT)), stdout=log, stderr=subprocess.STDOUT,
        ), ready, log))
    deadline = time.monotonic() + 120
    while not all(ready.exists() for _, ready, _ in procs):
        assert time.monotonic() < deadline and all(p.poll() is None for p, _, _ in procs)
        time.sleep(0.05)
    go.touch()
    for proc, _, log in procs:
        proc.wait(timeout=120)
        log.seek(0)
        out = log.read()
        log.close()
        assert proc.returncode == 0 and out.rstrip().endswith("ok"), out[-3000:]
    if step == "start":
        runs = all_runs(uri)
        assert len(runs) == 2 and {r.data.tags["gradtune.role"] for r in runs} == {"sweep"}
