"""The end-of-sweep summary printed in the terminal."""

from __future__ import annotations

import os
import shlex
import signal
from typing import Any

from gradtune.credentials import redact
from gradtune.note import ui_link
from gradtune.outcome import RESCUES, Outcome
from gradtune.rescue import lineage_line, parse
from gradtune.sweep import SweepResult


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _against_ideal(result: SweepResult, wall: float | None) -> str:
    """``; 1.12x the ideal 53s (trials' compute 106s over 2 workers)``: how close the
    sweep came to its floor (:meth:`SweepResult.ideal_seconds`)."""
    ideal = result.ideal_seconds()
    if ideal <= 0:
        return ""
    compute = result.ledger.compute_seconds()
    return (f"; {(wall or result.seconds) / ideal:.2f}x the ideal {ideal:.0f}s "
            f"(trials' compute {compute:.0f}s over {result.workers} workers)")


def render(result: SweepResult, wall: float | None = None) -> str:
    """How long it took (``wall``: since the command started, else the sweep alone) against
    the ideal, counts per outcome, the best trial's hyperparameters and metrics, how to open the
    MLflow UI on the store the sweep wrote (credentials redacted): for a server, the link
    to the experiment's runs table; for a local store, the ``gradtune ui`` command and then
    that link (:func:`note.ui_link`); and, when the
    MLflow server was down at the end, how many records wait in the spool and the command
    that sends them."""
    spec = result.spec
    counts = result.counts()
    trials = result.trials
    metric = spec.search.metric
    lines = [
        "",
        f"gradtune sweep '{spec.name}': {len(trials)} trials in {wall or result.seconds:.0f}s"
        + _against_ideal(result, wall),
        "  " + "  ".join(f"{name}: {n}" for name, n in counts.items()),
    ]
    diverged = [t.verdict for t in trials if t.outcome is Outcome.DIVERGED and t.verdict]
    for verdict in diverged[:5]:
        lines.append(f"    diverged at step {verdict.step}: {verdict.reason}")
    if len(diverged) > 5:
        lines.append(f"    ... and {len(diverged) - 5} more (tag gradtune.outcome=diverged)")
    rescued = [t for t in trials if t.outcome is Outcome.RESCUED]
    for record in rescued[:5]:
        line = lineage_line(parse(record.result.get(RESCUES)))
        lines.append(f"    rescued: {line}; {metric}={_fmt(record.result.get(metric, '-'))}")
    if len(rescued) > 5:
        lines.append(f"    ... and {len(rescued) - 5} more (tag gradtune.outcome=rescued)")
    failed = [t for t in trials if t.outcome is Outcome.FAILED]
    for record in failed[:5]:
        lines.append(f"    failed: {record.error}")
    if len(failed) > 5:
        lines.append(f"    ... and {len(failed) - 5} more (tag gradtune.failure)")
    best = result.best()
    if best is None:
        lines.append(f"  no trial completed with a finite {metric}")
    else:
        r = best.result
        shown = {k: r[k] for k in ("val_loss", "val_accuracy", "train_loss") if k in r}
        lines.append(f"  best trial ({metric} {spec.search.mode}): "
                     + ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()))
        lines.append("    " + ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()))
        lines.append(f"    MLflow run {result.runs.get(best.trial_id, 'not created yet (see below)')}")
    if result.interrupted is not None:
        lines.append(f"  stopped by {signal.Signals(result.interrupted).name}: unfinished trials are saved; "
                     "continue with:")
        lines.append(f"    python -m gradtune sweep --resume {shlex.quote(result.storage)}")
    uri = redact(result.tracking_uri)  # a database URI may hold a password
    link = ui_link(uri, result.experiment_id)
    server = uri.startswith(("http://", "https://"))
    lines += [
        f"  MLflow: experiment '{result.experiment}', parent run {result.parent_run_id}",
        f"  open the UI: {link if server else 'python -m gradtune ui --tracking-uri ' + shlex.quote(uri)}",
    ]
    if not server and result.experiment_id is not None:
        lines.append(f"    then the runs table: {link}")
    if result.tracking_s:
        share = f" ({result.tracking_s / (wall or result.seconds):.1%} of the wall)" if wall or result.seconds else ""
        beside = f"; the report's {result.report_s:.1f}s ran beside Ray's shutdown" if result.report_s else ""
        lines.append(f"  MLflow tracking and the report took {result.tracking_s:.1f}s{share}{beside}")
    if result.report is not None:
        lines.append(f"  report (also on the parent run): {os.path.join(result.report, 'report.html')}")
    if result.pending:
        lines += [
            f"  MLflow: {result.pending} records not sent (the server did not answer); they are in",
            f"    {result.spool}; send them with:",
            f"    python -m gradtune sync {shlex.quote(str(result.spool))} --tracking-uri {shlex.quote(uri)}",
        ]
    return "\n".join(lines)
