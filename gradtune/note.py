"""What the sweep's parent run says in MLflow: its description (the run's note, markdown,
tag ``mlflow.note.content``), its best-trial metrics, and the links into the UI.

Pure: a function of the ledger and the trials' run ids (or the writer's run keys, which
the writer swaps for run ids when it sends the note, as it does for ``summary.json``).

NaN and inf: a trial's non-finite objective never makes it "best" (:meth:`Ledger.best`),
best-metric values are finite or left out, and knob values are shown as they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from gradtune import rescue
from gradtune.credentials import redact
from gradtune.outcome import P_DIVERGED, RESCUES, SEEDS, Ledger, Outcome, TrialRecord, finite

__all__ = ["BEST", "LOCAL_UI", "NOTE_TAG", "best_metrics", "reason_kind", "render", "rescued_lines",
           "stable_region", "ui_link", "unstable_seeds"]

NOTE_TAG = "mlflow.note.content"  # what the UI shows as the run's description
# An experiment tag MLflow 2.x-3.x UIs read to pick the experiment's kind (GenAI or ML).
KIND_TAG, KIND_ML = "mlflow.experimentKind", "custom_model_development"
LOCAL_UI = "http://127.0.0.1:5000"  # where `gradtune ui` serves a local store
MAX_NOTE = 7900  # characters: MLflow refuses a tag value over 8000
BEST = ("val_loss", "val_accuracy", "train_loss")  # logged on the parent as best_<name>
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?", re.IGNORECASE)


def ui_link(tracking_uri: str, experiment_id: str | None, base: str = LOCAL_UI) -> str:
    """The link that opens the experiment's runs table in model-training mode: under the
    tracking URI itself when it is http(s) (credentials redacted), else under ``base``
    (where ``gradtune ui`` serves a local store). Without an experiment id, the UI's root."""
    uri = redact(tracking_uri)
    root = (uri if uri.startswith(("http://", "https://")) else base).split("#")[0].rstrip("/")
    if experiment_id is None:
        return root
    return f"{root}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def reason_kind(reason: str) -> str:
    """A divergence reason without its numbers (``grad_norm grew #x in # steps``), so that
    the reasons of many trials group by the rule that fired; ``nan``/``inf`` are kept."""
    return NUMBER.sub("#", reason)


def best_metrics(ledger: Ledger, metric: str, mode: str) -> dict[str, float]:
    """``best_<name>`` of the best completed trial for each of :data:`BEST` (and the
    objective) it reported finite; empty when no trial completed with a finite objective."""
    best = ledger.best(metric, mode)
    if best is None:
        return {}
    names = dict.fromkeys((metric, *BEST))
    values = {f"best_{k}": finite(best.result.get(k)) for k in names}
    return {k: v for k, v in values.items() if v is not None}


def _values(records: Sequence[TrialRecord], knob: str) -> str:
    found = [r.params[knob] for r in records if knob in r.params]
    if not found:
        return "-"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in found):
        low, high = min(found), max(found)
        return f"{low:.3g}" if low == high else f"{low:.3g} – {high:.3g}"
    return ", ".join(sorted({str(v) for v in found}))


def stable_region(ledger: Ledger, knobs: Sequence[str]) -> list[tuple[str, str, str]]:
    """For each searched knob: (knob, its range or values among completed trials, among
    diverged ones); ``-`` where there is none. With several seeds per trial, a completed
    trial counts only when none of its seeds diverged (:func:`unstable_seeds` lists the rest)."""
    done = [r for r in ledger.ordered() if r.outcome is Outcome.COMPLETED and not _p(r)]
    diverged = [r for r in ledger.ordered() if r.outcome is Outcome.DIVERGED]
    return [(k, _values(done, k), _values(diverged, k)) for k in knobs]


def _p(record: TrialRecord) -> float:
    return finite(record.result.get(P_DIVERGED)) or 0.0


def unstable_seeds(ledger: Ledger) -> list[str]:
    """Markdown rows for the trials on which some but not all seeds diverged
    (``search.seeds`` > 1): trial number, P(diverged), each diverged seed's step."""
    rows = []
    for record in ledger.ordered():
        if 0 < _p(record) < 1:
            seeds = record.result.get(SEEDS) or []
            steps = ", ".join(f"seed {r[0]} at step {r[2]}" for r in seeds
                              if isinstance(r, list) and len(r) == 4 and r[1] == Outcome.DIVERGED.value)
            rows.append(f"| {record.number} | {record.outcome.value} | {_p(record):.2g} | {_cell(steps)} |")
    return rows


