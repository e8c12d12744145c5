"""The training loop run inside one trial.

One flat loop, nanoGPT-style: batch, forward, backward, gradient telemetry and clipping,
optimizer step, divergence check, and every ``report_every`` steps a report. The loop takes
a ``report`` callable, so tests and benchmarks drive it without Ray; the Ray Tune entry is
:func:`gradtune.trainable.trainable`.

Reported metrics (every report): ``step``, ``train_loss`` (mean over the window),
``grad_norm`` (global L2 norm before clipping, last step of the window), ``grad_norm_max``
(max over the window), ``clip_fraction`` (share of the window's steps where clipping
changed the gradient), ``update_ratio`` (||dw|| / ||w|| of the last step: measured every
step while a rule reads it (``divergence.update_ratio``, ``loss_factor``), else on report
steps only, and NaN on the others, a verdict's among them), ``lr``,
``val_loss`` and ``val_accuracy`` (latest evaluation), ``diverged`` (0/1), ``final`` (0/1);
and the workload's own signals of the last step, if it has any (``Workload.signals``:
``attn_logit_max`` and ``attn_entropy_min`` for ``tiny_lm``), read in the same host sync.

Every ``checkpoint_every`` steps the report carries a checkpoint of the whole trial
(:mod:`gradtune.checkpoint`), and every report says the step of the last healthy one
(``healthy_checkpoint_step``, 0 for none). Given a checkpoint (Tune's, after a retry), the
trial goes on after its step: the reports continue from there, and on CPU they are those
of the uninterrupted trial.

With ``divergence.rescue`` (:mod:`gradtune.rescue`, :mod:`gradtune.rollback`), a verdict
with a healthy checkpoint does not end the trial: it rolls back to a host copy of that
checkpoint (or to the initial state when the trial had not learned by then), adds the next
remedy and goes on to the same last step; reports then carry ``rescue_attempts``,
``steps_computed`` and the lineage (``rescues``), and the steps after the checkpoint are
reported again. With ``divergence.onset``, per-layer norms are kept on the device
(:class:`gradtune.telemetry.LayerNorms`) and a verdict carries where it started
(``onset``, :mod:`gradtune.onset`). The first verdict's seed, step, checkpoint step and
batches (``replay``) are carried from then on, for ``gradtune replay``.

NaN and inf: the monitor sees every step's loss and gradient norm. On a verdict (always on a
non-finite value) the trial evaluates once, reports at once with ``diverged=1``,
``divergence_reason``, ``divergence_step`` and its last steps' loss, gradient norm and
update ratio (``outcome.WINDOW``, from a ring buffer of floats already on the host), and
returns: no compute after the verdict.
No checkpoint is taken at a step with a non-finite loss or gradient norm (an fp16 overflow
step) nor with a verdict.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch

from gradtune import checkpoint, clipping, healthy, onset, outcome, rollback, signals, telemetry, workloads
from gradtune.dataparallel import Rank
from gradtune.outcome import Verdict
from gradtune.params import OPTIMIZERS, trial_params
from gradtune.precision import Precision
from gradtune.spec import SweepSpec

log = logging.getLogger(__name__)

MAX_OVERFLOWS = 20  # fp16: consecutive skipped steps that count as divergence

Report = Callable[[dict[str, Any]], None]
Save = Callable[[dict[str, Any], dict[str, Any]], None]  # (metrics, state): report with a checkpoint


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


# One constructor per name of ``params.OPTIMIZERS`` (tests/test_trial.py checks the two agree).
OPTIMIZER_CLASSES: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


def make_optimizer(model: torch.nn.Module, params: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimizer named by ``params["optimizer"]`` (one of :data:`params.OPTIMIZERS`)."""
    name = params["optimizer"]
    if name not in OPTIMIZER_CLASSES:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    extra = {"momentum": params["momentum"]} if name == "sgd" else {}
    return OPTIMIZER_CLASSES[name](model.parameters(), lr=params["lr"],
                                   weight_decay=params["weight_decay"], **extra)


