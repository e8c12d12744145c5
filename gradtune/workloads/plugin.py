"""Bring your own model: ``workload.name: "package.module:factory"``.

gradtune imports ``package.module`` (with the current directory on ``sys.path``, as
``python -m`` has it) and calls ``factory`` with the keyword arguments its signature names,
out of :data:`ARGUMENTS` (all of them if it takes ``**kwargs``). The factory returns either
a :class:`~gradtune.workloads.base.Workload` or the parts of one:

- a dict with ``model``, ``train``, ``val``, ``loss`` and optionally ``task``
  (``classification``, the default, or ``regression``) and ``reference_loss``;
- or a tuple ``(model, train, val, loss)``.

``train``/``val`` may be a DataLoader, a Dataset (batched here with the trial's
``batch_size``, shuffled with its seed) or any iterable of ``(x, y)`` batches. Training data
is cycled epoch after epoch; validation data is read once and kept. Batches and the model
are moved to the trial's device. ``reference_loss`` defaults to ``ln(classes)`` for
classification (classes from the model's output on the first validation batch) and to the
variance of the validation targets (the MSE of predicting their mean) for regression.

The knobs: clipping always applies (it acts on gradients). ``init_scale``: a factory that
takes ``init_scale`` applies it itself; otherwise gradtune multiplies the initial weight of
every Linear/Conv layer by it (1.0 changes nothing). ``norm``: only a factory that takes
``norm`` can honour it; asking for another norm than ``none`` from one that does not is an
error. Every mistake in the plug-in's shape raises :class:`GradtuneError` in one line.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from gradtune.errors import GradtuneError
from gradtune.params import PARAMS
from gradtune.workloads.base import Batch, Workload
from gradtune.workloads.layers import rescale_init

# What a factory may ask for, by parameter name.
ARGUMENTS = ("options", "params", "seed", "device", "init_scale", "norm", "batch_size")
PARTS = ("model", "train", "val", "loss")
OPTIONAL_PARTS = ("task", "reference_loss")
VAL_BATCH = 512


def _fail(name: str, message: str) -> GradtuneError:
    return GradtuneError(f"workload.name {name}: {message}")


def load_factory(name: str) -> Callable[..., Any]:
    """Import ``module:attr`` and return the callable; one-line errors otherwise."""
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr or ":" in attr:
        raise _fail(name, "a plug-in is 'package.module:factory'")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # what `python -m gradtune` already has
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or anything the module raises while importing
        detail = str(exc) if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        own = missing is not None and f"{module_name}.".startswith(f"{missing}.")
        where = f"; plug-ins are imported from {os.getcwd()} and the installed packages" if own else ""
        raise _fail(name, f"cannot import module {module_name!r} ({detail}){where}") from None
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise _fail(name, f"module {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise _fail(name, f"{attr!r} is a {type(factory).__name__}, not a callable factory")
    return factory


def accepted(name: str, factory: Callable[..., Any]) -> set[str]:
    """The arguments of :data:`ARGUMENTS` the factory takes; an error if it requires one
    gradtune does not pass."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return set(ARGUMENTS)  # a builtin or C callable: assume it takes keywords
    params = sig.parameters.values()
    for p in params:
        required = p.default is inspect.Parameter.empty and p.kind not in (
            inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        if required and (p.name not in ARGUMENTS or p.kind is inspect.Parameter.POSITIONAL_ONLY):
            raise _fail(name, f"the factory requires argument {p.name!r}, which gradtune does "
                              f"not pass; it may take: {', '.join(ARGUMENTS)}")
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return set(ARGUMENTS)
    return {p.name for p in params
            if p.name in ARGUMENTS and p.kind is not inspect.Parameter.POSITIONAL_ONLY}


def check(name: str, options: dict[str, Any], space: dict[str, Any]) -> None:
    """Import and inspect the factory without calling it; with the sweep's ``space``, a
    searched or fixed ``norm`` other than ``none`` needs a factory that takes ``norm``, and
    a searched workload option (a name outside the registry) one that takes ``options``."""
    takes = accepted(name, load_factory(name))
    searched = [key for key in space if key not in PARAMS]
    if searched and "options" not in takes:
        raise GradtuneError(
            f"search.space.{searched[0]}: the plug-in {name} takes no `options` argument, "
            "so it cannot take a searched workload option"
        )
    norms = space.get("norm", [])
    norms = norms if isinstance(norms, list) else [norms]
    if "norm" not in takes and any(n != "none" for n in norms):
        raise GradtuneError(
            f"search.space.norm: the plug-in {name} does not take a `norm` argument, "
            "so it cannot change its normalisation; leave norm out of the space"
        )


def build(
    name: str, options: dict[str, Any], params: dict[str, Any], seed: int, device: torch.device
) -> Workload:
    factory = load_factory(name)
    takes = accepted(name, factory)
    if params["norm"] != "none" and "norm" not in takes:
        raise GradtuneError(
            f"norm: {params['norm']!r} asked, but the plug-in {name} takes no `norm` argument"
        )
    offered = {
        "options": dict(options), "params": dict(params), "seed": seed, "device": device,
        "init_scale": params["init_scale"], "norm": params["norm"],
        "batch_size": params["batch_size"],
    }
    torch.manual_seed(seed)
    returned = factory(**{k: v for k, v in offered.items() if k in takes})
    if isinstance(returned, Workload):
        workload = returned
        workload.model.to(device)
    else:
        workload = assemble(name, returned, params["batch_size"], seed, device)
    if "init_scale" not in takes:
        rescale_init(workload.model, params["init_scale"])
    return workload


def assemble(
    name: str, returned: Any, batch_size: int, seed: int, device: torch.device
) -> Workload:
    """A Workload from a factory's dict or 4-tuple."""
    parts = _parts(name, returned)
    model = parts["model"]
    if not isinstance(model, nn.Module):
        raise _fail(name, f"'model' must be a torch.nn.Module, but got {type(model).__name__}")
    if not callable(parts["loss"]):
        raise _fail(name, f"'loss' must be callable, but got {type(parts['loss']).__name__}")
    task = parts.get("task", "classification")
    if task not in ("classification", "regression"):
        raise _fail(name, f"'task' must be classification or regression, but got {task!r}")
    model.to(device)
    val = [_to(batch, device) for batch in _batches(name, "val", parts["val"], VAL_BATCH, None)]
    if not val:
        raise _fail(name, "'val' holds no batches")
    reference = parts.get("reference_loss")
    return Workload(
        model=model,
        train_batches=endless(name, _batches(name, "train", parts["train"], batch_size, seed),
                              device),
        val_batches=val,
        loss_fn=parts["loss"],
        task=task,
        reference_loss=float(reference) if reference is not None else trivial_loss(model, val, task),
    )


def _parts(name: str, returned: Any) -> dict[str, Any]:
    expected = ("a Workload, a dict with keys model, train, val, loss, or a tuple "
                "(model, train, val, loss)")
    if isinstance(returned, dict):
        missing = [k for k in PARTS if k not in returned]
        unknown = sorted(set(returned) - set(PARTS) - set(OPTIONAL_PARTS))
        if missing or unknown:
            what = f"lacks {missing[0]!r}" if missing else f"has unknown key {unknown[0]!r}"
            raise _fail(name, f"the factory's dict {what}; expected {expected}")
        return returned
    if isinstance(returned, tuple) and len(returned) == len(PARTS):
        return dict(zip(PARTS, returned))
    got = f"a tuple of {len(returned)}" if isinstance(returned, tuple) else type(returned).__name__
    raise _fail(name, f"the factory returned {got}; expected {expected}")


def _batches(
    name: str, what: str, data: Any, batch_size: int, seed: int | None
) -> Iterable[Any]:
    if isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        return DataLoader(data, batch_size=batch_size, shuffle=seed is not None,
                          generator=gen, drop_last=seed is not None)
    if isinstance(data, Iterable):
        return data
    raise _fail(name, f"'{what}' must be a DataLoader, a Dataset or an iterable of (x, y) "
                      f"batches, but got {type(data).__name__}")


def endless(name: str, source: Iterable[Any], device: torch.device) -> Iterator[Batch]:
    """Batches on ``device``, epoch after epoch. A one-shot iterator (a generator) is
    used as it is and must not run out."""
    if iter(source) is source:  # an iterator: cannot be restarted
        for batch in source:
            yield _to(batch, device)
        raise _fail(name, "'train' ran out of batches; return a DataLoader, a Dataset or a "
                          "list, or a generator that never ends")
    for epoch in itertools.count():
        empty = True
        for batch in source:
            empty = False
            yield _to(batch, device)
        if empty:
            raise _fail(name, f"'train' holds no batches (epoch {epoch})")


def _to(batch: Any, device: torch.device) -> Batch:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise GradtuneError(
            f"workload: a batch must be a pair (x, y), but got {type(batch).__name__}"
            + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        )
    x, y = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


@torch.no_grad()
def trivial_loss(model: nn.Module, val: list[Batch], task: str) -> float:
    """Chance-level cross-entropy ``ln(classes)``, or the variance of the targets (the MSE
    of always predicting their mean). NaN if it cannot be told; the loss rules then skip
    the comparison with chance."""
    if task == "regression":
        targets = torch.cat([y.flatten().float() for _, y in val])
        return float(targets.var(unbiased=False)) if targets.numel() > 1 else math.nan
    was_training = model.training
    model.eval()
    out: Tensor = model(val[0][0])
    model.train(was_training)
    classes = out.shape[-1] if out.ndim >= 2 else 0
    return math.log(classes) if classes > 1 else math.nan
