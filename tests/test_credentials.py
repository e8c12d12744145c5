"""Credentials in a tracking URI stay with the driver's MLflow client.

Unit tests: :func:`gradtune.credentials.redact` (passwords holding ``/`` and ``@``, query
tokens), :func:`~gradtune.credentials.for_client` and what the tracking callback pickles.

End to end (``e2e``): a secret is planted in the tracking URI of a real sweep against a real
``mlflow server`` with basic auth (a password holding ``/`` and ``@``, unencoded, and a
``?token=``), given on the command line. The sweep must succeed, and then the secret must
be in none of: the sweep's stdout and stderr, the environment and command line of every
process the sweep started (Ray's daemons and workers), every file of the sweep's own
Ray session (its own temporary directory: logs, session data), every file under the
sweep's storage (``tuner.pkl``, the experiment state, trial results) and the working
directory, every file of the MLflow server (its backend database, artifacts and log), and
every MLflow param, tag, run name and artifact of every run, read back over HTTP.
"""

from __future__ import annotations

import ast
import gzip
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import ray.cloudpickle as cloudpickle
from mlflow.tracking import MlflowClient

from gradtune import credentials, tracking
from gradtune.credentials import redact
from gradtune.errors import GradtuneError
from gradtune.outcome import Ledger
from gradtune.spec import SweepSpec
from tests._servers import ROOT, MlflowServer, clean_env, gradtune, run_watched, session_pids


