"""A small ConvNet or ResNet on MNIST, FashionMNIST, CIFAR-10 or FakeData.

Two stages at 1/2 and 1/4 of the input resolution (``width`` then ``2 * width`` channels),
``depth`` conv layers (``convnet``) or basic residual blocks (``resnet``, He et al. 2016)
per stage, global average pooling and a linear classifier. The trial's ``norm`` follows every
conv (``layer`` is GroupNorm(1, C), ``group`` 32 groups as in Wu & He 2018); ``init_scale``
multiplies the He init of every conv and linear layer. Without a norm, the ResNet's signal
grows with every block, as in ``resmlp``.

Real datasets are read from ``root`` and never downloaded unless ``download: true``
(see :mod:`~gradtune.workloads.datasets`); ``dataset: fake`` needs no files.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from gradtune.workloads import datasets
from gradtune.workloads.base import Batch, MappedBatches, Workload, chunks, shuffled_batches
from gradtune.workloads.catalog import BUILTIN, resolve
from gradtune.workloads.layers import GAINS, conv_norm_layer, scale_init

SCHEMA = BUILTIN["cnn"].options
OPTIONS = BUILTIN["cnn"].defaults()


def conv(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1, self.norm1 = conv(c_in, c_out, stride), conv_norm_layer(norm, c_out)
        self.conv2, self.norm2 = conv(c_out, c_out), conv_norm_layer(norm, c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride), conv_norm_layer(norm, c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.shortcut(x) + self.norm2(self.conv2(h)))


def network(arch: str, channels: int, width: int, depth: int, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = channels
    for stage in range(2):
        c_out = width * 2**stage
        for i in range(depth):
            stride = 2 if i == 0 else 1
            if arch == "resnet":
                layers.append(BasicBlock(c_in, c_out, stride, norm))
            else:
                layers += [conv(c_in, c_out, stride), conv_norm_layer(norm, c_out), nn.ReLU()]
            c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10)]
    return nn.Sequential(*layers)


def standardise(batch: Batch, mean: Tensor, std: Tensor) -> Batch:
    """uint8 images to floats, standardised per channel (other dtypes as they are)."""
    x, y = batch
    return ((x.float().div_(255.0) - mean) / std if x.dtype == torch.uint8 else x), y


def normalised(
    batches: Iterator[Batch], mean: Tensor, std: Tensor
) -> Iterator[Batch]:
    """:func:`standardise`, batch by batch (keeps memory low)."""
    for batch in batches:
        yield standardise(batch, mean, std)


def build(
    options: dict[str, Any], params: dict[str, Any], seed: int, device: torch.device
) -> Workload:
    opts = resolve(SCHEMA, options)
    x_tr, y_tr, x_va, y_va, mean, std = datasets.load(opts, seed)
    x_tr, y_tr, x_va, y_va = (t.to(device) for t in (x_tr, y_tr, x_va, y_va))
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
    val = [next(normalised(iter([b]), mean_t, std_t)) for b in chunks(x_va, y_va, 500)]
    torch.manual_seed(seed)
    model = network(opts["arch"], x_tr.shape[1], opts["width"], opts["depth"], params["norm"])
    scale_init(model, params["init_scale"], GAINS["relu"])
    return Workload(
        model=model.to(device),
        train_batches=MappedBatches(
            shuffled_batches(x_tr, y_tr, params["batch_size"], seed),
            lambda batch: standardise(batch, mean_t, std_t),
        ),
        val_batches=val,
        loss_fn=nn.functional.cross_entropy,
        task="classification",
        reference_loss=math.log(10),
    )
