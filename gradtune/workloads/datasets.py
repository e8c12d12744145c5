"""Image datasets for the ``cnn`` workload: torchvision's MNIST, FashionMNIST and CIFAR-10
read from a local ``root``, or a FakeData set that needs no files.

Nothing is downloaded unless the options say ``download: true``; a missing dataset raises
:class:`GradtuneError` naming the folder and that option. :func:`check` looks for the files
without importing torch, so the CLI can fail before a sweep starts.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

from gradtune.errors import GradtuneError

# Files torchvision looks for under root (see its ``_check_exists``/``_check_integrity``).
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FILES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(f"MNIST/raw/{f}" for f in _MNIST_FILES),
    "fashion_mnist": tuple(f"FashionMNIST/raw/{f}" for f in _MNIST_FILES),
    "cifar10": tuple(f"cifar-10-batches-py/{f}" for f in
                     ("batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6)))),
}
NAMES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}
# Per-channel mean and std of the training split (the usual constants).
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
FAKE_SHAPE = (1, 28, 28)
FAKE_TRAIN = 2048
FAKE_SIGNAL = 0.2  # amplitude of the class pattern added to FakeData's noise


def root_path(root: str) -> str:
    """``root`` as an absolute path. A relative root is taken from the directory the sweep
    was started in: a Ray Tune trial runs in its own directory but keeps the original one
    in ``TUNE_ORIG_WORKING_DIR``."""
    root = os.path.expanduser(root)
    if os.path.isabs(root):
        return root
    return os.path.join(os.environ.get("TUNE_ORIG_WORKING_DIR", os.getcwd()), root)


def missing(dataset: str, root: str) -> GradtuneError:
    return GradtuneError(
        f"workload.options.root: {NAMES[dataset]} not found under {root} "
        f"(set workload.options.download: true to download it there, or dataset: fake)"
    )


def check(opts: dict[str, Any]) -> None:
    """Raise the missing-dataset error if the files are absent and may not be downloaded."""
    dataset = opts["dataset"]
    if dataset == "fake" or opts["download"]:
        return
    root = root_path(opts["root"])
    if not all(os.path.isfile(os.path.join(root, f)) for f in FILES[dataset]):
        raise missing(dataset, root)


def load(opts: dict[str, Any], seed: int) -> tuple[Any, ...]:
    """``(x_train, y_train, x_val, y_val, mean, std)``: images as uint8 ``(N, C, H, W)``
    (float for fake), labels as int64, the validation set from the test split.

    Cached per process (Ray reuses a worker for several trials): the tensors are never
    modified in place by the workload."""
    data = {k: opts[k] for k in DATA_OPTIONS}
    # The seed only picks the training subset.
    return _load(tuple(data.items()), seed if opts["train_size"] else 0)


DATA_OPTIONS = ("dataset", "root", "download", "train_size", "val_size")


@functools.lru_cache(maxsize=2)
def _load(key: tuple[tuple[str, Any], ...], seed: int) -> tuple[Any, ...]:
    import torch

    opts = dict(key)
    if opts["dataset"] == "fake":
        return fake(opts)
    check(opts)
    train, test = _torchvision(opts)
    x_tr, y_tr = _tensors(train)
    x_va, y_va = _tensors(test)
    if opts["train_size"]:
        keep = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(seed))
        x_tr, y_tr = x_tr[keep[: opts["train_size"]]], y_tr[keep[: opts["train_size"]]]
    n_val = opts["val_size"]
    mean, std = STATS[opts["dataset"]]
    return x_tr, y_tr, x_va[:n_val], y_va[:n_val], mean, std


def _torchvision(opts: dict[str, Any]) -> tuple[Any, Any]:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST,
           "cifar10": datasets.CIFAR10}[opts["dataset"]]
    root = root_path(opts["root"])
    try:
        return (cls(root, train=True, download=opts["download"]),
                cls(root, train=False, download=opts["download"]))
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted ..."
        if opts["download"]:
            raise GradtuneError(
                f"workload.options.download: could not get {NAMES[opts['dataset']]} "
                f"into {root} ({exc})"
            ) from None
        raise missing(opts["dataset"], root) from None


def _tensors(ds: Any) -> tuple[Any, Any]:
    import torch

    data = torch.as_tensor(ds.data)
    x = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)  # MNIST / CIFAR
    return x.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)


def fake(opts: dict[str, Any]) -> tuple[Any, ...]:
    """torchvision's FakeData (random images, random labels) plus a class pattern: a
    sinusoidal grating whose orientation and frequency depend on the label, so a ConvNet
    has something to learn. Fixed data: the trial seed only changes order and init."""
    import torch
    from torchvision import datasets, transforms

    n_train = opts["train_size"] or FAKE_TRAIN
    to_tensor = transforms.PILToTensor()

    def split(size: int, offset: int) -> tuple[Any, Any]:
        ds = datasets.FakeData(size, FAKE_SHAPE, 10, transform=to_tensor, random_offset=offset)
        pairs = [ds[i] for i in range(size)]
        x = torch.stack([p[0] for p in pairs]).float().div_(255.0)
        y = torch.tensor([p[1] for p in pairs], dtype=torch.long)
        x = (x - x.mean()) / x.std()
        return x + FAKE_SIGNAL * _gratings()[y], y

    x_tr, y_tr = split(n_train, 0)
    x_va, y_va = split(opts["val_size"], n_train)
    return x_tr, y_tr, x_va, y_va, (0.0,), (1.0,)


def _gratings() -> Any:
    import torch

    _, h, w = FAKE_SHAPE
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    patterns = []
    for c in range(10):
        angle, freq = math.pi * (c % 5) / 5, 2.0 + 2.0 * (c // 5)
        phase = (cols * math.cos(angle) + rows * math.sin(angle)) * 2 * math.pi * freq / w
        patterns.append(torch.sin(phase))
    return torch.stack(patterns).unsqueeze(1)  # (10, 1, H, W)
