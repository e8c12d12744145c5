"""Assemble and run one sweep: Ray, the Tuner, the searcher, the scheduler and MLflow."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar

from gradtune import address as cluster
from gradtune import credentials, drawer, healthy, report, searcher, seeds, table, tracking
from gradtune import scheduler as sched
from gradtune.errors import GradtuneError
from gradtune.interrupt import Interrupt
from gradtune.outcome import Ledger, TrialRecord
from gradtune.progress import Progress
from gradtune.spec import SweepSpec
from gradtune.spool import SPOOL_NAME
from gradtune.trainable import trainable as trainable_fn

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class SweepResult:
    """What a sweep produced: the ledger of outcomes (as logged to MLflow), the MLflow run
    of each trial (``runs``: trial id -> run id) and where it all is (``storage``: the Tune
    experiment folder, which ``gradtune sweep --resume`` takes)."""

    spec: SweepSpec
    tracking_uri: str
    experiment: str
    parent_run_id: str
    storage: str
    ledger: Ledger = field(default_factory=Ledger)
    runs: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: int | None = None  # the signal that stopped the sweep early, if one did
    pending: int = 0  # MLflow records not sent when the sweep ended: they are in ``spool``
    spool: str | None = None
    workers: int = 1  # trials that could run at once (concurrency limit, cluster CPUs/GPUs)
    experiment_id: str | None = None  # the MLflow experiment's id, for links into the UI
    report: str | None = None  # the local folder of the sweep's report (also on the parent run)
    # What MLflow tracking and the report cost the sweep's wall: time in Tune's callbacks,
    # the writer thread's CPU, the final drain (tracking.MLflowTracking.cost_s), and the
    # report's time beyond Ray's shutdown, which it runs beside.
    tracking_s: float = 0.0
    report_s: float = 0.0  # the report's whole time, most of it beside Ray's shutdown

    @property
    def trials(self) -> list[TrialRecord]:
        """Every ended trial, in number (suggestion) order."""
        return self.ledger.ordered()

    def counts(self) -> dict[str, int]:
        return self.ledger.counts()

    def best(self) -> TrialRecord | None:
        """The completed trial with the best finite objective, or ``None``."""
        return self.ledger.best(self.spec.search.metric, self.spec.search.mode)

    def ideal_seconds(self) -> float:
        """The sweep's floor: its trials' own compute (Tune's ``time_total_s``) spread
        over ``workers``, as if nothing else took time."""
        return self.ledger.compute_seconds() / max(self.workers, 1)


def run(spec: SweepSpec, address: str | None = None, search: Any = None, verbose: int = 1,
        progress: TextIO | None = None) -> SweepResult:
    """Run the sweep described by ``spec``; ``address`` joins an existing Ray cluster
    (else ``RAY_ADDRESS``, else a local Ray). Reuses an already initialised Ray session
    and leaves it running; shuts down only a Ray it started itself.

    ``search`` replaces gradtune's searcher with any Tune ``Searcher`` (the benchmarks
    compare against Ray's plain ``OptunaSearch`` this way); it runs ``search.trials``.
    ``verbose`` is Tune's: 1 prints the progress table, 0 stays quiet. ``progress``, a text
    stream, gets one line per finished trial (:mod:`gradtune.progress`).

    Ctrl-C or SIGTERM stops the sweep (see :class:`Interrupt`); the result then says so
    (``interrupted``), and :func:`resume` continues it.

    Order: a cluster's GCS port is probed; the tracking store is reached (nothing created in
    it) while Ray starts or connects; Ray's resources are checked; only then is the parent
    run created, so a dead cluster, a bad store or a missing GPU leaves no run behind.
    Credentials in the tracking URI stay with the driver's MLflow client: everything else
    (Tune's state, the workers, MLflow's params and artifacts, the manifest) gets the spec
    with the URI redacted."""
    name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = os.path.join(_storage(spec.storage) or os.path.expanduser("~/ray_results"), name)
    return _execute(spec, path, None, address, search, verbose, progress)


def resume(target: str, address: str | None = None, tracking_uri: str | None = None,
           verbose: int = 1, progress: TextIO | None = None, storage: str | None = None) -> SweepResult:
    """Continue the interrupted sweep whose Tune experiment folder is ``target`` (printed
    when a sweep stops early): finished trials are not rerun, unfinished ones continue from
    their last checkpoint, the searcher keeps its history, and MLflow continues the same
    parent and child runs. ``tracking_uri`` replaces the one recorded (which had any
    credentials removed). ``target`` may also be the folder's name under ``storage`` (else
    Ray's default ``~/ray_results``)."""
    path = os.path.abspath(os.path.expanduser(target))
    if not os.path.isdir(path) and os.sep not in target:
        path = os.path.join(_storage(storage) or os.path.expanduser("~/ray_results"), target)
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            manifest = json.load(f)
    except OSError as exc:
        raise GradtuneError(f"--resume {target}: not a gradtune sweep folder ({exc.strerror})") from None
    spec = SweepSpec.model_validate(manifest["spec"])
    if tracking_uri is not None:
        spec = spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"uri": tracking_uri})})
    return _execute(spec, path, manifest["parent_run_id"], address, None, verbose, progress)


