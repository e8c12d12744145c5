"""``gradtune.workloads.datasets``: the ``cnn`` workload's data, from a local root or FakeData."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest
import torch

from gradtune import workloads
from gradtune.errors import GradtuneError
from gradtune.workloads import datasets
from tests.workloads._helpers import build, one_step


def test_cnn_fake_data_is_learnable_and_fixed():
    wl = build("cnn")
    x, y = next(wl.train_batches)
    assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32
    again = build("cnn", seed=5)
    assert torch.equal(wl.val_batches[0][0], again.val_batches[0][0])  # seed: order and init only


def write_idx(path: Path, array: torch.Tensor) -> None:
    """An MNIST idx file (uint8): magic, dims, data."""
    dims = array.shape
    header = struct.pack(">I", 0x0800 + len(dims)) + b"".join(struct.pack(">I", d) for d in dims)
    path.write_bytes(header + array.to(torch.uint8).numpy().tobytes())


@pytest.fixture
def tiny_mnist(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 50), ("t10k", 20)):
        write_idx(raw / f"{split}-images-idx3-ubyte", torch.randint(0, 256, (n, 28, 28), generator=gen))
        write_idx(raw / f"{split}-labels-idx1-ubyte", torch.randint(0, 10, (n,), generator=gen))
    return tmp_path


def test_cnn_reads_a_local_mnist(tiny_mnist):
    opts = {"dataset": "mnist", "root": str(tiny_mnist), "width": 4, "depth": 1, "val_size": 10}
    workloads.check("cnn", opts)
    wl = build("cnn", opts, batch_size=16)
    x, y = next(wl.train_batches)
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32
    assert abs(x.mean().item()) < 3  # standardised, not raw bytes
    assert sum(b[0].shape[0] for b in wl.val_batches) == 10
    assert math.isfinite(one_step(wl))


def test_cnn_missing_dataset_names_the_path_and_the_flag(tmp_path):
    opts = {"dataset": "cifar10", "root": str(tmp_path / "nowhere")}
    for attempt in (lambda: workloads.check("cnn", opts), lambda: build("cnn", opts)):
        with pytest.raises(GradtuneError) as info:
            attempt()
        message = str(info.value)
        assert str(tmp_path / "nowhere") in message and "download: true" in message
        assert "\n" not in message


def test_cnn_relative_root_is_taken_from_the_original_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNE_ORIG_WORKING_DIR", str(tmp_path))
    assert datasets.root_path("data") == str(tmp_path / "data")
    assert datasets.root_path("/abs/data") == "/abs/data"
