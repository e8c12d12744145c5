"""``gradtune.workloads.catalog``: the built-ins' option schemas, and how ``resolve`` (through
``workloads.check``) names a bad option."""

from __future__ import annotations

import importlib

import pytest

from gradtune import params as params_mod
from gradtune import workloads
from gradtune.errors import GradtuneError
from gradtune.workloads import catalog
from tests.workloads._helpers import CPU


def test_every_builtin_has_a_module_with_matching_options():
    assert workloads.BUILTIN == ("deep_mlp", "rnn_adding", "resmlp", "transformer", "cnn", "tiny_lm")
    for name in workloads.BUILTIN:
        module = importlib.import_module(f"gradtune.workloads.{name}")
        schema = catalog.BUILTIN[name].options
        # The module reads its schema from the catalog, not a copy of its own.
        assert module.SCHEMA is schema
        # Its OPTIONS: every declared option, in order, at that option's default.
        assert list(module.OPTIONS) == list(schema)
        assert all(module.OPTIONS[key] == opt.default for key, opt in schema.items())
        assert workloads.options_of(name) == module.OPTIONS
        # Each default passes its own option's check (type, choices, minimum).
        assert catalog.resolve(schema, {}) == catalog.resolve(schema, dict(module.OPTIONS)) == module.OPTIONS
        # The module's build checks what it is given against that schema.
        with pytest.raises(GradtuneError, match=f"workload.options.bogus: unknown option; known: {', '.join(schema)}$"):
            module.build({"bogus": 1}, params_mod.defaults(), 0, CPU)


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