class Window:
    """Per-report aggregates of the per-step values."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum = 0.0
        self.steps = 0
        self.clipped = 0
        self.norm_max = -math.inf

    def add(self, loss: float, norm: float, clipped: bool) -> None:
        self.loss_sum += loss
        self.steps += 1
        self.clipped += int(clipped)
        # max() would skip NaN depending on argument order; keep NaN visible.
        self.norm_max = norm if (math.isnan(norm) or norm > self.norm_max) else self.norm_max

    def metrics(self) -> dict[str, float]:
        return {
            "train_loss": self.loss_sum / max(self.steps, 1),
            "grad_norm_max": self.norm_max,
            "clip_fraction": self.clipped / max(self.steps, 1),
        }

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        vars(self).update(state)


class LastSteps:
    """The last ``size`` steps' ``[step, loss, grad_norm, update_ratio]`` rows, in the trial
    checkpoint (a restored trial's verdict carries the same rows as the uninterrupted one)."""

    def __init__(self, size: int) -> None:
        self.rows: deque[list[float]] = deque(maxlen=size)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [list(r) for r in self.rows]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows.clear()
        self.rows.extend(list(r) for r in state["rows"])


class Judge:
    """The per-step divergence decision: the monitor's rules on every step, except that
    under fp16 an inf gradient is the loss scaler's signal (step skipped, scale lowered),
    not divergence; then only a non-finite loss or ``MAX_OVERFLOWS`` overflows in a row are."""

    def __init__(self, monitor: StepMonitor, amp: Precision) -> None:
        self.monitor = monitor
        self.amp = amp
        self.overflows = 0

    def __call__(self, step: int, loss: float, grad_norm: float, ratio: float,
                 extra: Mapping[str, float] | None = None) -> Verdict | None:
        if not self.amp.overflowed(grad_norm):
            self.overflows = 0
            return self.monitor.update(step, loss, grad_norm, ratio, extra)
        self.overflows += 1
        verdict = signals.nonfinite(step, loss=loss)
        if verdict is None and self.overflows >= MAX_OVERFLOWS:
            verdict = Verdict(f"fp16 gradients overflowed {self.overflows} steps in a row", step)
        return verdict

    def state_dict(self) -> dict[str, Any]:
        """The overflow count and the monitor's state (``None`` for a monitor without one)."""
        monitor = self.monitor.state_dict() if isinstance(self.monitor, checkpoint.Stateful) else None
        return {"overflows": self.overflows, "monitor": monitor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.overflows = int(state["overflows"])
        if state["monitor"] is not None and isinstance(self.monitor, checkpoint.Stateful):
            self.monitor.load_state_dict(state["monitor"])


class StepMonitor(Protocol):
    def update(self, step: int, loss: float, grad_norm: float, ratio: float,
               extra: Mapping[str, float] | None = None) -> Verdict | None: ...


def train(
    spec: SweepSpec, config: dict[str, Any], report: Report, monitor: StepMonitor | None = None,
    save: Save | None = None, resume: dict[str, Any] | None = None, layer_steps: int | None = None,
    rank: Rank | None = None,
) -> dict[str, Any]:
    """Train one configuration; call ``report(metrics)`` every ``report_every`` steps and
    at the end. Returns the last metrics reported.

    ``monitor`` replaces the divergence monitor built from ``spec.divergence`` (the
    benchmarks pass one that records every step and never stops). ``save(metrics, state)``,
    when given, is called instead of ``report`` every ``training.checkpoint_every`` steps:
    it reports ``metrics`` with a checkpoint of ``state`` (:func:`checkpoint.capture`; write
    it before returning, it shares tensors with the trial). ``resume``, a state
    :func:`checkpoint.load` read, makes the trial go on after that state's step.
    ``layer_steps`` sets how many steps of per-layer norms a verdict carries (default
    :func:`last_steps`; ``gradtune replay`` keeps the whole run).

    ``rank``, one rank of a data-parallel trial (:mod:`gradtune.dataparallel`): the model
    in DDP, this rank's slice of each batch, and the step's statistics combined over the
    ranks before the rules see them (every rank the same verdict at the same step)."""
    params = trial_params(spec, config)
    t = spec.training
    device = resolve_device(t.device)
    torch.manual_seed(t.seed)
    wl = workloads.build(spec.workload.name, spec.workload.options, params, t.seed, device)
    model = wl.model.train()
    weights = [p for p in model.parameters() if p.requires_grad]
    flat = telemetry.flatten_(weights)  # before the optimizer: its state follows the views
    net = model if rank is None else rank.wrap(model)  # DDP: backward averages the gradients
    optimizer = make_optimizer(model, params)
    warmup = params["warmup_steps"] or wl.warmup_steps  # the spec's, else the workload's
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
    )
    clip = clipping.make(params["clip_method"], params.get("clip_threshold"))
    # The rules that read every step's update ratio (a monitor passed in may read anything);
    # without them only the reports read it, so it is measured on their steps only.
    ratio_every_step = monitor is not None or (spec.divergence.enabled and bool(
        spec.divergence.update_ratio or spec.divergence.loss_factor))
    if monitor is None:
        monitor = signals.Monitor(spec.divergence, reference_loss=wl.reference_loss, budget=t.steps)
    amp = Precision(t.precision, device)
    # Under fp16 the scaler may skip a step, which SGD's own numbers would not show: copy.
    updates = telemetry.UpdateRatio(weights, flat=flat, optimizer=optimizer if amp.scaler is None else None)
    unmeasured = torch.full((), math.nan, device=device)
    judge = Judge(monitor, amp)
    eval_every = t.eval_every or t.report_every
    val: dict[str, float] = {}
    window = Window()
    metrics: dict[str, Any] = {}
    # The last steps' numbers, already on the host for the rules: a diverged trial's report
    # carries them (outcome.WINDOW).
    last = LastSteps(last_steps(spec))
    data = checkpoint.Position(wl.train_batches)
    marks = healthy.Marks(spec.divergence.window)
    # Everything that a checkpoint saves; a restore puts it back and the loop goes on.
    state = {"model": model, "optimizer": optimizer, "schedule": schedule, "scaler": amp.scaler,
             "clipper": clip, "judge": judge, "window": window, "val": val, "data": data,
             "marks": marks, "last": last}
    rescuer = None
    if spec.divergence.rescue.enabled and t.checkpoint_every:
        own = (params["clip_method"], params.get("clip_threshold"))
        rescuer = rollback.Rescuer(spec.divergence.rescue, optimizer, schedule, own)
        state["rescue"] = rescuer
    layers = None
    if spec.divergence.onset:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        layers = telemetry.LayerNorms([n for n, _ in named], [p for _, p in named],
                                      layer_steps or last_steps(spec))
        state["layers"] = layers
    every = t.checkpoint_every if (save is not None or rescuer is not None) else None
    start = 1
    if resume is not None:
        if rescuer is not None and "rescue" in resume["parts"]:
            rescuer.load_state_dict(resume["parts"]["rescue"])  # its remedies pick the clipper
            clip = rescuer.apply(clip) or clip
            state["clipper"] = clip
        start = checkpoint.restore(resume, state) + 1
        if rescuer is not None:
            rescuer.apply(clip)  # the restored schedule holds the rates of its own time
        log.info("trial resumed from its checkpoint at step %d", start - 1)
    if rescuer is not None and start == 1:  # the initial state: a rescue's restart point
        rescuer.keep(0, checkpoint.capture(0, state), [0])
    # The first verdict, for `gradtune replay` (outcome.REPLAY); a rescue keeps it.
    replay: str | None = rescuer.replay if rescuer is not None else None
    pending_onset: str | None = None  # a rescued verdict's onset, for the next report

    step = start
    while step <= t.steps:
        for _ in range(rescuer.skip(step) if rescuer is not None else 0):
            next(data)  # the skip remedy: batches the diverging attempt saw last
        x, y = next(data) if rank is None else rank.shard(next(data))
        with amp.autocast():
            loss = wl.loss_fn(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        amp.backward(loss)
        amp.unscale(optimizer)  # clipping and telemetry see the true gradients
        if layers is not None:
            layers.record(step)  # per-layer pre-clip norms, on the device (no sync)
        grad_norm, clipped = clip(weights)  # pre-clip global L2 norm
        measured = ratio_every_step or step % t.report_every == 0 or step == t.steps
        if measured:
            updates.before_step()
        lr = schedule.get_last_lr()[0]
        amp.step(optimizer)
        schedule.step()
        ratio = updates.after_step(clipping.norm_after(clip)) if measured else unmeasured
        extra = wl.signals() if wl.signals else {}  # the workload's own, e.g. attention
        stats = torch.stack([loss.detach().float(), grad_norm.float(), clipped.float(), ratio.float(),
                             *(v.float() for v in extra.values())])
        if rank is not None:  # one all-gather: the mean loss, the same norm on every rank
            stats = rank.reduce(stats, tuple(extra))
        # The one host sync per step: the divergence rules need this step's numbers now.
        loss_v, norm_v, clipped_v, ratio_v, *extra_v = stats.tolist()
        signals_v = dict(zip(extra, extra_v))
        window.add(loss_v, norm_v, bool(clipped_v))
        last.rows.append([step, loss_v, norm_v, ratio_v])
        verdict = judge(step, loss_v, norm_v, ratio_v, signals_v)
        if rescuer is not None:
            rescuer.computed += 1
        onset_text = None
        if verdict is not None:
            found = layers.where_it_started(verdict.step) if layers is not None else None
            if found is not None:
                found["verdict"] = 1 + (len(rescuer.rescues) if rescuer is not None else 0)
                onset_text = onset.to_json(found)
            if replay is None:
                replay = replay_info(spec, device, verdict, marks.healthy(verdict.step), data.drawn)
                if rescuer is not None:
                    rescuer.replay = replay
            healthy_step = marks.healthy(verdict.step)
            back = rescuer.target(healthy_step, wl.reference_loss) if rescuer is not None else None
            if rescuer is not None and back is not None:
                rescuer.rollback(verdict.step, verdict.reason, back, state,
                                 found["onset_layer"] if found else None)
                clip = rescuer.apply(clip) or clip
                state["clipper"] = clip
                pending_onset = onset_text
                step = back + 1
                continue
        done = verdict is not None or step == t.steps
        if done or step % eval_every == 0:
            val.update(workloads.evaluate(wl))
        if done or step % t.report_every == 0:
            metrics = {
                outcome.STEP: step,
                **window.metrics(),
                "grad_norm": norm_v,
                "update_ratio": ratio_v,
                "lr": lr,
                **val,
                **signals_v,  # this step's
                outcome.DIVERGED: 0,
                outcome.FINAL: int(done),
                outcome.HEALTHY_STEP: marks.healthy(step),
            }
            if rescuer is not None:
                metrics.update(rescuer.keys())
            if pending_onset is not None:
                metrics[outcome.ONSET], pending_onset = pending_onset, None
            if replay is not None:
                metrics[outcome.REPLAY] = replay
            if verdict is not None:
                metrics.update(verdict.keys())
                metrics[outcome.WINDOW] = list(last.rows)
                if onset_text is not None:
                    metrics[outcome.ONSET] = onset_text
            window.reset()
            finite = math.isfinite(loss_v) and math.isfinite(norm_v)
            if every and step % every == 0 and finite and not done:
                marks.add(step)
                captured = checkpoint.capture(step, state, marks.healthy(step))
                if rescuer is not None:
                    rescuer.keep(step, captured, marks.steps, metrics["train_loss"])
                if save is not None:
                    save(metrics, captured)
                else:
                    report(metrics)
            else:
                report(metrics)
        if verdict is not None:
            log.info("trial diverged at step %d: %s", verdict.step, verdict.reason)
            break
        step += 1
    return metrics


def last_steps(spec: SweepSpec) -> int:
    """How many steps a verdict's report carries (:data:`outcome.WINDOW`): the report
    interval or the divergence rules' window, whichever is larger, at most
    :data:`outcome.MAX_WINDOW`."""
    return min(outcome.MAX_WINDOW, max(spec.training.report_every, spec.divergence.window))



def replay_info(spec: SweepSpec, device: torch.device, verdict: Verdict, healthy_step: int,
                drawn: int) -> str:
    """:data:`outcome.REPLAY` of the first verdict: the seed, the device, the verdict's step,
    the healthy checkpoint's step and the batch indices (1-based positions in the batch
    stream) of the rules' window before the verdict. JSON text."""
    first = max(1, drawn - min(spec.divergence.window, verdict.step) + 1)
    return json.dumps({"seed": spec.training.seed, "device": device.type,
                       "divergence_step": verdict.step, "checkpoint_step": healthy_step,
                       "onset_batches": [first, drawn], "reason": verdict.reason})
