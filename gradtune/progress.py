"""Terminal progress a person can follow: one line per finished trial (its number, outcome,
knobs, and objective or divergence reason), counted against the sweep's total, ending with
the outcomes so far (``| 10 completed, 2 diverged``). Ray Tune's own table is for ``-v``.

NaN and inf: an objective that is not finite is printed as it is (``nan``, ``inf``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TextIO

from ray.tune import Callback

from gradtune.outcome import P_DIVERGED, RESCUES, Ledger, Outcome, TrialRecord
from gradtune.params import trial_params
from gradtune.rescue import lineage_line, parse
from gradtune.spec import SweepSpec
from gradtune.tracking import run_name


def line(record: TrialRecord, done: int, total: int, metric: str,
         counts: Mapping[str, int] | None = None) -> str:
    """``[ 3/24] diverged   norm=none clip=none init=3.2 bs=64  at step 20: loss is nan``
    (a rescued trial: its objective, then ``after 120->80 lr x0.5``), then
    ``  | 2 completed, 1 diverged``: the non-zero ``counts`` (outcome -> trials so far)."""
    width = len(str(total))
    head = f"[{done:{width}d}/{total}] {record.outcome.value:<9s}  {run_name(record.params)}"
    if record.verdict is not None:
        tail = f"  at step {record.verdict.step}: {record.verdict.reason}"
    else:
        value = record.result.get(metric)
        shown = f"{value:.4g}" if isinstance(value, (int, float)) else "-"
        tail = f"  {metric}={shown}"
        if record.outcome is Outcome.PRUNED:
            tail += f" at step {record.result.get('step', '?')}"
        p = record.result.get(P_DIVERGED)  # several seeds: the share that diverged
        if isinstance(p, (int, float)) and p > 0:
            tail += f" p_diverged={p:.2g}"
        if record.outcome is Outcome.RESCUED:
            tail += "  after " + lineage_line(parse(record.result.get(RESCUES)))
    so_far = ", ".join(f"{n} {o}" for o, n in (counts or {}).items() if n)
    return head + tail + (f"  | {so_far}" if so_far else "")


class Progress(Callback):
    """Writes :func:`line` to ``stream`` as trials end. It reads each trial's outcome from
    the sweep's ledger (``Ledger.end`` gives the same record to whoever asks first)."""

    def __init__(self, spec: SweepSpec, ledger: Ledger, total: int, stream: TextIO) -> None:
        self.spec = spec
        self.ledger = ledger
        self.total = total
        self.stream = stream
        self.shown: set[str] = set()

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._show(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._show(trial, errored=True)

    def _show(self, trial: Any, errored: bool) -> None:
        if trial.trial_id in self.shown:
            return
        self.shown.add(trial.trial_id)
        record = self.ledger.end(trial.trial_id, trial_params(self.spec, trial.config),
                                 trial.last_result, errored)
        done = len(self.ledger.records)
        counts = self.ledger.counts()
        self.stream.write(line(record, done, self.total, self.spec.search.metric, counts) + "\n")
        self.stream.flush()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into the experiment folder; a terminal stream does not pickle.
        state = self.__dict__.copy()
        state["stream"] = None
        return state