def _execute(spec: SweepSpec, path: str, parent_id: str | None, address: str | None,
             search: Any, verbose: int, progress: TextIO | None) -> SweepResult:
    """One sweep into the Tune experiment folder ``path``: a new one, or with
    ``parent_id`` the resumption of the sweep there."""
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    started = time.monotonic()
    uri, shown = _tracking_target(spec)
    own_ray = not ray.is_initialized()
    remote = own_ray and cluster.probe(address)  # a dead cluster: one line, before all else
    # The tracking store is reached while Ray starts: a new SQLite store's tables take
    # seconds to create, as does a local Ray. Nothing is created in the store before both
    # are up, so a failure of either leaves no run behind.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradtune-start")
    store = pool.submit(_tracking_step, uri, lambda: tracking.check_store(uri))
    pool.shutdown(wait=False)
    drawer.start()  # the report's process loads its libraries while Ray starts
    # A store that fails at once (a server that refuses connections, a bad scheme) is
    # one line before Ray starts, as before; a slow one is waited for after.
    if wait([store], timeout=STORE_HEAD_START_S).done:
        store.result()
    spool = _spool(os.path.dirname(path), os.path.basename(path))
    ledger = Ledger()  # what happened to each trial: the scheduler writes, the others read
    tracker = tracking.MLflowTracking(shown, uri, spec.experiment, ledger, spool=spool)
    interrupt = Interrupt()
    interrupt.install()
    try:
        parent = _connect(spec, address, remote, own_ray, tracker, parent_id, store)
    except BaseException:
        interrupt.uninstall()
        raise
    interrupt.install()  # again: ray.init replaced the SIGTERM handler
    status, pending = "FAILED", 0
    resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
    parallel = _parallel_seeds(spec, resources)
    workers = _workers(spec, resources, spec.search.seeds if parallel else spec.resources.workers)
    try:
        scheduler = sched.DivergenceScheduler(shown, ledger=ledger)
        own_search, num_trials = searcher.make(shown, ledger)
        search = own_search if search is None else search
        trainable = tune.with_resources(
            tune.with_parameters(trainable_fn, spec_data=shown.model_dump(mode="json"),
                                 parallel_seeds=parallel),
            _trial_resources(spec, parallel),
        )
        # Tune's own result.json and progress.csv per trial, but not its TensorBoard
        # logger: it imports torch (through tensorboardX) into the driver, seconds at every
        # start, for event files that duplicate what MLflow holds.
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
        # Tune snapshots its experiment state each time a trial has made num_to_keep
        # checkpoints (few are kept: healthy.keep), and warns each time it does so within 5 s.
        # The snapshots keep a resume consistent with the checkpoints on disk; the warning
        # says nothing a gradtune user can act on. A value the user set stands.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        callbacks: list[Any] = [tracker, JsonLoggerCallback(), CSVLoggerCallback()]  # type: ignore[no-untyped-call]
        if progress is not None:
            callbacks.append(Progress(shown, ledger, num_trials, progress))
        if parent_id is None:
            _write_manifest(path, shown, parent)
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
                    name=os.path.basename(path),
                    storage_path=os.path.dirname(path),
                    callbacks=callbacks,
                    # A trial that raises or loses its worker is retried from its last checkpoint.
                    failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=healthy.keep(
                        spec.training.checkpoint_every, spec.divergence.window)),
                    verbose=verbose,
                ),
            )
        else:
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
            _rewire(tuner, search, scheduler, callbacks, verbose)
        with interrupt.tuning(), _quiet_tune(verbose):
            tuner.fit()
        status = "KILLED" if interrupt.signum else "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"  # a signal outside Tune's run, or a second one: no graceful stop
        raise
    finally:
        interrupt.uninstall()
        # The report (of what ended, for a sweep that ended or was stopped) is drawn in
        # the drawer's process, and the parent's note and summary go to the writer's
        # queue, while Ray shuts down: seconds each, and neither needs Ray.
        out = os.path.join(os.path.dirname(spool), "report")
        report_start = time.monotonic()
        drawing = _start_report(shown, ledger, tracker, out) if status != "FAILED" else None
        try:
            tracker.describe()
            if own_ray and ray.is_initialized():
                ray.shutdown()
        finally:
            shut = time.monotonic()
            report_dir, reporting, report_end = _report_result(drawing, out, report_start, shut)
            pending = tracker.finish(status, files=report_dir)
    return SweepResult(
        spec=spec, tracking_uri=uri, experiment=spec.experiment, parent_run_id=parent,
        storage=path, ledger=ledger, runs=tracker.run_ids(),
        seconds=time.monotonic() - started, interrupted=interrupt.signum,
        pending=pending, spool=spool if pending else None, workers=workers,
        experiment_id=tracker.experiment_id, report=report_dir,
        tracking_s=tracker.cost_s + max(0.0, report_end - shut), report_s=reporting,
    )


