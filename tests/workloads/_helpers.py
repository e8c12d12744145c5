"""What the workload tests share: small but complete versions of each built-in, and one
SGD step."""

from __future__ import annotations

from pathlib import Path

import torch

from gradtune.workloads import probes

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")

# Small but complete versions of each built-in.
SMALL = {
    "deep_mlp": {"depth": 3, "width": 16},
    "rnn_adding": {"hidden": 8, "seq_len": 6},
    "resmlp": {"blocks": 2, "width": 16},
    "transformer": {"layers": 1, "d_model": 8, "heads": 2, "seq_len": 5, "vocab": 6},
    "cnn": {"dataset": "fake", "width": 4, "depth": 1, "train_size": 64, "val_size": 32},
    "tiny_lm": {"depth": 1, "width": 8, "heads": 2, "context": 8, "corpus_kb": 16},
}
NORMS = ("none", "batch", "layer", "group", "rms")


def build(name, options=None, **params):
    return probes.make(name, SMALL[name] if options is None else options, **params)


def one_step(wl):
    opt = torch.optim.SGD(wl.model.parameters(), lr=0.01)
    x, y = next(wl.train_batches)
    loss = wl.loss_fn(wl.model(x), y)
    loss.backward()
    opt.step()
    return loss.item()
