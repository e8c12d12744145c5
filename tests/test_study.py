"""The sweep as an Optuna study, read as the searcher's study was told."""

from __future__ import annotations

import ast
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from gradtune import study
from tests import _tables

ROOT = Path(__file__).resolve().parent.parent


def test_the_constraint_is_the_searchers():
    tree = ast.parse((ROOT / "gradtune" / "searcher.py").read_text())
    names = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
             if isinstance(t, ast.Name) and isinstance(n.value, ast.Constant)}
    assert names["CONSTRAINT"] == study.CONSTRAINT


def test_distributions_come_from_the_space():
    dists = study.distributions(_tables.table([]))
    assert dists["init_scale"] == FloatDistribution(0.25, 4.0, log=True)
    assert dists["clip_threshold"] == FloatDistribution(0.01, 10.0, log=True)
    assert dists["norm"] == CategoricalDistribution(["none", "layer"])
    assert dists["batch_size"] == CategoricalDistribution([16, 32])
    assert "lr" not in dists  # fixed, not searched


def test_each_outcome_has_a_faithful_state_constraint_and_attrs():
    rows = [_tables.row(0, "completed", 2.0), _tables.row(1, "completed", 1.0, clip_method="none"),
            _tables.row(2, "diverged", None), _tables.row(3, "pruned", 3.0), _tables.row(4, "failed", None),
            _tables.row(5, "rescued", 1.5)]
    s = study.to_study(_tables.table(rows))
    t = s.trials
    assert [x.state for x in t] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.COMPLETE,
                                    TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE]
    # rescued: unstable as proposed, told as the searcher tells it (infeasible, the worst value)
    assert [x.constraints for x in t] == [{"diverged": -1.0}, {"diverged": -1.0}, {"diverged": 1.0},
                                          {"diverged": -1.0}, {}, {"diverged": 1.0}]
    assert t[5].value == 2.0 and t[5].user_attrs["objective"] == 1.5
    assert t[2].value == 2.0  # the worst completed objective, as the searcher tells it
    assert t[2].user_attrs["objective"] is None
    assert (t[2].user_attrs["outcome"], t[2].user_attrs["divergence_step"]) == ("diverged", 15)
    assert t[2].user_attrs["reason"].startswith("grad norm")
    assert t[4].user_attrs["reason"] == "RuntimeError: boom"
    assert "clip_threshold" not in t[1].params and t[0].params["clip_threshold"] == 1.0
    assert s.best_trial.number == 1 and s.direction == optuna.study.StudyDirection.MINIMIZE


def test_a_diverged_trial_with_nothing_finite_fails_and_max_mode_maximizes():
    s = study.to_study(_tables.table([_tables.row(0, "diverged", None)], mode="max"))
    assert s.trials[0].state is TrialState.FAIL and s.direction == optuna.study.StudyDirection.MAXIMIZE


def test_divergence_study_is_p_diverged_and_leaves_failed_out():
    from dataclasses import replace

    shaky = _tables.row(4, "completed")
    shaky = replace(shaky, metrics={**shaky.metrics, "p_diverged": 2 / 3})  # 2 of 3 seeds diverged
    rows = [_tables.row(0, "completed"), _tables.row(1, "diverged", None), _tables.row(2, "pruned"),
            _tables.row(3, "failed"), shaky, _tables.row(5, "rescued", 1.5)]
    s = study.divergence_study(_tables.table(rows))
    assert [(x.user_attrs["outcome"], x.value) for x in s.trials] == [
        ("completed", 0.0), ("diverged", 1.0), ("pruned", 0.0), ("completed", 2 / 3), ("rescued", 1.0)]
    assert study.to_study(_tables.table(rows)).trials[4].constraints == {"diverged": 2 / 3}


def test_the_journal_reopens_with_the_same_trials(tmp_path):
    swept = _tables.sweep(8)
    path = study.save_journal(swept, tmp_path / "optuna-study.jsonl")
    study.save_journal(swept, path)  # written again: replaced, not appended
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    (summary,) = optuna.get_all_study_summaries(storage)
    loaded = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert summary.study_name == "hand"
    assert [t.state for t in loaded.trials] == [t.state for t in study.to_study(swept).trials]
    assert [t.user_attrs["outcome"] for t in loaded.trials] == [r.outcome for r in swept.rows]
    assert loaded.metric_names == ["val_loss"]