def _reasons(ledger: Ledger) -> list[tuple[str, int, int]]:
    kinds: dict[str, tuple[int, int]] = {}
    for record in ledger.ordered():
        if record.verdict is not None:
            kind = reason_kind(record.verdict.reason)
            n, earliest = kinds.get(kind, (0, record.verdict.step))
            kinds[kind] = (n + 1, min(earliest, record.verdict.step))
    return sorted(((k, n, s) for k, (n, s) in kinds.items()), key=lambda x: (-x[1], x[2], x[0]))


def rescued_lines(ledger: Ledger, metric: str, runs: Mapping[str, str], experiment_id: str | None,
                  limit: int = 10) -> list[str]:
    """The rescued trials (a markdown table): each trial's rollbacks (``120->80 lr x0.5``)
    and the objective the remedy reached; empty when no trial was rescued. A rescued
    trial is never "best": its configuration diverged as proposed."""
    rescued = [r for r in ledger.ordered() if r.outcome is Outcome.RESCUED]
    if not rescued:
        return []
    lines = ["", "### Rescued trials (diverged as proposed, trained with a remedy)",
             f"| trial | rollbacks | {_cell(metric)} |", "| --- | --- | ---: |"]
    for record in rescued[:limit]:
        run = runs.get(record.trial_id)
        title = f"trial {record.number}"
        if run is not None and experiment_id is not None:
            title = f"[{title}](#/experiments/{experiment_id}/runs/{run})"
        line = rescue.lineage_line(rescue.parse(record.result.get(RESCUES)))
        lines.append(f"| {title} | {_cell(line)} | {_fmt(record.result.get(metric, '-'))} |")
    if len(rescued) > limit:
        lines.append(f"| ... and {len(rescued) - limit} more | tag gradtune.outcome=rescued | |")
    return lines


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(ledger: Ledger, name: str, metric: str, mode: str, knobs: Sequence[str],
           runs: Mapping[str, str], experiment_id: str | None) -> str:
    """The parent run's note (markdown): counts per outcome, the best trial (a link to its
    run by ``runs[trial_id]``, its knobs and metrics), the divergence reasons (kind ->
    trials, earliest step), the rescued trials (:func:`rescued_lines`) and the stable
    region over the searched ``knobs``. Cut at
    :data:`MAX_NOTE` characters (ending in ``...``) so that MLflow takes it."""
    counts = ledger.counts()
    total = sum(counts.values())
    lines = [f"**gradtune sweep `{name}`**: {total} trials — "
             + ", ".join(f"{n} {o}" for o, n in counts.items()), ""]
    best = ledger.best(metric, mode)
    lines.append(f"### Best trial ({metric}, {mode})")
    if best is None:
        lines.append(f"No trial completed with a finite {metric}.")
    else:
        run = runs.get(best.trial_id)
        title = f"trial {best.number}"
        if run is not None and experiment_id is not None:
            title = f"[{title}](#/experiments/{experiment_id}/runs/{run})"
        shown = {k: best.result[k] for k in dict.fromkeys((metric, *BEST)) if k in best.result}
        lines.append(f"{title}: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in shown.items()))
        lines.append("")
        lines += ["| knob | value |", "| --- | --- |"]
        lines += [f"| {_cell(k)} | {_cell(_fmt(v))} |" for k, v in best.params.items()]
    reasons = _reasons(ledger)
    if reasons:
        lines += ["", "### Divergence reasons", "| reason | trials | earliest step |", "| --- | ---: | ---: |"]
        lines += [f"| {_cell(k)} | {n} | {s} |" for k, n, s in reasons]
    lines += rescued_lines(ledger, metric, runs, experiment_id)
    region = stable_region(ledger, knobs)
    if region:
        lines += ["", "### Stable region", "| knob | completed | diverged |", "| --- | --- | --- |"]
        lines += [f"| {_cell(k)} | {_cell(c)} | {_cell(d)} |" for k, c, d in region]
    unstable = unstable_seeds(ledger)
    if unstable:
        lines += ["", "### Some seeds diverged", "| trial | outcome | p_diverged | diverged |",
                  "| ---: | --- | ---: | --- |", *unstable]
    text = "\n".join(lines) + "\n"
    return text if len(text) <= MAX_NOTE else text[: MAX_NOTE - 4] + "\n..."