def _start_report(spec: SweepSpec, ledger: Ledger, tracker: tracking.MLflowTracking,
                  out: str) -> tuple[table.SweepTable, Future[tuple[list[str], float]]] | None:
    """The sweep's report (:func:`report.write`) from what the driver holds, set drawing
    into ``out`` in the drawer's process: the table and the drawing's future, or ``None``
    when the report cannot be made (logged: a report never fails the sweep)."""
    try:
        rows = table.from_ledger(spec, ledger, tracker.run_ids(), tracker.traces, tracker.onsets,
                                 experiment=spec.experiment, experiment_id=tracker.experiment_id,
                                 parent_run_id=tracker.parent_id)
        return rows, drawer.draw(rows, out)
    except Exception:
        log.warning("the sweep's report could not be written", exc_info=True)
        return None


def _report_result(drawing: tuple[table.SweepTable, Future[tuple[list[str], float]]] | None, out: str,
                   started: float, now: float) -> tuple[str | None, float, float]:
    """Wait for the report :func:`_start_report` set drawing: its folder (``None`` when it
    could not be made: logged), the seconds since ``started`` and when it ended
    (``time.monotonic``; ``now`` when none was drawn). When the drawer's process died (killed,
    out of memory), the report is drawn here."""
    if drawing is None:
        return None, 0.0, now
    rows, future = drawing
    try:
        try:
            _, ended = future.result()
        except drawer.DrawerError:
            log.warning("the report's process died; drawing the report in the driver")
            report.write(rows, out)
            ended = time.monotonic()
    except Exception:
        log.warning("the sweep's report could not be written", exc_info=True)
        ended = time.monotonic()
        return None, ended - started, ended
    return out, ended - started, ended


STORE_HEAD_START_S = 1.0  # how long the store check runs alone before Ray starts
MANIFEST = "gradtune-sweep.json"  # in the Tune experiment folder: what --resume needs


def _write_manifest(path: str, spec: SweepSpec, parent_id: str) -> None:
    """The spec (tracking URI without credentials) and the parent run id, beside Tune's
    own experiment state."""
    os.makedirs(path, exist_ok=True)
    safe = spec.model_copy(update={"tracking": spec.tracking.model_copy(
        update={"uri": credentials.redact(spec.tracking.uri)})})
    with open(os.path.join(path, MANIFEST), "w") as f:
        json.dump({"spec": safe.model_dump(mode="json"), "parent_run_id": parent_id}, f, indent=2)


def _rewire(tuner: Any, search: Any, scheduler: Any, callbacks: list[Any], verbose: int) -> None:
    """Put this process's searcher, scheduler and tracking callback in place of the copies
    ``Tuner.restore`` unpickled from the folder, so the three share one live ledger and
    tracking holds the real URI; Tune then loads the saved searcher and callback state into
    them. Ray has no public setter for these: this is the one place that reaches inside."""
    internal = tuner._local_tuner
    internal._tune_config.search_alg = search
    internal._tune_config.scheduler = scheduler
    internal._run_config.callbacks = callbacks
    internal._run_config.verbose = verbose


def _tracking_target(spec: SweepSpec) -> tuple[str, SweepSpec]:
    """The URI for the driver's MLflow client, and the spec for everyone else. Credentials
    in an http(s) URI go to MLflow's environment variables (:func:`credentials.for_client`);
    the spec's URI is redacted, as Tune pickles it into ``tuner.pkl`` (the searcher, the
    scheduler, the callback) and ships it to every worker."""
    uri, secrets = credentials.for_client(tracking.resolve_uri(spec.tracking.uri))
    os.environ.update(secrets)  # MLflow reads them; a local Ray's processes do not get them
    shown = spec.model_copy(update={"tracking": spec.tracking.model_copy(
        update={"uri": credentials.redact(spec.tracking.uri)})})
    return uri, shown


