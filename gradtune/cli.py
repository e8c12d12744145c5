"""The ``gradtune`` command line: sweep, validate, ui, report, replay, workloads, sync.

Every user error (bad spec, bad flag, bad plug-in) is one line on stderr and exit code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from gradtune import spec as spec_mod
from gradtune.errors import GradtuneError
from gradtune.interrupt import Interrupted

log = logging.getLogger(__name__)
STARTED = time.monotonic()  # about when the command started: imported first by __main__


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse prints usage plus the error; gradtune's contract is one line, exit 2.
        raise GradtuneError(f"{self.prog}: {message}")


def _sweep_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = dict(spec_mod.parse_set(item) for item in args.set)
    flags = {
        "search.trials": args.trials,
        "tracking.uri": args.tracking_uri,
        "tracking.experiment": args.experiment,
        "storage": args.storage,
    }
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return overrides


def _check_workload(spec: spec_mod.SweepSpec) -> None:
    """A bad workload name, option or plug-in fails here in one line, before Ray starts
    (built-ins are checked without importing torch)."""
    from gradtune import workloads

    workloads.check(spec.workload.name, spec.workload.options, spec.search.space)


def _check_sizes(spec: spec_mod.SweepSpec, yes: bool) -> None:
    """Sizes beyond the soft limits (``spec.limits.SOFT``) need ``--yes``: 100000 trials or
    10^12 steps are more often a slip than a plan."""
    found = spec_mod.beyond(spec)
    if found and not yes:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise GradtuneError(f"{found[0]}{more}; add --yes to run it anyway")


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run (or with ``--resume`` continue) a sweep. Exit 0 when it ran to the end, 128 +
    the signal (130 Ctrl-C, 143 SIGTERM) when a signal stopped it: resumable."""
    if args.resume is not None:
        given = [flag for flag, value in (("SPEC", args.spec), ("--set", args.set), ("--trials", args.trials),
                                          ("--experiment", args.experiment))
                 if value]
        if given:
            raise GradtuneError(f"--resume continues a sweep as it was started; {given[0]} cannot change it")
    else:
        spec = spec_mod.load(args.spec, _sweep_overrides(args))
        _check_sizes(spec, args.yes)
        _check_workload(spec)
    if args.address is None and os.environ.get("RAY_ADDRESS", "") in ("", "local"):
        # A Ray of the sweep's own stays on loopback: on Linux, Ray advertises the routable
        # IP and listens on every interface unless this is 0. Ray reads it on import.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from gradtune import address

    address.probe(args.address)  # a dead cluster says so before the imports below
    # Imported here: validate/ui must not pay for torch and Ray.
    from gradtune import drawer, summary, sweep

    verbose = 1 if args.verbose else 0  # Ray Tune's table only when asked; our lines always
    try:
        if args.resume is not None:
            result = sweep.resume(args.resume, address=args.address, tracking_uri=args.tracking_uri,
                                  verbose=verbose, progress=sys.stdout, storage=args.storage)
        else:
            result = sweep.run(spec, address=args.address, verbose=verbose, progress=sys.stdout)
    except Interrupted as exc:
        print(f"gradtune: stopped at once by {signal.Signals(exc.signum).name}; "
              "runs in flight are marked KILLED", file=sys.stderr)
        return 128 + exc.signum
    finally:
        drawer.stop()  # the report's process: its work is done
    print(summary.render(result, wall=time.monotonic() - STARTED))
    return 0 if result.interrupted is None else 128 + result.interrupted


def cmd_validate(args: argparse.Namespace) -> int:
    spec = spec_mod.load(args.spec, dict(spec_mod.parse_set(item) for item in args.set))
    _check_sizes(spec, args.yes)
    _check_workload(spec)
    from gradtune import search_space

    if spec.search.sampler == "grid":
        trials = f"{len(search_space.grid_points(spec.search.space))} grid points"
    else:
        trials = f"{spec.search.trials} trials"
    print(f"{args.spec}: ok ({spec.name}: workload {spec.workload.name}, {trials}, "
          f"{spec.training.steps} steps each)")
    if args.print:
        print(spec_mod.dump(spec), end="")
    return 0


