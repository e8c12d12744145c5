"""What happened to a trial, in one place: the verdict type, the keys a trial reports, the
outcomes, how a trial's last result maps to its outcome, and the sweep's tally.

Pure: no torch, Ray or MLflow, so every floor of gradtune imports it.

A verdict reaches the outcome by one of two roads, and both end in :class:`Ledger`:

- the trial's own monitor fires: the trial reports ``diverged=1`` with the reason and step
  (:meth:`Verdict.keys`), the scheduler reads it back (:func:`reported_verdict`);
- the driver's cross-trial rule fires: the scheduler alone knows.

The scheduler records either in the sweep's :class:`Ledger` when it sees the result. Ray
Tune shows every result to the scheduler before the searcher or any callback hears that the
trial ended, so the searcher and tracking read the verdict from the ledger; nobody rewrites
Tune's result dicts. :meth:`Ledger.end` is idempotent, so it does not matter who asks first.

NaN and inf: a reported value is kept as it is in a record; :meth:`TrialRecord.objective`
is ``None`` for a non-finite objective (such a trial is never "best"), and
:meth:`Ledger.summary` writes non-finite numbers as ``null`` (strict JSON).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Outcome(str, Enum):
    """How a trial ended. MLflow tag ``gradtune.outcome`` holds the value.

    A trial of several training seeds (``search.seeds: N``, :mod:`gradtune.seeds`) is one
    trial: ``diverged`` when every seed diverged, else ``completed`` (or ``pruned``,
    ``failed``) as for one seed, with the share of its seeds that diverged in
    :data:`P_DIVERGED` (> 0 means the configuration is unstable for some seeds).
    """

    COMPLETED = "completed"  # reached its last step without a verdict
    DIVERGED = "diverged"  # a divergence verdict, in the trial or on the driver
    # reached its last step after one or more rollbacks to a healthy checkpoint with a
    # remedy (gradtune.rescue): the configuration as proposed diverged, the remedy trained
    RESCUED = "rescued"
    PRUNED = "pruned"  # stopped early by the performance pruner (ASHA, median rule)
    FAILED = "failed"  # raised, or lost its worker

    def __str__(self) -> str:
        return self.value


OUTCOMES: tuple[str, ...] = tuple(o.value for o in Outcome)

# Not an outcome: the tag of a run stopped in flight by Ctrl-C or SIGTERM (status KILLED).
# ``gradtune sweep --resume`` continues it, and it then ends with its outcome.
INTERRUPTED = "interrupted"

# Tune's own key in every result: the trial's training time so far, in seconds.
SECONDS = "time_total_s"

# Keys of a trial's report that describe the report rather than measure training.
STEP = "step"  # the training step the report is for
FINAL = "final"  # 1 on the last report of a trial that ran its whole budget (or stopped on a verdict)
DIVERGED = "diverged"  # 1 when the trial's own monitor reached a verdict
REASON = "divergence_reason"
DIVERGENCE_STEP = "divergence_step"
NODE_ID = "node_id"  # the Ray node the trial ran on (added by the trainable)
# The step of the trial's last healthy checkpoint (taken before any verdict and at least the
# divergence rules' window before this report), 0 while there is none; what a rescue would
# roll back to.
HEALTHY_STEP = "healthy_checkpoint_step"
# On a verdict, the trial's last steps before it: a list of ``[step, train_loss, grad_norm,
# update_ratio]`` (one per step, oldest first, NaN and inf as measured), so a diverged run
# shows its blow-up and not only the 1-2 reports it made. A list, not a dict: Tune would
# flatten a dict into keys of its own.
WINDOW = "last_steps"
WINDOW_METRICS: tuple[str, ...] = ("train_loss", "grad_norm", "update_ratio")
MAX_WINDOW = 200  # steps kept at most
# A trial of N training seeds (search.seeds > 1): the share of its seeds that diverged so
# far (a metric, 0..1), and each seed's ``[index, outcome, step, reason]`` (outcome
# ``completed``, ``diverged`` or ``running``; a list, as WINDOW).
P_DIVERGED = "p_diverged"
SEEDS = "seed_outcomes"

# A rescue (divergence.rescue): rollbacks so far, a curve (0 until the first rollback), and
# the training steps computed so far, rolled-back ones included (the compute spent; the
# step itself is where training is). RESCUES: the rollbacks, JSON text (a list of
# ``{"attempt", "from_step", "to_step", "remedy", "reason", "onset_layer"}``), on every report
# after the first rollback; RESCUE_KEYS are the result keys of the lineage.
RESCUE_ATTEMPTS = "rescue_attempts"
STEPS_COMPUTED = "steps_computed"
RESCUES = "rescues"
# Where a divergence started (gradtune.onset): on a verdict (the final one, or the report
# after a rollback), JSON text of the per-layer gradient and weight norms over the steps
# before it (``onset.to_json``), the artifacts ``onset/verdict_<n>_step_<step>.json|csv``.
ONSET = "onset"
# What ``gradtune replay`` needs to re-run the first verdict, JSON text, from the first
# verdict on: ``{"seed", "device", "divergence_step", "checkpoint_step", "onset_batches":
# [first, last]}`` (the batch indices, 1-based positions in the trial's batch stream, of the
# rules' window before the verdict).
REPLAY = "replay"

# The metrics a trial reports (README "What each trial reports"); NaN and inf as measured.
METRICS: tuple[str, ...] = (
    "train_loss", "grad_norm", "grad_norm_max", "clip_fraction", "update_ratio", "lr",
    "val_loss", "val_accuracy",
)
# Per-step stability signals a workload may report beside them (``Workload.signals``;
# ``tiny_lm`` reports both), with divergence rules of their own (``gradtune.attention``).
ATTN_LOGIT_MAX = "attn_logit_max"  # largest pre-softmax attention logit of the step
ATTN_ENTROPY_MIN = "attn_entropy_min"  # smallest per-head mean attention entropy (nats)
SIGNALS: tuple[str, ...] = (ATTN_LOGIT_MAX, ATTN_ENTROPY_MIN)
# Reported numbers that are not per-step metrics (``diverged`` is: a 0/1 curve).
NOT_METRICS = frozenset({STEP, FINAL, DIVERGENCE_STEP, NODE_ID, HEALTHY_STEP, WINDOW, SEEDS, RESCUES, ONSET,
                         REPLAY, "trial_id", "done"})
# What a trial's record keeps of its last result.
RECORDED: tuple[str, ...] = (STEP, *METRICS, *SIGNALS, DIVERGED, REASON, DIVERGENCE_STEP, FINAL, NODE_ID,
                             SECONDS, P_DIVERGED, SEEDS, RESCUE_ATTEMPTS, STEPS_COMPUTED, RESCUES, REPLAY)


@dataclass(frozen=True)
class Verdict:
    """A trial is diverging: why (one line a person reads) and at which training step."""

    reason: str
    step: int

    def keys(self) -> dict[str, Any]:
        """The keys a trial reports with its verdict."""
        return {DIVERGED: 1, REASON: self.reason, DIVERGENCE_STEP: self.step}


def reported_verdict(result: Mapping[str, Any] | None) -> Verdict | None:
    """The verdict a trial reported in ``result`` (``diverged=1``), else ``None``."""
    if not result or not result.get(DIVERGED):
        return None
    step = result.get(DIVERGENCE_STEP, result.get(STEP, 0))
    return Verdict(str(result.get(REASON) or "diverged"), int(step))


def outcome_of(
    result: Mapping[str, Any] | None, verdict: Verdict | None = None, errored: bool = False
) -> Outcome:
    """``failed`` on error; ``diverged`` with a verdict (``verdict``, or one the result
    reports: a rescue that ran out of attempts ends here too); when the last result is
    ``final``, ``rescued`` after at least one rollback (:data:`RESCUE_ATTEMPTS` > 0), else
    ``completed``; otherwise ``pruned`` (a rescued trial stopped for performance too)."""
    if errored:
        return Outcome.FAILED
    if verdict is not None or reported_verdict(result) is not None:
        return Outcome.DIVERGED
    if result and result.get(FINAL):
        return Outcome.RESCUED if rescued(result) else Outcome.COMPLETED
    return Outcome.PRUNED


def rescued(result: Mapping[str, Any] | None) -> bool:
    """Whether the trial of ``result`` has rolled back at least once."""
    return bool(finite((result or {}).get(RESCUE_ATTEMPTS)))


# Outcomes that tell the searcher the configuration as proposed was unstable (a violated
# constraint): a rescued trial trained only with a remedy the search did not propose.
UNSTABLE = frozenset({Outcome.DIVERGED, Outcome.RESCUED})


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (bools excluded), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class TrialRecord:
    """One ended trial: its number (start order), outcome, hyperparameters, the verdict if
    any, and the :data:`RECORDED` keys of its last result. A failed trial has its ``error``
    (one line, :func:`failure_line`); ``failures`` counts every failure of the trial, the
    retried ones included (a trial that completed after one retry has 1)."""

    trial_id: str
    number: int
    outcome: Outcome
    params: dict[str, Any]
    result: dict[str, Any]
    verdict: Verdict | None = None
    error: str | None = None
    failures: int = 0

    def objective(self, metric: str) -> float | None:
        return finite(self.result.get(metric))

    def to_json(self, run_id: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "number": self.number, "trial_id": self.trial_id, "run_id": run_id,
            "outcome": self.outcome.value, "params": self.params, "result": self.result,
        }
        if self.verdict is not None:
            out["divergence"] = {"reason": self.verdict.reason, "step": self.verdict.step}
        if self.error is not None:
            out["error"] = self.error
        if self.failures:
            out["failures"] = self.failures
        clean: dict[str, Any] = strict_json(out)
        return clean


@dataclass
class Ledger:
    """The driver's account of one sweep, keyed by Tune trial id: verdicts as they are
    reached, then one :class:`TrialRecord` per ended trial. Plain dicts, so it pickles
    with the scheduler and searcher that hold it."""

    verdicts: dict[str, Verdict] = field(default_factory=dict)
    records: dict[str, TrialRecord] = field(default_factory=dict)
    numbers: dict[str, int] = field(default_factory=dict)

    def update(self, other: Ledger) -> None:
        """Take in what ``other`` knows (a ledger restored from an experiment checkpoint)."""
        for trial_id in sorted(other.numbers, key=other.numbers.__getitem__):
            self.number(trial_id)
        for trial_id, verdict in other.verdicts.items():
            self.judge(trial_id, verdict)
        for trial_id, record in other.records.items():
            self.records.setdefault(trial_id, record)

    def number(self, trial_id: str) -> int:
        """The trial's number: the order in which trials were first seen (suggestion order)."""
        return self.numbers.setdefault(trial_id, len(self.numbers))

    def judge(self, trial_id: str, verdict: Verdict) -> None:
        """Record a verdict; the first one for a trial stands."""
        self.verdicts.setdefault(trial_id, verdict)

    def verdict(self, trial_id: str, result: Mapping[str, Any] | None = None) -> Verdict | None:
        """The verdict recorded for the trial, else the one ``result`` reports."""
        return self.verdicts.get(trial_id) or reported_verdict(result)

    def outcome(self, trial_id: str, result: Mapping[str, Any] | None, errored: bool = False) -> Outcome:
        return outcome_of(result, self.verdict(trial_id, result), errored)

    def end(
        self, trial_id: str, params: dict[str, Any], result: Mapping[str, Any] | None,
        errored: bool = False, error: str | None = None, failures: int = 0,
    ) -> TrialRecord:
        """The trial's record, made on the first call; later calls return the same one.
        ``error`` (why an errored trial failed) is kept, as one line, only when ``errored``."""
        if trial_id in self.records:
            return self.records[trial_id]
        result = result or {}
        verdict = None if errored else self.verdict(trial_id, result)
        record = TrialRecord(
            trial_id=trial_id, number=self.number(trial_id),
            outcome=outcome_of(result, verdict, errored), params=dict(params),
            result={k: result[k] for k in RECORDED if k in result}, verdict=verdict,
            error=failure_line(error or NO_ERROR) if errored else None,
            failures=failures,
        )
        self.records[trial_id] = record
        return record

    def ordered(self) -> list[TrialRecord]:
        return sorted(self.records.values(), key=lambda r: r.number)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(OUTCOMES, 0)
        for record in self.records.values():
            counts[record.outcome.value] += 1
        return counts

    def compute_seconds(self) -> float:
        """The ended trials' training time (:data:`SECONDS` of their last results), summed."""
        return sum(finite(r.result.get(SECONDS)) or 0.0 for r in self.records.values())

    def best(self, metric: str, mode: str) -> TrialRecord | None:
        """The completed trial with the best finite ``metric`` (``mode`` min or max); with
        several seeds per trial, among those with the lowest :data:`P_DIVERGED` (a
        configuration no seed diverged on beats one that is better on its lucky seeds)."""
        done = [r for r in self.records.values()
                if r.outcome is Outcome.COMPLETED and r.objective(metric) is not None]
        if not done:
            return None
        sign = 1.0 if mode == "min" else -1.0
        return min(done, key=lambda r: (finite(r.result.get(P_DIVERGED)) or 0.0,
                                        sign * (r.objective(metric) or 0.0), r.number))

    def summary(self, metric: str, mode: str, runs: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The sweep summary (``summary.json``): counts and the best trial on top, then
        every trial in number order, each with its MLflow run id from ``runs`` (trial id ->
        run id); strict JSON (non-finite numbers are ``null``)."""
        runs = runs or {}
        best = self.best(metric, mode)
        return {
            "counts": self.counts(),
            "objective": {"metric": metric, "mode": mode},
            "best": None if best is None else best.to_json(runs.get(best.trial_id)),
            "trials": [r.to_json(runs.get(r.trial_id)) for r in self.ordered()],
        }


MAX_ERROR = 300  # characters of a failure's one line (an MLflow tag holds 5000)
NO_ERROR = "failed (no error recorded)"


def failure_line(text: str, limit: int = MAX_ERROR) -> str:
    """``text`` as one line of at most ``limit`` characters: whitespace runs (newlines
    included) become one space; a longer line is cut, ending in ``...``."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value
