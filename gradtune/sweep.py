"""Assemble and run one sweep: Ray, the Tuner, the searcher, the scheduler and MLflow."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from gradtune import checkpoint, searcher, tracking, trial
from gradtune import scheduler as sched
from gradtune.errors import GradtuneError
from gradtune.outcome import Ledger, TrialRecord
from gradtune.spec import SweepSpec

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    """What a sweep produced: the ledger of outcomes (as logged to MLflow), the MLflow run
    of each trial (``runs``: trial id -> run id) and where it all is."""

    spec: SweepSpec
    tracking_uri: str
    experiment: str
    parent_run_id: str
    storage: str
    ledger: Ledger = field(default_factory=Ledger)
    runs: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def trials(self) -> list[TrialRecord]:
        """Every ended trial, in number (suggestion) order."""
        return self.ledger.ordered()

    def counts(self) -> dict[str, int]:
        return self.ledger.counts()

    def best(self) -> TrialRecord | None:
        """The completed trial with the best finite objective, or ``None``."""
        return self.ledger.best(self.spec.search.metric, self.spec.search.mode)


def run(spec: SweepSpec, address: str | None = None, search: Any = None, verbose: int = 1) -> SweepResult:
    """Run the sweep described by ``spec``; ``address`` joins an existing Ray cluster
    (else ``RAY_ADDRESS``, else a local Ray). Reuses an already initialised Ray session
    and leaves it running; shuts down only a Ray it started itself.

    ``search`` replaces gradtune's searcher with any Tune ``Searcher`` (the benchmarks
    compare against Ray's plain ``OptunaSearch`` this way); it runs ``search.trials``.
    ``verbose`` is Tune's: 1 prints the progress table, 0 stays quiet."""
    import ray
    from ray import tune

    started = time.monotonic()
    uri = tracking.resolve_uri(spec.tracking.uri)
    ledger = Ledger()  # what happened to each trial: the scheduler writes, the others read
    tracker = tracking.MLflowTracking(spec, uri, spec.experiment, ledger)
    try:
        parent = tracker.start()
    except Exception as exc:  # a bad URI or an unreachable server: say so in one line
        raise GradtuneError(f"tracking.uri {uri}: cannot start the MLflow run ({exc})") from None

    own_ray = not ray.is_initialized()
    status = "FAILED"
    try:
        if own_ray:
            _init_ray(address)
        _check_resources(spec, ray.nodes())
        scheduler = sched.DivergenceScheduler(spec, ledger=ledger)
        own_search, num_trials = searcher.make(spec, ledger)
        search = own_search if search is None else search
        trainable = tune.with_resources(
            tune.with_parameters(trial.trainable, spec_data=spec.model_dump(mode="json")),
            {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
        )
        storage = _storage(spec.storage)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=search,
                scheduler=scheduler,
                metric=spec.search.metric,
                mode=spec.search.mode,
                num_samples=num_trials,
                max_concurrent_trials=spec.search.max_concurrent,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=storage,
                callbacks=[tracker],
                # A trial that raises or loses its worker is retried from its last checkpoint.
                failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=checkpoint.keep(
                    spec.training.checkpoint_every, spec.divergence.window)),
                verbose=verbose,
            ),
        )
        tuner.fit()
        status = "FINISHED"
    finally:
        tracker.finish(status)
        if own_ray and ray.is_initialized():
            ray.shutdown()
    return SweepResult(
        spec=spec, tracking_uri=uri, experiment=spec.experiment, parent_run_id=parent,
        storage=storage or "~/ray_results", ledger=ledger, runs=tracker.runs,
        seconds=time.monotonic() - started,
    )


def _storage(path: str | None) -> str | None:
    if path is None or "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def _init_ray(address: str | None) -> None:
    """``ray.init`` for the sweep: a cluster at ``address`` (else ``RAY_ADDRESS``), else a
    local Ray. A cluster that cannot be reached is one line, with the usual cause."""
    import ray

    _token_auth_from_env()
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, ray.exceptions.AuthenticationError) as exc:
        target = address or os.environ.get("RAY_ADDRESS") or "local"
        hint = ""
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            hint = ("; if the cluster uses token authentication, set RAY_AUTH_TOKEN or "
                    "RAY_AUTH_TOKEN_PATH (and RAY_AUTH_MODE=token)")
        raise GradtuneError(f"Ray cluster {target}: cannot connect ({exc}){hint}") from None


def _token_auth_from_env() -> None:
    """Ray (2.52+) sends a token to a cluster named by address only under
    ``RAY_AUTH_MODE=token``; a token given in ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``
    means it is wanted. An explicit ``RAY_AUTH_MODE`` is left as it is."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    # Ray's own type stub for the compiled _raylet leaves Config out.
    from ray._raylet import Config  # type: ignore[attr-defined]

    Config.initialize("")  # the mode is cached at import; Ray's own _enable_token_auth does this


def _check_resources(spec: SweepSpec, nodes: list[dict[str, Any]]) -> None:
    """Fail fast instead of leaving trials pending forever on resources no node has. A
    trial runs on one node, so one node must have all it asks for: the cluster's total is
    not enough (two 1-CPU nodes cannot run a 2-CPU trial)."""
    need = {"CPU": spec.resources.cpu, "GPU": spec.resources.gpu}
    need = {name: amount for name, amount in need.items() if amount > 0}
    alive = [node.get("Resources", {}) for node in nodes if node.get("Alive")]
    if any(all(res.get(k, 0.0) >= v for k, v in need.items()) for res in alive):
        return
    asked = ", ".join(f"{v:g} {k}" for k, v in need.items())
    have = "; ".join(
        ", ".join(f"{res.get(k, 0.0):g} {k}" for k in need) for res in alive
    ) or "no node"
    keys = " and ".join(f"resources.{k.lower()}" for k in need)
    raise GradtuneError(
        f"{keys}: each trial needs {asked} on one node, but no node of the Ray cluster has "
        f"that ({len(alive)} node(s): {have})"
    )