def ui_lines(uri: str, host: str, port: int, experiment: str | None) -> list[str]:
    """What ``gradtune ui`` prints: where the UI is and, given ``experiment`` (a name in
    the store at ``uri``), the link that opens its runs table in model-training mode."""
    from gradtune.credentials import redact
    from gradtune.note import ui_link

    base = f"http://{host}:{port}"
    lines = [f"MLflow UI for {redact(uri)} at {base}"]
    if experiment is not None:
        from mlflow.tracking import MlflowClient

        found = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
        if found is None:
            raise GradtuneError(f"--experiment {experiment}: no such experiment in {redact(uri)}")
        lines.append(f"  runs of '{experiment}': {ui_link(uri, found.experiment_id, base=base)}")
    return lines


def cmd_ui(args: argparse.Namespace) -> int:
    from gradtune.tracking import resolve_uri

    uri = resolve_uri(args.tracking_uri)
    lines = ui_lines(uri, args.host, args.port, args.experiment)
    # Through the environment (mlflow reads it), so a database password stays out of `ps`.
    os.environ["MLFLOW_BACKEND_STORE_URI"] = uri
    command = [sys.executable, "-m", "mlflow", "ui", "--host", args.host, "--port", str(args.port)]
    print("\n".join(lines), flush=True)
    os.execv(sys.executable, command)
    return 0  # not reached


