"""Rescue: the ladder's decisions (pure), the rollback's exactness, a rescue of a trial that
blows up at a known batch (tests/rescue_plugins.py), and the lineage as MLflow shows it."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from mlflow.tracking import MlflowClient

from gradtune import checkpoint, outcome, rescue, rollback, tracking, trial
from gradtune.outcome import Ledger, Outcome
from gradtune.spec import RescueSpec, load

POISONED = "tests.rescue_plugins:poisoned"


def spec(rescue_cfg=None, **overrides):
    base = {"workload.name": POISONED, "workload.options": {"poison_at": 60}, "search.space": {},
            "training.steps": 120, "training.report_every": 10, "training.checkpoint_every": 10,
            "training.device": "cpu", "training.optimizer": {"name": "sgd", "lr": 0.1},
            "divergence.onset": True}
    if rescue_cfg is not None:
        base["divergence.rescue"] = rescue_cfg
    return load(None, {**base, **overrides})


def run(s, **kwargs):
    reports = []
    last = trial.train(s, {}, reports.append, **kwargs)
    return last, reports


# ---------------------------------------------------------------- the ladder, pure

def test_the_ladder_is_lr_then_clip_then_skip_and_repeats_its_first_rung():
    cfg = RescueSpec(attempts=5, skip_batches=8)
    assert rescue.rungs(cfg) == ["lr", "clip", "skip"]
    assert [rescue.rung(k, cfg) for k in range(1, 6)] == ["lr", "clip", "skip", "lr", "lr"]
    only = RescueSpec(attempts=2, lr_factor=None, clip=None, skip_batches=4)
    assert [rescue.rung(k, only) for k in (1, 2)] == ["skip", "skip"]


def test_remedies_accumulate():
    cfg = RescueSpec(attempts=3, lr_factor=0.5, clip={"method": "norm", "threshold": 2.0}, skip_batches=8)
    done, line = rescue.next_remedies(rescue.Remedies(), "lr", cfg, ("none", None), [])
    assert (done.lr_scale, line) == (0.5, "lr x0.5")
    done, line = rescue.next_remedies(done, "clip", cfg, ("none", None), [])
    assert done.clip == ("norm", 2.0) and done.lr_scale == 0.5 and line == "clip norm@2"
    done, line = rescue.next_remedies(done, "skip", cfg, ("norm", 2.0), [])
    assert done.skipped == 8 and line == "skip 8 batches"
    assert rescue.Remedies.from_json(done.to_json()) == done


@pytest.mark.parametrize("own,threshold,norms,expected", [
    (("none", None), 2.0, [], 2.0),  # added
    (("norm", 5.0), 2.0, [], 2.0),  # tightened to the rescue's
    (("norm", 1.0), 2.0, [], 0.5),  # already tighter: halved
    (("value", 0.1), 2.0, [], 2.0),  # another method: replaced
    (("none", None), None, [1.0, 3.0, math.nan, 2.0], 4.0),  # auto: 2 x median of the finite
    (("none", None), None, [math.inf], 1.0),  # auto without a finite norm
])
def test_the_clip_threshold(own, threshold, norms, expected):
    cfg = SimpleNamespace(method="norm", threshold=threshold)
    assert rescue.clip_threshold(cfg, own[0], own[1], norms) == expected


def test_skipping_covers_the_batches_before_the_verdict_and_never_before_the_checkpoint():
    assert rescue.skip_at(120, 80, 10) == (111, 10)
    assert rescue.skip_at(90, 80, 50) == (81, 10)
    assert rescue.extra_steps_bound(2, 20, 10) == 58
    assert rescue.lineage_line([{"from_step": 120, "to_step": 80, "remedy": "lr x0.5"}]) == "120->80 lr x0.5"
    assert rescue.parse("not json") == [] and rescue.parse(None) == []


def test_the_spec_validates_a_rescue():
    assert not spec().divergence.rescue.enabled  # off by default
    with pytest.raises(Exception, match="at least one remedy"):
        spec({"attempts": 1, "lr_factor": None, "clip": None})
    with pytest.raises(Exception, match="checkpoint_every"):
        spec({"attempts": 1}, **{"training.checkpoint_every": 0})
    with pytest.raises(Exception, match="lr_factor"):
        spec({"attempts": 1, "lr_factor": 2.0})
    with pytest.raises(Exception, match="unknown key"):
        spec({"attempts": 1, "typo": 1})
    with pytest.raises(Exception, match="one seed per configuration; search.seeds is 3"):
        spec({"attempts": 1}, **{"search.seeds": 3})


def test_outcomes_of_a_rescue():
    rescued = {"final": 1, outcome.RESCUE_ATTEMPTS: 2}
    assert outcome.outcome_of(rescued) is Outcome.RESCUED
    assert outcome.outcome_of({**rescued, outcome.DIVERGED: 1}) is Outcome.DIVERGED  # out of attempts
    assert outcome.outcome_of({"final": 1, outcome.RESCUE_ATTEMPTS: 0}) is Outcome.COMPLETED
    assert outcome.outcome_of({outcome.RESCUE_ATTEMPTS: 1}) is Outcome.PRUNED
    assert Outcome.RESCUED in outcome.UNSTABLE and Outcome.COMPLETED not in outcome.UNSTABLE


# ---------------------------------------------------------------- the rollback

def _parts(s):
    """A trial's stateful parts as the loop has them, after ``s.training.steps`` steps."""
    captured = {}

    def save(metrics, state):
        captured[state["step"]] = rollback.to_host(state)

    trial.train(s, {}, lambda m: None, save=save)
    return captured


