"""Shared fixtures. End-to-end tests share one local Ray session (starting Ray costs
seconds) and each get their own MLflow SQLite store in a temporary directory."""

from __future__ import annotations

import os

# Ray reads this on import: the tests' own local Ray listens on loopback only (on Linux Ray
# otherwise advertises the routable IP and listens on every interface).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
from pathlib import Path
from typing import Any

import pytest
import torch

from gradtune import spec as spec_mod

# In-process training gets one thread, as a trial with resources.cpu=1 does; two threads
# on this 2-core machine, beside Ray workers, made tests 10x slower.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if ray.is_initialized():
        yield ray
        return
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def _drawer_stopped():
    """The report's process that sweeps in this session started (gradtune.drawer) ends
    with the session."""
    yield
    from gradtune import drawer

    drawer.stop()


@pytest.fixture
def tiny_spec(tmp_path: Path):
    """``tiny_spec(**dotted_overrides)``: a short sweep writing into ``tmp_path``."""

    def make(**overrides: Any) -> spec_mod.SweepSpec:
        return _tiny(tmp_path, overrides)

    return make


def _tiny(tmp_path: Path, overrides: dict[str, Any]) -> spec_mod.SweepSpec:
    base = {
        "training.steps": 40,
        "training.report_every": 5,
        "search.trials": 4,
        "search.max_concurrent": 2,
        "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "storage": str(tmp_path / "ray_results"),
        "workload.options": {"depth": 6, "width": 32, "activation": "relu"},
    }
    base.update(overrides)
    return spec_mod.load(None, base)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


os.environ.setdefault("RAY_DEDUP_LOGS", "0")
