"""Workloads: a model, its data and its loss. Built-ins are modules in this package with
``OPTIONS`` and ``build(options, params, seed, device) -> Workload``."""

from __future__ import annotations

import importlib
from typing import Any

import torch

from gradtune.workloads.base import Workload, evaluate

BUILTIN = ("deep_mlp",)

__all__ = ["BUILTIN", "Workload", "build", "evaluate", "options_of"]


def _module(name: str) -> Any:
    if name not in BUILTIN:
        raise ValueError(f"unknown workload {name!r}; built-in: {', '.join(BUILTIN)}")
    return importlib.import_module(f"gradtune.workloads.{name}")


def options_of(name: str) -> dict[str, Any]:
    """A built-in workload's options and their defaults."""
    return dict(_module(name).OPTIONS)


def build(
    name: str, options: dict[str, Any], params: dict[str, Any], seed: int, device: torch.device
) -> Workload:
    """Build workload ``name`` with its ``options`` and the trial's hyperparameters."""
    return _module(name).build(options, params, seed, device)
