from __future__ import annotations

from pathlib import Path

import pytest
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
