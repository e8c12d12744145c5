"""MLflow logging from the Ray Tune driver: a parent run per sweep, a nested child run per
trial, metrics against the training step, batched. MLflow I/O only: what happened to a
trial is :mod:`gradtune.outcome`'s (the sweep's ledger), written here as tags and status.

Only the driver talks to MLflow (this is a Tune ``Callback``), so workers need no tracking
credentials or network access to the server.

NaN and inf metric values are logged as they are (MLflow stores them), so a diverged trial's
last numbers are visible in the UI; non-numeric result values are not logged as metrics.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from gradtune import outcome
from gradtune import spec as spec_mod
from gradtune.credentials import redact
from gradtune.outcome import Ledger, Outcome, TrialRecord
from gradtune.params import trial_params
from gradtune.spec import SweepSpec

log = logging.getLogger(__name__)

BATCH = 1000  # MLflow's per-request limit for metrics
FLUSH_SECONDS = 5.0


def run_name(params: dict[str, Any]) -> str:
    """A readable child-run name, e.g. ``norm=layer clip=norm@1.0 init=2.0 bs=64``."""
    clip = params.get("clip_method", "none")
    if clip != "none":
        clip = f"{clip}@{params.get('clip_threshold', 0):.3g}"
    parts = [
        f"norm={params.get('norm', 'none')}",
        f"clip={clip}",
        f"init={params.get('init_scale', 1.0):.3g}",
        f"bs={params.get('batch_size')}",
    ]
    return " ".join(parts)


def metrics_of(result: dict[str, Any], timestamp_ms: int) -> list[Metric]:
    """The numeric values of ``result`` as MLflow metrics at its training step; NaN and inf
    as they are. Tune's own bookkeeping keys and :data:`outcome.NOT_METRICS` are left out."""
    step = int(result.get(outcome.STEP, result.get("training_iteration", 0)))
    out = []
    for key, value in result.items():
        if key in outcome.NOT_METRICS or key in TUNE_KEYS:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out.append(Metric(key, float(value), timestamp_ms, step))
    return out


TUNE_KEYS = {
    "training_iteration", "time_total_s", "time_this_iter_s", "timestamp", "pid",
    "time_since_restore", "iterations_since_restore", "timesteps_total", "episodes_total",
    "timesteps_since_restore",
}


# The MLflow status of a child run for each outcome.
RUN_STATUS = {Outcome.COMPLETED: "FINISHED", Outcome.DIVERGED: "FINISHED",
              Outcome.PRUNED: "KILLED", Outcome.FAILED: "FAILED"}


