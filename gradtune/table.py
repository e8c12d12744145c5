"""A finished sweep as a table: one :class:`Row` per ended trial, from either source.

- :func:`from_ledger`: what the driver holds in memory when a sweep ends (the
  :class:`~gradtune.outcome.Ledger`, the MLflow run ids, the grad-norm traces, if kept);
- :func:`from_mlflow`: the tracking store alone (``gradtune report``), read back from the
  sweep's parent run (``spec.yaml``, ``summary.json``) and its child runs (params, tags,
  metrics, the ``grad_norm`` history). MLflow params are strings; they are typed again with
  the spec's search space and :data:`gradtune.params.PARAMS`.

A trial's ``onset`` (where its first divergence started, :mod:`gradtune.onset`) is, from
the driver, the first verdict's onset tracking logged; from MLflow, the lowest-numbered
``onset/verdict_<n>_step_<step>.json`` of a run tagged ``gradtune.onset_layer`` (only
those runs' artifacts are listed and read).

Both give equal tables for the same sweep. Only trials that ended with an outcome are rows
(a run tagged ``interrupted``, or still without an outcome tag, is not).

NaN and inf: ``Row.metrics`` keeps final values as measured (a blown-up ``grad_norm`` stays
``inf``; MLflow's SQL store saves inf as the largest float, read back here as inf),
``Row.value`` is the objective when it is finite, else ``None``, and traces keep every point
as logged; an onset keeps a non-finite norm as ``None`` (its JSON ``null``).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradtune import onset as onset_mod
from gradtune import spec as spec_mod
from gradtune.credentials import redact
from gradtune.errors import GradtuneError
from gradtune.outcome import METRICS, OUTCOMES, P_DIVERGED, SIGNALS, Ledger, TrialRecord, finite
from gradtune.params import PARAMS
from gradtune.spec import Range, SweepSpec

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

__all__ = ["Row", "SweepTable", "from_ledger", "from_mlflow", "latest_sweep", "read_onset"]

TRACE_METRIC = "grad_norm"
ONSET_TAG = "gradtune.onset_layer"
ONSET_ARTIFACT = re.compile(r"onset/verdict_(\d+)_step_(\d+)\.json")
# What Row.metrics may hold (P_DIVERGED: a trial of several seeds, search.seeds)
ROW_METRICS: tuple[str, ...] = (*METRICS, *SIGNALS, P_DIVERGED)


@dataclass(frozen=True)
class Row:
    """One ended trial. ``outcome`` is a value of :class:`~gradtune.outcome.Outcome`;
    ``reason`` why it diverged (the verdict) or failed (one line), else ``None``;
    ``value`` the finite objective or ``None``; ``trace`` the pre-clip grad norm by step;
    ``onset`` where its first divergence started (the :mod:`gradtune.onset` artifact's
    dict), ``None`` when none was recorded."""

    number: int
    trial_id: str
    run_id: str | None
    params: dict[str, Any]
    outcome: str
    reason: str | None
    divergence_step: int | None
    value: float | None
    metrics: dict[str, float]
    trace: tuple[tuple[int, float], ...]
    onset: dict[str, Any] | None = None


@dataclass(frozen=True)
class SweepTable:
    """A sweep's rows, ordered by number, with what it searched (``spec``) and where its
    runs are (``experiment``, ``parent_run_id``)."""

    name: str
    experiment: str
    experiment_id: str | None
    parent_run_id: str | None
    metric: str
    mode: str
    spec: SweepSpec
    rows: tuple[Row, ...]

    def searched(self) -> list[str]:
        """The names the search space varies (lists and ranges), in space order."""
        return [n for n, d in self.spec.search.space.items() if isinstance(d, (list, Range))]


def _metrics(values: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in ROW_METRICS:
        value = values.get(name)
        if not isinstance(value, bool) and isinstance(value, (int, float)):
            out[name] = float(value)
    return out


def _trace(points: Sequence[tuple[int, float]]) -> tuple[tuple[int, float], ...]:
    return tuple(sorted((int(s), float(v)) for s, v in points))


def _row_of(record: TrialRecord, metric: str, run_id: str | None,
            trace: Sequence[tuple[int, float]], found: Mapping[str, Any] | None) -> Row:
    verdict = record.verdict
    return Row(
        number=record.number, trial_id=record.trial_id, run_id=run_id, params=dict(record.params),
        outcome=record.outcome.value,
        reason=verdict.reason if verdict is not None else record.error,
        divergence_step=verdict.step if verdict is not None else None,
        value=record.objective(metric), metrics=_metrics(record.result), trace=_trace(trace),
        onset=dict(found) if found is not None else None,
    )


def from_ledger(spec: SweepSpec, ledger: Ledger, run_ids: Mapping[str, str] | None = None,
                traces: Mapping[str, Sequence[tuple[int, float]]] | None = None,
                onsets: Mapping[str, Mapping[str, Any]] | None = None, *,
                experiment: str | None = None, experiment_id: str | None = None,
                parent_run_id: str | None = None) -> SweepTable:
    """The table of a sweep from the driver's memory: ``ledger``'s records, ``run_ids``
    (trial id -> MLflow run id), ``traces`` (trial id -> ``(step, grad_norm)`` points;
    a trial without one gets an empty trace) and ``onsets`` (trial id -> its first
    verdict's onset dict, :func:`gradtune.onset.from_json`; else ``None``)."""
    run_ids, traces, onsets = run_ids or {}, traces or {}, onsets or {}
    metric = spec.search.metric
    rows = tuple(_row_of(r, metric, run_ids.get(r.trial_id), traces.get(r.trial_id, ()), onsets.get(r.trial_id))
                 for r in ledger.ordered())
    return SweepTable(name=spec.name, experiment=experiment or spec.experiment,
                      experiment_id=experiment_id, parent_run_id=parent_run_id, metric=metric,
                      mode=spec.search.mode, spec=spec, rows=rows)


# ----------------------------------------------------------------------- MLflow
def typed(spec: SweepSpec, name: str, text: str) -> Any:
    """An MLflow param (a string) as the value the trial had: a choice of the space whose
    text matches, a range's or the registry's number kind, else the text itself."""
    dim = spec.search.space.get(name)
    choices = dim if isinstance(dim, list) else [] if isinstance(dim, Range) or dim is None else [dim]
    for choice in choices:
        if _param_text(choice) == text:
            return choice
    kind = PARAMS[name].kind if name in PARAMS else "float" if isinstance(dim, Range) else None
    try:
        if kind == "int":
            number = float(text)
            return int(number) if number.is_integer() else number
        if kind == "float":
            return float(text)
    except ValueError:
        pass
    return text


def _param_text(value: Any) -> str:  # as tracking logs a param
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _client(tracking_uri: str) -> MlflowClient:
    """A client of an existing store: a SQLite file that is not there is an error here
    (MLflow would create an empty store to read nothing from)."""
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        path = tracking_uri[len("sqlite:///"):].partition("?")[0]
        if path != ":memory:" and not Path(path).is_file():
            raise GradtuneError(f"no MLflow store at {redact(tracking_uri)} (no file {path})")
    return MlflowClient(tracking_uri=tracking_uri)


def latest_sweep(tracking_uri: str, experiment: str | None = None) -> str:
    """The parent run id of the latest sweep (tag ``gradtune.role=sweep``) in
    ``experiment``, or in the whole store when ``None``. :class:`GradtuneError` when there
    is no such experiment or no sweep."""
    client = _client(tracking_uri)
    where = redact(tracking_uri)
    if experiment is not None:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise GradtuneError(f"no experiment {experiment!r} in {where}")
        ids = [found.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments(max_results=50000)]
    runs = client.search_runs(ids, "tags.`gradtune.role` = 'sweep'", order_by=["attributes.start_time DESC"],
                              max_results=1) if ids else []
    if not runs:
        scope = f"experiment {experiment!r}" if experiment is not None else "any experiment"
        raise GradtuneError(f"no gradtune sweep in {scope} of {where}")
    return str(runs[0].info.run_id)


def from_mlflow(tracking_uri: str, parent_run_id: str) -> SweepTable:
    """The table of the sweep whose parent run is ``parent_run_id``, from the tracking
    store alone. :class:`GradtuneError` for an unknown run or one that is not a sweep's."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        parent = client.get_run(parent_run_id)
    except MlflowException:
        raise GradtuneError(f"no run {parent_run_id!r} in {redact(tracking_uri)}") from None
    if parent.data.tags.get("gradtune.role") != "sweep":
        raise GradtuneError(f"run {parent_run_id} is not a gradtune sweep (no tag gradtune.role=sweep)")
    spec, numbers = _parent_files(client, parent_run_id)
    experiment_id = parent.info.experiment_id
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                  max_results=50000)
    ended = [r for r in children if r.data.tags.get("gradtune.outcome") in OUTCOMES
             and r.data.tags.get("gradtune.trial_id")]
    ended.sort(key=lambda r: (numbers.get(r.data.tags["gradtune.trial_id"], math.inf), r.info.start_time or 0))
    rows, taken = [], set(numbers.values())
    free = (n for n in range(len(ended) + len(taken)) if n not in taken)
    for run in ended:
        trial_id = run.data.tags["gradtune.trial_id"]
        number = numbers[trial_id] if trial_id in numbers else next(free)
        rows.append(_row_of_run(client, spec, run, number))
    rows.sort(key=lambda r: r.number)
    return SweepTable(name=spec.name, experiment=client.get_experiment(experiment_id).name,
                      experiment_id=experiment_id, parent_run_id=parent_run_id,
                      metric=spec.search.metric, mode=spec.search.mode, spec=spec, rows=tuple(rows))


def _parent_files(client: MlflowClient, run_id: str) -> tuple[SweepSpec, dict[str, int]]:
    """The parent's ``spec.yaml`` (required) and trial numbers from ``summary.json`` (if any)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in the terminal
    with tempfile.TemporaryDirectory() as tmp:
        names = {a.path for a in client.list_artifacts(run_id)}
        if "spec.yaml" not in names:
            raise GradtuneError(f"run {run_id} has no spec.yaml artifact")
        path = Path(client.download_artifacts(run_id, "spec.yaml", tmp))
        spec = spec_mod.validate(spec_mod.read_yaml(path), f"run {run_id} spec.yaml")
        numbers: dict[str, int] = {}
        if "summary.json" in names:
            summary = json.loads(Path(client.download_artifacts(run_id, "summary.json", tmp)).read_text())
            numbers = {t["trial_id"]: int(t["number"]) for t in summary.get("trials", [])}
    return spec, numbers


def unclamped(value: float) -> float:
    """A metric value as logged: MLflow's SQL store saves +-inf as +-``sys.float_info.max``."""
    return math.copysign(math.inf, value) if abs(value) == sys.float_info.max else value


def _row_of_run(client: MlflowClient, spec: SweepSpec, run: Run, number: int) -> Row:
    tags = run.data.tags
    metrics = {k: unclamped(v) for k, v in _metrics(run.data.metrics).items()}
    step = tags.get("gradtune.divergence_step")
    history = client.get_metric_history(run.info.run_id, TRACE_METRIC)
    return Row(
        number=number, trial_id=tags["gradtune.trial_id"], run_id=run.info.run_id,
        params={k: typed(spec, k, v) for k, v in run.data.params.items()},
        outcome=tags["gradtune.outcome"],
        reason=tags.get("gradtune.divergence_reason") or tags.get("gradtune.failure"),
        divergence_step=int(step) if step is not None else None,
        value=finite(metrics.get(spec.search.metric)), metrics=metrics,
        trace=_trace([(m.step, unclamped(m.value)) for m in history]),
        onset=read_onset(client, run.info.run_id) if ONSET_TAG in tags else None,
    )


def read_onset(client: MlflowClient, run_id: str) -> dict[str, Any] | None:
    """The run's first verdict's onset: its lowest-numbered ``onset/verdict_<n>_step_<step>.json``
    parsed (:func:`gradtune.onset.from_json`); ``None`` without one or for one that does not
    parse."""
    found = [(int(m[1]), a.path) for a in client.list_artifacts(run_id, "onset")
             if (m := ONSET_ARTIFACT.fullmatch(a.path))]
    if not found:
        return None
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in the terminal
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(client.download_artifacts(run_id, min(found)[1], tmp))
        return onset_mod.from_json(path.read_text(encoding="utf-8"))
