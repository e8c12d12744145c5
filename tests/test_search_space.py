from __future__ import annotations

import optuna
import pytest

from gradtune import search_space, searcher
from gradtune.spec import Range, load

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sample(space, n=30, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    fn = search_space.define_by_run(space)
    out = []
    for _ in range(n):
        trial = study.ask()
        fixed = fn(trial)
        out.append({**trial.params, **fixed})
        study.tell(trial, 0.0)
    return out


def test_threshold_only_sampled_when_clipping():
    configs = sample({"clip_method": ["none", "norm", "value"],
                      "clip_threshold": Range(low=0.01, high=10, log=True)})
    assert {c["clip_method"] for c in configs} == {"none", "norm", "value"}
    for c in configs:
        assert ("clip_threshold" in c) == (c["clip_method"] != "none")
        if "clip_threshold" in c:
            assert 0.01 <= c["clip_threshold"] <= 10


def test_scalars_are_fixed_and_ranges_are_typed():
    configs = sample({"norm": "layer", "batch_size": Range(low=16, high=128, log=True),
                      "init_scale": Range(low=0.5, high=2.0), "clip_method": "none",
                      "clip_threshold": 1.0})
    for c in configs:
        assert c["norm"] == "layer"
        assert isinstance(c["batch_size"], int) and 16 <= c["batch_size"] <= 128
        assert 0.5 <= c["init_scale"] <= 2.0
        assert "clip_threshold" not in c  # fixed, but meaningless without clipping


def test_grid_is_the_full_product_without_meaningless_thresholds():
    points = search_space.grid_points({
        "clip_method": ["none", "norm"], "clip_threshold": [0.1, 1.0, 10.0],
        "norm": ["none", "layer"], "batch_size": 32,
    })
    # (1 none + 3 norm thresholds) x 2 norms
    assert len(points) == 8
    assert len({tuple(sorted(p.items())) for p in points}) == 8
    assert all(p["batch_size"] == 32 for p in points)
    assert [p for p in points if p["clip_method"] == "none" and "clip_threshold" in p] == []


def test_grid_sampler_runs_each_point(tmp_path):
    spec = load(None, {"search.sampler": "grid", "search.space": {
        "clip_method": ["none", "norm"], "clip_threshold": [0.5, 2.0], "norm": ["none", "layer"]}})
    search, n = searcher.make(spec)
    assert n == 6
    got = [search.suggest(f"t{i}") for i in range(n)]
    expected = search_space.grid_points(spec.search.space)
    key = lambda d: tuple(sorted(d.items()))  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, expected))


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_same_spec_and_seed_sample_the_same_configs(sampler):
    spec = load(None, {"search.sampler": sampler})
    runs = []
    for _ in range(2):
        search, _ = searcher.make(spec)
        runs.append([search.suggest(f"t{i}") for i in range(12)])
    assert runs[0] == runs[1]
    other, _ = searcher.make(load(None, {"search.sampler": sampler, "training.seed": 1}))
    assert [other.suggest(f"t{i}") for i in range(12)] != runs[0]


def test_workload_options_are_sampled_like_the_knobs():
    configs = sample({"qk_norm": [False, True], "z_loss": Range(low=1e-5, high=1e-3, log=True),
                      "depth": 3, "lr": Range(low=1e-3, high=1.0, log=True)})
    assert {c["qk_norm"] for c in configs} == {False, True}
    for c in configs:
        assert isinstance(c["z_loss"], float) and 1e-5 <= c["z_loss"] <= 1e-3
        assert c["depth"] == 3


def test_grid_over_a_workload_option():
    points = search_space.grid_points({"qk_norm": [False, True], "lr": [0.01, 0.3],
                                       "clip_method": ["none", "norm"], "clip_threshold": [1.0]})
    assert len(points) == 8
    assert {(p["qk_norm"], p["lr"]) for p in points} == {(q, lr) for q in (False, True)
                                                           for lr in (0.01, 0.3)}
