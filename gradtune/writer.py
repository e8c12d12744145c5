"""The MLflow writer: one background thread that sends a sweep's records to the tracking
store, so that Tune's driver loop never waits on the server.

The driver only calls :meth:`Writer.put` (a ``put_nowait`` on a bounded queue). The thread
sends the records in order, batching consecutive metric, param and tag records into one
``log_batch`` call per run: a metric or tag record waits until it has been queued
``linger_s`` seconds, so that what comes behind it goes in the same request; a create, a
run's params and an end go at once (an end with what is queued before it).
It retries connection errors, timeouts, 429 and 5xx with capped exponential backoff and
jitter. MLflow's own HTTP retries (minutes, by default) are turned down for this process
(:func:`quiet_http_retries`) so that the writer, not urllib3, decides how long to wait.

Runs are named by local keys (:meth:`Writer.new_key`) that the writer maps to server run
ids once their ``create`` record is sent, so nothing on the driver waits for a run to exist.

When the server stays unreachable for ``outage_s`` seconds, every unsent record goes to an
append-only JSON-lines spool and so does every later one; the writer keeps trying the
oldest record and, once the server answers, replays the spool in order and goes on. Each
sent record's sequence number is appended as an ack (with the run ids it created), so a
replay - by the sweep itself or by :func:`replay` (``gradtune sync``) - never sends a
record twice. Resending after a crash between send and ack is harmless: the tracking store
drops identical metric points, params and tags are rewritten with the same values, and a
``create`` first looks for a run tagged with its key (:data:`KEY_TAG`).

NaN and inf metric values are sent as they are (MLflow stores them) and spooled exactly
(:mod:`gradtune.spool`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import random
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gradtune import spool as spool_mod
from gradtune.credentials import redact
from gradtune.spool import SPOOL_NAME, Point

__all__ = ["KEY_TAG", "SPOOL_NAME", "Point", "Writer", "backoff", "redact", "replay", "transient"]

log = logging.getLogger(__name__)
T = TypeVar("T")

KEY_TAG = "gradtune.run_key"  # each child run's local key, to find it again after a retry
KEY = re.compile(r"run-[0-9a-f]{32}")
HTTP_TIMEOUT_S = 5  # per request; a timed-out request is retried like a refused one
BACKOFF_S = (0.25, 5.0)  # first and longest wait between tries
LIMITS = {"metrics": 1000, "params": 100, "tags": 100}  # MLflow's per-request limits
BATCH_LIMIT = 1000  # MLflow's limit on metrics + params + tags in one request
BATCHED = ("metrics", "params", "tags")  # the records one log_batch call can carry
LINGER = ("metrics", "tags")  # the records that wait for others to join their request
LINGER_SLICE_S = 0.2  # how often a lingering writer looks at the queue
_WAKE: dict[str, Any] = {"op": "wake"}  # put by close(): not a record, only a wake-up


def quiet_http_retries(timeout_s: int = HTTP_TIMEOUT_S) -> None:
    """Make each MLflow HTTP request of this process one try of ``timeout_s`` seconds.
    MLflow reads these per request; its defaults (7 retries, backoff factor 2, 120 s
    timeout) let one unreachable server hold a caller for about 4 minutes."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_s)


def transient(exc: BaseException) -> bool:
    """Worth retrying: no connection, a timeout, 429 or 5xx. Other MLflow errors (bad
    request, not found, no permission) would fail again the same way."""
    if isinstance(exc, MlflowException):
        status: int = exc.get_http_status_code()
        return status == 429 or status >= 500
    return isinstance(exc, OSError)  # requests' errors are OSErrors too


def backoff(tries: int) -> float:
    """Seconds to wait after ``tries`` failures: doubling from ``BACKOFF_S[0]`` up to
    ``BACKOFF_S[1]``, half of it random so that writers do not retry in step."""
    cap = min(BACKOFF_S[1], BACKOFF_S[0] * 2.0 ** min(tries, 16))
    return cap / 2 + random.uniform(0, cap / 2)


