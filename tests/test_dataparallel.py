"""gradtune.dataparallel: the statistics reduction, the batch split, and two real gloo ranks
(plain processes on loopback, no Ray) training one trial together."""

from __future__ import annotations

import datetime
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from gradtune import dataparallel, outcome, trial
from gradtune.errors import GradtuneError
from gradtune.spec import SweepSpec, load

NAN = float("nan")


def test_rules_by_name():
    assert [dataparallel.rule(n) for n in ("loss", "grad_norm", "clipped", "update_ratio",
                                           "attn_logit_max", "attn_entropy_min", "other")] == \
        ["mean", "same", "same", "same", "max", "min", "mean"]


def test_combine_takes_the_mean_loss_rank_0s_norm_and_the_extremes():
    rows = torch.tensor([[1.0, 5.0, 1.0, 0.1, 3.0, 0.5],
                         [3.0, 5.0, 1.0, 0.1, 7.0, 0.2]])
    rules = ["mean", "same", "same", "same", "max", "min"]
    assert dataparallel.combine(rows, rules).tolist() == pytest.approx([2.0, 5.0, 1.0, 0.1, 7.0, 0.2])


@pytest.mark.parametrize("column", range(4))
def test_combine_a_nan_on_any_rank_is_nan(column):
    rules = ["mean", "max", "min", "same"]
    rows = torch.ones(3, 4)
    rows[0 if rules[column] == "same" else 2, column] = NAN
    got = dataparallel.combine(rows, rules).tolist()
    assert math.isnan(got[column]) and all(v == 1.0 for j, v in enumerate(got) if j != column)


def test_combine_an_inf_loss_on_one_rank_is_inf():
    rows = torch.tensor([[1.0], [math.inf]])
    assert dataparallel.combine(rows, ["mean"]).item() == math.inf


def test_combine_checks_its_shape():
    with pytest.raises(ValueError, match="ranks x 2"):
        dataparallel.combine(torch.ones(2, 3), ["mean", "same"])


def test_disagreement_names_the_first_same_column_that_differs():
    rules = ["mean", "same", "same"]
    assert dataparallel.disagreement(torch.tensor([[1.0, 2.0, NAN], [9.0, 2.0, NAN]]), rules) is None
    assert dataparallel.disagreement(torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.5, 3.0]]), rules) == 1


def test_shard_splits_every_tensor_of_the_batch():
    x, y = torch.arange(8).reshape(4, 2), torch.arange(4)
    assert dataparallel.shard((x, y), 1, 2)[1].tolist() == [2, 3]
    assert dataparallel.shard((x, y), 0, 2)[0].tolist() == [[0, 1], [2, 3]]
    assert [len(dataparallel.shard(y, r, 3)) for r in range(3)] == [2, 1, 1]  # uneven: one apart
    with pytest.raises(ValueError, match="cannot be split"):
        dataparallel.shard(y, 0, 5)


# --- the spec ---------------------------------------------------------------------------

def test_workers_default_to_one():
    assert SweepSpec().resources.workers == 1


@pytest.mark.parametrize(("overrides", "message"), [
    ({"resources.workers": 0}, "resources.workers: Input should be greater than or equal to 1"),
    ({"resources.workers": 2, "search.seeds": 3}, "cannot be combined with search.seeds: 3"),
    ({"resources.workers": 3}, "batch_size 16 is not divisible by 3"),
    ({"resources.workers": 2, "search.space.batch_size": {"low": 16, "high": 64}}, "got a range"),
    ({"resources.workers": 2, "resources.gpu": 0.5}, "a whole GPU per rank"),
])
def test_bad_worker_settings_are_one_line(overrides, message):
    with pytest.raises(GradtuneError, match=message) as err:
        load(None, overrides)
    assert "\n" not in str(err.value)


def test_batch_sizes_divisible_by_workers_are_fine():
    assert load(None, {"resources.workers": 2}).resources.workers == 2
    assert load(None, {"resources.workers": 4, "search.space.batch_size": [32, 64]}).resources.workers == 4


# --- the sweep's accounting ---------------------------------------------------------------

def test_a_trial_of_n_ranks_asks_for_n_bundles_and_counts_as_n():
    from gradtune import sweep

    spec = load(None, {"resources.workers": 2, "search.max_concurrent": 4})
    group = sweep._trial_resources(spec, False)
    assert group.bundles == [{"CPU": 1.0}, {"CPU": 1.0}]
    assert sweep._trial_resources(load(None, {}), False) == {"cpu": 1.0, "gpu": 0.0}
    assert sweep._workers(spec, {"CPU": 4.0}, spec.resources.workers) == 2


