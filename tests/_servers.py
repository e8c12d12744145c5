"""Real servers for the end-to-end tests, all on loopback: a multi-node Ray cluster started
with ``ray start`` and an MLflow tracking server (``mlflow server``) on PostgreSQL or SQLite.

Every server is started in a process session of its own (``start_new_session=True``), and
stopping it kills exactly the processes of that session: SIGTERM, a short grace period,
then SIGKILL. Ray's daemons and workers keep the session of the ``ray start`` that spawned
them, so nothing else on a shared machine is touched (no ``ray stop``, no ``pkill``).

Ray on loopback, and why it needs two tricks. Ray rewrites a loopback address
(``localhost``, ``127.0.0.1``, ``::1``) given to ``ray start --node-ip-address``,
``ray start --address`` or ``ray.init(address=...)`` into the machine's routable IP
(``ray._private.services.resolve_ip_for_localhost``), and a node whose IP is not
exactly a loopback address binds its gRPC servers to every interface. The rewrite is off
when ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which is how the head node and the drivers run
here; ``ray start --address`` refuses to add a node under that setting, so the second node
joins through ``LOCALHOST:<port>`` instead: Ray's loopback check is case sensitive, so the
address is left alone, the resolver maps it to 127.0.0.1, and the node's IP (taken from
the route to the head) is 127.0.0.1. Result: every node advertises and binds 127.0.0.1,
which :func:`listening_sockets` lets a test check.

Token authentication. Ray 2.52+ turns token authentication on by default for a new local
cluster (and for ``ray start --head`` when a token file exists), but a driver given an
explicit address only uses a token when ``RAY_AUTH_MODE=token``. So every process here
(both ``ray start``, every driver) gets ``RAY_AUTH_MODE=token`` and
``RAY_AUTH_TOKEN_PATH`` pointing at one fresh 0600 token file in the cluster's temporary
directory; ``~/.ray/auth_token`` is neither read nor written.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Inherited settings that would point a child process at someone else's cluster, token or
# tracking server.
_SCRUBBED = (
    "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_NAMESPACE", "RAY_JOB_CONFIG_JSON_ENV_VAR",
    "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID",
)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without Ray/MLflow targeting variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<{path}: {exc}>"
    return "\n".join(text[-lines:])


# ------------------------------------------------------------------- process sessions
def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, session id) of ``pid`` from /proc, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[3])


def session_pids(sessions: Iterable[int]) -> list[int]:
    """Live processes whose session id is one of ``sessions``."""
    wanted = set(sessions)
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[1] in wanted:
                out.append(int(entry))
    return out


def kill_sessions(sessions: Iterable[int], grace: float = 5.0) -> None:
    """SIGTERM every process of these sessions, SIGKILL what is left after ``grace``."""
    sessions = [s for s in sessions if s]
    if not sessions:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        pids = session_pids(sessions)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(session_pids(sessions)):
            time.sleep(0.2)


def _alive(pids: list[int]) -> bool:
    """True if any of ``pids`` is running (zombies waiting for a reaper do not count)."""
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            return True
    return False


def listening_sockets(pids: Iterable[int]) -> list[tuple[int, str, int]]:
    """(pid, local address, port) of every listening TCP socket the processes hold."""
    listeners: dict[str, tuple[str, int]] = {}
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) < 10 or parts[3] != "0A":  # 0A: LISTEN
                    continue
                host_hex, port_hex = parts[1].split(":")
                listeners[parts[9]] = (_proc_net_addr(host_hex, v6), int(port_hex, 16))
    found = []
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inode = target[len("socket:[") : -1]
                        if inode in listeners:
                            found.append((pid, *listeners[inode]))
    return found


def _proc_net_addr(host_hex: str, v6: bool) -> str:
    raw = bytes.fromhex(host_hex)
    # /proc/net/tcp* stores the address as host-order 32-bit words.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.IPv6Address(words) if v6 else ipaddress.IPv4Address(words))


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
    except OSError:
        return "?"


# ------------------------------------------------------------------- running commands
def run_watched(
    command: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    timeout: float,
    log: Path,
    watch: Callable[[int], None] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``command`` in a session of its own, output (stdout and stderr) to ``log``;
    ``watch(session_id)`` is called about twice a second while it runs. On timeout the
    whole session is killed and ``subprocess.TimeoutExpired`` raised."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(command, timeout, output=tail(log).encode())
                if watch is not None:
                    watch(proc.pid)
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                kill_sessions([proc.pid], grace=2.0)
                proc.wait()
            kill_sessions([proc.pid], grace=2.0)  # anything it left behind
    return subprocess.CompletedProcess(command, proc.returncode, log.read_text(errors="replace"))


def gradtune(*args: str) -> list[str]:
    return [sys.executable, "-m", "gradtune", *args]


# ------------------------------------------------------------------------ Ray cluster
_NODES_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import ray
    address, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    deadline = time.monotonic() + timeout
    while True:
        nodes = [n for n in ray.nodes() if n["Alive"]]
        if len(nodes) >= want or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print(json.dumps([
        {"node_id": n["NodeID"], "address": n["NodeManagerAddress"],
         "cpu": n["Resources"].get("CPU", 0.0),
         "head": "node:__internal_head__" in n["Resources"]}
        for n in nodes
    ]))
""")


