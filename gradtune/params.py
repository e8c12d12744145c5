"""The hyperparameters a trial trains with: one registry of their names, kinds, allowed
values and defaults. The spec schema validates ``search.space`` against it, the spec's
training defaults come from it, :func:`trial_params` fills a sampled configuration from it,
and the README's table of parameters is checked against it (``tests/test_params.py``).

A space may also name a workload option (``qk_norm``, ``norm_position``, ...): it is not in
the registry, :func:`gradtune.workloads.check` validates it against the workload's own
option schema, and :func:`workload_options` hands the sampled value to the workload's
options. A registry name wins where a workload option has the same name (``warmup_steps``).

Torch-free, so ``gradtune validate`` stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from gradtune.spec import SweepSpec

# Implemented by gradtune.clipping, gradtune.workloads.base and gradtune.trial; their tests
# check that each implements exactly these names.
CLIP_METHODS = ("none", "norm", "value", "agc", "autoclip", "zclip")
NORMS = ("none", "batch", "layer", "group", "rms")
OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass(frozen=True)
class Param:
    """What a searchable hyperparameter accepts, and its value when the space leaves it out.

    ``applies`` says, from the other parameters, whether it means anything at all (a clip
    threshold does not without clipping); a parameter that does not apply is neither sampled
    nor logged.
    """

    kind: Literal["choice", "float", "int"]
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    strictly_positive: bool = True
    applies: Callable[[dict[str, Any]], bool] | None = None

    def check(self, name: str, value: Any) -> None:
        """Raise ``ValueError`` naming ``space.<name>`` if ``value`` does not fit.
        NaN and inf are rejected for numbers."""
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"space.{name}: {value!r} is not one of {', '.join(self.choices)}")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"space.{name}: expected a number, but got {value!r}")
        if self.kind == "int" and math.isfinite(value) and float(value) != int(value):
            raise ValueError(f"space.{name}: expected an integer, but got {value!r}")
        if not math.isfinite(value) or value < 0 or (self.strictly_positive and value <= 0):
            bound = "> 0" if self.strictly_positive else ">= 0"
            raise ValueError(f"space.{name}: expected a finite number {bound}, but got {value!r}")


def _clips(params: dict[str, Any]) -> bool:
    return bool(params.get("clip_method", PARAMS["clip_method"].default) != "none")


# The names users put in ``search.space``; they are also the MLflow param names. Order: the
# order of the README's table and of a child run's params.
PARAMS: dict[str, Param] = {
    "clip_method": Param("choice", "none", "gradient clipping method", choices=CLIP_METHODS),
    "clip_threshold": Param("float", 1.0, "the clip method's threshold (only when clipping)",
                            applies=_clips),
    "init_scale": Param("float", 1.0, "multiplier on the critical (He/LeCun) init std"),
    "norm": Param("choice", "none", "normalisation layer", choices=NORMS),
    "batch_size": Param("int", 64, "training batch size"),
    "optimizer": Param("choice", "sgd", "optimizer", choices=OPTIMIZERS),
    "lr": Param("float", 0.05, "peak learning rate"),
    "momentum": Param("float", 0.0, "SGD momentum", strictly_positive=False),
    "weight_decay": Param("float", 0.0, "weight decay", strictly_positive=False),
    "warmup_steps": Param("int", 0, "linear LR warmup steps (0: the workload's own)",
                          strictly_positive=False),
}


def applies(name: str, params: dict[str, Any]) -> bool:
    """Whether parameter ``name`` means anything given the other ``params``; a name outside
    the registry (a workload option) always does."""
    param = PARAMS.get(name)
    return param is None or param.applies is None or bool(param.applies(params))


def workload_options(params: dict[str, Any]) -> dict[str, Any]:
    """The searched workload options among a trial's ``params``: the names outside the
    registry. They override the spec's ``workload.options``."""
    return {name: value for name, value in params.items() if name not in PARAMS}


def defaults() -> dict[str, Any]:
    """Every parameter at its registry default (those that apply)."""
    values = {name: p.default for name, p in PARAMS.items()}
    return {name: v for name, v in values.items() if applies(name, values)}


def trial_params(spec: SweepSpec, config: dict[str, Any]) -> dict[str, Any]:
    """Every hyperparameter a trial trains with: the sampled ``config`` over the spec's
    training values over the registry defaults; a parameter that does not apply is dropped
    (a threshold with ``clip_method: none``); searched workload options are kept under their
    own names. These are the MLflow params of the child run."""
    opt = spec.training.optimizer
    values = {name: p.default for name, p in PARAMS.items()}
    values.update(optimizer=opt.name, lr=opt.lr, momentum=opt.momentum,
                  weight_decay=opt.weight_decay, warmup_steps=spec.training.warmup_steps)
    values.update(config)
    return {name: v for name, v in values.items() if name not in PARAMS or applies(name, values)}
