"""The sweep spec: a validated, frozen description of one sweep.

A spec is YAML under ``sweeps/``. In ``search.space`` a scalar fixes a value, a list is a
categorical choice and ``{low, high, log}`` is a range. Unknown keys are errors naming the
key. The defaults of :class:`SweepSpec` are the quickstart sweep, so ``SweepSpec()`` is what
``python -m gradtune sweep`` runs with no SPEC (``sweeps/quickstart.yaml`` spells it out).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from gradtune.errors import GradtuneError

CLIP_METHODS = ("none", "norm", "value", "agc", "autoclip", "zclip")
NORMS = ("none", "batch", "layer", "group", "rms")
OPTIMIZERS = ("sgd", "adam", "adamw")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Frozen):
    """A numeric range; ``log`` samples on a log scale (then ``low`` must be > 0)."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> Range:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"low and high must be finite, but got {self.low=}, {self.high=}")
        if self.low >= self.high:
            raise ValueError(f"low must be below high, but got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, but got low={self.low}")
        return self


# typing.Union: the Strict* types are Annotated aliases, which do not support `|` at run time.
Scalar = Union[StrictBool, StrictInt, StrictFloat, StrictStr]  # noqa: UP007
Dimension = Union[Range, list[Scalar], Scalar]  # noqa: UP007


class Param(_Frozen):
    """What a searchable hyperparameter accepts."""

    kind: Literal["choice", "float", "int"]
    choices: tuple[str, ...] = ()
    minimum: float = 0.0
    strictly_positive: bool = True


# The names users put in ``search.space``; they are also the MLflow param names.
PARAMS: dict[str, Param] = {
    "clip_method": Param(kind="choice", choices=CLIP_METHODS),
    "clip_threshold": Param(kind="float"),
    "init_scale": Param(kind="float"),
    "norm": Param(kind="choice", choices=NORMS),
    "batch_size": Param(kind="int"),
    "lr": Param(kind="float"),
    "optimizer": Param(kind="choice", choices=OPTIMIZERS),
    "momentum": Param(kind="float", strictly_positive=False),
    "weight_decay": Param(kind="float", strictly_positive=False),
    "warmup_steps": Param(kind="int", strictly_positive=False),
}


class WorkloadSpec(_Frozen):
    name: str = "deep_mlp"
    options: dict[str, Any] = Field(
        default_factory=lambda: {"depth": 20, "width": 64, "activation": "relu"}
    )


class OptimizerSpec(_Frozen):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)