@pytest.mark.parametrize("text, expected", [
    ("https://alice:s3cret@mlflow.example.com/", "https://***@mlflow.example.com/"),
    ("http://user:s3cr3t/@x@127.0.0.1:5000?token=t0k3n", "http://***@127.0.0.1:5000?token=***"),
    ("postgresql+psycopg2://u:p@ss@db:5432/m?sslmode=require&password=pw",
     "postgresql+psycopg2://***@db:5432/m?sslmode=require&password=***"),
    ("mysql://u:a/b@c@[::1]:3306/db", "mysql://***@[::1]:3306/db"),
    ("https://h/x?access_token=a&api_key=b&sig=c&X-Amz-Signature=d&n=1",
     "https://h/x?access_token=***&api_key=***&sig=***&X-Amz-Signature=***&n=1"),
    ("error: tracking.uri http://u:p@h:1: cannot start (url='http://u:p@h:1/api/2.0')",
     "error: tracking.uri http://***@h:1: cannot start (url='http://***@h:1/api/2.0')"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("http://127.0.0.1:5000/prefix", "http://127.0.0.1:5000/prefix"),
    ("no uri here, user@example.com", "no uri here, user@example.com"),
])
def test_redact_hides_userinfo_up_to_the_last_at_and_secret_query_values(text, expected):
    assert redact(text) == expected


def test_for_client_moves_http_credentials_into_mlflows_environment():
    uri, env = credentials.for_client("http://user:s3cr3t/@x@127.0.0.1:5000?token=t0k3n")
    assert uri == "http://127.0.0.1:5000"
    assert env == {"MLFLOW_TRACKING_USERNAME": "user", "MLFLOW_TRACKING_PASSWORD": "s3cr3t/@x",
                   "MLFLOW_TRACKING_TOKEN": "t0k3n"}
    # Percent-encoded credentials are decoded; a path prefix is kept.
    assert credentials.for_client("https://a%40b:p%2Fw@h/mlflow") == (
        "https://h/mlflow", {"MLFLOW_TRACKING_USERNAME": "a@b", "MLFLOW_TRACKING_PASSWORD": "p/w"})
    assert credentials.for_client("http://h:5000") == ("http://h:5000", {})
    # A database URI needs its password: it stays (only the driver's client holds it).
    db = "postgresql://u:pw@db/m"
    assert credentials.for_client(db) == (db, {})


@pytest.mark.parametrize("uri, expected", [
    ("http://u:pw@h:5000?workspace=x", "query parameter 'workspace'"),
    ("http://h:5000/#frag", "query string or fragment"),
    ("http://u:p?w@h:5000", "percent-encode"),
])
def test_for_client_refuses_what_mlflow_cannot_send(uri, expected):
    with pytest.raises(GradtuneError, match=expected) as info:
        credentials.for_client(uri)
    assert "pw" not in str(info.value) and "\n" not in str(info.value)


def test_the_tracking_callback_pickles_without_the_secret():
    """Tune pickles RunConfig.callbacks into tuner.pkl (in the sweep's storage)."""
    uri = "postgresql://gradtune:pa55/@word@db.example.com:5432/mlflow"
    shown = SweepSpec(tracking={"uri": redact(uri)})
    callback = tracking.MLflowTracking(shown, uri, "exp", Ledger())
    data = cloudpickle.dumps(callback)
    assert b"pa55" not in data and b"word@" not in data
    restored = cloudpickle.loads(data)
    assert restored.tracking_uri == "postgresql://***@db.example.com:5432/mlflow"
    assert callback.tracking_uri == uri  # the driver's own copy keeps it


def test_the_summary_and_the_ui_command_show_no_password(monkeypatch, capsys):
    from gradtune import cli, summary
    from gradtune.sweep import SweepResult

    uri = "postgresql://gradtune:pa55/@word@db:5432/mlflow"
    result = SweepResult(spec=SweepSpec(), tracking_uri=uri, experiment="e", parent_run_id="p",
                         storage="/tmp/x", ledger=Ledger())
    assert "open the UI: python -m gradtune ui --tracking-uri 'postgresql://***@db:5432/mlflow'" in (
        summary.render(result))

    def execv(path: str, argv: list[str]) -> None:
        raise SystemExit(argv)

    monkeypatch.setattr(os, "execv", execv)
    monkeypatch.delenv("MLFLOW_BACKEND_STORE_URI", raising=False)
    with pytest.raises(SystemExit) as info:
        cli.main(["ui", "--tracking-uri", uri])
    assert "pa55" not in " ".join(info.value.code)  # not on mlflow's command line either
    assert os.environ["MLFLOW_BACKEND_STORE_URI"] == uri  # where `mlflow ui` reads it
    assert capsys.readouterr().out == "MLflow UI for postgresql://***@db:5432/mlflow at http://127.0.0.1:5000\n"


@pytest.mark.slow
def test_rays_job_entrypoint_holds_no_password(tmp_path):
    """Ray records the driver's command line as the job's entrypoint; the sweep redacts
    its process title before ``ray.init``."""
    script = ("import ray._private.utils as u\n"
              "from gradtune.sweep import hide_credentials_in_title\n"
              "print(repr(u.get_entrypoint_name()))\n"
              "hide_credentials_in_title()\n"
              "print(repr(u.get_entrypoint_name()))\n")
    proc = subprocess.run(
        [sys.executable, "-c", script, "sweep", "--tracking-uri", "http://u:pa55/@w@h:1?token=t0k"],
        env=clean_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = map(ast.literal_eval, proc.stdout.strip().splitlines()[-2:])
    assert "pa55/@w" in before and "t0k" in before
    assert "pa55" not in after and "t0k" not in after
    assert "--tracking-uri http://***@h:1?token=***" in after


# --------------------------------------------------------------------------- end to end
def _read(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data += gzip.decompress(data)
    return data


def _files_holding(roots: list[Path], needles: list[bytes]) -> list[str]:
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    data = _read(path)
                except OSError:
                    continue  # a socket, or a file removed meanwhile
                found += [f"{path}: {n!r}" for n in needles if n in data]
    return found


class ProcessWatch:
    """The environment and command line of every process of the sweep's session but the
    driver itself (the user typed the URI on its command line, and MLflow reads the
    credentials from its environment); of the driver, the last command line seen (it is
    redacted before Ray starts, as Ray records it as the job's entrypoint)."""

    def __init__(self, needles: list[bytes]) -> None:
        self.needles = needles
        self.leaks: set[str] = set()
        self.seen: set[int] = set()
        self.driver_cmdline = b""

    def __call__(self, session: int) -> None:
        for pid in session_pids([session]):
            if pid == session:
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                # An exited driver not yet reaped reads as empty: keep the last real one.
                self.driver_cmdline = cmdline or self.driver_cmdline
                continue
            self.seen.add(pid)
            for what in ("environ", "cmdline"):
                try:
                    data = Path(f"/proc/{pid}/{what}").read_bytes()
                except OSError:
                    continue
                self.leaks |= {f"{pid} {what}: {n!r}" for n in self.needles if n in data}


@pytest.mark.e2e
def test_a_planted_secret_stays_out_of_everything_but_the_client(tmp_path):
    user = "gradtune-admin"
    password = f"s3cr3t/@x-{secrets.token_hex(6)}"  # '/' and '@' unencoded, >= 12 characters
    token = f"t0k3n{secrets.token_hex(6)}"
    needles = [password.encode(), token.encode()]
    ray_tmp = Path(tempfile.mkdtemp(prefix="gt-cred-"))  # short: Ray's socket paths
    work = tmp_path / "work"
    work.mkdir()
    try:
        server = MlflowServer(tmp_path / "server", f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}",
                              f"sqlite:///{tmp_path / 'server' / 'auth.db'}")
        server.password = password
        with server:
            uri = f"http://{user}:{password}@127.0.0.1:{server.port}?token={token}"
            ray_token = ray_tmp / "auth_token"
            ray_token.write_text(secrets.token_hex(32))
            watch = ProcessWatch(needles)
            proc = run_watched(
                gradtune("sweep", "--tracking-uri", uri, "--experiment", "planted",
                         "--trials", "2", "--set", "training.steps=10",
                         "--set", "search.max_concurrent=2", "--storage", str(work / "results")),
                env=clean_env(RAY_ADDRESS="local", RAY_AUTH_MODE="token",
                              RAY_AUTH_TOKEN_PATH=str(ray_token), RAY_TMPDIR=str(ray_tmp),
                              TMPDIR=str(ray_tmp)),
                cwd=work, timeout=300, log=tmp_path / "sweep.log", watch=watch,
            )
            assert proc.returncode == 0, proc.stdout[-6000:]
            assert f"open the UI: http://127.0.0.1:{server.port}" in proc.stdout

            # The output, the processes Ray started, Ray's session, the storage and cwd.
            assert not [n for n in needles if n.decode() in proc.stdout], proc.stdout[-3000:]
            assert watch.seen, "no process of the sweep's Ray was seen"
            assert not watch.leaks, sorted(watch.leaks)
            assert b"--tracking-uri http://***@127.0.0.1" in watch.driver_cmdline
            assert not [n for n in needles if n in watch.driver_cmdline]
            sessions = list((ray_tmp / "ray").glob("session_2*"))
            assert sessions and list((ray_tmp / "ray").rglob("*.log")), list(ray_tmp.rglob("*"))
            assert list((work / "results").rglob("tuner.pkl"))
            assert list((work / "results").rglob("experiment_state-*.json"))
            assert not _files_holding([ray_tmp, work], needles)

            # MLflow, over HTTP: every param, tag, name and artifact of every run.
            env = {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}
            old = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                client = MlflowClient(server.url)
                exp = client.get_experiment_by_name("planted")
                runs = client.search_runs([exp.experiment_id], max_results=100)
                assert len(runs) == 3, [r.data.tags for r in runs]
                parent = next(r for r in runs if r.data.tags.get("gradtune.role") == "sweep")
                assert "tracking.uri" not in parent.data.params  # the URI is only in spec.yaml
                texts = [str(exp.tags), exp.name]
                downloads = tmp_path / "downloads"
                for run in runs:
                    texts += [str(run.data.params), str(run.data.tags), run.info.run_name,
                              str(run.data.metrics)]
                    target = downloads / run.info.run_id
                    target.mkdir(parents=True)
                    client.download_artifacts(run.info.run_id, "", str(target))
                assert list(downloads.rglob("spec.yaml")) and list(downloads.rglob("summary.json"))
                logged = next(downloads.rglob("spec.yaml")).read_text()
                assert f"http://***@127.0.0.1:{server.port}?token=***" in logged
            finally:
                for k, v in old.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            assert not [n for n in needles if n.decode() in "\n".join(texts)]
            assert not _files_holding([downloads], needles)
        # The server's files too: backend database, artifacts, its log (the auth database
        # holds a hash of the password, not the password).
        assert not _files_holding([tmp_path / "server"], needles)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