def _connect(spec: SweepSpec, address: str | None, remote: bool, own_ray: bool,
             tracker: tracking.MLflowTracking, parent_id: str | None, store: Future[None]) -> str:
    """Ray (started or joined when ``own_ray``), its resources, the tracking store (the
    check ``store`` runs meanwhile), then the parent run (a new one, or ``parent_id``
    reopened): its id. A Ray started here is shut down again if any of it fails; the
    store check is waited for either way (it may be creating a SQLite store's tables)."""
    import ray

    try:
        if own_ray:
            _init_ray(address, remote)
        _check_resources(spec, ray.nodes())
        _check_ranks(spec, ray.nodes())
        store.result()  # its one-line error, if the store could not be reached
        start = tracker.start if parent_id is None else lambda: tracker.reopen(parent_id)
        return _tracking_step(tracker.tracking_uri, start)
    except BaseException:
        wait([store])
        if own_ray and ray.is_initialized():
            ray.shutdown()
        raise


def _tracking_step(uri: str, step: Callable[[], T]) -> T:
    """``step()``; a bad URI, an unreachable server or a refused login is one line."""
    try:
        return step()
    except Exception as exc:
        detail = credentials.redact(" ".join(str(exc).split()))
        raise GradtuneError(
            f"tracking.uri {credentials.redact(uri)}: cannot start the MLflow run ({detail})"
        ) from None


def _storage(path: str | None) -> str | None:
    if path is None or "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def _spool(storage: str | None, name: str) -> str:
    """Where MLflow records wait while the server is down: beside the sweep's Tune
    experiment when its storage is a local path, else (a URI cannot be appended to) under
    ``~/ray_results`` on the driver."""
    root = storage if storage is not None and "://" not in storage else os.path.expanduser("~/ray_results")
    return os.path.join(root, name, SPOOL_NAME)


def _init_ray(address: str | None, remote: bool = False) -> None:
    """``ray.init`` for the sweep: a cluster at ``address`` (else ``RAY_ADDRESS``), else a
    local Ray. A cluster that cannot be reached is one line, with the usual cause.
    ``remote``: a cluster at ``host:port`` whose port answered :func:`cluster.probe`; Ray's
    connection to it is bounded (:func:`_bounded_connect`)."""
    import ray

    _token_auth_from_env(remote)
    hide_credentials_in_title()
    try:
        with _bounded_connect(remote), _without_env(credentials.ENVIRONMENT):
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, ray.exceptions.AuthenticationError) as exc:
        target = cluster.target(address)
        hint = ""
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            hint = ("; if the cluster uses token authentication, set RAY_AUTH_TOKEN or "
                    "RAY_AUTH_TOKEN_PATH (and RAY_AUTH_MODE=token)")
        raise GradtuneError(f"Ray cluster {target}: cannot connect ({exc}){hint}") from None


def _token_auth_from_env(remote: bool) -> None:
    """Ray (2.52+) sends a token to a cluster named by address only under
    ``RAY_AUTH_MODE=token``; a token given in ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``
    means it is wanted. An explicit ``RAY_AUTH_MODE`` is left as it is.

    For a cluster at ``host:port`` (``remote``), Ray's wait for a GCS that does not answer
    its handshake drops from 30 s to :data:`GCS_CONNECT_TIMEOUT_S` (unless
    ``RAY_py_gcs_connect_timeout_s`` is set): see :func:`_bounded_connect`."""
    changed = False
    if remote and "RAY_py_gcs_connect_timeout_s" not in os.environ:
        os.environ["RAY_py_gcs_connect_timeout_s"] = str(GCS_CONNECT_TIMEOUT_S)
        changed = True
    wants_token = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
    if "RAY_AUTH_MODE" not in os.environ and wants_token:
        os.environ["RAY_AUTH_MODE"] = "token"
        changed = True
    if changed:
        # Ray's own type stub for the compiled _raylet leaves Config out.
        from ray._raylet import Config  # type: ignore[attr-defined]

        # Ray caches its config at import; Ray's own _enable_token_auth does this too.
        Config.initialize("")


GCS_CONNECT_TIMEOUT_S = 10


def hide_credentials_in_title() -> None:
    """Redact this process's command line (what ``ps`` shows from now on): Ray records it
    as the job's entrypoint (the GCS job table, ``ray list jobs``, the dashboard), so a
    tracking URI typed with its password would travel with it."""
    # Ray's own setproctitle; its type stub for the compiled _raylet leaves it out.
    from ray._raylet import getproctitle, setproctitle  # type: ignore[attr-defined]

    title = getproctitle()
    shown = credentials.redact(title)
    if shown != title:
        setproctitle(shown)


