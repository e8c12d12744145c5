"""End-to-end: a real Ray Tune + Optuna sweep of short trials, read back from MLflow."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from gradtune import cli, note, sweep, table, tracking, trial
from gradtune.outcome import Outcome

pytestmark = pytest.mark.e2e


def children(client, result):
    exp = client.get_experiment_by_name(result.experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parent = [r for r in runs if r.info.run_id == result.parent_run_id]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    return parent[0], kids


def test_grid_sweep_logs_parent_children_params_metrics_and_outcomes(ray_session, tiny_spec):
    spec = tiny_spec(**{
        "name": "e2e-grid",
        "search.sampler": "grid",
        "search.space": {"init_scale": [1.0, 4.0], "norm": ["none", "layer"], "clip_method": "none",
                         "batch_size": 32},
        "workload.options": {"depth": 20, "width": 32, "activation": "relu"},
        "training.steps": 40,
        "training.report_every": 5,
    })
    result = sweep.run(spec)
    client = MlflowClient(result.tracking_uri)
    parent, kids = children(client, result)

    assert parent.data.tags["gradtune.role"] == "sweep"
    assert parent.data.params["training.steps"] == "40"
    assert "spec.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name.startswith("sweep e2e-grid · ")
    assert client.get_experiment(result.experiment_id).tags[note.KIND_TAG] == note.KIND_ML

    assert len(kids) == 4
    by_config = {(r.data.params["init_scale"], r.data.params["norm"]): r for r in kids}
    assert set(by_config) == {("1.0", "none"), ("4.0", "none"), ("1.0", "layer"), ("4.0", "layer")}
    for run in kids:
        tags = run.data.tags
        assert tags["gradtune.role"] == "trial" and tags["gradtune.trial_id"]
        assert tags["gradtune.node_id"] == ray_session.get_runtime_context().get_node_id()
        assert tags["gradtune.outcome"] in {"completed", "diverged", "pruned", "failed"}
        for name in ("clip_method", "init_scale", "norm", "batch_size", "lr", "optimizer"):
            assert name in run.data.params
        # the runs table tells them apart: outcome first in the name, a status of its own
        assert run.info.run_name.startswith(tags["gradtune.outcome"] + " · norm=")
        assert run.info.status == tracking.RUN_STATUS[Outcome(tags["gradtune.outcome"])]

    exploding = by_config[("4.0", "none")]
    assert exploding.data.tags["gradtune.outcome"] == "diverged"
    assert int(exploding.data.tags["gradtune.divergence_step"]) < 40
    assert exploding.data.tags["gradtune.divergence_reason"]
    assert exploding.info.status == "FAILED"
    # its last steps, not only its reports: every step of the window before the verdict
    step = int(exploding.data.tags["gradtune.divergence_step"])
    steps = [m.step for m in client.get_metric_history(exploding.info.run_id, "grad_norm")]
    assert steps == sorted(set(steps)) and steps[-1] == step
    window = min(step, trial.last_steps(spec))
    assert set(range(step - window + 1, step + 1)) <= set(steps)

    stable = by_config[("4.0", "layer")]
    assert stable.data.tags["gradtune.outcome"] == "completed"
    history = client.get_metric_history(stable.info.run_id, "grad_norm")
    assert [m.step for m in history] == list(range(5, 41, 5))
    assert all(math.isfinite(m.value) for m in history)
    for name in ("train_loss", "grad_norm_max", "clip_fraction", "val_loss", "val_accuracy"):
        assert client.get_metric_history(stable.info.run_id, name), name

    counts = result.counts()
    assert counts["diverged"] >= 1 and counts["completed"] >= 2 and counts["failed"] == 0
    assert parent.data.metrics["trials_diverged"] == counts["diverged"]
    best = result.best()
    assert best is not None and best.outcome is Outcome.COMPLETED
    assert parent.data.metrics["best_val_loss"] == best.result["val_loss"]
    described = parent.data.tags[note.NOTE_TAG]
    assert f"(#/experiments/{result.experiment_id}/runs/{result.runs[best.trial_id]})" in described
    assert "### Divergence reasons" in described and "| init_scale | " in described
    assert [t.number for t in result.trials] == list(range(4))

    # The report: on the parent run (PNGs, offline HTML, the study journal), and again from
    # the tracking store alone with `gradtune report`.
    logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.html", "optuna-study.jsonl", "traces.png", "history.png"} <= logged
    assert result.report is not None and {p.name for p in Path(result.report).iterdir()} <= logged
    again = Path(result.report).parent / "again"
    argv = ["report", "--run", result.parent_run_id, "--tracking-uri", result.tracking_uri, "--out", str(again)]
    assert cli.main(argv) == 0
    assert {p.name for p in again.iterdir()} == {p.name for p in Path(result.report).iterdir()}
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(again / "optuna-study.jsonl")))
    (summary,) = optuna.get_all_study_summaries(journal)
    assert summary.n_trials == 4


def test_a_diverging_trial_is_stopped_well_before_its_budget(ray_session, tiny_spec):
    """Clipping keeps the loss finite but in the millions: no NaN ever comes, yet the
    monitor stops the trial long before its 300 steps, and MLflow says why."""
    spec = tiny_spec(**{
        "name": "e2e-diverge",
        "search.sampler": "grid",
        "search.space": {"init_scale": [4.0], "norm": ["none"], "clip_method": "norm",
                         "clip_threshold": [0.1]},
        "workload.options": {"depth": 20, "width": 64, "activation": "relu"},
        "training.steps": 300,
        "training.report_every": 10,
    })
    result = sweep.run(spec)
    (entry,) = result.trials
    assert entry.outcome is Outcome.DIVERGED
    assert entry.result["step"] <= 60 and entry.verdict is not None
    client = MlflowClient(result.tracking_uri)
    run = client.get_run(result.runs[entry.trial_id])
    assert run.data.tags["gradtune.outcome"] == "diverged"
    assert "chance" in run.data.tags["gradtune.divergence_reason"]


def test_tpe_sweep_with_asha(ray_session, tiny_spec):
    spec = tiny_spec(**{"name": "e2e-asha", "search.trials": 6,
                                  "divergence.scheduler": "asha", "divergence.grace_reports": 1})
    result = sweep.run(spec)
    assert len(result.trials) == 6
    assert sum(result.counts().values()) == 6
    assert result.counts()["failed"] == 0



def test_a_searched_workload_option_reaches_the_model_mlflow_and_the_attention_rules(
        ray_session, tiny_spec):
    """``qk_norm`` searched like a knob: one child run per value, logged as param
    ``qk_norm``, each with the attention signals as metrics; at lr 0.3 the run without
    qk-layernorm is stopped by an attention rule, the one with it completes."""
    spec = tiny_spec(**{
        "name": "e2e-workload-option",
        "workload.name": "tiny_lm",
        "workload.options": {"depth": 1, "width": 32, "heads": 2, "context": 16, "corpus_kb": 64},
        "search.sampler": "grid",
        "search.space": {"qk_norm": [False, True], "norm": "layer", "optimizer": "adamw",
                         "lr": 0.3, "batch_size": 16, "clip_method": "none"},
        "divergence.window": 5,
        "training.steps": 40,
        "training.report_every": 5,
    })
    result = sweep.run(spec)
    client = MlflowClient(result.tracking_uri)
    _, kids = children(client, result)
    by_qk = {r.data.params["qk_norm"]: r for r in kids}
    assert set(by_qk) == {"False", "True"}
    for run in kids:
        for name in ("attn_logit_max", "attn_entropy_min"):
            assert client.get_metric_history(run.info.run_id, name), name
    plain, normed = by_qk["False"], by_qk["True"]
    assert plain.data.tags["gradtune.outcome"] == "diverged"
    assert plain.data.tags["gradtune.divergence_reason"].startswith("attention")
    assert normed.data.tags["gradtune.outcome"] == "completed"
    assert normed.data.metrics["attn_logit_max"] < 100


def test_a_rescue_in_a_real_sweep_shows_its_lineage_in_mlflow(ray_session, tiny_spec):
    """A plug-in that blows up at batch 60 (tests/rescue_plugins.py) is rolled back to its
    healthy checkpoint at step 40 twice (LR, then clipping) and trains to the end."""
    spec = tiny_spec(**{
        "name": "e2e-rescue",
        "workload.name": "tests.rescue_plugins:poisoned",
        "workload.options": {"poison_at": 60},
        "search.sampler": "grid",
        "search.space": {"lr": [0.1]},
        "training.steps": 100,
        "training.report_every": 10,
        "training.checkpoint_every": 10,
        "divergence.rescue": {"attempts": 2},
        "divergence.onset": True,
    })
    result = sweep.run(spec)
    assert result.counts()["rescued"] == 1
    client = MlflowClient(result.tracking_uri)
    parent, kids = children(client, result)
    (run,) = kids
    tags = run.data.tags
    assert tags["gradtune.outcome"] == "rescued" and run.info.status == "FINISHED"
    assert tags["gradtune.rescue_lineage"] == "60->40 lr x0.5; 60->40 clip norm@1.17"
    assert (tags["gradtune.rescued_from_step"], tags["gradtune.rescued_to_step"]) == ("60", "40")
    assert tags["gradtune.onset_layer"] == "branches.hot.weight"
    assert tags["gradtune.checkpoint_step"] == "40" and tags["gradtune.onset_batches"] == "41-60"
    assert run.data.metrics["rescue_attempts"] == 2 and run.data.metrics["steps_computed"] == 140
    assert parent.data.metrics["trials_rescued"] == 1
    paths = {a.path for a in client.list_artifacts(run.info.run_id, "onset")}
    assert "onset/verdict_1_step_60.json" in paths
    # the report: from the driver's memory at the sweep's end, and again from MLflow alone
    assert result.report is not None and (Path(result.report) / "onset.png").is_file()
    page = (Path(result.report) / "report.html").read_text()
    assert "Where divergences started (the first verdict&#x27;s onset layer):" in page
    (row,) = table.from_mlflow(result.tracking_uri, result.parent_run_id).rows
    assert row.onset is not None and (row.onset["onset_layer"], row.onset["verdict"]) == ("branches.hot.weight", 1)
