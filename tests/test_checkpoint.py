"""Trial checkpoints without Ray: each piece of state round-trips, and a trial restored from
a checkpoint ends exactly (bit for bit, on CPU) as the uninterrupted trial does."""

from __future__ import annotations

import functools
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from gradtune import checkpoint, clipping, precision, signals, trial, workloads
from gradtune.precision import Precision
from gradtune.spec import DivergenceSpec, load
from gradtune.workloads import base
from gradtune.workloads.rnn_adding import fresh_batches

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


def spec(**overrides):
    base_ = {"training.steps": 30, "training.report_every": 5, "training.checkpoint_every": 10,
             "workload.options": {"depth": 6, "width": 32, "activation": "relu"}}
    return load(None, {**base_, **overrides})


# ---------------------------------------------------------------- the pieces, one by one

def test_random_generators_round_trip():
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    state = checkpoint.rng_state()
    first = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(2), random.seed(2), np.random.seed(2)
    checkpoint.set_rng_state(state)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]


def grads_of(values):
    params = [torch.nn.Parameter(torch.zeros(3))]
    params[0].grad = torch.tensor(values, dtype=torch.float32)
    return params


def norms(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = (torch.rand(n, 3, generator=gen) * torch.logspace(0, 2, n).unsqueeze(1)).tolist()
    out[3] = [math.nan, 1.0, 1.0]  # a non-finite norm stays out of the statistics
    return out


@pytest.mark.parametrize("method,threshold,split", [
    ("autoclip", 50.0, 10), ("zclip", 2.0, 10), ("zclip", 2.0, 30), ("zclip", 2.0, 0),
    ("autoclip", 90.0, 0),
])
def test_stateful_clippers_round_trip(method, threshold, split):
    """AutoClip's history and ZClip's warm-up buffer and EMA, in warm-up (10) and after (30)."""
    stream = norms(50)
    live = clipping.make(method, threshold)
    for values in stream[:split]:
        live(grads_of(values))
    copy = clipping.make(method, threshold)
    copy.load_state_dict(live.state_dict())  # type: ignore[attr-defined]
    for values in stream[split:]:
        a, b = grads_of(values), grads_of(values)
        (na, ca), (nb, cb) = live(a), copy(b)
        assert torch.equal(na, nb) or (na.isnan() and nb.isnan())
        assert bool(ca) == bool(cb)
        assert torch.equal(a[0].grad, b[0].grad) or values == stream[3]


def test_stateless_clippers_have_no_state():
    for method in ("none", "norm", "value", "agc"):
        assert not isinstance(clipping.make(method, 1.0), checkpoint.Stateful), method
    for method in ("autoclip", "zclip"):
        assert isinstance(clipping.make(method, 1.0), checkpoint.Stateful), method


def test_monitor_round_trips_deques_best_and_early_norms():
    cfg = DivergenceSpec(window=5, grace_steps=3)
    steps = [(2.3 - 0.01 * i, 1.0 + 0.1 * i, math.nan if i % 4 else 1e-3) for i in range(12)]
    steps += [(2.3 * 1.5**i, 1.0 * 3**i, 1e-2) for i in range(30)]  # blows up later
    live = signals.Monitor(cfg, reference_loss=2.3, budget=100)
    for i, (loss, norm, ratio) in enumerate(steps[:12], start=1):
        assert live.update(i, loss, norm, ratio) is None
    copy = signals.Monitor(cfg, reference_loss=2.3, budget=100)
    copy.load_state_dict(live.state_dict())
    assert copy.state_dict() == live.state_dict() or math.isnan(live.state_dict()["ratios"][0])
    for i, (loss, norm, ratio) in enumerate(steps[12:], start=13):
        a, b = live.update(i, loss, norm, ratio), copy.update(i, loss, norm, ratio)
        assert a == b
        if a is not None:
            break
    assert a is not None  # the rules did fire, at the same step, for the same reason


def test_judge_keeps_its_fp16_overflow_count():
    monitor = signals.Monitor(DivergenceSpec(), reference_loss=2.3, budget=100)
    judge = trial.Judge(monitor, Precision("fp16", CPU))
    for step in range(1, trial.MAX_OVERFLOWS):
        assert judge(step, 2.3, math.inf, math.nan) is None
    fresh = trial.Judge(signals.Monitor(DivergenceSpec(), reference_loss=2.3, budget=100),
                        Precision("fp16", CPU))
    fresh.load_state_dict(judge.state_dict())
    assert fresh(trial.MAX_OVERFLOWS, 2.3, math.inf, math.nan) is not None  # one more is too many


def test_window_round_trips_and_resets():
    window = trial.Window()
    window.add(1.0, math.nan, True)
    copy = trial.Window()
    copy.load_state_dict(window.state_dict())
    assert copy.steps == 1 and math.isnan(copy.norm_max) and copy.clipped == 1
    copy.reset()
    assert copy.state_dict() == trial.Window().state_dict()


def take(stream, n):
    return [next(stream) for _ in range(n)]


def same_batches(a, b):
    return all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


@pytest.mark.parametrize("make", [
    lambda: base.shuffled_batches(torch.arange(50.0).unsqueeze(1), torch.arange(50), 8, 3),
    lambda: base.MappedBatches(base.shuffled_batches(torch.arange(50.0).unsqueeze(1), torch.arange(50), 8, 3),
                               lambda b: (b[0] * 2, b[1])),
    lambda: fresh_batches(4, 6, 3, CPU),
], ids=["shuffled", "mapped", "generated"])
@pytest.mark.parametrize("split", [0, 3, 6, 7, 13])  # 6 batches an epoch: boundaries included
def test_restorable_batch_streams_go_on_with_the_same_batches(make, split):
    live = make()
    take(live, split)
    state = live.state_dict()
    expected = take(live, 20)
    fresh = make()
    take(fresh, 2)  # wherever it is, loading puts it at the checkpoint's position
    fresh.load_state_dict(state)
    assert same_batches(take(fresh, 20), expected)


def test_shuffled_batches_are_those_of_the_old_generator():
    """The restorable class gives exactly the batches the generator function it replaced gave."""
    x, y = torch.arange(50.0).unsqueeze(1), torch.arange(50)

    def old(batch_size, seed):
        gen = torch.Generator().manual_seed(seed)
        while True:
            order = torch.randperm(50, generator=gen)
            for start in range(0, 50 - batch_size + 1, batch_size):
                idx = order[start : start + batch_size]
                yield x[idx], y[idx]

    assert same_batches(take(base.shuffled_batches(x, y, 8, 5), 30), take(old(8, 5), 30))


def test_position_fast_forwards_a_stream_without_state():
    def plain(seed):
        gen = torch.Generator().manual_seed(seed)
        while True:
            yield torch.rand(2, generator=gen), torch.zeros(2)

    live = checkpoint.Position(plain(0))
    take(live, 7)
    state = live.state_dict()
    assert state == {"drawn": 7, "source": None}
    expected = take(live, 5)
    fresh = checkpoint.Position(plain(0))
    fresh.load_state_dict(state)
    assert fresh.drawn == 7 and same_batches(take(fresh, 5), expected)
    with pytest.raises(ValueError, match="cannot rewind"):
        live.load_state_dict(state)


@pytest.mark.slow
def test_save_and_load_round_trip_through_disk(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    monitor = signals.Monitor(DivergenceSpec(), reference_loss=2.3, budget=10)
    monitor.update(1, 2.0, math.inf, math.nan)
    monitor.update(2, 2.0, 1.0, math.nan)
    parts = {"model": model, "optimizer": optimizer, "monitor": monitor, "val": {"val_loss": math.nan},
             "nothing": None}
    checkpoint.save(checkpoint.capture(7, parts, healthy_step=3), tmp_path)
    state = checkpoint.load(tmp_path)
    assert state["step"] == 7 and state["healthy_step"] == 3 and set(state["parts"]) == {
        "model", "optimizer", "monitor", "val"}
    other = torch.nn.Linear(3, 2)
    other_opt = torch.optim.Adam(other.parameters(), lr=0.1)
    other_monitor = signals.Monitor(DivergenceSpec(), reference_loss=2.3, budget=10)
    val: dict[str, float] = {}
    step = checkpoint.restore(state, {"model": other, "optimizer": other_opt, "monitor": other_monitor,
                                      "val": val, "nothing": None})
    assert step == 7 and math.isnan(val["val_loss"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], other_opt.state_dict()["state"][0]["exp_avg"])
    assert other_monitor.losses == monitor.losses


@pytest.mark.slow  # an MLflow store, real training or every figure: seconds
def test_restore_refuses_a_checkpoint_without_a_part():
    state = checkpoint.capture(3, {"model": torch.nn.Linear(2, 2)})
    with pytest.raises(ValueError, match="no state for 'optimizer'"):
        checkpoint.restore(state, {"model": torch.nn.Linear(2, 2),
                                   "optimizer": torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1)})
    with pytest.raises(ValueError, match="version"):
        checkpoint.restore({**state, "version": 0}, {})


# ---------------------------------------------------------------- restore == uninterrupted

def run(s, config, directory: Path, resume=None, monitor=None):
    """Train, writing each checkpoint into ``directory/<step>``; returns the reports, the
    trial's final weights and the steps checkpointed."""
    reports: list[dict] = []
    taken: list[int] = []
    built = []
    original = workloads.build

    def save(metrics, state):
        reports.append(metrics)
        taken.append(state["step"])
        (directory / str(state["step"])).mkdir(parents=True)
        checkpoint.save(state, directory / str(state["step"]))

    def build(*args, **kwargs):  # keep the workload, to read the final weights
        built.append(original(*args, **kwargs))
        return built[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trial.workloads, "build", build)
        trial.train(s, config, reports.append, monitor=monitor, save=save, resume=resume)
    weights = {k: v.clone() for k, v in built[0].model.state_dict().items()}
    return reports, weights, taken


def assert_restore_is_exact(s, config, tmp_path, at=None):
    full, weights, taken = run(s, config, tmp_path / "full")
    assert taken, "no checkpoint was taken"
    at = taken[len(taken) // 2] if at is None else at
    resumed, resumed_weights, _ = run(s, config, tmp_path / "resumed",
                                      resume=checkpoint.load(tmp_path / "full" / str(at)))
    assert [r["step"] for r in resumed] == [r["step"] for r in full if r["step"] > at]  # no repeats
    assert resumed == [r for r in full if r["step"] > at]  # every metric, bit for bit
    assert resumed_weights.keys() == weights.keys()
    for name in weights:
        assert torch.equal(resumed_weights[name], weights[name]), name
    return full


CASES = {
    "sgd-batchnorm": {"norm": "batch", "optimizer": "sgd"},
    "adam-autoclip-layer": {"norm": "layer", "optimizer": "adam", "lr": 1e-3, "clip_method": "autoclip",
                            "clip_threshold": 50.0},
    "adamw-zclip-warmup": {"optimizer": "adamw", "lr": 1e-3, "clip_method": "zclip", "clip_threshold": 1.5,
                           "warmup_steps": 20},
    "sgd-norm-clip": {"clip_method": "norm", "clip_threshold": 0.5},
    "sgd-value-clip": {"clip_method": "value", "clip_threshold": 0.01},
    "sgd-agc": {"clip_method": "agc", "clip_threshold": 0.01, "norm": "rms"},
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_restored_trial_ends_as_the_uninterrupted_one(case, tmp_path):
    s = spec(**{"training.steps": 40})
    assert_restore_is_exact(s, CASES[case], tmp_path, at=20)
    assert_restore_is_exact(s, CASES[case], tmp_path / "late", at=30)  # zclip: after its warm-up


@pytest.mark.slow  # an MLflow store, real training or every figure: seconds
def test_fp16_scaler_state_is_restored(tmp_path, monkeypatch):
    """A scaler that doubles its scale every 3 steps overflows every few steps (a skipped
    step, then half the scale): the restored trial must skip the same steps."""
    monkeypatch.setattr(precision.torch.amp, "GradScaler",
                        functools.partial(torch.amp.GradScaler, growth_interval=3))
    s = spec(**{"training.precision": "fp16"})
    full = assert_restore_is_exact(s, {"norm": "layer", "clip_method": "norm", "clip_threshold": 1.0},
                                   tmp_path)
    assert full[-1]["diverged"] == 0


def test_a_verdict_after_the_restore_is_the_uninterrupted_trials(tmp_path):
    """The monitor's windows and early baseline come back too: a trial diverging by a
    windowed rule (no NaN: clipping keeps the loss finite) stops at the same step, same reason."""
    s = spec(**{"training.steps": 300, "training.report_every": 10, "training.checkpoint_every": 10,
                "workload.options": {"depth": 20, "width": 64, "activation": "relu"}})
    config = {"init_scale": 4.0, "norm": "none", "clip_method": "norm", "clip_threshold": 0.1}
    full = assert_restore_is_exact(s, config, tmp_path, at=10)
    # The verdict's window (steps 1-20) straddles the checkpoint: a monitor restarted at the
    # checkpoint would need 20 steps of its own and stop the trial at step 30 instead.
    assert full[-1]["diverged"] == 1 and full[-1]["divergence_step"] == 20
    assert "chance" in full[-1]["divergence_reason"]


def test_latest_evaluation_is_restored_when_eval_is_rarer_than_reports(tmp_path):
    s = spec(**{"training.eval_every": 15, "training.report_every": 5, "training.checkpoint_every": 10,
                "training.steps": 40})
    assert_restore_is_exact(s, {"norm": "layer"}, tmp_path, at=20)  # evaluated at 15, reported at 25


@pytest.mark.parametrize("name,options", [
    ("rnn_adding", {"hidden": 8, "seq_len": 6}),
    ("transformer", {"layers": 1, "d_model": 8, "heads": 2, "seq_len": 5, "vocab": 6}),
    ("cnn", {"dataset": "fake", "width": 4, "depth": 1, "train_size": 64, "val_size": 32}),
    ("resmlp", {"blocks": 2, "width": 16}),
])
@pytest.mark.slow
def test_every_built_in_workload_restores_exactly(name, options, tmp_path):
    s = spec(**{"workload.name": name, "workload.options": options, "training.steps": 20})
    assert_restore_is_exact(s, {"norm": "layer", "optimizer": "adam", "lr": 1e-3}, tmp_path, at=10)


def test_a_plug_in_without_state_is_fast_forwarded_exactly(tmp_path, monkeypatch):
    """The example plug-in returns a Dataset: gradtune batches it with a seeded DataLoader,
    which has no state_dict, so the restored trial redraws the batches up to the checkpoint."""
    monkeypatch.chdir(ROOT)
    s = load(ROOT / "sweeps" / "plugin_example.yaml",
             {"training.steps": 30, "training.device": "cpu", "training.report_every": 5,
              "training.checkpoint_every": 10})
    assert_restore_is_exact(s, {"norm": "layer", "init_scale": 1.0}, tmp_path, at=20)


def dropout_workload(seed):
    """A plug-in whose model draws from torch's global generator (dropout) while training."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 4, generator=gen)
    data = torch.utils.data.TensorDataset(x, (x.sum(1) > 0).long())
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.5), torch.nn.ReLU(),
                                torch.nn.Linear(16, 2))
    return model, data, data, torch.nn.functional.cross_entropy


def test_global_random_state_is_restored(tmp_path):
    s = spec(**{"workload.name": f"{__name__}:dropout_workload", "workload.options": {}})
    assert_restore_is_exact(s, {"init_scale": 1.0}, tmp_path, at=20)


# ---------------------------------------------------------------- when checkpoints are taken

def test_reports_say_the_last_healthy_checkpoint():
    s = spec(**{"training.steps": 60, "training.checkpoint_every": 10, "divergence.window": 20})
    reports: list[dict] = []
    taken: list[int] = []
    trial.train(s, {"norm": "layer"}, reports.append,
                save=lambda m, st: (reports.append(m), taken.append(st["step"])))
    assert taken == [10, 20, 30, 40, 50]  # not at the last step: the trial ends there
    healthy = {r["step"]: r["healthy_checkpoint_step"] for r in reports}
    assert healthy[25] == 0 and healthy[30] == 10 and healthy[35] == 10 and healthy[60] == 40


@pytest.mark.parametrize("every", [0, None])
def test_checkpoints_off(every):
    s = spec(**{"training.checkpoint_every": every})
    reports: list[dict] = []
    trial.train(s, {}, reports.append, save=lambda m, st: pytest.fail("no checkpoint wanted"))
    assert [r["step"] for r in reports] == [5, 10, 15, 20, 25, 30]


class NeverStops:
    def update(self, step, loss, grad_norm, ratio, extra=None):
        return None


def test_no_checkpoint_from_a_non_finite_step():
    """A net that goes to NaN (with a monitor that never stops it): checkpoints stop at the
    first non-finite step; a healthy mark never moves onto one."""
    s = spec(**{"training.steps": 60, "workload.options": {"depth": 20, "width": 64, "activation": "relu"}})
    reports: list[dict] = []
    taken: list[int] = []
    trial.train(s, {"norm": "none", "init_scale": 4.0, "lr": 0.5}, reports.append, monitor=NeverStops(),
                save=lambda m, st: (reports.append(m), taken.append(st["step"])))
    bad = [r["step"] for r in reports if not (math.isfinite(r["grad_norm"]) and math.isfinite(r["train_loss"]))]
    assert bad, "the configuration was meant to blow up"
    assert all(step < bad[0] for step in taken)


def test_no_checkpoint_with_a_verdict():
    s = spec(**{"training.steps": 300, "training.report_every": 10, "training.checkpoint_every": 10,
                "workload.options": {"depth": 20, "width": 64, "activation": "relu"}})
    reports: list[dict] = []
    taken: list[int] = []
    last = trial.train(s, {"norm": "none", "init_scale": 4.0}, reports.append,
                       save=lambda m, st: (reports.append(m), taken.append(st["step"])))
    assert last["diverged"] == 1 and all(step < last["step"] for step in taken)