def cmd_report(args: argparse.Namespace) -> int:
    """Rebuild a sweep's report from the tracking store alone: the run ``--run``, else the
    latest sweep of EXPERIMENT (else of the whole store). Prints the table of trials and the
    files written."""
    from gradtune import report, table  # not tracking: a report needs no Ray

    uri = args.tracking_uri  # a relative sqlite:/// path is read from here, as MLflow does
    parent = args.run or table.latest_sweep(uri, args.experiment)
    swept = table.from_mlflow(uri, parent)
    if args.experiment is not None and swept.experiment != args.experiment:
        raise GradtuneError(f"run {parent} is in experiment {swept.experiment!r}, not {args.experiment!r}")
    out = args.out or os.path.join("gradtune-report", f"{swept.experiment}-{parent[:8]}")
    print(report.text(swept))
    for path in report.write(swept, out):
        print(path)
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    """Send the MLflow records a sweep spooled while its server was down: one spool file,
    or every ``mlflow-spool.jsonl`` under a storage directory."""
    from pathlib import Path

    from gradtune import spool as spool_mod
    from gradtune import writer

    if not args.debug:  # the outcome is the one line below; the writer's retries are noise
        logging.getLogger(writer.__name__).setLevel(logging.ERROR)
    path = Path(args.path)
    name = spool_mod.SPOOL_NAME
    spools = [path] if path.is_file() else sorted(path.rglob(name)) if path.is_dir() else []
    if not spools:
        raise GradtuneError(f"{path}: no MLflow spool ({name}) found")
    for spool in spools:
        uri = args.tracking_uri or spool_mod.read(spool)[0]
        if "***@" in uri:
            raise GradtuneError(f"{spool}: its tracking URI has redacted credentials ({uri}); "
                                "give --tracking-uri")
        sent, pending = writer.replay(spool, uri, timeout_s=args.timeout)
        if pending:
            raise GradtuneError(f"tracking.uri {writer.redact(uri)}: no answer in {args.timeout:g}s; "
                                f"{sent} records sent, {pending} still pending in {spool}")
        print(f"{spool}: {sent} records sent to {writer.redact(uri)}" if sent
              else f"{spool}: nothing to send")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Re-run a diverged (or rescued) trial from the tracking store up to its first verdict;
    exit 0 when the divergence reproduced, 1 when it did not."""
    from pathlib import Path

    from gradtune import replay
    from gradtune.tracking import resolve_uri

    rec = replay.recorded(args.run_id, resolve_uri(args.tracking_uri))
    replayed = replay.run(rec, device=args.device, tolerance=args.tolerance)
    out = Path(args.out or f"replay-{args.run_id[:12]}")
    print("\n".join(replay.lines(rec, replayed, args.tolerance)))
    print(f"  telemetry: {', '.join(str(p) for p in replay.write(replayed, out))}")
    return 0 if replayed.reproduced(rec, args.tolerance) else 1


def cmd_workloads(args: argparse.Namespace) -> int:
    from gradtune import workloads

    print(workloads.listing())
    return 0


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gradtune", description="Sweeps for training stability.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("sweep", help="run a sweep from a YAML spec")
    s.add_argument("spec", nargs="?", help="spec file (default: the embedded quickstart)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, e.g. training.steps=50 or search.space.norm=[layer]")
    s.add_argument("--trials", type=int, help="number of trials (search.trials)")
    s.add_argument("--tracking-uri", help="MLflow tracking URI (tracking.uri)")
    s.add_argument("--experiment", help="MLflow experiment (default: the spec's name)")
    s.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else local)")
    s.add_argument("--storage", help="Ray Tune storage path or URI for trial results")
    s.add_argument("--yes", action="store_true",
                   help="run sizes beyond the safety limits (e.g. over 10000 trials or 10^8 steps)")
    s.add_argument("-v", "--verbose", action="store_true", help="also print Ray Tune's progress table")
    s.add_argument("--resume", metavar="PATH",
                   help="continue an interrupted sweep: its folder (printed when it stopped), or the "
                        "folder's name under --storage")
    s.set_defaults(func=cmd_sweep)

    v = sub.add_parser("validate", help="check a spec without running it")
    v.add_argument("spec")
    v.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    v.add_argument("--print", action="store_true", help="print the resolved spec")
    v.add_argument("--yes", action="store_true", help="accept sizes beyond the safety limits")
    v.set_defaults(func=cmd_validate)

    u = sub.add_parser("ui", help="open the MLflow UI on a tracking store")
    u.add_argument("--tracking-uri", default=spec_mod.TrackingSpec().uri)
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=5000)
    u.add_argument("--experiment", metavar="NAME", help="print the link to this experiment's runs table")
    u.set_defaults(func=cmd_ui)

    r = sub.add_parser("report", help="plots, an HTML page and an Optuna study of a finished sweep, from MLflow")
    r.add_argument("experiment", nargs="?", help="MLflow experiment (default: the latest sweep in the store)")
    r.add_argument("--run", help="the sweep's parent run id (default: the experiment's latest sweep)")
    r.add_argument("--tracking-uri", default=spec_mod.TrackingSpec().uri)
    r.add_argument("--out", help="folder for the report (default: gradtune-report/<experiment>-<run>)")
    r.set_defaults(func=cmd_report)

    y = sub.add_parser("sync", help="send MLflow records a sweep spooled while the server was down")
    y.add_argument("path", help="a spool file, or a storage directory to search for mlflow-spool.jsonl")
    y.add_argument("--tracking-uri", help="MLflow tracking URI (default: the one the spool records)")
    y.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the server")
    y.set_defaults(func=cmd_sync)

    r = sub.add_parser("replay", help="re-run a diverged trial from the tracking store up to its divergence")
    r.add_argument("run_id", help="the trial's MLflow run id")
    r.add_argument("--tracking-uri", default=spec_mod.TrackingSpec().uri)
    r.add_argument("--device", choices=("cpu", "cuda"), help="default: the device the trial ran on")
    r.add_argument("--tolerance", type=int, default=2, help="steps the divergence may move (default 2)")
    r.add_argument("--out", help="folder for steps.csv and the per-layer norms (default replay-<run id>)")
    r.set_defaults(func=cmd_replay)

    w = sub.add_parser("workloads", help="list the built-in workloads and their options")
    w.set_defaults(func=cmd_workloads)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        args = parser().parse_args(argv)
        return int(args.func(args))
    except GradtuneError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