def test_more_ranks_than_the_cluster_places_is_one_line():
    from gradtune import sweep

    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": False, "Resources": {"CPU": 8.0}}]
    sweep._check_ranks(load(None, {"resources.workers": 2}), nodes)
    with pytest.raises(GradtuneError, match="runs 4 ranks of 1 CPU, but the Ray cluster can place 2"):
        sweep._check_ranks(load(None, {"resources.workers": 4}), nodes)


# --- two real ranks -----------------------------------------------------------------------

def _rank_main(rank: int, world: int, port: int, spec_data: dict[str, Any], config: dict[str, Any],
               out: str) -> None:
    torch.set_num_threads(1)
    spec = SweepSpec.model_validate(spec_data)
    me = dataparallel.join(rank, world, dataparallel.LOOPBACK, port, torch.device("cpu"), strict=True)
    reports: list[dict[str, Any]] = []
    try:
        trial.train(spec, config, reports.append, rank=me)
    finally:
        dataparallel.leave()
    Path(out, f"rank{rank}.json").write_text(json.dumps(reports))
    # Done: end without the interpreter's teardown, where torch's gloo threads once
    # aborted the process ("terminate called without an active exception", SIGABRT in CI)
    # after both ranks had written their reports.
    os._exit(0)


def _run_ranks(spec: SweepSpec, config: dict[str, Any], out: Path, world: int = 2) -> list[list[dict[str, Any]]]:
    import torch.multiprocessing as mp
    from torch.distributed import TCPStore

    store = TCPStore(dataparallel.LOOPBACK, 0, world + 1, is_master=True, wait_for_workers=False,
                     timeout=datetime.timedelta(seconds=60))
    mp.spawn(_rank_main, args=(world, store.port, spec.model_dump(mode="json"), config, str(out)),
             nprocs=world)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def _spec(**overrides: Any) -> SweepSpec:
    base = {"training.steps": 30, "training.report_every": 5, "training.device": "cpu",
            "workload.options": {"depth": 6, "width": 32, "activation": "relu"}}
    return load(None, {**base, **overrides})


CONFIG = {"clip_method": "norm", "clip_threshold": 1.0, "init_scale": 1.0, "norm": "none", "batch_size": 32}


@pytest.mark.slow
def test_two_ranks_train_the_trial_one_rank_would(tmp_path):
    """Two gloo ranks, each half of every batch: every rank sees the same pre-clip norm at
    every step (``strict`` checks it), reports the same numbers, and the losses are the
    one-process trial's (same global batch) up to float summation order."""
    spec = _spec()
    ranks = _run_ranks(spec, CONFIG, tmp_path)
    assert ranks[0] == ranks[1]  # the same numbers on both ranks, every report
    assert [m[outcome.STEP] for m in ranks[0]] == list(range(5, 31, 5)) and ranks[0][-1][outcome.FINAL] == 1
    alone: list[dict[str, Any]] = []
    trial.train(spec, CONFIG, alone.append)
    for two, one in zip(ranks[0], alone):
        for key in ("train_loss", "grad_norm", "val_loss"):
            assert two[key] == pytest.approx(one[key], rel=1e-4), (two[outcome.STEP], key)


@pytest.mark.slow
def test_a_diverging_trial_stops_on_both_ranks_at_the_same_step(tmp_path):
    """lr 0.5 with SGD momentum 0.9 on a plain depth-10 MLP diverges after a dozen steps
    (one process: step 14): both ranks reach the verdict at the same step, report the same
    numbers and return there (neither is left waiting in a collective)."""
    config = {**CONFIG, "clip_method": "none", "lr": 0.5}
    spec = _spec(**{"training.optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.9},
                    "workload.options": {"depth": 10, "width": 32, "activation": "relu"}})
    ranks = _run_ranks(spec, config, tmp_path)
    last0, last1 = ranks[0][-1], ranks[1][-1]
    assert last0[outcome.DIVERGED] == 1 and 5 < last0[outcome.STEP] < 30
    assert last0["divergence_step"] == last0[outcome.STEP] == last1[outcome.STEP] == last1["divergence_step"]
    assert json.dumps(ranks[0]) == json.dumps(ranks[1])  # NaN-safe: every report the same
