"""The built-in workloads, their options, ``workloads.check`` and the plug-in protocol, on CPU
at small sizes."""

from __future__ import annotations

import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradtune import spec as spec_mod
from gradtune import trial, workloads
from gradtune.errors import GradtuneError
from gradtune.workloads import base, catalog, datasets, plugin, probes
from gradtune.workloads.rnn_adding import TRIVIAL_MSE, adding_batch

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")

# Small but complete versions of each built-in.
SMALL = {
    "deep_mlp": {"depth": 3, "width": 16},
    "rnn_adding": {"hidden": 8, "seq_len": 6},
    "resmlp": {"blocks": 2, "width": 16},
    "transformer": {"layers": 1, "d_model": 8, "heads": 2, "seq_len": 5, "vocab": 6},
    "cnn": {"dataset": "fake", "width": 4, "depth": 1, "train_size": 64, "val_size": 32},
}
NORMS = ("none", "batch", "layer", "group", "rms")


def build(name, options=None, **params):
    return probes.make(name, SMALL[name] if options is None else options, **params)


def one_step(wl):
    opt = torch.optim.SGD(wl.model.parameters(), lr=0.01)
    x, y = next(wl.train_batches)
    loss = wl.loss_fn(wl.model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


# ----------------------------------------------------------------------------- built-ins


def test_every_builtin_has_a_module_with_matching_options():
    assert workloads.BUILTIN == ("deep_mlp", "rnn_adding", "resmlp", "transformer", "cnn")
    for name in workloads.BUILTIN:
        module = __import__(f"gradtune.workloads.{name}", fromlist=["OPTIONS"])
        assert module.OPTIONS == workloads.options_of(name) == catalog.BUILTIN[name].defaults()


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
                           base.ChannelRMSNorm))
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


def test_init_scale_multiplies_the_he_std():
    # 256 -> 256 hidden layers: the sample std of the weights is close to the target.
    for scale in (0.5, 2.0):
        wl = probes.make("deep_mlp", {"depth": 2, "width": 256}, init_scale=scale)
        w = wl.model[3].weight  # the second hidden Linear
        assert w.std().item() == pytest.approx(scale * math.sqrt(2 / 256), rel=0.05)


def test_rescale_init_multiplies_existing_weights():
    model = nn.Sequential(nn.Linear(3, 4), nn.Conv2d(1, 2, 3))
    before = [m.weight.clone() for m in model]
    base.rescale_init(model, 3.0)
    for m, w in zip(model, before):
        assert torch.allclose(m.weight, 3 * w)


# ----------------------------------------------------------------------------- each workload


def test_adding_problem_data():
    x, y = adding_batch(500, 10, torch.Generator().manual_seed(0))
    markers = x[..., 1]
    assert (markers.sum(1) == 2).all()
    assert (markers[:, :5].sum(1) == 1).all() and (markers[:, 5:].sum(1) == 1).all()
    assert torch.allclose(y.squeeze(1), (x[..., 0] * markers).sum(1))
    # The trivial predictor (always 1) scores about 1/6.
    assert ((y - 1) ** 2).mean().item() == pytest.approx(TRIVIAL_MSE, rel=0.15)


def test_irnn_starts_from_the_identity():
    wl = build("rnn_adding", {"cell": "irnn", "hidden": 8}, init_scale=0.9)
    assert torch.allclose(wl.model.rec.weight, 0.9 * torch.eye(8))
    assert wl.model.inp.weight.abs().max() < 0.01


def test_resmlp_fixup_zeroes_each_branch_output_and_the_head():
    wl = build("resmlp", {"blocks": 3, "width": 16, "fixup": True})
    for block in wl.model.blocks:
        assert block.fc2.weight.abs().sum() == 0
    assert wl.model.head.weight.abs().sum() == 0
    # So every block is the identity at init.
    x = torch.randn(4, 16)
    assert torch.allclose(wl.model.blocks(x), x)


@pytest.mark.parametrize("position", ["pre", "post"])
def test_norm_position_places_the_norm(position):
    wl = build("resmlp", {"blocks": 1, "width": 16, "norm_position": position}, norm="layer")
    assert isinstance(wl.model.final, nn.LayerNorm if position == "pre" else nn.Identity)


