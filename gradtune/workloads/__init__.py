"""Workloads: a model, its data and its loss.

Built-ins are modules in this package, each with ``OPTIONS`` (defaults) and
``build(options, params, seed, device) -> Workload``; their option schemas live in the
torch-free :mod:`~gradtune.workloads.catalog`. A name with a colon,
``package.module:factory``, is a plug-in (see :mod:`~gradtune.workloads.plugin`).

This package imports torch only when a workload is built or evaluated, so listing and
checking workloads stays cheap for the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gradtune.errors import GradtuneError
from gradtune.params import PARAMS, workload_options
from gradtune.spec import Range
from gradtune.workloads import catalog

if TYPE_CHECKING:
    import torch

    from gradtune.workloads.base import Workload

BUILTIN = tuple(catalog.BUILTIN)

__all__ = ["BUILTIN", "Workload", "build", "check", "evaluate", "listing", "options_of"]


def is_plugin(name: str) -> bool:
    return ":" in name


def _entry(name: str) -> catalog.Entry:
    if name not in catalog.BUILTIN:
        raise GradtuneError(
            f"workload.name: unknown workload {name!r}; built-in: {', '.join(BUILTIN)}; "
            "or a plug-in as 'package.module:factory'"
        )
    return catalog.BUILTIN[name]


def options_of(name: str) -> dict[str, Any]:
    """A built-in workload's options and their defaults."""
    return _entry(name).defaults()


def check(name: str, options: dict[str, Any], space: dict[str, Any] | None = None) -> None:
    """Check a workload name and its options without building data or a model.

    Built-ins: unknown option keys, wrong types and values outside the allowed ones raise
    :class:`GradtuneError` naming ``workload.options.<key>``; ``cnn`` also checks that a
    dataset it may not download is on disk. Plug-ins: the module imports, the factory is
    callable and takes no argument gradtune cannot pass; with the sweep's ``space``, a
    searched ``norm`` needs a factory that takes ``norm``, and a searched workload option
    one that takes ``options``.

    A name in ``space`` outside the registry of hyperparameters is a workload option: for a
    built-in it must be one of the workload's options and each of its values must pass that
    option's check (a range only on a float option), else :class:`GradtuneError` names
    ``search.space.<name>``.
    """
    if is_plugin(name):
        from gradtune.workloads import plugin

        plugin.check(name, options, space or {})
        return
    schema = _entry(name).options
    resolved = catalog.resolve(schema, options)
    for key, dim in (space or {}).items():
        if key not in PARAMS:
            _check_searched(name, schema, options, key, dim)
    if name == "cnn":
        from gradtune.workloads import datasets

        datasets.check(resolved)


def _check_searched(
    name: str, schema: dict[str, catalog.Option], options: dict[str, Any], key: str, dim: Any
) -> None:
    if key not in schema:
        raise GradtuneError(
            f"search.space.{key}: unknown parameter; known: {', '.join(PARAMS)}, and the "
            f"options of workload {name}: {', '.join(schema)}"
        )
    if isinstance(dim, Range):
        kind = type(schema[key].default)
        if kind is not float:
            raise GradtuneError(f"search.space.{key}: a range needs a float option, but {key} "
                                f"is {kind.__name__}; list its values instead")
        dim = [dim.low, dim.high]
    for value in dim if isinstance(dim, list) else [dim]:
        catalog.resolve(schema, {**options, key: value}, where="search.space")


def build(
    name: str, options: dict[str, Any], params: dict[str, Any], seed: int, device: torch.device
) -> Workload:
    """Build workload ``name`` with its ``options`` and the trial's hyperparameters; the
    workload options among ``params`` (searched ones) override ``options``."""
    options = {**options, **workload_options(params)}
    if is_plugin(name):
        from gradtune.workloads import plugin

        return plugin.build(name, options, params, seed, device)
    _entry(name)
    module = importlib.import_module(f"gradtune.workloads.{name}")
    workload: Workload = module.build(options, params, seed, device)
    return workload


def evaluate(workload: Workload) -> dict[str, float]:
    """Validation loss and, for classification, accuracy (see ``base.evaluate``)."""
    from gradtune.workloads.base import evaluate as _evaluate

    return _evaluate(workload)


def listing() -> str:
    """What ``gradtune workloads`` prints: each built-in, its summary and its options
    (default and type or choices), then the plug-in form."""
    lines: list[str] = []
    for name, entry in catalog.BUILTIN.items():
        lines.append(f"{name:13s} {entry.summary}")
        for key, opt in entry.options.items():
            lines.append(f"  {key:14s} {opt.default!s:8s} {opt.describe():32s} {opt.help}")
    lines.append("plug-in       package.module:factory: your own model and data "
                 "(docs/plugins.md)")
    return "\n".join(lines)


def __getattr__(name: str) -> Any:
    # ``workloads.Workload`` without importing torch at package import.
    if name == "Workload":
        from gradtune.workloads.base import Workload

        return Workload
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
