"""End-to-end: a sweep whose trials each run as 2 data-parallel ranks (gloo on loopback),
inside Ray Tune, one MLflow child run per configuration."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

from gradtune import sweep

pytestmark = pytest.mark.e2e


def test_two_rank_trials_complete_or_diverge_with_one_child_run_each(ray_session, tiny_spec):
    """lr 0.05 trains, lr 0.5 diverges after a dozen steps (SGD momentum 0.9, plain depth-10
    MLP). Each trial takes both CPUs (2 ranks x 1 CPU), so they run one after the other.
    Rank 0 checks at its last report that the other rank stopped at the same step with the
    same verdict (``rankactor.agree``): a disagreement would make the trial ``failed``."""
    spec = tiny_spec(**{
        "name": "e2e-ranks",
        "resources.workers": 2,
        "search.sampler": "grid",
        "search.space": {"lr": [0.05, 0.5], "norm": "none", "clip_method": "none",
                         "init_scale": 1.0, "batch_size": 32},
        "training.optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "workload.options": {"depth": 10, "width": 32, "activation": "relu"},
        "training.steps": 40,
        "training.checkpoint_every": 20,
        "divergence.cohort_factor": None,
    })
    assert sweep._workers(spec, ray_session.cluster_resources(), 2) == 1
    result = sweep.run(spec, verbose=0)
    client = MlflowClient(result.tracking_uri)
    by_lr = {r.params["lr"]: r for r in result.trials}
    assert set(by_lr) == {0.05, 0.5} and len(result.runs) == 2  # one child run per configuration
    assert result.workers == 1

    good = client.get_run(result.runs[by_lr[0.05].trial_id])
    assert good.data.tags["gradtune.outcome"] == "completed" and good.info.status == "FINISHED"
    assert math.isfinite(good.data.metrics["val_loss"])
    assert [m.step for m in client.get_metric_history(good.info.run_id, "train_loss")][-1] == 40

    bad = client.get_run(result.runs[by_lr[0.5].trial_id])
    tags = bad.data.tags
    assert tags["gradtune.outcome"] == "diverged" and bad.info.status == "FAILED"
    assert 5 < int(tags["gradtune.divergence_step"]) < 40
    assert tags["gradtune.divergence_reason"]


def test_a_rank_that_raises_fails_the_attempt_and_the_retry_resumes_every_rank(ray_session, tiny_spec, tmp_path):
    """Rank 1 raises at batch 13 of the first attempt: the watcher kills the rank actors,
    rank 0 leaves its collective and raises rank 1's error (no hang), Tune retries the
    trial from its checkpoint at step 10, and both ranks go on from there to the end."""
    spec = tiny_spec(**{
        "name": "e2e-rank-raises",
        "resources.workers": 2,
        "resources.max_failures": 1,
        "workload.name": "tests.retry_plugins:raises_on_rank",
        "workload.options": {"dir": str(tmp_path), "rank": 1, "raise_at": 13},
        "search.sampler": "grid",
        "search.space": {"norm": "none", "clip_method": "none", "init_scale": 1.0, "batch_size": 32},
        "training.steps": 30,
        "training.checkpoint_every": 10,
    })
    result = sweep.run(spec, verbose=0)
    [record] = result.trials
    assert record.outcome == "completed"
    run = MlflowClient(result.tracking_uri).get_run(result.runs[record.trial_id])
    assert run.data.tags["gradtune.failures"] == "1"
    assert (tmp_path / "raised").exists()
    # 2 ranks x 2 attempts built the workload; the second attempt resumed after step 10
    assert len((tmp_path / "attempts").read_text().split()) == 4
    assert int((tmp_path / "forwards-3").read_text()) == 20 and int((tmp_path / "forwards-4").read_text()) == 20