def test_transformer_reverses_and_counts_accuracy_per_token():
    wl = build("transformer")
    x, y = wl.val_batches[0]
    assert torch.equal(y, x.flip(1))
    assert wl.reference_loss == pytest.approx(math.log(6))

    class Oracle(nn.Module):  # predicts the reversed token everywhere but position 0
        def forward(self, x):
            out = nn.functional.one_hot(x.flip(1), 6).float() * 10
            out[:, 0] = 0
            out[:, 0, 5] = 10  # class 5 at position 0
            return out

    wl.model = Oracle()
    acc = workloads.evaluate(wl)["val_accuracy"]
    first_right = (y[:, 0] == 5).float().mean().item()
    assert acc == pytest.approx((4 + first_right) / 5, abs=1e-6)  # per token, not per sequence


def test_transformer_heads_must_divide_d_model():
    with pytest.raises(GradtuneError, match="workload.options.heads"):
        build("transformer", {"d_model": 10, "heads": 4})


def test_transformer_warmup_option_is_carried():
    assert build("transformer", {**SMALL["transformer"], "warmup_steps": 7}).warmup_steps == 7


def test_cnn_fake_data_is_learnable_and_fixed():
    wl = build("cnn")
    x, y = next(wl.train_batches)
    assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32
    again = build("cnn", seed=5)
    assert torch.equal(wl.val_batches[0][0], again.val_batches[0][0])  # seed: order and init only


def write_idx(path: Path, array: torch.Tensor) -> None:
    """An MNIST idx file (uint8): magic, dims, data."""
    dims = array.shape
    header = struct.pack(">I", 0x0800 + len(dims)) + b"".join(struct.pack(">I", d) for d in dims)
    path.write_bytes(header + array.to(torch.uint8).numpy().tobytes())


@pytest.fixture
def tiny_mnist(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 50), ("t10k", 20)):
        write_idx(raw / f"{split}-images-idx3-ubyte", torch.randint(0, 256, (n, 28, 28), generator=gen))
        write_idx(raw / f"{split}-labels-idx1-ubyte", torch.randint(0, 10, (n,), generator=gen))
    return tmp_path


def test_cnn_reads_a_local_mnist(tiny_mnist):
    opts = {"dataset": "mnist", "root": str(tiny_mnist), "width": 4, "depth": 1, "val_size": 10}
    workloads.check("cnn", opts)
    wl = build("cnn", opts, batch_size=16)
    x, y = next(wl.train_batches)
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32
    assert abs(x.mean().item()) < 3  # standardised, not raw bytes
    assert sum(b[0].shape[0] for b in wl.val_batches) == 10
    assert math.isfinite(one_step(wl))


def test_cnn_missing_dataset_names_the_path_and_the_flag(tmp_path):
    opts = {"dataset": "cifar10", "root": str(tmp_path / "nowhere")}
    for attempt in (lambda: workloads.check("cnn", opts), lambda: build("cnn", opts)):
        with pytest.raises(GradtuneError) as info:
            attempt()
        message = str(info.value)
        assert str(tmp_path / "nowhere") in message and "download: true" in message
        assert "\n" not in message


def test_cnn_relative_root_is_taken_from_the_original_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNE_ORIG_WORKING_DIR", str(tmp_path))
    assert datasets.root_path("data") == str(tmp_path / "data")
    assert datasets.root_path("/abs/data") == "/abs/data"


# ----------------------------------------------------------------------------- check


@pytest.mark.parametrize("options, message", [
    ({"depth": "deep"}, "workload.options.depth: expected int, but got 'deep'"),
    ({"depth": 2.5}, "workload.options.depth: expected int"),
    ({"depth": True}, "workload.options.depth: expected int"),
    ({"depth": -1}, "workload.options.depth: expected >= 0"),
    ({"activation": "gelu"}, "workload.options.activation: 'gelu' is not one of relu, tanh"),
    ({"dpeth": 3}, "workload.options.dpeth: unknown option; known: depth, width, activation"),
])
def test_check_names_the_bad_option(options, message):
    with pytest.raises(GradtuneError, match=message.replace("(", r"\(")):
        workloads.check("deep_mlp", options)


def test_check_accepts_defaults_ints_for_floats_and_bools():
    for name in workloads.BUILTIN:
        if name != "cnn":
            workloads.check(name, {})
    workloads.check("resmlp", {"fixup": True})
    with pytest.raises(GradtuneError, match="workload.options.fixup: expected bool"):
        workloads.check("resmlp", {"fixup": 1})


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


# ----------------------------------------------------------------------------- plug-ins

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
    return workloads.build(f"{HERE}:{name}", {"width": 8}, {**probes.DEFAULT_PARAMS, **params}, 0, CPU)


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