@contextlib.contextmanager
def _bounded_connect(remote: bool) -> Iterator[None]:
    """While joining a cluster at ``host:port``: one connection attempt instead of Ray's
    20 (``RAY_gcs_server_port_wait_time_s``, read at connect time), each of at most
    about 10 + :data:`GCS_CONNECT_TIMEOUT_S` seconds; so a port that accepts connections
    but is no Ray GCS fails in about 20 s. A user's own setting is kept."""
    with _env_unless_set("RAY_gcs_server_port_wait_time_s", "1", remote):
        yield


@contextlib.contextmanager
def _quiet_tune(verbose: int) -> Iterator[None]:
    """At ``verbose`` 0, Tune's legacy output, silent at 0, instead of its new output engine,
    which prints a configuration box at every start whatever the verbosity (gradtune prints
    its own lines). Tune reads ``RAY_AIR_NEW_OUTPUT`` when its run starts; a user's own
    setting is kept."""
    with _env_unless_set("RAY_AIR_NEW_OUTPUT", "0", not verbose):
        yield


@contextlib.contextmanager
def _env_unless_set(name: str, value: str, when: bool) -> Iterator[None]:
    """``name=value`` in the environment for the block, when ``when`` and the user has not
    set ``name``; removed after."""
    if not when or name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


@contextlib.contextmanager
def _without_env(names: tuple[str, ...]) -> Iterator[None]:
    """Leave ``names`` out of the environment while Ray starts: a local Ray's daemons and
    workers inherit the driver's environment, and they need no tracking credentials."""
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _workers(spec: SweepSpec, cluster: dict[str, float], per_trial: int = 1) -> int:
    """How many trials can run at once: the concurrency limit, and what the cluster's
    CPUs (and GPUs, when trials ask for them) hold, ``per_trial`` bundles per trial."""
    limits = [spec.search.max_concurrent]
    for name, need in (("CPU", spec.resources.cpu), ("GPU", spec.resources.gpu)):
        if need > 0:
            limits.append(int(cluster.get(name, 0.0) // (need * per_trial)))
    return max(1, min(limits))


def _parallel_seeds(spec: SweepSpec, cluster: dict[str, float]) -> bool:
    """Whether each trial's seeds train in parallel: ``resources.parallel_seeds`` asks for
    it, ``search.seeds`` > 1, and the cluster holds ``max_concurrent`` trials of a bundle
    per seed (:func:`seeds.parallel`); else the seeds take turns, which is logged."""
    s = spec.search
    if not spec.resources.parallel_seeds or s.seeds == 1:
        return False
    at_once = s.max_concurrent if s.sampler == "grid" else min(s.max_concurrent, s.trials)
    if seeds.parallel(s.seeds, at_once, _need(spec), cluster):
        return True
    log.warning("resources.parallel_seeds: the cluster cannot hold %d trials of %d seeds at once; "
                "each trial's seeds take turns instead", at_once, s.seeds)
    return False


def _need(spec: SweepSpec) -> dict[str, float]:
    return {k: v for k, v in (("CPU", spec.resources.cpu), ("GPU", spec.resources.gpu)) if v > 0}


def _trial_resources(spec: SweepSpec, parallel: bool) -> Any:
    """A trial's resources: ``resources`` once, or with parallel seeds a placement group of
    a bundle per seed (the trial's process trains seed 0 in the first; Tune places the
    trial's seed actors in the others), or with ``resources.workers`` N a bundle per rank
    (rank 0 is the trial's process), packed on as few nodes as fit."""
    bundles = spec.search.seeds if parallel else spec.resources.workers
    if bundles == 1:
        return {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    from ray import tune

    return tune.PlacementGroupFactory([_need(spec)] * bundles, strategy="PACK")


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


def _check_ranks(spec: SweepSpec, nodes: list[dict[str, Any]]) -> None:
    """``resources.workers`` N: the cluster must hold the N bundles of one trial (a bundle
    does not span nodes), else its placement group would wait forever."""
    n, need = spec.resources.workers, _need(spec)
    fit = sum(int(min(node.get("Resources", {}).get(k, 0.0) // v for k, v in need.items()))
              for node in nodes if node.get("Alive"))
    if fit >= n:
        return
    asked = ", ".join(f"{v:g} {k}" for k, v in need.items())
    raise GradtuneError(f"resources.workers: each trial runs {n} ranks of {asked}, but the Ray "
                        f"cluster can place {fit} of them")
