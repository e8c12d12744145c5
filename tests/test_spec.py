from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from gradtune import spec as spec_mod
from gradtune.errors import GradtuneError
from gradtune.spec import Range, SweepSpec

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def test_quickstart_file_is_the_embedded_default():
    assert spec_mod.load(ROOT / "sweeps" / "quickstart.yaml") == SweepSpec()


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_validates(path):
    assert spec_mod.load(path).name


@pytest.mark.parametrize("path", sorted((ROOT / "tests" / "test_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_old_specs_keep_loading(path):
    spec_mod.load(path)


def test_scalar_list_and_range_dimensions(tmp_path):
    spec = spec_mod.load(write(tmp_path, """
search:
  space:
    clip_method: norm
    clip_threshold: [0.5, 1.0]
    init_scale: {low: 0.5, high: 2}
    batch_size: {low: 16, high: 64, log: true}
"""))
    space = spec.search.space
    assert space["clip_method"] == "norm"
    assert space["clip_threshold"] == [0.5, 1.0]
    assert space["init_scale"] == Range(low=0.5, high=2.0)
    assert space["batch_size"].log


@pytest.mark.parametrize(
    "text, expected",
    [
        ("nmae: x\n", "s.yaml: nmae: unknown key"),
        ("training: {stpes: 3}\n", "s.yaml: training.stpes: unknown key"),
        # a name outside the registry is a workload option (checked by workloads.check)
        ("search: {space: {clip-method: [none]}}\n",
         "s.yaml: search.space.clip-method: neither a parameter (clip_method, "),
        ("search: {space: {qk_norm: []}}\n", "search.space.qk_norm: a choice needs at least one value"),
        ("training: {steps: many}\n", "s.yaml: training.steps: Input should be a valid integer"),
        ("training: {steps: 0}\n", "s.yaml: training.steps: Input should be greater than 0"),
        ("search: {space: {norm: [layer, bogus]}}\n", "s.yaml: search.space.norm: 'bogus' is not one of"),
        ("search: {space: {init_scale: {low: 2, high: 1}}}\n", "low must be below high"),
        ("search: {space: {lr: {low: 0, high: 1, log: true}}}\n", "a log range needs low > 0"),
        ("search: {space: {batch_size: [16.5]}}\n", "search.space.batch_size: expected an integer"),
        ("search: {space: {norm: {low: 1, high: 2}}}\n", "search.space.norm: a choice parameter cannot take a range"),
        ("search: {space: {init_scale: [-1]}}\n", "search.space.init_scale: expected a finite number > 0"),
        ("search: {space: {clip_method: []}}\n", "search.space.clip_method: a choice needs at least one value"),
        ("search: {sampler: grid}\n", "search.space.clip_threshold: the grid sampler needs a list"),
        ("search: {sampler: annealing}\n", "s.yaml: search.sampler: Input should be"),
        ("resources: {gpu: -1}\n", "s.yaml: resources.gpu:"),
        ("resources: {max_failures: -1}\n", "s.yaml: resources.max_failures: Input should be greater than or"),
        ("training: {checkpoint_every: 25}\n",
         "s.yaml: training.checkpoint_every: must be a multiple of training.report_every (10), but got 25"),
        ("training: {checkpoint_every: -10}\n", "s.yaml: training.checkpoint_every: Input should be greater"),
        ("- a\n- b\n", "a spec must be a mapping"),
        ("a: [\n", "invalid YAML"),
    ],
)
def test_bad_specs_fail_with_one_line_naming_file_and_key(tmp_path, text, expected):
    with pytest.raises(GradtuneError) as info:
        spec_mod.load(write(tmp_path, text))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_missing_file_is_a_gradtune_error(tmp_path):
    with pytest.raises(GradtuneError, match="cannot read spec"):
        spec_mod.load(tmp_path / "nope.yaml")


def test_overrides_apply_before_validation(tmp_path):
    spec = spec_mod.load(None, dict(map(spec_mod.parse_set, [
        "training.steps=50", "search.space.norm=[layer]", "tracking.experiment=exp",
    ])))
    assert spec.training.steps == 50
    assert spec.search.space["norm"] == ["layer"]
    assert spec.experiment == "exp"
    with pytest.raises(GradtuneError, match="training.stepz: unknown key"):
        spec_mod.load(None, {"training.stepz": 1})


@pytest.mark.parametrize("path", [None, ROOT / "sweeps" / "quickstart.yaml", "no-space"])
def test_set_on_one_dimension_keeps_the_rest_of_the_space(path, tmp_path):
    """``--set search.space.norm=[layer]`` changes one dimension of the space the spec would
    run (the default space, with no spec file or a file that names none)."""
    if path == "no-space":
        path = write(tmp_path, "name: s\nsearch: {trials: 3}\n")
    space = spec_mod.load(path, {"search.space.norm": ["layer"]}).search.space
    assert space == {**SweepSpec().search.space, "norm": ["layer"]}


def test_set_replaces_a_whole_space_when_asked(tmp_path):
    spec = spec_mod.load(None, {"search.space": {"norm": ["layer"]}})
    assert spec.search.space == {"norm": ["layer"]}


@pytest.mark.parametrize("item", ["novalue", "=3", "a.b=[unclosed"])
def test_bad_set_items(item):
    with pytest.raises(GradtuneError, match="--set"):
        spec_mod.parse_set(item)


def test_set_into_a_scalar_is_an_error(tmp_path):
    with pytest.raises(GradtuneError, match="name is not a mapping"):
        spec_mod.load(write(tmp_path, "name: x\n"), {"name.x": 1})


def test_spec_is_frozen_and_dump_round_trips():
    spec = SweepSpec()
    with pytest.raises(ValidationError):
        spec.name = "other"  # type: ignore[misc]
    import yaml

    assert spec_mod.validate(yaml.safe_load(spec_mod.dump(spec))) == spec


def test_experiment_defaults_to_name():
    assert SweepSpec(name="abc").experiment == "abc"


def test_checkpoint_every_defaults_to_50_steps_on_the_report_grid():
    assert SweepSpec().training.checkpoint_every == 50 and SweepSpec().resources.max_failures == 2
    assert spec_mod.load(None, {"training.report_every": 15}).training.checkpoint_every == 60
    assert spec_mod.load(None, {"training.report_every": 100}).training.checkpoint_every == 100
    for off in (0, None):
        assert spec_mod.load(None, {"training.checkpoint_every": off}).training.checkpoint_every == off
    spec = spec_mod.load(None, {"training.report_every": 5, "training.checkpoint_every": 20})
    assert spec_mod.validate(spec.model_dump(mode="json")) == spec  # the resolved value round-trips


# ------------------------------------------------------------------ names and sizes
def alias_bomb(levels: int = 9) -> str:
    """A billion laughs in a plug-in's options: 10**levels strings once expanded."""
    lines = ["name: bomb", "workload:", '  name: "docs.examples.tiny_plugin:make_workload"',
             "  options:", "    a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, expected", [
    (f"name: {'n' * 225}\n", "s.yaml: name: at most 224 characters"),
    (f"name: {'é' * 120}\n", "s.yaml: name: at most 239 bytes in UTF-8"),
    ("name: a/b\n", "s.yaml: name: must not contain '/'"),
    ("name: ''\n", "s.yaml: name: must not be empty"),
    ("tracking: {experiment: ''}\n", "s.yaml: tracking.experiment: must not be empty"),
    (f"tracking: {{experiment: {'e' * 257}}}\n", "s.yaml: tracking.experiment: at most 256 characters"),
    (alias_bomb(), "s.yaml: workload.options: more than 100000 values once YAML aliases are expanded"),
    ("workload: {options: &o {a: [*o]}}\n", "s.yaml: workload.options: refers to itself"),
    ("workload: {options: {a: " + "[" * 60 + "]" * 60 + "}}\n", "nested deeper than 50 levels"),
    ("a: " + "[" * 600 + "]" * 600 + "\n", "s.yaml: invalid YAML"),  # RecursionError
    ("training: {steps: 1.5}\n", "training.steps: Input should be a valid integer, got a number "
                                 "with a fractional part"),
])
def test_names_and_sizes_fail_in_one_line(tmp_path, text, expected):
    started = time.monotonic()
    with pytest.raises(GradtuneError) as info:
        spec_mod.load(write(tmp_path, text))
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert time.monotonic() - started < 5  # an alias bomb fails before anything expands it


def test_the_longest_name_fits_mlflow_and_the_file_system(tmp_path):
    spec = spec_mod.load(write(tmp_path, f"name: {'n' * 224}\ntracking: {{experiment: {'e' * 256}}}\n"))
    assert len(f"sweep {spec.name} 2000-01-01 00:00:00") == 250
    assert len(f"{spec.name}-20000101-000000".encode()) <= 255
    (tmp_path / f"{spec.name}-20000101-000000").mkdir()


def test_a_spec_file_is_at_most_one_mib(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("name: big\n" + "#" * (1 << 20))
    with pytest.raises(GradtuneError, match="big.yaml: a spec is at most 1 MiB"):
        spec_mod.load(path)


def test_yaml_12_exponents_are_numbers(tmp_path):
    """YAML 1.1 (PyYAML) reads ``1e12`` as a string; gradtune reads it as YAML 1.2 does."""
    spec = spec_mod.load(write(tmp_path, """
training: {steps: 1e12, optimizer: {lr: 1e-3}}
search: {trials: 2.5e1, space: {lr: [1e-3, 1E-2], init_scale: {low: 5e-1, high: 2e0}}}
workload: {name: deep_mlp, options: {depth: 2, width: 8, activation: relu}}
"""))
    assert spec.training.steps == 10**12 and isinstance(spec.training.steps, int)
    assert spec.search.trials == 25 and spec.training.optimizer.lr == 0.001
    assert spec.search.space["lr"] == [0.001, 0.01]
    assert spec.search.space["init_scale"] == Range(low=0.5, high=2.0)
    assert spec_mod.parse_set("training.steps=1e12") == ("training.steps", 1e12)
    assert spec_mod.parse_set("name=1e3x") == ("name", "1e3x")
    assert yaml.safe_load("a: 1e12") == {"a": "1e12"}  # PyYAML's own loader is untouched


def test_soft_limits_name_each_key():
    assert spec_mod.beyond(SweepSpec()) == []
    big = spec_mod.load(None, {"search.trials": 100_000, "training.steps": 10**12,
                               "search.space.batch_size": [64, 100_000]})
    assert spec_mod.beyond(big) == [
        "search.trials: 100000 trials, more than 10000",
        "training.steps: 1000000000000, more than 100000000",
        "search.space.batch_size: 100000, more than 65536",
    ]
    assert spec_mod.beyond(spec_mod.load(None, {"search.trials": 10_000, "training.steps": 10**8})) == []
    grid = spec_mod.load(None, {"search.sampler": "grid", "search.space": {
        "lr": [0.1 * (i + 1) for i in range(200)], "batch_size": list(range(1, 101)),
    }})
    assert spec_mod.beyond(grid) == ["search.space: 20000 grid points, more than 10000"]


def test_a_workload_option_in_the_space_loads_as_it_is(tmp_path):
    """Names outside the registry are workload options: the spec keeps their values (a
    list, a range or a scalar) and ``workloads.check`` judges them against the workload."""
    spec = spec_mod.load(write(tmp_path, """
workload: {name: tiny_lm}
search:
  space: {qk_norm: [false, true], z_loss: {low: 1.0e-5, high: 1.0e-3, log: true}, depth: 3}
"""))
    assert spec.search.space["qk_norm"] == [False, True]
    assert spec.search.space["z_loss"] == Range(low=1e-5, high=1e-3, log=True)
    assert spec.search.space["depth"] == 3