class Writer:
    """Sends records to the MLflow store at ``uri`` from a thread of its own; spools to
    ``spool`` (a JSON-lines path) after ``outage_s`` seconds without an answer."""

    def __init__(self, uri: str, spool: str | os.PathLike[str] | None, outage_s: float = 30.0,
                 linger_s: float = 1.0, maxsize: int = 100_000) -> None:
        if outage_s < 0 or linger_s < 0:
            raise ValueError(f"outage_s and linger_s must be >= 0, but got {outage_s=}, {linger_s=}")
        if uri.startswith(("http://", "https://")):
            quiet_http_retries()
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.spool = Path(spool) if spool is not None else None
        self.outage_s = outage_s
        self.linger_s = linger_s  # a batched record waits this long so that others join it
        self.ids: dict[str, str] = {}  # local run key -> server run id
        self.requests = 0  # calls made to the store, for tests and measurements
        self.dropped = 0  # records the store refused for good, or a full queue turned away
        self.cpu_s = 0.0  # CPU seconds the writer's thread has used, as of its last request
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize)
        self._todo: deque[dict[str, Any]] = deque()  # taken from the queue, not yet sent
        self._seq = 0  # of the last record taken
        self._taken: dict[int, float] = {}  # sequence number -> when it was taken (monotonic)
        self._filed = 0  # the spool holds every record up to this sequence number
        self._filed_ids: set[str] = set()  # keys whose run id the spool holds
        self._spooling = False
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._deadline = math.inf
        self._thread: threading.Thread | None = None

    # --------------------------------------------------------------- the driver's side
    def open(self, experiment: str, run_name: str, tags: dict[str, str],
             experiment_tags: dict[str, str] | None = None) -> tuple[str, str]:
        """Create the experiment if needed (with ``experiment_tags``) and the sweep's parent
        run, synchronously: a store that is down or refuses fails here, after one short try
        (no retries). Returns (experiment id, the parent's run id, which is also its key)."""
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(
            experiment, tags=experiment_tags)
        run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        self.ids[run_id] = run_id
        return exp_id, run_id

    def start(self) -> None:
        self._thread = threading.Thread(target=self._guarded, name="gradtune-mlflow", daemon=True)
        self._thread.start()

    def adopt(self, run_id: str) -> str:
        """Records may name an existing run (a resumed sweep's) by its run id: the key."""
        self.ids[run_id] = run_id
        return run_id

    @staticmethod
    def new_key() -> str:
        return f"run-{uuid.uuid4().hex}"

    def put(self, op: str, run: str, **fields: Any) -> None:
        """Queue one record and return at once. ``op``: create (experiment_id, name, tags,
        start_time), params (params), metrics (points), tags (tags; run keys in their values
        become run ids), text (path, text; run keys in the text become run ids), reopen (none)
        or end (status, end_time)."""
        try:
            self._queue.put_nowait({"op": op, "run": run, **fields})
        except queue.Full:  # never block the driver; say it, count it
            self.dropped += 1
            if self.dropped == 1:
                log.warning("MLflow writer queue full (%d records); dropping records", self._queue.maxsize)

    def run_id(self, key: str) -> str | None:
        return self.ids.get(key)

    @property
    def pending(self) -> int:
        """Records not yet acknowledged by the store (in memory or in the spool)."""
        with self._queue.mutex:
            queued = sum(1 for r in self._queue.queue if r is not _WAKE)
        return len(self._todo) + queued

    def close(self, timeout_s: float) -> int:
        """Send what is queued, waiting at most ``timeout_s`` for the store; what is still
        unsent then is spooled. Returns the number of records still pending."""
        self._deadline = time.monotonic() + timeout_s
        self._closing.set()
        self._wake.set()
        with contextlib.suppress(queue.Full):  # a thread waiting on an empty queue: at once
            self._queue.put_nowait(_WAKE)
        if self._thread is not None:
            self._thread.join(timeout_s + HTTP_TIMEOUT_S + 5)
            if self._thread.is_alive():
                log.warning("MLflow writer still busy after %.0fs; %d records not spooled",
                            timeout_s, self.pending)
        return self.pending

    # ------------------------------------------------------------------ the thread
    def _guarded(self) -> None:
        try:
            self._loop()
        except Exception:  # a bug here must not pass silently, nor take the sweep down
            log.exception("MLflow writer stopped; %d records not sent", self.pending)
        finally:
            self.cpu_s = time.thread_time()  # this thread's: what tracking cost the machine

    def _loop(self) -> None:
        tries, outage_since = 0, 0.0
        while True:
            # Closing, nothing more is coming: what is queued is taken without waiting.
            self._take(block=not self._todo and not self._closing.is_set())
            if not self._todo:
                if self._closing.is_set() and self._queue.empty():
                    return
                continue
            if self._closing.is_set() and time.monotonic() >= self._deadline:
                self._to_spool()
                return
            wait = self._linger()
            if wait > 0:  # in slices: a record that goes at once may arrive meanwhile
                self._sleep(min(wait, LINGER_SLICE_S))
                continue
            batch = self._head()
            try:
                new_ids = self._send(batch)
            except Exception as exc:
                if not transient(exc):  # _send dropped what the store refused: a bug
                    raise
                if tries == 0:
                    outage_since = time.monotonic()
                    log.warning("MLflow %s unreachable (%s); retrying", redact(self.uri), exc)
                tries += 1
                if not self._spooling and time.monotonic() - outage_since >= self.outage_s:
                    self._to_spool()
                self._sleep(backoff(tries))
                continue
            if tries:
                log.warning("MLflow %s answers again after %.0fs", redact(self.uri),
                            time.monotonic() - outage_since)
            tries = 0
            self._done(batch, new_ids)
            self.cpu_s = time.thread_time()

    def _linger(self) -> float:
        """Seconds the head record should still wait for others to join its request: a
        metric or tag record waits until it has been queued ``linger_s`` seconds; other
        records go at once. An end goes at once with everything before it (a run's end is
        not held back behind its last metrics and tags), and so does everything while
        closing. Params do not wait: they name the run a resume continues
        (``tracking.MLflowTracking.reopen``), so a run's params follow its create at once."""
        head = self._todo[0]
        if head["op"] not in LINGER or self._closing.is_set() or any(r["op"] == "end" for r in self._todo):
            return 0.0
        return self._taken.get(head["seq"], -math.inf) + self.linger_s - time.monotonic()

    def _take(self, block: bool) -> None:
        """Move queued records to ``_todo``, numbering them (and spooling them when the
        spool is in use); waits a little for the first one when ``block``."""
        records: list[dict[str, Any]] = []
        try:
            if block:
                records.append(self._queue.get(timeout=0.2))
            while True:
                records.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        records = [r for r in records if r is not _WAKE]
        now = time.monotonic()
        for record in records:
            self._seq += 1
            record["seq"] = self._seq
            self._taken[self._seq] = now
            self._todo.append(record)
        if self._spooling and records:
            self._file(records)

    def _head(self) -> list[dict[str, Any]]:
        """The next request's records: the oldest one, with the metric, param and tag
        records right behind it when it is one of those (up to MLflow's batch limit)."""
        batch = [self._todo[0]]
        if batch[0]["op"] in BATCHED:
            size = _size(batch[0])
            # A param written again goes in a request of its own, where the store decides
            # (MLflow refuses a changed value): merged, the later value would win unseen.
            params = {(batch[0]["run"], k) for k in batch[0].get("params", ())}
            for record in islice(self._todo, 1, None):
                size += _size(record)
                again = {(record["run"], k) for k in record.get("params", ())}
                if record["op"] not in BATCHED or size > BATCH_LIMIT or again & params:
                    break
                params |= again
                batch.append(record)
        return batch

    def _send(self, batch: list[dict[str, Any]]) -> dict[str, str]:
        """Send one batch; returns the run ids it created (key -> id). A request the store
        refuses for good drops its records (counted, logged); a transient error raises."""
        record = batch[0]
        op = record["op"]
        if op in BATCHED:
            by_run: dict[str, list[dict[str, Any]]] = {}
            for r in batch:
                by_run.setdefault(r["run"], []).append(r)
            for key, records in by_run.items():
                self._log_batch(key, records)
            return {}
        if op == "create":
            if record["run"] in self.ids:
                return {}
            created = self._call(batch, lambda: self._create(record))
            return {} if created is None else {record["run"]: created}
        if op == "text":
            text = self._swap(record["text"])
            self._call(batch, lambda: self.client.log_text(self._id(record["run"]), text, record["path"]))
        elif op == "files":  # every file of a local directory, at the artifact root
            self._call(batch, lambda: self.client.log_artifacts(self._id(record["run"]), record["dir"]))
        elif op == "reopen":  # a resumed trial: its run is RUNNING again
            self._call(batch, lambda: self.client.update_run(self._id(record["run"]), status="RUNNING"))
        elif op == "end":
            self._call(batch, lambda: self.client.set_terminated(
                self._id(record["run"]), status=record["status"], end_time=record["end_time"]))
        else:
            raise ValueError(f"unknown record op {op!r}")
        return {}

    def _call(self, records: list[dict[str, Any]], request: Callable[[], T]) -> T | None:
        self.requests += 1
        try:
            return request()
        except Exception as exc:
            if transient(exc):
                raise
            log.warning("MLflow refused %d %s record(s) (%s); dropped", len(records), records[0]["op"], exc)
            self.dropped += len(records)
            return None

    def _swap(self, text: str) -> str:
        """``text`` with each run key of a created run replaced by its run id."""
        return KEY.sub(lambda m: self.ids.get(m.group(0), m.group(0)), text)

    def _create(self, record: dict[str, Any]) -> str:
        key = record["run"]
        if record.get("tried"):  # an earlier try may have created it before failing
            found = self.client.search_runs([record["experiment_id"]],
                                            filter_string=f"tags.`{KEY_TAG}` = '{key}'", max_results=1)
            if found:
                return str(found[0].info.run_id)
        record["tried"] = True
        run = self.client.create_run(record["experiment_id"], start_time=record["start_time"],
                                     tags={**record["tags"], KEY_TAG: key}, run_name=record["name"])
        return str(run.info.run_id)

    def _log_batch(self, key: str, records: list[dict[str, Any]]) -> None:
        """One run's metric, param and tag records in as few ``log_batch`` calls as MLflow's
        limits allow (a later value of a param or tag stands). When the store refuses such
        a request for good, each record is sent alone, so that only the refused one is
        dropped."""
        params: dict[str, str] = {}
        tags: dict[str, str] = {}
        points: list[Metric] = []
        for r in records:
            params.update(r.get("params", {}))
            tags.update(r.get("tags", {}))
            points += [Metric(*p) for p in r.get("points", ())]
        request = partial(self._batches, key, [Param(k, v) for k, v in params.items()],
                          [RunTag(k, self._swap(v)) for k, v in tags.items()], points)
        if len(records) == 1:
            self._call(records, request)
            return
        self.requests += 1
        try:
            request()
        except Exception as exc:
            if transient(exc):
                raise
            for r in records:
                self._log_batch(key, [r])

    def _batches(self, key: str, params: list[Param], tags: list[RunTag], points: list[Metric]) -> None:
        run_id = self._id(key)
        while params or tags or points:
            p, params = params[: LIMITS["params"]], params[LIMITS["params"]:]
            t, tags = tags[: LIMITS["tags"]], tags[LIMITS["tags"]:]
            room = min(LIMITS["metrics"], BATCH_LIMIT - len(p) - len(t))
            m, points = points[:room], points[room:]
            self.client.log_batch(run_id, metrics=m, params=p, tags=t)

    def _id(self, key: str) -> str:
        run_id = self.ids.get(key)
        if run_id is None:  # its create was refused for good: so is this record (not transient)
            raise LookupError(f"run {key} was never created")
        return run_id

    def _done(self, batch: list[dict[str, Any]], new_ids: dict[str, str]) -> None:
        for _ in batch:
            self._taken.pop(self._todo.popleft()["seq"], None)
        self.ids.update(new_ids)
        if self._spooling:
            self._write({"acked": batch[-1]["seq"], "ids": new_ids})
            self._filed_ids.update(new_ids)
            if not self._todo:
                self._spooling = False
                log.warning("MLflow: spool %s replayed", self.spool)

    def _sleep(self, seconds: float) -> None:
        if self._closing.is_set():
            seconds = min(seconds, max(0.0, self._deadline - time.monotonic()))
        self._wake.wait(seconds)
        self._wake.clear()

    # ------------------------------------------------------------------ the spool
    def _to_spool(self) -> None:
        if self._spooling or self.spool is None or not self._todo:
            return
        log.warning("MLflow still unreachable: %d records spooled to %s", len(self._todo), self.spool)
        self._spooling = True
        if not self.spool.exists():
            self.spool.parent.mkdir(parents=True, exist_ok=True)
            self._write({"spool": 1, "tracking_uri": redact(self.uri)})
        self._write({"ids": {k: v for k, v in self.ids.items() if k not in self._filed_ids}})
        self._filed_ids.update(self.ids)
        self._file([r for r in self._todo if r["seq"] > self._filed])

    def _file(self, records: list[dict[str, Any]]) -> None:
        self._write(*records)
        self._filed = records[-1]["seq"]

    def _write(self, *lines: dict[str, Any]) -> None:
        assert self.spool is not None
        spool_mod.append(self.spool, lines)


def _size(record: dict[str, Any]) -> int:
    """How many of MLflow's batch entities a record carries."""
    return len(record.get("points", ())) + len(record.get("params", ())) + len(record.get("tags", ()))


def replay(path: str | os.PathLike[str], uri: str | None = None, timeout_s: float = 60.0) -> tuple[int, int]:
    """Send a spool's unacknowledged records to ``uri`` (default: the URI it records),
    trying for at most ``timeout_s`` seconds. Returns (records sent, records still pending)."""
    recorded, ids, records = spool_mod.read(path)
    writer = Writer(uri or recorded, path, outage_s=0.0)
    writer.ids, writer._filed_ids = dict(ids), set(ids)
    for record in records:
        record["tried"] = record["op"] == "create"  # sent before? look for the run first
    writer._todo.extend(records)
    writer._seq = writer._filed = max((r["seq"] for r in records), default=0)
    writer._spooling = bool(records)
    writer._deadline = time.monotonic() + timeout_s
    writer._closing.set()
    writer._loop()
    return len(records) - writer.pending, writer.pending