class MLflowTracking(Callback):
    """Tune callback writing the sweep to MLflow: a child run per trial, ended with the
    outcome the sweep's ``ledger`` gives; ``runs`` maps trial id -> MLflow run id."""

    def __init__(self, spec: SweepSpec, tracking_uri: str, experiment: str, ledger: Ledger) -> None:
        self.spec = spec
        self.ledger = ledger
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.client: MlflowClient | None = None
        self.parent_id: str | None = None
        self.experiment_id: str | None = None
        self.runs: dict[str, str] = {}
        self.buffers: dict[str, list[Metric]] = {}
        self.last_flush: dict[str, float] = {}
        self.ended: set[str] = set()  # trial ids whose run is terminated

    # ----------------------------------------------------------------- sweep level
    def start(self) -> str:
        """Create the experiment (if needed) and the parent run; returns its id. Called
        by the sweep before Tune starts, so a bad tracking URI fails before any trial."""
        # MLflow prints "View run ... at: <URI>" at every run's end: noise, and a place where
        # a URI is shown; gradtune's summary says where the runs are.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        with store_lock(self.tracking_uri):  # one store creation, one experiment
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            exp = self.client.get_experiment_by_name(self.experiment)
            self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(self.experiment)
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"sweep {self.spec.name} {time.strftime('%Y-%m-%d %H:%M:%S')}",
            tags={"gradtune.role": "sweep", "gradtune.workload": self.spec.workload.name},
        )
        self.parent_id = run.info.run_id
        # Credentials in a URI (user:password@host) stay out of what is logged.
        logged = self.spec.model_copy(update={"tracking": self.spec.tracking.model_copy(
            update={"uri": redact(self.spec.tracking.uri)})})
        flat = spec_mod.flatten(logged.model_dump(mode="json"))
        params = [Param(k, _param_value(v)) for k, v in flat.items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.parent_id, params=params[i : i + 100])
        self.client.log_text(self.parent_id, spec_mod.dump(logged), "spec.yaml")
        return self.parent_id

    def __getstate__(self) -> dict[str, Any]:
        """What Tune pickles into ``tuner.pkl`` (RunConfig.callbacks are part of it): no
        client and a redacted URI, so credentials in a database URI stay out of the
        sweep's storage. A restored copy needs its ``tracking_uri`` again before it logs."""
        state = self.__dict__.copy()
        state["client"] = None
        state["tracking_uri"] = redact(self.tracking_uri)
        return state

    def finish(self, status: str = "FINISHED") -> None:
        if self.client is None or self.parent_id is None:
            return
        counts = self.ledger.counts()
        metrics = [Metric(f"trials_{o}", float(n), _now(), 0) for o, n in counts.items()]
        self.client.log_batch(self.parent_id, metrics=metrics)
        summary = self.ledger.summary(self.spec.search.metric, self.spec.search.mode, self.runs)
        # allow_nan=False: the summary is strict JSON (outcome.strict_json made NaN null).
        self.client.log_text(self.parent_id, json.dumps(summary, indent=2, allow_nan=False), "summary.json")
        self.client.set_terminated(self.parent_id, status=status)

    # ----------------------------------------------------------------- trial level
    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        assert self.client is not None and self.parent_id is not None
        params = trial_params(self.spec, trial.config)
        run = self.client.create_run(
            self.experiment_id,  # type: ignore[arg-type]
            run_name=run_name(params),
            tags={
                "mlflow.parentRunId": self.parent_id,
                "gradtune.role": "trial",
                "gradtune.trial_id": trial.trial_id,
                "gradtune.sweep": self.spec.name,
            },
        )
        run_id = run.info.run_id
        self.runs[trial.trial_id] = run_id
        self.buffers[trial.trial_id] = []
        self.last_flush[trial.trial_id] = time.monotonic()
        self.client.log_batch(run_id, params=[Param(k, _param_value(v)) for k, v in params.items()])

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or self.client is None:
            return
        if result.get("training_iteration") == 1 and result.get(outcome.NODE_ID):
            self.client.set_tag(run_id, "gradtune.node_id", result[outcome.NODE_ID])
        buf = self.buffers[trial.trial_id]
        buf.extend(metrics_of(result, _now()))
        if len(buf) >= BATCH or time.monotonic() - self.last_flush[trial.trial_id] > FLUSH_SECONDS:
            self._flush(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._end(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._end(trial, errored=True)

    def _end(self, trial: Any, errored: bool) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or self.client is None or trial.trial_id in self.ended:
            return
        self.ended.add(trial.trial_id)
        self._flush(trial.trial_id)
        record = self.ledger.end(trial.trial_id, trial_params(self.spec, trial.config),
                                 trial.last_result, errored)
        self.client.log_batch(run_id, tags=end_tags(record))
        self.client.set_terminated(run_id, status=RUN_STATUS[record.outcome])

    def _flush(self, trial_id: str) -> None:
        buf = self.buffers.get(trial_id)
        run_id = self.runs.get(trial_id)
        if not buf or run_id is None or self.client is None:
            return
        for i in range(0, len(buf), BATCH):
            self.client.log_batch(run_id, metrics=buf[i : i + BATCH])
        buf.clear()
        self.last_flush[trial_id] = time.monotonic()


def end_tags(record: TrialRecord) -> list[RunTag]:
    """``gradtune.outcome``, the divergence reason and step, and the node it ran on."""
    tags = [RunTag("gradtune.outcome", record.outcome.value)]
    if record.verdict is not None:
        tags.append(RunTag("gradtune.divergence_reason", record.verdict.reason))
        tags.append(RunTag("gradtune.divergence_step", str(record.verdict.step)))
    node = record.result.get(outcome.NODE_ID)
    if node:
        tags.append(RunTag("gradtune.node_id", str(node)))
    return tags


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


def check_store(uri: str) -> None:
    """Reach the tracking store with one read (a new SQLite store gets its tables, under
    :func:`store_lock`) and create nothing in it: the sweep asks before it starts Ray."""
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
