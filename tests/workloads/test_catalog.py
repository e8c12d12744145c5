"""``gradtune.workloads.catalog``: the built-ins' option schemas, and how ``resolve`` (through
``workloads.check``) names a bad option."""

from __future__ import annotations

import pytest

from gradtune import workloads
from gradtune.errors import GradtuneError
from gradtune.workloads import catalog


def test_every_builtin_has_a_module_with_matching_options():
    assert workloads.BUILTIN == ("deep_mlp", "rnn_adding", "resmlp", "transformer", "cnn")
    for name in workloads.BUILTIN:
        module = __import__(f"gradtune.workloads.{name}", fromlist=["OPTIONS"])
        assert module.OPTIONS == workloads.options_of(name) == catalog.BUILTIN[name].defaults()


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
