"""MLflow logging from the Ray Tune driver: a parent run per sweep, a nested child run per
trial, metrics against the training step, batched.

Only the driver talks to MLflow (this is a Tune ``Callback``), so workers need no tracking
credentials or network access to the server.

NaN and inf metric values are logged as they are (MLflow stores them), so a diverged trial's
last numbers are visible in the UI; non-numeric result values are not logged as metrics.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from gradtune import spec as spec_mod
from gradtune.search_space import trial_params
from gradtune.spec import SweepSpec

log = logging.getLogger(__name__)

OUTCOMES = ("completed", "diverged", "pruned", "failed")
# Keys a trial reports that are not metrics (or not per-step metrics).
NOT_METRICS = {"step", "final", "divergence_step", "node_id", "trial_id", "done"}
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


def outcome_of(result: dict[str, Any] | None, errored: bool = False) -> str:
    """``failed`` on error; ``diverged`` if the last result says so; ``completed`` if the
    trial reached its final step; else ``pruned`` (stopped early by the scheduler)."""
    if errored:
        return "failed"
    result = result or {}
    if result.get("diverged"):
        return "diverged"
    if result.get("final"):
        return "completed"
    return "pruned"


def metrics_of(result: dict[str, Any], timestamp_ms: int) -> list[Metric]:
    step = int(result.get("step", result.get("training_iteration", 0)))
    out = []
    for key, value in result.items():
        if key in NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key in TUNE_KEYS:
            continue
        out.append(Metric(key, float(value), timestamp_ms, step))
    return out


TUNE_KEYS = {
    "training_iteration", "time_total_s", "time_this_iter_s", "timestamp", "pid",
    "time_since_restore", "iterations_since_restore", "timesteps_total", "episodes_total",
    "timesteps_since_restore",
}


class MLflowTracking(Callback):
    """Tune callback writing the sweep to MLflow. ``summary`` fills up as trials end:
    trial id -> {outcome, params, last result}."""

    def __init__(self, spec: SweepSpec, tracking_uri: str, experiment: str) -> None:
        self.spec = spec
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.client: MlflowClient | None = None
        self.parent_id: str | None = None
        self.experiment_id: str | None = None
        self.runs: dict[str, str] = {}
        self.buffers: dict[str, list[Metric]] = {}
        self.last_flush: dict[str, float] = {}
        self.summary: dict[str, dict[str, Any]] = {}

    # ----------------------------------------------------------------- sweep level
    def start(self) -> str:
        """Create the experiment (if needed) and the parent run; returns its id. Called
        by the sweep before Tune starts, so a bad tracking URI fails before any trial."""
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

    def finish(self, status: str = "FINISHED") -> None:
        if self.client is None or self.parent_id is None:
            return
        counts = {o: 0 for o in OUTCOMES}
        for entry in self.summary.values():
            counts[entry["outcome"]] += 1
        metrics = [Metric(f"trials_{o}", float(n), _now(), 0) for o, n in counts.items()]
        self.client.log_batch(self.parent_id, metrics=metrics)
        self.client.log_text(self.parent_id, json.dumps(self.summary, indent=2, default=str), "summary.json")
        self.client.set_terminated(self.parent_id, status=status)

    # ----------------------------------------------------------------- trial level
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
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

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or self.client is None:
            return
        if result.get("training_iteration") == 1 and result.get("node_id"):
            self.client.set_tag(run_id, "gradtune.node_id", result["node_id"])
        buf = self.buffers[trial.trial_id]
        buf.extend(metrics_of(result, _now()))
        if len(buf) >= BATCH or time.monotonic() - self.last_flush[trial.trial_id] > FLUSH_SECONDS:
            self._flush(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, errored=True)

    def _end(self, trial: Any, errored: bool) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or self.client is None or trial.trial_id in self.summary:
            return
        self._flush(trial.trial_id)
        result = trial.last_result or {}
        outcome = outcome_of(result, errored)
        tags = [RunTag("gradtune.outcome", outcome)]
        if outcome == "diverged":
            tags.append(RunTag("gradtune.divergence_reason", str(result.get("divergence_reason", ""))))
            tags.append(RunTag("gradtune.divergence_step", str(result.get("divergence_step", result.get("step", "")))))
        if result.get("node_id"):
            tags.append(RunTag("gradtune.node_id", str(result["node_id"])))
        self.client.log_batch(run_id, tags=tags)
        status = {"failed": "FAILED", "pruned": "KILLED"}.get(outcome, "FINISHED")
        self.client.set_terminated(run_id, status=status)
        self.summary[trial.trial_id] = {
            "number": list(self.runs).index(trial.trial_id),  # start order (suggestion order)
            "outcome": outcome,
            "run_id": run_id,
            "params": trial_params(self.spec, trial.config),
            "result": {k: v for k, v in result.items() if k in REPORTED},
        }

    def _flush(self, trial_id: str) -> None:
        buf = self.buffers.get(trial_id)
        run_id = self.runs.get(trial_id)
        if not buf or run_id is None or self.client is None:
            return
        for i in range(0, len(buf), BATCH):
            self.client.log_batch(run_id, metrics=buf[i : i + BATCH])
        buf.clear()
        self.last_flush[trial_id] = time.monotonic()


REPORTED = {
    "step", "train_loss", "grad_norm", "grad_norm_max", "clip_fraction", "val_loss",
    "val_accuracy", "diverged", "divergence_reason", "divergence_step", "final", "node_id",
}


def redact(uri: str) -> str:
    """``scheme://user:secret@host/...`` -> ``scheme://***@host/...``; other text unchanged."""
    return re.sub(r"(?<=://)[^/@\s]+@", "***@", uri)


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