def test_a_host_copy_is_independent_and_comes_back_exactly():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = checkpoint.capture(7, {"model": model, "optimizer": opt})
    held = rollback.to_host(state)
    assert rollback.host_bytes(held) >= 2 * (6 + 2) * 4  # weights and momentum
    before = {k: v.clone() for k, v in model.state_dict().items()}
    momentum = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    for _ in range(3):  # move everything on
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
    checkpoint.set_rng_state(state["rng"])
    torch.manual_seed(5)
    assert checkpoint.restore(rollback.back(held), {"model": model, "optimizer": opt}) == 7
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert all(torch.equal(opt.state[p]["momentum_buffer"], m) for p, m in zip(model.parameters(), momentum))
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), expected_draw)


def test_rollback_restores_weights_optimizer_rng_and_data_position_exactly():
    """Roll a trial back from its verdict to its healthy checkpoint, with no remedy that
    changes anything (lr factor ~1): the steps after the checkpoint come again bit for bit,
    so the state after the rollback was the checkpoint's, every part of it."""
    s = spec({"attempts": 1, "lr_factor": 1 - 1e-12, "clip": None})
    last, reports = run(s)
    plain_last, plain = run(spec())
    assert last[outcome.DIVERGED] == 1 and plain_last[outcome.DIVERGED] == 1
    lineage = json.loads(last[outcome.RESCUES])
    assert lineage[0]["from_step"] == 60 and lineage[0]["to_step"] == 40
    # Reports 10..50 once, then 50 again (after the rollback to 40), then the verdict.
    assert [r["step"] for r in reports] == [10, 20, 30, 40, 50, 50, 60]
    keys = ("train_loss", "grad_norm", "val_loss", "update_ratio")
    assert all(reports[4][k] == reports[5][k] for k in keys)  # step 50, before and after
    assert last["divergence_step"] == plain_last["divergence_step"] == 60
    assert last[outcome.STEPS_COMPUTED] == 80 and last[outcome.RESCUE_ATTEMPTS] == 1


def test_a_rescue_turns_a_blow_up_into_a_trained_run_with_its_lineage():
    last, reports = run(spec({"attempts": 2}))
    assert outcome.outcome_of(last) is Outcome.RESCUED
    assert last["step"] == 120 and last["final"] == 1 and math.isfinite(last["val_loss"])
    assert last["train_loss"] < math.log(3)  # below chance: it trained
    lineage = json.loads(last[outcome.RESCUES])
    assert [(r["from_step"], r["to_step"], r["remedy"]) for r in lineage] == [
        (60, 40, "lr x0.5"), (60, 40, "clip norm@1.17")]
    assert all(r["onset_layer"] == "branches.hot.weight" for r in lineage)
    assert last[outcome.STEPS_COMPUTED] == 120 + 2 * 20  # the budget, plus the rolled-back steps
    assert last["lr"] == pytest.approx(0.05)  # the lowered LR stays
    replay = json.loads(last[outcome.REPLAY])
    assert replay == {"seed": 0, "device": "cpu", "divergence_step": 60, "checkpoint_step": 40,
                      "onset_batches": [41, 60], "reason": lineage[0]["reason"]}
    onsets = [r for r in reports if outcome.ONSET in r]
    assert len(onsets) == 2 and all(r[outcome.DIVERGED] == 0 for r in reports)


