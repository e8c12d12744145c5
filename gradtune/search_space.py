"""From the spec's ``search.space`` to what Optuna samples: a define-by-run function, or the
points of a grid. (A sample's full set of hyperparameters is :func:`gradtune.params.trial_params`.)

The space is define-by-run: ``clip_threshold`` is only sampled when the sampled
``clip_method`` clips (it has no meaning for ``none``), so Optuna never learns from a
threshold that did nothing. A workload option (a name outside :data:`gradtune.params.PARAMS`)
is sampled like the others; its range is a float range (``workloads.check`` allows ranges
on float options only).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from gradtune.params import PARAMS, applies
from gradtune.spec import Range

if TYPE_CHECKING:
    import optuna


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
            if not applies(name, {**fixed, **chosen}):
                continue
            dim = self.space[name]
            if isinstance(dim, Range):
                if name in PARAMS and PARAMS[name].kind == "int":
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
            if not applies(name, point):
                continue
            point[name] = value
        key = tuple(sorted(point.items()))
        if key not in seen:
            seen.add(key)
            points.append(point)
    return points


def _ordered(space: dict[str, Any]) -> list[str]:
    # Conditions read earlier parameters, so conditional ones go last.
    return sorted(space, key=lambda name: name in PARAMS and PARAMS[name].applies is not None)
