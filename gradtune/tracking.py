"""MLflow logging from the Ray Tune driver: a parent run per sweep, a nested child run per
trial, metrics against the training step. This module maps Tune's trial events to records;
:mod:`gradtune.writer` sends them from a thread of its own, so no callback here waits on
the tracking server (an outage costs the sweep nothing; see the writer for retries and the
spool). What happened to a trial is :mod:`gradtune.outcome`'s (the sweep's ledger), written
here as tags and status.

Only the driver talks to MLflow (this is a Tune ``Callback``), so workers need no tracking
credentials or network access to the server.

NaN and inf metric values are logged as they are (MLflow stores them, and the writer's
spool keeps them exactly), so a diverged trial's last numbers are visible in the UI;
non-numeric result values are not logged as metrics. What a child run shows (its name,
status and points, log10 companions included) is :mod:`gradtune.runview`'s; what the parent
says at the end (its note, best metrics) is :mod:`gradtune.note`'s.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from gradtune import failure, note, onset, outcome, rescue, seeds, table
from gradtune import spec as spec_mod
from gradtune.credentials import redact
from gradtune.outcome import Ledger, TrialRecord
from gradtune.params import trial_params
from gradtune.runview import (
    RUN_STATUS,
    TUNE_KEYS,
    Steady,
    ended_name,
    metrics_of,
    replay_tags,
    rescue_tags,
    run_name,
    window_points,
)
from gradtune.spec import SweepSpec
from gradtune.writer import Point, Writer, quiet_http_retries

log = logging.getLogger(__name__)

OUTAGE_ENV = "GRADTUNE_MLFLOW_OUTAGE_S"  # seconds without an answer before spooling
DRAIN_ENV = "GRADTUNE_MLFLOW_DRAIN_S"  # seconds the sweep's end waits for the writer
__all__ = ["PARENT_PARAMS", "RUN_STATUS", "TUNE_KEYS", "MLflowTracking", "end_tags", "metrics_of",
           "parent_name", "redact", "resolve_uri", "run_name"]

# The spec keys logged as the parent run's params (the whole spec is its spec.yaml): few,
# so the compare view's param pickers show the trials' knobs, not 48 spec keys.
PARENT_PARAMS = ("workload.name", "training.steps", "training.precision", "search.sampler",
                 "search.trials", "search.metric", "search.mode", "divergence.scheduler")


def parent_name(spec: SweepSpec, experiment: str, when: float | None = None) -> str:
    """The parent run's name: the spec, the experiment when it is another one, the start
    time and 4 random hex digits, so that no two sweeps look alike
    (``sweep quickstart in team-x · 2026-12-02 08:58:29 · 3fa1``)."""
    where = "" if experiment == spec.name else f" in {experiment}"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
    return f"sweep {spec.name}{where} · {stamp} · {uuid.uuid4().hex[:4]}"


def parent_params(spec: SweepSpec) -> dict[str, str]:
    """:data:`PARENT_PARAMS` of ``spec``, and ``searched``: the knobs of its space."""
    flat = spec_mod.flatten(spec.model_dump(mode="json"))
    params = {k: _param_value(flat[k]) for k in PARENT_PARAMS if k in flat}
    params["searched"] = _param_value(",".join(spec.search.space))
    return params


def _seconds(value: float | None, env: str, default: float) -> float:
    return float(os.environ.get(env, default)) if value is None else value


F = TypeVar("F", bound=Callable[..., Any])


def _timed(method: F) -> F:
    """Add the time a callback takes to ``busy_s``: what tracking holds Tune's loop up."""
    @functools.wraps(method)
    def timed(self: MLflowTracking, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.busy_s += time.perf_counter() - started
    return cast(F, timed)


class MLflowTracking(Callback):
    """Tune callback writing the sweep to MLflow: a child run per trial, ended with the
    outcome the sweep's ``ledger`` gives; ``runs`` maps trial id -> the writer's run key
    (:meth:`run_ids` gives the MLflow run ids).

    ``spool`` is where records go when the server stays down for ``outage_s`` seconds
    (default ``$GRADTUNE_MLFLOW_OUTAGE_S``, else 30); :meth:`finish` waits at most
    ``drain_s`` (``$GRADTUNE_MLFLOW_DRAIN_S``, else 30) for the last records."""

    def __init__(self, spec: SweepSpec, tracking_uri: str, experiment: str, ledger: Ledger,
                 spool: str | None = None, outage_s: float | None = None,
                 drain_s: float | None = None) -> None:
        self.spec = spec
        self.ledger = ledger
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.spool = spool
        self.outage_s = _seconds(outage_s, OUTAGE_ENV, 30.0)
        self.drain_s = _seconds(drain_s, DRAIN_ENV, 30.0)
        self.writer: Writer | None = None
        self.parent_id: str | None = None
        self.experiment_id: str | None = None
        self.runs: dict[str, str] = {}
        self.ended: set[str] = set()  # trial ids whose run is terminated
        # trial id -> last training step logged; a resumed or retried trial repeats the
        # steps after its checkpoint, which are not logged twice.
        self.logged_step: dict[str, int] = {}
        # What tracking costs the sweep, in seconds: time in Tune's callbacks here, and at
        # finish that plus the writer thread's CPU while Tune ran and the final drain (the
        # summary states it). What the writer sends after Tune's run (the last trials' ends,
        # the parent's note, summary and report) goes while Ray shuts down, when the cores
        # are idle: it costs the sweep only where it outlasts the shutdown, the drain.
        self.busy_s = 0.0
        self.tuning_cpu_s = 0.0  # the writer thread's CPU when Tune's run ended (describe)
        self.cost_s = 0.0
        self.described = False  # the sweep's end is queued (describe)
        self.steady: dict[str, Steady] = {}  # run key -> its thinned metrics (runview.Steady)
        self.reopened: dict[str, dict[str, str]] = {}  # trial id -> params of its run, on resume
        # trial ids whose run a crashed driver left RUNNING (found on resume): if Tune's saved
        # state says the trial ended, its end was still in that driver's queue; finish sends it.
        self.left_open: set[str] = set()
        # trial id -> (step, grad_norm) of every point logged by this driver (a resumed
        # sweep's start with its resume), for the report read at the sweep's end.
        self.traces: dict[str, list[tuple[int, float]]] = {}
        self.rollbacks: dict[str, int] = {}  # trial id -> rescues seen (outcome.RESCUES)
        self.onset_tagged: set[str] = set()  # trial ids with gradtune.onset_layer
        # trial id -> the onset (onset.from_json) of the verdict its tag names, for the report
        self.onsets: dict[str, dict[str, Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        """What Tune pickles into ``tuner.pkl`` (RunConfig.callbacks are part of it): no
        writer (a thread does not pickle) and a redacted URI, so credentials in a database
        URI stay out of the sweep's storage."""
        return {**self.__dict__, "writer": None, "tracking_uri": redact(self.tracking_uri)}

    # ----------------------------------------------------------------- sweep level
    def start(self) -> str:
        """Create the experiment (if needed, tagged as a model-training one) and the parent
        run (:func:`parent_name`, params :func:`parent_params`), then start the writer;
        returns the parent's run id. Called by the sweep before Tune starts, so a bad
        tracking URI or a server that is down fails here, in seconds, before any trial."""
        _quiet_run_links()
        with store_lock(self.tracking_uri):  # one store creation, one experiment
            self.writer = Writer(self.tracking_uri, self.spool, outage_s=self.outage_s)
            self.experiment_id, self.parent_id = self.writer.open(
                self.experiment, run_name=parent_name(self.spec, self.experiment),
                tags={"gradtune.role": "sweep", "gradtune.workload": self.spec.workload.name},
                # Older MLflow 3 UIs open such an experiment on its runs, not on traces.
                experiment_tags={note.KIND_TAG: note.KIND_ML},
            )
        # Credentials in a URI (user:password@host) stay out of what is logged.
        logged = self.spec.model_copy(update={"tracking": self.spec.tracking.model_copy(
            update={"uri": redact(self.spec.tracking.uri)})})
        self.writer.put("params", self.parent_id, params=parent_params(logged))
        self.writer.put("text", self.parent_id, path="spec.yaml", text=spec_mod.dump(logged))
        self.writer.start()
        return self.parent_id

    def reopen(self, parent_id: str) -> str:
        """Continue the sweep of parent run ``parent_id`` (``gradtune sweep --resume``),
        synchronously like :meth:`start`: the parent is RUNNING again, and each trial that
        already has a child run (found by its ``gradtune.trial_id`` tag) will continue that
        run after the last step it logged."""
        _quiet_run_links()
        self.writer = Writer(self.tracking_uri, self.spool, outage_s=self.outage_s)
        client = self.writer.client
        parent = client.get_run(parent_id)
        self.parent_id, self.experiment_id = self.writer.adopt(parent_id), parent.info.experiment_id
        client.update_run(parent_id, status="RUNNING")
        children = client.search_runs(
            [self.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'", max_results=50000)
        for run in children:
            trial_id = run.data.tags.get("gradtune.trial_id")
            if trial_id is None:
                continue
            # Which trials ended is Tune's saved state (set_state), not these tags: a trial
            # that ended after Tune's last experiment checkpoint runs again.
            self.runs[trial_id] = self.writer.adopt(run.info.run_id)
            self.reopened[trial_id] = dict(run.data.params)
            if run.info.status == "RUNNING":
                self.left_open.add(trial_id)
            norms = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "grad_norm"))
            self.logged_step[trial_id] = max((step for step, _ in norms), default=0)
            self.traces[trial_id] = norms
            if table.ONSET_TAG in run.data.tags:  # only these runs' artifacts are read
                self.onset_tagged.add(trial_id)
                found = table.read_onset(client, run.info.run_id)
                if found is not None:
                    self.onsets[trial_id] = found
        self.writer.start()
        return parent_id

    def describe(self) -> None:
        """Queue, once, what the sweep's end says: the ends of child runs still open (trials
        stopped in flight by an interrupt end KILLED, tagged ``gradtune.outcome=interrupted``:
        a resumed sweep continues them), and on the parent its note (:func:`note.render`),
        counts ``trials_<outcome>`` and ``best_<metric>`` as metrics and ``summary.json``.
        Called when Tune's run is over; :meth:`finish` calls it if the sweep did not."""
        if self.writer is None or self.parent_id is None or self.described:
            return
        self.described = True
        self.tuning_cpu_s = self.writer.cpu_s
        for trial_id in sorted(self.left_open & self.ended):
            record = self.ledger.records.get(trial_id)
            if record is None or trial_id not in self.runs:
                continue
            if int(record.result.get(outcome.STEP, 0)) > self.logged_step.get(trial_id, 0):
                self.writer.put("metrics", self.runs[trial_id], points=metrics_of(dict(record.result), _now()))
            self._close(self.runs[trial_id], record)
        for trial_id, key in self.runs.items():
            if trial_id not in self.ended:
                self._kill(key)
        counts = self.ledger.counts()
        metric, mode = self.spec.search.metric, self.spec.search.mode
        values = {f"trials_{o}": float(n) for o, n in counts.items()}
        values.update(note.best_metrics(self.ledger, metric, mode))
        self.writer.put("metrics", self.parent_id,
                        points=[Point(k, v, _now(), 0) for k, v in values.items()])
        # The run keys in the note become run ids when the writer sends it, as in summary.json.
        text = note.render(self.ledger, self.spec.name, metric, mode, list(self.spec.search.space),
                           self.runs, self.experiment_id)
        self.writer.put("tags", self.parent_id, tags={note.NOTE_TAG: text})
        summary = self.ledger.summary(metric, mode, self.runs)
        # allow_nan=False: the summary is strict JSON (outcome.strict_json made NaN null).
        # Its run ids are the writer's keys until it sends the file (it swaps in the ids).
        self.writer.put("text", self.parent_id, path="summary.json",
                        text=json.dumps(summary, indent=2, allow_nan=False))

    def finish(self, status: str = "FINISHED", files: str | None = None) -> int:
        """:meth:`describe` the sweep (if not yet), log the files of the local directory
        ``files`` (the sweep's report) on the parent run, end it with ``status`` and wait
        (``drain_s`` at most) for the writer; returns the number of records still pending
        (they are in the spool)."""
        if self.writer is None or self.parent_id is None:
            return 0
        self.describe()
        if files is not None:
            self.writer.put("files", self.parent_id, dir=files)
        self.writer.put("end", self.parent_id, status=status, end_time=_now())
        started = time.monotonic()
        pending = self.writer.close(self.drain_s)
        drained = time.monotonic() - started
        self.cost_s = self.busy_s + self.tuning_cpu_s + drained
        log.info("MLflow writer: drained in %.2fs; %d requests, %d records pending, %d dropped",
                 drained, self.writer.requests, pending, self.writer.dropped)
        log.info("MLflow tracking cost %.2fs: %.2fs in Tune's driver loop, %.2fs CPU in the "
                 "writer's thread while Tune ran (%.2fs in all), %.2fs draining at the end",
                 self.cost_s, self.busy_s, self.tuning_cpu_s, self.writer.cpu_s, drained)
        return pending

    def run_ids(self) -> dict[str, str]:
        """Trial id -> MLflow run id, for the runs the server has created so far."""
        ids = {t: self.writer.run_id(k) if self.writer else None for t, k in self.runs.items()}
        return {t: run_id for t, run_id in ids.items() if run_id is not None}

    # ----------------------------------------------------------------- trial level
    # Each of these only queues records for the writer: they run in Tune's driver loop.
    @_timed
    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        assert self.writer is not None and self.parent_id is not None
        params = trial_params(self.spec, trial.config)
        if self._continues(trial.trial_id, params):  # resumed or retried: the same run
            self.writer.put("reopen", self.runs[trial.trial_id])
            return
        key = self.writer.new_key()
        self.runs[trial.trial_id] = key
        self.writer.put("create", key, experiment_id=self.experiment_id, name=run_name(params),
                        start_time=_now(), tags={
                            "mlflow.parentRunId": self.parent_id,
                            "gradtune.role": "trial",
                            "gradtune.trial_id": trial.trial_id,
                            "gradtune.sweep": self.spec.name,
                        })
        self.writer.put("params", key, params={k: _param_value(v) for k, v in params.items()})

    @_timed
    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        key = self.runs.get(trial.trial_id)
        if key is None or self.writer is None:
            return
        if result.get("training_iteration") == 1 and result.get(outcome.NODE_ID):
            self.writer.put("tags", key, tags={"gradtune.node_id": str(result[outcome.NODE_ID])})
        # A retry or a resumed sweep reports again the steps between its checkpoint and the
        # stop: the first report of a step stands (on CPU the two are the same).
        step = int(result.get(outcome.STEP, 0))
        after = self._after_rollback(trial.trial_id, result)
        self._onset(trial.trial_id, key, result)
        if step and step <= after:
            return
        self.logged_step[trial.trial_id] = step
        now = _now()
        # A verdict's last steps (outcome.WINDOW): the steps between the last report and
        # this one, so the run's charts show the blow-up step by step.
        points = window_points(result.get(outcome.WINDOW) or (), after, step, now)
        points += metrics_of(result, now)
        self.writer.put("metrics", key, points=self.steady.setdefault(key, Steady())(points))
        trace = self.traces.setdefault(trial.trial_id, [])
        trace += [(p.step, p.value) for p in points if p.key == "grad_norm"]

    def _after_rollback(self, trial_id: str, result: dict[str, Any]) -> int:
        """The last step logged, except after a new rollback (a rescue): then the rollback's
        checkpoint step, so the rescued steps are logged again (MLflow keeps both points of
        such a step; ``rescue_attempts`` tells them apart)."""
        after = self.logged_step.get(trial_id, 0)
        rollbacks = rescue.parse(result.get(outcome.RESCUES))
        if len(rollbacks) > self.rollbacks.get(trial_id, 0):
            self.rollbacks[trial_id] = len(rollbacks)
            after = min(after, int(rollbacks[-1]["to_step"]))
            self.logged_step[trial_id] = after
        return after

    def _onset(self, trial_id: str, key: str, result: dict[str, Any]) -> None:
        """A verdict's per-layer onset (``outcome.ONSET``): the artifacts
        ``onset/verdict_<n>_step_<step>.json`` and ``.csv`` (the trial's n-th verdict), and
        the tag ``gradtune.onset_layer`` (the first verdict's: where the configuration as
        proposed started to diverge), whose onset :attr:`onsets` keeps for the report."""
        assert self.writer is not None
        found = onset.from_json(result.get(outcome.ONSET))
        if found is None:
            return
        name = f"onset/verdict_{int(found.get('verdict', 1))}_step_{int(found['verdict_step'])}"
        self.writer.put("text", key, path=f"{name}.json", text=result[outcome.ONSET])
        self.writer.put("text", key, path=f"{name}.csv", text=onset.to_csv(found))
        if trial_id not in self.onset_tagged and found.get("onset_layer"):
            self.onset_tagged.add(trial_id)
            self.onsets[trial_id] = found
            self.writer.put("tags", key, tags={table.ONSET_TAG: str(found["onset_layer"])})

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._end(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._end(trial, errored=True)

    @_timed
    def _end(self, trial: Any, errored: bool) -> None:
        key = self.runs.get(trial.trial_id)
        if key is None or self.writer is None or trial.trial_id in self.ended:
            return
        self.ended.add(trial.trial_id)
        self.left_open.discard(trial.trial_id)
        failures = int(getattr(trial, "num_failures", 0) or 0)
        failed = failure.of_trial(trial) if errored or failures else None
        record = self.ledger.end(trial.trial_id, trial_params(self.spec, trial.config),
                                 trial.last_result, errored, error=failed.reason if failed else None,
                                 failures=failures)
        self._close(key, record, failed.details if failed is not None else None)

    def _close(self, key: str, record: TrialRecord, details: str | None = None) -> None:
        """End the run ``key`` as ``record`` says: its outcome tags, a name that starts with
        the outcome, ``error.txt`` (``details``: every failure, with tracebacks), the status."""
        assert self.writer is not None
        self._rest(key)
        tags = {t.key: t.value for t in end_tags(record)}
        tags["mlflow.runName"] = ended_name(record.outcome, record.params)  # the outcome first
        self.writer.put("tags", key, tags=tags)
        if details:
            self.writer.put("text", key, path="error.txt", text=details)
        self.writer.put("end", key, status=RUN_STATUS[record.outcome], end_time=_now())


    def _continues(self, trial_id: str, params: dict[str, Any]) -> bool:
        """Whether the trial already has a run (a retry, or a resume) with these params. A
        run of the same trial id with other params is one the crashed driver started after
        Tune's last checkpoint (its trial was lost): it ends KILLED, this trial gets a new one."""
        logged = self.reopened.pop(trial_id, None)
        if logged is None:
            return trial_id in self.runs
        if logged == {k: _param_value(v) for k, v in params.items()}:
            return True
        self._kill(self.runs.pop(trial_id))
        self.logged_step.pop(trial_id, None)
        return False

    def _rest(self, key: str) -> None:
        """Send the points of ``key``'s run that :class:`Steady` held back: its end is near."""
        assert self.writer is not None
        steady = self.steady.pop(key, None)
        if steady is not None and (held := steady.rest()):
            self.writer.put("metrics", key, points=held)

    def _kill(self, key: str) -> None:
        assert self.writer is not None
        self._rest(key)
        self.writer.put("tags", key, tags={"gradtune.outcome": outcome.INTERRUPTED})
        self.writer.put("end", key, status="KILLED", end_time=_now())

    # ----------------------------------------------------------------- Tune's experiment checkpoint
    def get_state(self) -> dict[str, Any]:
        """Saved with Tune's experiment state, so ``--resume`` knows how trials ended."""
        return {"ledger": self.ledger, "ended": set(self.ended)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.ledger.update(state["ledger"])
        self.ended |= state["ended"]


def end_tags(record: TrialRecord) -> list[RunTag]:
    """``gradtune.outcome``, the divergence reason and step, why it failed
    (``gradtune.failure``, one line) and how many failures it had, retried ones included
    (``gradtune.failures``), and the node it ran on."""
    tags = [RunTag("gradtune.outcome", record.outcome.value)]
    if record.verdict is not None:
        tags.append(RunTag("gradtune.divergence_reason", record.verdict.reason))
        tags.append(RunTag("gradtune.divergence_step", str(record.verdict.step)))
    if record.error is not None:
        tags.append(RunTag("gradtune.failure", record.error))
    if record.failures:
        tags.append(RunTag("gradtune.failures", str(record.failures)))
    node = record.result.get(outcome.NODE_ID)
    if node:
        tags.append(RunTag("gradtune.node_id", str(node)))
    # search.seeds > 1: P(diverged) and each seed's outcome (step and reason if it diverged).
    tags += [RunTag(k, v) for k, v in seeds.tags(record.result, record.outcome).items()]
    more = {**rescue_tags(record.result), **replay_tags(record.result)}
    return tags + [RunTag(k, v) for k, v in more.items()]


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]  # MLflow's param value limit


def _now() -> int:
    return int(time.time() * 1000)


def resolve_uri(uri: str) -> str:
    """Make a relative ``sqlite:///file.db`` absolute, so every process (and the
    ``ui`` command printed at the end) points at the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + os.path.abspath(uri[len(prefix) :])
    return uri


def _quiet_run_links() -> None:
    # MLflow prints "View run ... at: <URI>" at every run's end: noise, and a place where
    # a URI is shown; gradtune's summary says where the runs are.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def check_store(uri: str) -> None:
    """Reach the tracking store with one read (a new SQLite store gets its tables, under
    :func:`store_lock`) and create nothing in it: the sweep asks before it starts Ray. A
    server that does not answer fails after one short try, as in :meth:`MLflowTracking.start`."""
    if uri.startswith(("http://", "https://")):
        quiet_http_retries()
    with store_lock(uri):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """For a SQLite store, an exclusive ``flock`` on ``<db>.lock`` beside the file: two
    sweeps starting at once on a new store would both create MLflow's tables (one dies
    with "table experiments already exists") or the same experiment. Other stores: none."""
    path = uri[len("sqlite:///"):].partition("?")[0] if uri.startswith("sqlite:///") else ""
    if not path or path == ":memory:" or not os.path.isdir(os.path.dirname(path) or "."):
        yield  # no file (yet): MLflow says what is wrong with the URI
        return
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