class _Service:
    """A server a test starts and must stop: ``with`` stops it on exit, and also when
    ``start`` fails half way (processes already spawned are not left behind)."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RayCluster(_Service):
    """A Ray cluster of ``len(cpus)`` nodes on 127.0.0.1, node ``i`` with ``cpus[i]`` CPUs:
    ``ray start --head`` and ``ray start --address`` for the others, each node with its own
    temporary directory, ports picked free, token authentication on."""

    def __init__(self, cpus: tuple[int, ...] = (1, 1), object_store_mb: int = 128) -> None:
        # Short on purpose: Ray's Unix sockets live under it (108-byte path limit).
        self.root = Path(tempfile.mkdtemp(prefix="gt-ray-"))
        self.cpus = cpus
        self.object_store = object_store_mb * 1024 * 1024
        self.port = free_port()
        self.token_path = self.root / "auth_token"
        self.sessions: list[int] = []
        self.nodes: list[dict[str, Any]] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a driver of this cluster (e.g. ``gradtune sweep --address``)."""
        return clean_env(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_path),
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
            **extra,
        )

    def start(self, timeout: float = 90.0) -> RayCluster:
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
        for i, cpus in enumerate(self.cpus):
            head = i == 0
            name = "head" if head else f"worker{i}"
            temp_dir = self.root / name
            temp_dir.mkdir()
            command = [
                sys.executable, "-m", "ray.scripts.scripts", "start",
                f"--num-cpus={cpus}", "--num-gpus=0",
                f"--object-store-memory={self.object_store}",
                f"--temp-dir={temp_dir}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                "--min-worker-port=0", "--max-worker-port=0",  # random, so nodes never clash
                "--disable-usage-stats",
            ]
            env = self.env()
            if head:
                command += [
                    "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
                    "--include-dashboard=false", f"--dashboard-port={free_port()}",
                ]
            else:
                command.append(f"--address=LOCALHOST:{self.port}")  # see the module docstring
                del env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"]
            log = self.root / f"{name}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            self.sessions.append(proc.pid)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"`ray start` ({name}) did not return in {timeout:.0f}s:\n"
                                   f"{tail(log)}") from None
            if rc != 0:
                raise RuntimeError(f"`ray start` ({name}) failed with {rc}:\n{tail(log)}")
        self.nodes = self.query_nodes(want=len(self.cpus), timeout=timeout)
        if len(self.nodes) != len(self.cpus):
            raise RuntimeError(f"expected {len(self.cpus)} nodes, Ray reports {self.nodes}\n"
                               + "\n".join(tail(p, 15) for p in self.root.glob("*.log")))
        return self

    def query_nodes(self, want: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The alive nodes as Ray reports them, asked by a driver in a subprocess (so this
        process never joins the cluster); waits up to ``timeout`` for ``want`` nodes."""
        proc = subprocess.run(
            [sys.executable, "-c", _NODES_SCRIPT, self.address, str(want), str(timeout)],
            env=self.env(), capture_output=True, text=True, timeout=timeout + 60,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"cannot list the cluster's nodes:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def pids(self) -> list[int]:
        return session_pids(self.sessions)

    def describe(self, pids: Iterable[int]) -> list[str]:
        return [f"{pid} {_cmdline(pid)}" for pid in pids]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{tail(p, 20)}" for p in sorted(self.root.glob("*.log")))

    def stop(self) -> None:
        kill_sessions(self.sessions)
        shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------------ PostgreSQL
DEFAULT_POSTGRES = (
    "postgresql://postgres@127.0.0.1:5432/postgres",
    "postgresql://root@127.0.0.1:5432/postgres",
)


def find_postgres() -> tuple[str | None, str]:
    """(admin DSN, why) of a PostgreSQL server this process can create databases on.

    ``GRADTUNE_TEST_POSTGRES`` (a libpq URI to a maintenance database) names one and makes
    it required: if it does not work, that is an error. Otherwise the local defaults are
    tried; (None, reason) when no server listens there. A server that listens while
    psycopg2 is missing is an error too (install the ``test`` extra)."""
    explicit = os.environ.get("GRADTUNE_TEST_POSTGRES")
    candidates = (explicit,) if explicit else DEFAULT_POSTGRES
    reasons = []
    for dsn in candidates:
        url = urllib.parse.urlsplit(dsn)
        try:
            socket.create_connection((url.hostname or "127.0.0.1", url.port or 5432),
                                     timeout=2).close()
        except OSError as exc:
            reasons.append(f"{url.hostname}:{url.port or 5432}: {exc}")
            if explicit:
                raise RuntimeError(f"GRADTUNE_TEST_POSTGRES={dsn}: {exc}") from None
            continue
        try:
            import psycopg2
        except ImportError:
            raise RuntimeError(
                "PostgreSQL listens but psycopg2 is not installed: pip install -e '.[test]'"
            ) from None
        try:
            psycopg2.connect(dsn, connect_timeout=5).close()
            return dsn, ""
        except psycopg2.Error as exc:
            if explicit:
                raise RuntimeError(f"GRADTUNE_TEST_POSTGRES={dsn}: {exc}") from None
            reasons.append(f"{dsn}: {str(exc).strip()}")
    return None, "; ".join(reasons)


@contextlib.contextmanager
def postgres_databases(admin_dsn: str, *suffixes: str) -> Iterator[list[str]]:
    """Fresh, uniquely named databases (one per suffix); yields their SQLAlchemy URIs
    (``postgresql+psycopg2://``, the driver the MLflow image ships) and drops them after."""
    import psycopg2

    base = f"gradtune_test_{uuid.uuid4().hex[:10]}"
    names = [base + s for s in suffixes]
    conn = psycopg2.connect(admin_dsn, connect_timeout=5)
    conn.autocommit = True
    try:
        created = []
        try:
            with conn.cursor() as cur:
                for name in names:
                    cur.execute(f'CREATE DATABASE "{name}"')
                    created.append(name)
            url = urllib.parse.urlsplit(admin_dsn)
            yield [urllib.parse.urlunsplit(("postgresql+psycopg2", url.netloc, f"/{n}", "", ""))
                   for n in names]
        finally:
            with conn.cursor() as cur:
                for name in created:
                    try:
                        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    except psycopg2.Error:  # PostgreSQL < 13
                        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        conn.close()


# ----------------------------------------------------------------------- MLflow server
class MlflowServer(_Service):
    """``mlflow server`` on 127.0.0.1 with the basic-auth app (as deployed), proxied
    artifacts under ``root/artifacts``, and the given backend and auth databases; with
    ``auth_db_uri=None``, the plain server a user opens (``gradtune ui``): no login."""

    def __init__(self, root: Path, backend_uri: str, auth_db_uri: str | None) -> None:
        self.root = root
        self.backend_uri = backend_uri
        self.backend = backend_uri.split(":", 1)[0].split("+", 1)[0]  # sqlite | postgresql
        self.auth_db_uri = auth_db_uri
        self.port = free_port()
        self.artifacts = root / "artifacts"
        self.username = "gradtune-admin"
        self.password = secrets.token_urlsafe(18)  # the auth app wants >= 12 characters
        self.log = root / "mlflow-server.log"
        self.session: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client_env(self) -> dict[str, str]:
        if self.auth_db_uri is None:
            return {}
        return {"MLFLOW_TRACKING_USERNAME": self.username,
                "MLFLOW_TRACKING_PASSWORD": self.password}

    def start(self, timeout: float = 90.0) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        # The job runner (GenAI scorers) is a handful of extra processes nobody uses here.
        env = clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        command = [sys.executable, "-m", "mlflow", "server"]
        if self.auth_db_uri is not None:
            config = self.root / "basic_auth.ini"
            config.write_text(
                "[mlflow]\n"
                "default_permission = READ\n"
                f"database_uri = {self.auth_db_uri.replace('%', '%%')}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                # One worker, so no staleness; spares a PBKDF2 check per request (on two busy
                # cores that is most of a request's time).
                "auth_cache_ttl_seconds = 300\n"
            )
            config.chmod(0o600)
            env.update(
                MLFLOW_AUTH_CONFIG_PATH=str(config),
                MLFLOW_AUTH_ADMIN_USERNAME=self.username,
                MLFLOW_AUTH_ADMIN_PASSWORD=self.password,
                MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
            )
            command += ["--app-name", "basic-auth"]
        command += [
            "--backend-store-uri", self.backend_uri,
            "--serve-artifacts", "--artifacts-destination", str(self.artifacts),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]
        with open(self.log, "wb") as out:
            proc = subprocess.Popen(command, env=env, cwd=self.root, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.session = proc.pid
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n"
                                   f"{tail(self.log)}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not healthy after {timeout:.0f}s:\n"
                                   f"{tail(self.log)}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.session is not None:
            kill_sessions([self.session])
            self.session = None