def test_a_rescue_out_of_attempts_ends_diverged_and_skipping_rescues_a_poison_batch():
    last, _ = run(spec({"attempts": 1}))
    assert outcome.outcome_of(last) is Outcome.DIVERGED and last[outcome.RESCUE_ATTEMPTS] == 1
    skipped, _ = run(spec({"attempts": 2, "clip": None, "skip_batches": 5}))
    assert outcome.outcome_of(skipped) is Outcome.RESCUED
    assert json.loads(skipped[outcome.RESCUES])[1]["remedy"] == "skip 5 batches"


def test_no_healthy_checkpoint_no_rescue():
    last, _ = run(spec({"attempts": 2}, **{"workload.options": {"poison_at": 15}}))
    assert outcome.outcome_of(last) is Outcome.DIVERGED and last[outcome.RESCUE_ATTEMPTS] == 0


def test_a_rescued_trial_resumed_from_its_tune_checkpoint_is_the_uninterrupted_one(tmp_path):
    s = spec({"attempts": 2})
    full, saved = [], []  # saved: (index of its report in full, path)

    def save(metrics, state):
        full.append(metrics)
        path = tmp_path / str(len(full))
        path.mkdir()
        checkpoint.save(state, path)
        saved.append((len(full) - 1, path))

    trial.train(s, {}, full.append, save=save)
    index, path = saved[-1]  # after both rollbacks (the second one went back to step 40)
    assert full[index]["step"] > 60 and full[index][outcome.RESCUE_ATTEMPTS] == 2
    resumed = []
    trial.train(s, {}, resumed.append, save=lambda m, st: resumed.append(m), resume=checkpoint.load(path))
    assert resumed == full[index + 1:]  # every report after it, bit for bit, remedies kept


# ---------------------------------------------------------------- MLflow, without Ray

@pytest.mark.slow  # an MLflow store, real training or every figure: seconds
def test_the_lineage_as_mlflow_shows_it(tmp_path):
    s = spec({"attempts": 2})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ledger = Ledger()
    tracker = tracking.MLflowTracking(s, uri, "exp", ledger, spool=str(tmp_path / "spool.jsonl"), drain_s=30)
    tracker.start()
    t = SimpleNamespace(trial_id="t1", config={}, last_result=None, num_failures=0)
    tracker.on_trial_start(0, [], t)
    t.last_result = trial.train(s, {}, lambda m: tracker.on_trial_result(0, [], t, dict(m)))
    tracker.on_trial_complete(0, [], t)
    assert tracker.finish() == 0
    client = MlflowClient(uri)
    run_ = client.get_run(tracker.run_ids()["t1"])
    tags = run_.data.tags
    assert tags["gradtune.outcome"] == "rescued" and run_.info.status == "FINISHED"
    assert run_.info.run_name.startswith("rescued · ")
    assert (tags["gradtune.rescued_from_step"], tags["gradtune.rescued_to_step"]) == ("60", "40")
    assert tags["gradtune.rescue_attempts"] == "2"
    assert tags["gradtune.rescue_remedy"] == "lr x0.5 + clip norm@1.17"
    assert tags["gradtune.rescue_lineage"] == "60->40 lr x0.5; 60->40 clip norm@1.17"
    assert tags["gradtune.onset_layer"] == "branches.hot.weight"
    assert (tags["gradtune.replay_step"], tags["gradtune.checkpoint_step"]) == ("60", "40")
    assert tags["gradtune.onset_batches"] == "41-60" and tags["gradtune.replay_seed"] == "0"
    attempts = client.get_metric_history(run_.info.run_id, "rescue_attempts")
    assert {m.value for m in attempts} == {0.0, 1.0, 2.0}
    # Step 50 was logged by each attempt: the rescued steps are logged again.
    assert len([m for m in client.get_metric_history(run_.info.run_id, "train_loss") if m.step == 50]) == 3
    names = {a.path for a in client.list_artifacts(run_.info.run_id, "onset")}
    assert names == {f"onset/verdict_{n}_step_60.{ext}" for n in (1, 2) for ext in ("json", "csv")}
    parent = client.get_run(tracker.parent_id)
    assert parent.data.metrics["trials_rescued"] == 1.0
    assert "### Rescued trials" in parent.data.tags["mlflow.note.content"]
