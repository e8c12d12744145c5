"""The parameter registry: one list of names and defaults that the schema, the trial loop,
the workloads and the README all follow."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from gradtune import clipping, params, trial
from gradtune.spec import SweepSpec, load
from gradtune.workloads import layers

ROOT = Path(__file__).resolve().parent.parent


def test_trial_params_fill_defaults_from_training():
    spec = load(None, {"training.optimizer": {"name": "adam", "lr": 0.003}, "training.warmup_steps": 5})
    values = params.trial_params(spec, {"norm": "layer", "clip_method": "norm"})
    assert values["optimizer"] == "adam" and values["lr"] == 0.003
    assert values["warmup_steps"] == 5
    assert values["clip_threshold"] == 1.0
    assert values["init_scale"] == 1.0 and values["batch_size"] == 64
    unclipped = params.trial_params(SweepSpec(), {"clip_method": "none", "clip_threshold": 3.0})
    assert "clip_threshold" not in unclipped
    assert list(params.trial_params(SweepSpec(), {})) == [n for n in params.PARAMS if n != "clip_threshold"]


def test_the_spec_defaults_are_the_registry_defaults():
    opt = SweepSpec().training.optimizer
    assert (opt.name, opt.lr, opt.momentum, opt.weight_decay) == tuple(
        params.PARAMS[n].default for n in ("optimizer", "lr", "momentum", "weight_decay"))
    assert params.trial_params(SweepSpec(), {}) == params.defaults()


@pytest.mark.parametrize("name, good, bad", [
    ("clip_method", "agc", "huge"),
    ("batch_size", 32, 3.5),
    ("lr", 0.1, 0.0),
    ("momentum", 0.0, -0.1),
    ("init_scale", 2.0, math.nan),
    ("warmup_steps", 0, math.inf),
])
def test_a_param_checks_its_values(name, good, bad):
    params.PARAMS[name].check(name, good)
    with pytest.raises(ValueError, match=f"space.{name}: "):
        params.PARAMS[name].check(name, bad)


def test_each_name_list_is_what_its_implementation_implements():
    assert set(trial.OPTIMIZER_CLASSES) == set(params.OPTIMIZERS)
    assert {"none", *clipping.CLIPPERS} == set(params.CLIP_METHODS)
    for norm in params.NORMS:
        layers.norm_layer(norm, 8)  # raises on a norm it does not know


def test_an_unknown_optimizer_is_a_spec_error():
    from gradtune.errors import GradtuneError

    with pytest.raises(GradtuneError, match="training.optimizer.name: 'lion' is not one of sgd, adam, adamw"):
        load(None, {"training.optimizer.name": "lion"})


def test_the_readme_table_lists_every_parameter_with_its_default():
    """The README's parameter table is the registry's, row for row."""
    text = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| [^|]* \| `([^`]*)` \|", text, flags=re.M))
    assert rows == {name: str(p.default) for name, p in params.PARAMS.items()}


def test_searched_workload_options_are_trial_params_by_their_own_name():
    spec = load(None, {"workload.name": "tiny_lm", "workload.options": {},
                       "search.space": {"qk_norm": [False, True], "lr": [0.1]}})
    values = params.trial_params(spec, {"qk_norm": True, "lr": 0.1})
    assert values["qk_norm"] is True and values["lr"] == 0.1
    assert params.workload_options(values) == {"qk_norm": True}
    assert params.applies("qk_norm", {})
