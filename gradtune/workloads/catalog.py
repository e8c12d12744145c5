"""The built-in workloads and their options, as plain data.

No torch here: the CLI lists the workloads and checks a spec's ``workload.options`` before a
sweep starts without paying for the torch import. Each workload module reads its schema
from :data:`BUILTIN` and resolves its options with :func:`resolve`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gradtune.errors import GradtuneError


@dataclass(frozen=True)
class Option:
    """One workload option: its default (whose type is the option's type), the values a
    string option may take, and the smallest value a number may take."""

    default: Any
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None

    def describe(self) -> str:
        if self.choices:
            return "|".join(self.choices)
        kind = type(self.default).__name__
        return f"{kind} >= {self.minimum:g}" if self.minimum is not None else kind


@dataclass(frozen=True)
class Entry:
    summary: str
    options: dict[str, Option] = field(default_factory=dict)

    def defaults(self) -> dict[str, Any]:
        return {name: opt.default for name, opt in self.options.items()}


def resolve(
    schema: dict[str, Option], options: dict[str, Any], where: str = "workload.options"
) -> dict[str, Any]:
    """``options`` over the schema's defaults, each checked; an unknown key, a wrong type,
    a value outside ``choices`` or below ``minimum`` raises :class:`GradtuneError` naming
    ``<where>.<key>`` (``workload.options.<key>``). An int is accepted where a float is
    expected."""
    unknown = sorted(set(options) - set(schema))
    if unknown:
        raise GradtuneError(f"{where}.{unknown[0]}: unknown option; known: {', '.join(schema)}")
    resolved: dict[str, Any] = {}
    for name, opt in schema.items():
        value = options.get(name, opt.default)
        kind = type(opt.default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise GradtuneError(f"{where}.{name}: expected {kind.__name__}, but got {value!r}")
        if opt.choices and value not in opt.choices:
            raise GradtuneError(
                f"{where}.{name}: {value!r} is not one of {', '.join(opt.choices)}"
            )
        if opt.minimum is not None and value < opt.minimum:
            raise GradtuneError(f"{where}.{name}: expected >= {opt.minimum:g}, but got {value!r}")
        resolved[name] = value
    return resolved


NORM_POSITIONS = ("pre", "post")

BUILTIN: dict[str, Entry] = {
    "deep_mlp": Entry(
        "plain MLP on scikit-learn digits: the He/Schoenholz depth-scale experiment",
        {
            "depth": Option(20, "hidden layers", minimum=0),
            "width": Option(64, "units per hidden layer", minimum=1),
            "activation": Option("relu", "nonlinearity", choices=("relu", "tanh")),
        },
    ),
    "rnn_adding": Entry(
        "vanilla RNN on the adding problem (synthetic): Pascanu 2013, Le 2015",
        {
            "cell": Option("tanh", "tanh, relu (He init) or irnn (ReLU, identity recurrence)",
                           choices=("tanh", "relu", "irnn")),
            "hidden": Option(64, "hidden units", minimum=1),
            "seq_len": Option(20, "sequence length", minimum=2),
        },
    ),
    "resmlp": Entry(
        "residual MLP on scikit-learn digits: sqrt(3) growth per block, Pre-LN, Fixup",
        {
            "blocks": Option(16, "residual blocks (two linear layers each)", minimum=1),
            "width": Option(64, "units per layer", minimum=1),
            "norm_position": Option("pre", "where the `norm` layer sits in a block",
                                    choices=NORM_POSITIONS),
            "fixup": Option(False, "Fixup init (Zhang et al. 2019): zero last layer per block, "
                                   "L^-1/2 first layer, scalar biases and multipliers"),
        },
    ),
    "transformer": Entry(
        "tiny transformer encoder on synthetic sequence reversal: Xiong et al. 2020",
        {
            "layers": Option(4, "transformer blocks", minimum=1),
            "d_model": Option(32, "model width", minimum=2),
            "heads": Option(4, "attention heads (must divide d_model)", minimum=1),
            "norm_position": Option("post", "Post-LN (original) or Pre-LN", choices=NORM_POSITIONS),
            "warmup_steps": Option(0, "LR warmup steps when the spec sets none", minimum=0),
            "seq_len": Option(16, "tokens per sequence", minimum=2),
            "vocab": Option(16, "token vocabulary", minimum=2),
        },
    ),
    "cnn": Entry(
        "small ConvNet/ResNet on MNIST, FashionMNIST, CIFAR-10 (local root) or FakeData",
        {
            "dataset": Option("mnist", "torchvision dataset under `root`, or fake (FakeData)",
                              choices=("mnist", "fashion_mnist", "cifar10", "fake")),
            "root": Option("data", "dataset folder (relative to the directory you run from)"),
            "download": Option(False, "download the dataset into `root` if it is missing"),
            "arch": Option("convnet", "plain ConvNet or basic-block ResNet",
                           choices=("convnet", "resnet")),
            "width": Option(16, "channels of the first stage (doubled at each stage)", minimum=1),
            "depth": Option(2, "conv layers (convnet) or residual blocks (resnet) per stage",
                            minimum=1),
            "train_size": Option(0, "training examples used (0: all)", minimum=0),
            "val_size": Option(500, "validation examples (from the test split)", minimum=1),
        },
    ),
    "tiny_lm": Entry(
        "byte-level decoder LM on the standard library's source: attention-logit growth and "
        "qk-layernorm (Wortsman et al. 2023)",
        {
            "depth": Option(2, "transformer blocks (Pre-LN with the trial's `norm`)", minimum=1),
            "width": Option(64, "model width", minimum=2),
            "heads": Option(4, "attention heads (must divide width)", minimum=1),
            "context": Option(64, "bytes of context", minimum=2),
            "qk_norm": Option(False, "LayerNorm on each head's queries and keys (qk-layernorm)"),
            "z_loss": Option(0.0, "coefficient of the z-loss, mean (log Z)^2 of the output "
                                  "logits, added to the training loss", minimum=0),
            "corpus_kb": Option(448, "KiB of standard-library source read, 10% held out",
                                minimum=16),
        },
    ),
}
