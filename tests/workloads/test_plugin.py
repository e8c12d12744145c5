"""``gradtune.workloads.plugin``: bring your own model as ``package.module:factory``. The
factories below are plug-ins, imported by the name pytest imported this file under."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradtune import params as params_mod
from gradtune import spec as spec_mod
from gradtune import trial, workloads
from gradtune.errors import GradtuneError
from gradtune.workloads import base, plugin
from tests.workloads._helpers import CPU, ROOT

HERE = __name__  # the plug-in factories below, imported as pytest imported this file


def data(n=64, classes=3):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=gen)
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long() * (classes - 2))


def factory_dict(options, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, options.get("width", 8)), nn.ReLU(),
                          nn.Linear(options.get("width", 8), 3))
    return {"model": model, "train": data(), "val": data(32), "loss": nn.functional.cross_entropy}


def factory_tuple():
    model = nn.Linear(4, 3)
    return model, DataLoader(data(), batch_size=16, shuffle=True), list(DataLoader(data(32), 8)), \
        nn.functional.cross_entropy


def factory_generator():
    def endless():
        while True:
            yield torch.randn(8, 4), torch.randn(8, 1)
    return {"model": nn.Linear(4, 1), "train": endless(), "val": [(torch.randn(8, 4), torch.randn(8, 1))],
            "loss": nn.functional.mse_loss, "task": "regression"}


def factory_short_generator():
    return {"model": nn.Linear(4, 1), "train": iter([(torch.randn(8, 4), torch.randn(8, 1))]),
            "val": [(torch.randn(8, 4), torch.randn(8, 1))], "loss": nn.functional.mse_loss,
            "task": "regression"}


SEEN: dict[str, object] = {}


def factory_knobs(init_scale, norm, batch_size, params, device):
    SEEN.update(init_scale=init_scale, norm=norm, batch_size=batch_size, params=params, device=device)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8) if norm == "layer" else nn.Identity(),
                          nn.Linear(8, 3))
    return {"model": model, "train": data(), "val": data(32), "loss": nn.functional.cross_entropy,
            "reference_loss": 1.5}


def factory_workload(device):
    x, y = data().tensors
    return base.Workload(nn.Linear(4, 3), base.shuffled_batches(x, y, 8, 0), [(x, y)],
                         nn.functional.cross_entropy, "classification", math.log(3))


def factory_kwargs(**kwargs):
    SEEN.update(kwargs=sorted(kwargs))
    return factory_tuple()


def factory_wrong():
    return 42


def factory_missing_key():
    return {"model": nn.Linear(4, 3), "train": data(), "val": data()}


def factory_extra_key():
    return {**factory_dict({}, 0), "optimizer": "sgd"}


def factory_bad_model():
    return ("not a model", data(), data(), nn.functional.cross_entropy)


def factory_needs(config):
    return factory_tuple()


NOT_CALLABLE = 3


def make(name, **params):
    return workloads.build(f"{HERE}:{name}", {"width": 8}, {**params_mod.defaults(), **params}, 0, CPU)


def test_plugin_dict_with_datasets():
    wl = make("factory_dict", batch_size=16)
    x, y = next(wl.train_batches)
    assert x.shape == (16, 4)
    assert wl.task == "classification"
    assert wl.reference_loss == pytest.approx(math.log(3))  # from the model's 3 outputs
    assert sum(b[0].shape[0] for b in wl.val_batches) == 32
    for _ in range(10):  # 64 samples / 16: cycles through epochs
        next(wl.train_batches)


def test_plugin_tuple_with_dataloaders_cycles_epochs():
    wl = make("factory_tuple")
    assert len([next(wl.train_batches) for _ in range(9)]) == 9  # 4 batches per epoch


def test_plugin_generator_and_regression_reference():
    wl = make("factory_generator")
    next(wl.train_batches)
    y = wl.val_batches[0][1]
    assert wl.task == "regression"
    assert wl.reference_loss == pytest.approx(y.var(unbiased=False).item())


def test_plugin_generator_that_runs_out_is_a_clear_error():
    wl = make("factory_short_generator")
    next(wl.train_batches)
    with pytest.raises(GradtuneError, match="'train' ran out of batches"):
        next(wl.train_batches)


def test_plugin_gets_the_knobs_it_names_and_handles_init_scale_itself():
    wl = make("factory_knobs", init_scale=2.0, norm="layer", batch_size=32)
    assert SEEN["init_scale"] == 2.0 and SEEN["norm"] == "layer" and SEEN["batch_size"] == 32
    assert SEEN["params"]["lr"] == 0.05 and SEEN["device"] == CPU
    assert wl.reference_loss == 1.5
    fresh = nn.Linear(4, 8)  # default PyTorch init bound 1/sqrt(4) = 0.5: not rescaled
    assert wl.model[0].weight.abs().max() <= 0.5 + 1e-6 and fresh.weight.abs().max() <= 0.5


def test_plugin_without_init_scale_gets_its_weights_multiplied():
    torch.manual_seed(0)
    plain = make("factory_dict")
    scaled = make("factory_dict", init_scale=3.0)
    assert torch.allclose(scaled.model[0].weight, 3 * plain.model[0].weight)
    assert torch.allclose(scaled.model[0].bias, plain.model[0].bias)


def test_plugin_may_return_a_workload():
    wl = make("factory_workload", init_scale=2.0)
    assert isinstance(wl, base.Workload) and wl.reference_loss == pytest.approx(math.log(3))


def test_plugin_with_kwargs_gets_everything():
    make("factory_kwargs")
    assert SEEN["kwargs"] == sorted(plugin.ARGUMENTS)


@pytest.mark.parametrize("name, message", [
    ("factory_wrong", "the factory returned int; expected a Workload, a dict"),
    ("factory_missing_key", "the factory's dict lacks 'loss'"),
    ("factory_extra_key", "the factory's dict has unknown key 'optimizer'"),
    ("factory_bad_model", "'model' must be a torch.nn.Module, but got str"),
    ("factory_needs", "the factory requires argument 'config', which gradtune does not pass"),
    ("NOT_CALLABLE", "'NOT_CALLABLE' is a int, not a callable factory"),
    ("nothing_here", f"module '{HERE}' has no attribute 'nothing_here'"),
])
def test_plugin_mistakes_are_one_line_errors(name, message):
    with pytest.raises(GradtuneError) as info:
        make(name)
    assert str(info.value).startswith(f"workload.name {HERE}:{name}: ")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_plugin_import_error_is_one_line():
    with pytest.raises(GradtuneError) as info:
        workloads.check("mypkg.mod:make", {})
    assert str(info.value).startswith(
        "workload.name mypkg.mod:make: cannot import module 'mypkg.mod' (No module named 'mypkg')")


def test_plugin_name_needs_module_and_factory():
    with pytest.raises(GradtuneError, match="a plug-in is 'package.module:factory'"):
        workloads.check("mypkg.mod:", {})


def test_plugin_that_takes_no_norm_refuses_a_searched_norm():
    workloads.check(f"{HERE}:factory_dict", {}, {"norm": ["none"]})
    with pytest.raises(GradtuneError, match="search.space.norm: the plug-in .* does not take a `norm`"):
        workloads.check(f"{HERE}:factory_dict", {}, {"norm": ["none", "batch"]})
    with pytest.raises(GradtuneError, match="norm: 'batch' asked"):
        make("factory_dict", norm="batch")
    workloads.check(f"{HERE}:factory_knobs", {}, {"norm": ["batch"]})


def test_plugin_searched_option_reaches_its_options():
    """A space name outside the registry is the plug-in's option: it needs ``options``."""
    workloads.check(f"{HERE}:factory_dict", {}, {"width": [4, 16]})
    with pytest.raises(GradtuneError, match="search.space.width: the plug-in .* takes no `options`"):
        workloads.check(f"{HERE}:factory_knobs", {}, {"width": [4, 16]})
    wl = make("factory_dict", width=16)  # a searched width overrides options' 8
    assert wl.model[0].out_features == 16


def test_plugin_example_trains_in_process(monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = spec_mod.load(ROOT / "sweeps" / "plugin_example.yaml",
                         {"training.steps": 30, "training.device": "cpu"})
    reports: list[dict] = []
    last = trial.train(spec, {"norm": "layer", "init_scale": 1.0}, reports.append)
    assert last["final"] == 1 and last["diverged"] == 0
    assert last["val_loss"] < math.log(3)  # below chance after 30 steps


@pytest.mark.e2e
def test_plugin_example_sweeps_end_to_end_from_the_repo_root(tmp_path):
    """The documented command, as a user runs it: from the repository root, no install of
    the example, local Ray, MLflow in a temporary directory."""
    cmd = [sys.executable, "-m", "gradtune", "sweep", "sweeps/plugin_example.yaml",
           "--trials", "2", "--set", "training.steps=20", "--set", "search.max_concurrent=1",
           "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
           "--storage", str(tmp_path / "ray_results")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "completed: 2" in out.stdout, out.stdout[-2000:]
