"""From the spec's ``search.space`` to what Optuna samples, and from a sample to the full
set of hyperparameters a trial trains with.

The space is define-by-run: ``clip_threshold`` is only sampled when the sampled
``clip_method`` clips (it has no meaning for ``none``), so Optuna never learns from a
threshold that did nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gradtune.spec import PARAMS, Range, SweepSpec

if TYPE_CHECKING:
    import optuna

# Parameters that only mean something when another one has a certain value.
CONDITIONS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "clip_threshold": lambda params: params.get("clip_method", "none") != "none",
}


class DefineByRun:
    """An Optuna define-by-run function for ``space`` (a class, so Tune can pickle it
    when it checkpoints the searcher).

    Lists become ``suggest_categorical``, ranges ``suggest_float``/``suggest_int``; scalars
    are returned as constants (Ray Tune's ``OptunaSearch`` merges them into the config),
    so every trial's config names every parameter of the space that applies to it.
    """

    def __init__(self, space: dict[str, Any]) -> None:
        self.space = dict(space)

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        fixed: dict[str, Any] = {}
        chosen: dict[str, Any] = {}
        for name in _ordered(self.space):
            if name in CONDITIONS and not CONDITIONS[name]({**fixed, **chosen}):
                continue
            dim = self.space[name]
            if isinstance(dim, Range):
                if PARAMS[name].kind == "int":
                    chosen[name] = trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log)
                else:
                    chosen[name] = trial.suggest_float(name, dim.low, dim.high, log=dim.log)
            elif isinstance(dim, list):
                chosen[name] = trial.suggest_categorical(name, dim)
            else:
                fixed[name] = dim
        return fixed


def define_by_run(space: dict[str, Any]) -> DefineByRun:
    return DefineByRun(space)


def grid_points(space: dict[str, Any]) -> list[dict[str, Any]]:
    """The full product of a grid space, each point once.

    Conditional parameters are dropped where they do not apply, so ``clip_method: [none,
    norm]`` with three thresholds gives 1 + 3 points, not 6. Ranges are rejected by the spec.
    """
    names = _ordered(space)
    choices = [space[n] if isinstance(space[n], list) else [space[n]] for n in names]
    points: list[dict[str, Any]] = []
    seen: set[tuple[tuple[str, Any], ...]] = set()
    for combo in itertools.product(*choices):
        point: dict[str, Any] = {}
        for name, value in zip(names, combo):
            if name in CONDITIONS and not CONDITIONS[name](point):
                continue
            point[name] = value
        key = tuple(sorted(point.items()))
        if key not in seen:
            seen.add(key)
            points.append(point)
    return points


def _ordered(space: dict[str, Any]) -> list[str]:
    # Conditions read earlier parameters, so conditional ones go last.
    return sorted(space, key=lambda name: name in CONDITIONS)


def trial_params(spec: SweepSpec, config: dict[str, Any]) -> dict[str, Any]:
    """Every hyperparameter a trial trains with: the sampled ``config`` over the spec's
    training values and the defaults. These are the MLflow params of the child run."""
    opt = spec.training.optimizer
    params: dict[str, Any] = {
        "clip_method": "none",
        "init_scale": 1.0,
        "norm": "none",
        "batch_size": 64,
        "optimizer": opt.name,
        "lr": opt.lr,
        "momentum": opt.momentum,
        "weight_decay": opt.weight_decay,
        "warmup_steps": spec.training.warmup_steps,
    }
    params.update(config)
    if params["clip_method"] == "none":
        params.pop("clip_threshold", None)
    else:
        params.setdefault("clip_threshold", 1.0)
    return params
