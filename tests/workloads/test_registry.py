"""``gradtune.workloads`` (the package): every built-in builds, trains and evaluates through
``workloads.build``/``evaluate``; ``workloads.check`` on names and sweep files; the listing
without torch."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from gradtune import spec as spec_mod
from gradtune import workloads
from gradtune.errors import GradtuneError
from gradtune.workloads import layers
from tests.workloads._helpers import NORMS, ROOT, SMALL, build, one_step


@pytest.mark.parametrize("name", list(SMALL))
def test_builtin_builds_trains_and_evaluates(name):
    wl = build(name)
    assert wl.task in ("classification", "regression")
    assert wl.reference_loss > 0
    losses = [one_step(wl) for _ in range(3)]  # the iterator keeps giving batches
    assert all(math.isfinite(v) for v in losses)
    metrics = workloads.evaluate(wl)
    assert math.isfinite(metrics["val_loss"])
    if wl.task == "classification":
        assert 0.0 <= metrics["val_accuracy"] <= 1.0
    else:
        assert "val_accuracy" not in metrics


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("norm", NORMS)
def test_every_norm_works_in_every_builtin(name, norm):
    wl = build(name, norm=norm)
    if norm != "none":
        assert any(
            isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm,
                           layers.ChannelRMSNorm))
            for m in wl.model.modules()
        )
    assert math.isfinite(one_step(wl))


@pytest.mark.parametrize("name", list(SMALL))
def test_train_batches_follow_batch_size(name):
    x, y = next(build(name, batch_size=8).train_batches)
    assert x.shape[0] == y.shape[0] == 8


@pytest.mark.parametrize("name", list(SMALL))
def test_same_seed_same_workload(name):
    a, b = build(name, seed=3), build(name, seed=3)
    xa, _ = next(a.train_batches)
    xb, _ = next(b.train_batches)
    assert torch.equal(xa, xb)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)


def test_check_unknown_workload():
    with pytest.raises(GradtuneError, match="workload.name: unknown workload 'mlp'.*module:factory"):
        workloads.check("mlp", {})


def test_check_does_not_import_torch():
    code = ("import sys; from gradtune import workloads; workloads.check('deep_mlp', {}); "
            "print(workloads.listing()); assert 'torch' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for name in workloads.BUILTIN:
        assert name in out.stdout
    assert "package.module:factory" in out.stdout


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_sweep_file_validates_and_checks(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # plug-ins import from the directory a sweep is run in
    spec = spec_mod.load(path)
    workloads.check(spec.workload.name, spec.workload.options, spec.search.space)


def test_every_builtin_has_a_sweep_file():
    for name in workloads.BUILTIN:
        spec = spec_mod.load(ROOT / "sweeps" / f"{name}.yaml")
        assert spec.workload.name == name


def test_check_accepts_searched_workload_options():
    workloads.check("tiny_lm", {}, {"qk_norm": [False, True], "lr": [0.1],
                                    "z_loss": spec_mod.Range(low=1e-5, high=1e-3, log=True)})
    workloads.check("resmlp", {}, {"norm_position": ["pre", "post"], "fixup": False})
    # the registry wins a shared name: the transformer's warmup_steps is the trial's knob
    workloads.check("transformer", {}, {"warmup_steps": [0, 30]})


@pytest.mark.parametrize("name, space, message", [
    ("deep_mlp", {"clip": ["none"]},
     "search.space.clip: unknown parameter; known: clip_method, .*, and the options of workload "
     "deep_mlp: depth, width, activation$"),
    ("resmlp", {"norm_position": ["pre", "middle"]},
     "search.space.norm_position: 'middle' is not one of pre, post"),
    ("tiny_lm", {"qk_norm": [True, 1]}, "search.space.qk_norm: expected bool, but got 1"),
    ("tiny_lm", {"depth": spec_mod.Range(low=1, high=4)},
     "search.space.depth: a range needs a float option, but depth is int; list its values"),
    ("tiny_lm", {"z_loss": spec_mod.Range(low=-1, high=1)}, r"search.space.z_loss: expected >= 0"),
    ("tiny_lm", {"heads": 0}, "search.space.heads: expected >= 1, but got 0"),
])
def test_check_names_a_bad_searched_option(name, space, message):
    with pytest.raises(GradtuneError, match=message):
        workloads.check(name, {}, space)


def test_build_takes_searched_options_over_the_specs():
    from gradtune import params as params_mod

    options = {**SMALL["tiny_lm"], "qk_norm": False}
    wl = workloads.build("tiny_lm", options, {**params_mod.defaults(), "qk_norm": True}, 0,
                         torch.device("cpu"))
    assert isinstance(wl.model.blocks[0].attn.q_norm, nn.LayerNorm)
