"""The sweep report: which settings are stable, which knobs matter, where the edge is.

:func:`write` puts into one folder a PNG per figure (:mod:`gradtune.plots`), one
self-contained ``report.html`` (plotly.js embedded once, no external script: it opens
offline) and the Optuna journal ``optuna-study.jsonl`` (:func:`gradtune.study.save_journal`;
``optuna-dashboard optuna-study.jsonl`` opens it). :func:`text` is the terminal table.

Both take a :class:`~gradtune.table.SweepTable`, from the driver's memory at the end of a
sweep (:func:`gradtune.table.from_ledger`) or from the tracking store
(:func:`gradtune.table.from_mlflow`, ``gradtune report``). A figure without enough data is a
one-line note in the page, never an error. NaN and inf: see :mod:`gradtune.plots`; in
:func:`text` a trial without a finite objective shows ``-`` and sorts last, and an onset's
growth or step that is not a finite number shows ``-``.
"""

from __future__ import annotations

import html
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gradtune.onset import onset_row
from gradtune.outcome import Outcome
from gradtune.table import Row, SweepTable

if TYPE_CHECKING:
    from gradtune.plots import Plot  # imported by write: matplotlib and plotly only when drawing

log = logging.getLogger(__name__)

__all__ = ["HTML", "JOURNAL", "onsets", "text", "write"]

HTML = "report.html"
JOURNAL = "optuna-study.jsonl"
DPI = 90


def _objective_key(table: SweepTable, row: Row) -> tuple[int, float, int]:
    """Completed trials by objective, then the others with a finite objective (a diverged
    trial's last value ranks nothing), then those without one; ties by number."""
    if row.value is None:
        return (2, 0.0, row.number)
    rank = 0 if row.outcome == Outcome.COMPLETED.value else 1
    return (rank, row.value if table.mode == "min" else -row.value, row.number)


def _knobs(table: SweepTable, row: Row) -> str:
    parts = []
    for name in table.searched():
        value = row.params.get(name)
        if value is None:
            continue
        parts.append(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}")
    return " ".join(parts)


def text(table: SweepTable, reason_width: int = 60) -> str:
    """The trials sorted by objective (completed best first, see :func:`_objective_key`),
    one line each: number, outcome, objective, the searched knobs, and why it diverged or
    failed."""
    counts: dict[str, int] = {}
    for row in table.rows:
        counts[row.outcome] = counts.get(row.outcome, 0) + 1
    tally = ", ".join(f"{n} {o}" for o, n in counts.items()) or "no trial ended"
    lines = [f"sweep {table.name} ({table.experiment}): {len(table.rows)} trials, {tally}; "
             f"{table.metric} ({table.mode})",
             f"{'#':>4}  {'outcome':<10} {table.metric:>12}  knobs / reason"]
    for row in sorted(table.rows, key=lambda r: _objective_key(table, r)):
        value = "-" if row.value is None else f"{row.value:.5g}"
        line = f"{row.number:>4}  {row.outcome:<10} {value:>12}  {_knobs(table, row)}"
        if row.reason:
            reason = row.reason if len(row.reason) <= reason_width else row.reason[: reason_width - 3] + "..."
            at = f" @ step {row.divergence_step}" if row.divergence_step is not None else ""
            line += f"  [{reason}{at}]"
        lines.append(line)
    return "\n".join(lines + onsets(table))


def _number(value: object, fmt: str) -> str:
    """``value`` formatted (``d``: as a whole number), ``-`` when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return format(int(value), "d") if fmt == "d" else format(value, fmt)


def onsets(table: SweepTable, layer_width: int = 40) -> list[str]:
    """"Where divergences started": a line per trial with a recorded onset (``Row.onset``,
    its first verdict's), by number: the onset layer's onset step (``-`` when it never
    crossed the factor), the verdict's step, the layer and its growth; ``[]`` when no trial
    has one."""
    rows = [r for r in table.rows if r.onset]
    if not rows:
        return []
    lines = ["", "Where divergences started (the first verdict's onset layer):",
             f"{'#':>4}  {'outcome':<10} {'onset step':>10} {'verdict':>8}  {'onset layer':<{layer_width}} growth"]
    for row in rows:
        found = row.onset or {}
        top = onset_row(found)
        layer = str(found.get("onset_layer") or "-")
        if len(layer) > layer_width:
            layer = "..." + layer[3 - layer_width:]  # the end names the parameter
        growth = _number(top.get("growth"), ".3g")
        lines.append(f"{row.number:>4}  {row.outcome:<10} {_number(top.get('onset_step'), 'd'):>10} "
                     f"{_number(found.get('verdict_step'), 'd'):>8}  {layer:<{layer_width}} "
                     f"{growth + 'x' if growth != '-' else growth}")
    return lines


def write(table: SweepTable, out_dir: str | Path) -> list[Path]:
    """Write the report of ``table`` into ``out_dir`` (created if needed; files of an
    earlier report there are replaced) and return the paths written: the PNGs, then
    ``report.html``, then the journal."""
    from gradtune import plots, study

    started = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    opt = study.to_study(table)
    figures = plots.all_plots(table, opt)
    written: list[Path] = []
    for plot in figures:
        if plot.png is not None:
            path = out / f"{plot.name}.png"
            # zlib level 1: a PNG a bit larger, written ~25% faster than at Pillow's default 6
            plot.png.savefig(path, dpi=DPI, pil_kwargs={"compress_level": 1})
            plots.close(plot)
            written.append(path)
    page = out / HTML
    page.write_text(_page(table, figures), encoding="utf-8")
    written.append(page)
    written.append(study.save_journal(table, out / JOURNAL))
    log.info("report of %d trials written to %s in %.2fs", len(table.rows), out, time.monotonic() - started)
    return written


def _page(table: SweepTable, figures: list[Plot]) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>gradtune report: "
             f"{html.escape(table.name)}</title></head><body style='font-family:sans-serif'>",
             f"<h1>gradtune sweep {html.escape(table.name)}</h1>",
             f"<p>experiment {html.escape(table.experiment)}, parent run "
             f"{html.escape(str(table.parent_run_id))}</p>",
             f"<pre>{html.escape(text(table))}</pre>"]
    js = True  # plotly.js inline in the first figure only
    for plot in figures:
        parts.append(f"<h2>{html.escape(plot.title)}</h2>")
        if plot.note:
            parts.append(f"<p><em>{html.escape(plot.note)}</em></p>")
        if plot.html is not None:
            parts.append(plot.html.to_html(full_html=False, include_plotlyjs=js))
            js = False
    parts.append("</body></html>")
    return "\n".join(parts)