class TrainingSpec(_Frozen):
    steps: int = Field(default=300, gt=0)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    report_every: int = Field(default=10, gt=0)
    eval_every: int | None = Field(default=None, gt=0)  # None: evaluate at every report
    warmup_steps: int = Field(default=0, ge=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast; fp16 adds a grad scaler


def _default_space() -> dict[str, Any]:
    return {
        "clip_method": ["none", "norm", "value"],
        "clip_threshold": Range(low=0.01, high=10.0, log=True),
        "init_scale": Range(low=0.25, high=4.0, log=True),
        "norm": ["none", "batch", "layer"],
        "batch_size": [16, 32, 64, 128],
    }


class SearchSpec(_Frozen):
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    trials: int = Field(default=24, gt=0)
    max_concurrent: int = Field(default=2, gt=0)
    metric: Literal["val_loss", "val_accuracy", "train_loss"] = "val_loss"
    mode: Literal["min", "max"] = "min"
    seed: int | None = None  # None: training.seed
    space: dict[str, Dimension] = Field(default_factory=_default_space)

    @model_validator(mode="after")
    def _check_space(self) -> SearchSpec:
        for name, dim in self.space.items():
            check_dimension(name, dim)
        if self.sampler == "grid":
            ranges = [n for n, d in self.space.items() if isinstance(d, Range)]
            if ranges:
                raise ValueError(
                    f"space.{ranges[0]}: the grid sampler needs a list, but got a range"
                )
        return self


class ResourcesSpec(_Frozen):
    cpu: float = Field(default=1.0, gt=0)
    gpu: float = Field(default=0.0, ge=0)


class TrackingSpec(_Frozen):
    uri: str = "sqlite:///mlflow.db"
    experiment: str | None = None  # None: the spec's name


class DivergenceSpec(_Frozen):
    """When a trial counts as diverging. A threshold of ``null`` turns its rule off; the
    non-finite rule (NaN/inf loss or gradient norm) is always on."""

    enabled: bool = True  # the in-trial rules beyond NaN/inf
    grace_steps: int = Field(default=10, ge=1)  # steps that form the early baseline
    window: int = Field(default=20, ge=3)  # steps a sustained signal must last
    grad_growth: float | None = Field(default=1e3, gt=1)  # fitted growth over the window
    grad_ceiling: float | None = Field(default=1e4, gt=1)  # x the early median norm
    loss_factor: float | None = Field(default=100.0, gt=1)  # x chance-level loss, whole window
    loss_vs_best: float | None = Field(default=10.0, gt=1)  # x the trial's best loss
    update_ratio: float | None = Field(default=1.0, gt=0)  # ||dw||/||w|| of a single step
    cohort_factor: float | None = Field(default=1e3, gt=1)  # x the cohort's median at that step
    cohort_min_trials: int = Field(default=4, ge=2)
    scheduler: Literal["none", "asha", "median"] = "none"  # performance pruning
    grace_reports: int = Field(default=3, ge=1)  # reports before performance pruning


class SweepSpec(_Frozen):
    name: str = Field(default="quickstart", min_length=1)
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    divergence: DivergenceSpec = Field(default_factory=DivergenceSpec)
    storage: str | None = None  # Ray Tune storage path or URI; None: Ray's default

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def search_seed(self) -> int:
        return self.training.seed if self.search.seed is None else self.search.seed


def check_dimension(name: str, dim: Any) -> None:
    """Raise ``ValueError`` naming ``space.<name>`` if ``dim`` does not fit the parameter."""
    param = PARAMS.get(name)
    if param is None:
        raise ValueError(f"space.{name}: unknown parameter; known: {', '.join(PARAMS)}")
    values = dim if isinstance(dim, list) else [dim]
    if isinstance(dim, list) and not dim:
        raise ValueError(f"space.{name}: a choice needs at least one value")
    if isinstance(dim, Range):
        if param.kind == "choice":
            raise ValueError(f"space.{name}: a choice parameter cannot take a range")
        values = [dim.low, dim.high]
    for value in values:
        _check_value(name, param, value)


def _check_value(name: str, param: Param, value: Any) -> None:
    if param.kind == "choice":
        if value not in param.choices:
            raise ValueError(f"space.{name}: {value!r} is not one of {', '.join(param.choices)}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"space.{name}: expected a number, but got {value!r}")
    if param.kind == "int" and float(value) != int(value):
        raise ValueError(f"space.{name}: expected an integer, but got {value!r}")
    if not math.isfinite(value) or value < param.minimum or (
        param.strictly_positive and value <= 0
    ):
        bound = "> 0" if param.strictly_positive else ">= 0"
        raise ValueError(f"space.{name}: expected a finite number {bound}, but got {value!r}")


# --------------------------------------------------------------------------- loading


def load(path: str | Path | None, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Load and validate a spec; ``path=None`` gives the embedded quickstart defaults.

    ``overrides`` maps dotted keys (``training.steps``) to values and is applied before
    validation, so the resolved spec says exactly what runs. Any problem raises
    :class:`GradtuneError` with one line naming the file and the key.
    """
    source = str(path) if path is not None else "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(Path(path))
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value, source)
    return validate(raw, source)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise GradtuneError(f"{path}: cannot read spec ({exc.strerror or exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise GradtuneError(f"{path}:{where} invalid YAML") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise GradtuneError(f"{path}: a spec must be a mapping, but got {type(raw).__name__}")
    return raw


def validate(raw: dict[str, Any], source: str = "<spec>") -> SweepSpec:
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise GradtuneError(f"{source}: {describe(exc)}") from None


def describe(exc: ValidationError) -> str:
    """The first validation error as ``key.path: message``."""
    err = exc.errors()[0]
    # Drop pydantic's union-branch labels (e.g. 'Range', 'list[...]') from the location.
    loc = [str(p) for p in err["loc"] if not _is_branch_label(p)]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    key = ".".join(loc)
    if msg.startswith("space."):  # raised by SearchSpec, which knows the sub-key
        return f"{key}.{msg}"
    return f"{key}: {msg}" if key else msg


def _is_branch_label(part: Any) -> bool:
    return isinstance(part, str) and (
        part in {"Range", "str", "int", "float", "bool"}
        or part.startswith(("list[", "function-", "constrained-"))
    )


def set_dotted(raw: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set ``raw[a][b][c] = value`` for ``key='a.b.c'``, creating mappings on the way."""
    parts = key.split(".")
    if not all(parts):
        raise GradtuneError(f"{source}: --set {key}: empty part in key")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(parts[: i + 1])
            raise GradtuneError(f"{source}: --set {key}: {prefix} is not a mapping")
        node = child
    node[parts[-1]] = value


def parse_set(item: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE`` from ``--set``; VALUE is YAML (``[layer]`` is a list)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise GradtuneError(f"--set {item}: expected KEY=VALUE")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        raise GradtuneError(f"--set {item}: VALUE is not valid YAML") from None
    return key.strip(), value


def dump(spec: SweepSpec) -> str:
    """The resolved spec as YAML (what gets logged to MLflow as ``spec.yaml``)."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}``; lists stay as values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
