"""End-to-end: a sweep with ``search.seeds: 3`` (Ray Tune + Optuna + MLflow), one child run
per configuration carrying P(diverged) and each seed's outcome."""

from __future__ import annotations

import json
import math

import pytest
from mlflow.tracking import MlflowClient

from gradtune import note, sweep

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("cpu", [1.0, 0.25])
def test_three_seeds_per_configuration_log_p_diverged_and_each_seed(ray_session, tiny_spec, cpu):
    """lr 0.5 and 0.8 on a plain depth-10 MLP with SGD momentum 0.9 (measured: at 0.5 seed 0
    diverges at step 14, seeds 1-2 train; at 0.8 all three diverge, at steps 47, 4 and 5; at
    0.4 seed 1 diverged at step 59 of 60 on one CPU and trained on another). Parallel seeds
    asked for: with 1 CPU per seed the 2 CPUs cannot hold 2 such trials and the seeds take
    turns; with 0.25 seeds 1-2 train in actors of their own."""
    spec = tiny_spec(**{
        "resources.cpu": cpu,
        "resources.parallel_seeds": True,
        "name": "e2e-seeds",
        "search.sampler": "grid",
        "search.seeds": 3,
        "search.space": {"lr": [0.5, 0.8], "norm": "none", "clip_method": "none",
                         "init_scale": 1.0, "batch_size": 32},
        "training.optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "workload.options": {"depth": 10, "width": 32, "activation": "relu"},
        "training.steps": 60,
        "training.report_every": 5,
        "divergence.cohort_factor": None,
    })
    assert sweep._parallel_seeds(spec, ray_session.cluster_resources()) is (cpu < 1)
    result = sweep.run(spec, verbose=0)
    client = MlflowClient(result.tracking_uri)
    by_lr = {r.params["lr"]: r for r in result.trials}
    assert set(by_lr) == {0.5, 0.8} and len(result.runs) == 2  # one child run per configuration

    edge = client.get_run(result.runs[by_lr[0.5].trial_id])
    tags, metrics = edge.data.tags, edge.data.metrics
    assert tags["gradtune.outcome"] == "completed" and edge.info.status == "FINISHED"
    assert metrics["p_diverged"] == pytest.approx(1 / 3) and tags["gradtune.p_diverged"] == "0.3333"
    assert tags["gradtune.seed0"].startswith("diverged at step ")
    assert tags["gradtune.seed1"] == tags["gradtune.seed2"] == "completed"
    assert metrics["seed0_diverged"] == 1 and metrics["seed1_diverged"] == 0
    assert math.isfinite(metrics["val_loss"]) and "seed2_val_loss" in metrics
    history = client.get_metric_history(edge.info.run_id, "p_diverged")
    assert {m.value for m in history} <= {0.0, 1 / 3}

    over = client.get_run(result.runs[by_lr[0.8].trial_id])
    assert over.data.tags["gradtune.outcome"] == "diverged"
    assert over.data.metrics["p_diverged"] == 1.0
    assert over.data.tags["gradtune.divergence_reason"].startswith("every seed diverged (3 of 3)")
    assert all(over.data.tags[f"gradtune.seed{i}"].startswith("diverged") for i in range(3))

    parent = client.get_run(result.parent_run_id)
    assert "### Some seeds diverged" in parent.data.tags[note.NOTE_TAG]
    assert parent.data.metrics["trials_completed"] == 1 and parent.data.metrics["trials_diverged"] == 1

    # summary.json keeps each seed's outcome
    path = client.download_artifacts(result.parent_run_id, "summary.json")
    with open(path) as f:
        trials = json.load(f)["trials"]
    assert sorted(len(t["result"]["seed_outcomes"]) for t in trials) == [3, 3]


def test_seeds_in_actors_report_what_the_lockstep_seeds_do(ray_session):
    """seedactor.RemoteSeed trains seeds 1 and 2 in processes of their own, beside seed 0
    here: the same reports, checkpoints and resumption as the lockstep mode."""
    import tempfile

    from gradtune import checkpoint, multiseed
    from gradtune.seedactor import RemoteSeed
    from gradtune.spec import load

    spec = load(None, {"training.steps": 60, "training.report_every": 5, "training.checkpoint_every": 20,
                       "training.optimizer": {"name": "sgd", "lr": 0.4, "momentum": 0.9},
                       "workload.options": {"depth": 10, "width": 32, "activation": "relu"},
                       "search.seeds": 3, "resources.cpu": 0.5})
    config = {"norm": "none", "clip_method": "none", "init_scale": 1.0, "batch_size": 32}
    states: list[dict] = []

    def run(remote, resume=None):
        out: list[dict] = []

        def save(metrics, state):
            out.append(metrics)
            with tempfile.TemporaryDirectory() as directory:
                checkpoint.save(state, directory)
                states.append(checkpoint.load(directory))

        multiseed.train(spec, config, out.append, save=save, resume=resume, remote=remote)
        return out

    alone = run(None)
    assert run(RemoteSeed) == alone
    assert run(RemoteSeed, resume=states[-1]) == [r for r in alone if r["step"] > states[-1]["step"]]
