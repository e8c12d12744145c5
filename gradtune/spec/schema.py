"""The sweep spec's schema: a validated, frozen description of one sweep.

In ``search.space`` a scalar fixes a value, a list is a categorical choice and ``{low, high,
log}`` is a range; the parameters and what they accept are :mod:`gradtune.params`'s. Any
other name is a workload option; what it accepts is the workload's to say, and
:func:`gradtune.workloads.check` checks it before a sweep starts.
Unknown keys are errors naming the key. The defaults of :class:`SweepSpec` are the
quickstart sweep, so ``SweepSpec()`` is what ``python -m gradtune sweep`` runs with no SPEC
(``sweeps/quickstart.yaml`` spells it out). Reading YAML and ``--set`` is
:mod:`gradtune.spec.loading`'s.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gradtune.params import OPTIMIZERS, PARAMS
from gradtune.spec import limits


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Frozen):
    """A numeric range; ``log`` samples on a log scale (then ``low`` must be > 0)."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> Range:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"low and high must be finite, but got {self.low=}, {self.high=}")
        if self.low >= self.high:
            raise ValueError(f"low must be below high, but got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, but got low={self.low}")
        return self


# typing.Union: the Strict* types are Annotated aliases, which do not support `|` at run time.
Scalar = Union[StrictBool, StrictInt, StrictFloat, StrictStr]  # noqa: UP007
Dimension = Union[Range, list[Scalar], Scalar]  # noqa: UP007


class WorkloadSpec(_Frozen):
    name: str = "deep_mlp"
    options: dict[str, Any] = Field(
        default_factory=lambda: {"depth": 20, "width": 64, "activation": "relu"}
    )

    @field_validator("options")
    @classmethod
    def _bounded(cls, options: dict[str, Any]) -> dict[str, Any]:
        return limits.check_options(options)  # a plug-in's options are free-form


class OptimizerSpec(_Frozen):
    """The optimizer of every trial unless the space searches it; defaults from the registry."""

    name: str = PARAMS["optimizer"].default
    lr: float = Field(default=PARAMS["lr"].default, gt=0)
    momentum: float = Field(default=PARAMS["momentum"].default, ge=0, lt=1)
    weight_decay: float = Field(default=PARAMS["weight_decay"].default, ge=0)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in OPTIMIZERS:
            raise ValueError(f"{name!r} is not one of {', '.join(OPTIMIZERS)}")
        return name


CHECKPOINT_EVERY = 50  # steps; the default checkpoint interval (docs/performance.md: its cost)


class TrainingSpec(_Frozen):
    steps: int = Field(default=300, gt=0)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    report_every: int = Field(default=10, gt=0)
    eval_every: int | None = Field(default=None, gt=0)  # None: evaluate at every report
    warmup_steps: int = Field(default=PARAMS["warmup_steps"].default, ge=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast; fp16 adds a grad scaler
    # Steps between trial checkpoints (0 or null: none); a multiple of report_every. Not
    # given: CHECKPOINT_EVERY rounded up to a multiple of report_every.
    checkpoint_every: int | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _default_checkpoint_every(cls, data: Any) -> Any:
        if isinstance(data, dict) and "checkpoint_every" not in data:
            every = data.get("report_every", cls.model_fields["report_every"].default)
            if isinstance(every, int) and every > 0:
                data = {**data, "checkpoint_every": -(-CHECKPOINT_EVERY // every) * every}
        return data

    @field_validator("checkpoint_every")
    @classmethod
    def _multiple_of_report_every(cls, every: int | None, info: ValidationInfo) -> int | None:
        report_every = info.data.get("report_every")
        if every and report_every and every % report_every:
            raise ValueError(f"must be a multiple of training.report_every ({report_every}), "
                             f"but got {every}")
        return every


def _default_space() -> dict[str, Any]:
    return {
        "clip_method": ["none", "norm", "value"],
        "clip_threshold": Range(low=0.01, high=10.0, log=True),
        "init_scale": Range(low=0.25, high=4.0, log=True),
        "norm": ["none", "batch", "layer"],
        "batch_size": [16, 32, 64, 128],
    }


MAX_SEEDS = 16  # seeds per configuration: they share one trial's resources


class SearchSpec(_Frozen):
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    trials: int = Field(default=24, gt=0)
    max_concurrent: int = Field(default=2, gt=0)
    metric: Literal["val_loss", "val_accuracy", "train_loss"] = "val_loss"
    mode: Literal["min", "max"] = "min"
    seed: int | None = None  # None: training.seed
    space: dict[str, Dimension] = Field(default_factory=_default_space)
    # Training seeds per configuration (training.seed + i), run in one trial in lockstep
    # (gradtune.multiseed); 1: one seed, exactly as without the key.
    seeds: int = Field(default=1, ge=1, le=MAX_SEEDS)
    # The objective over the seeds that did not diverge: their mean, or the worst of them.
    seed_aggregate: Literal["mean", "worst"] = "mean"

    @model_validator(mode="after")
    def _check_space(self) -> SearchSpec:
        for name, dim in self.space.items():
            check_dimension(name, dim)
        if self.sampler == "grid":
            ranges = [n for n, d in self.space.items() if isinstance(d, Range)]
            if ranges:
                raise ValueError(
                    f"space.{ranges[0]}: the grid sampler needs a list, but got a range"
                )
        return self


MAX_WORKERS = 256  # ranks of one trial


class ResourcesSpec(_Frozen):
    cpu: float = Field(default=1.0, gt=0)
    gpu: float = Field(default=0.0, ge=0)
    max_failures: int = Field(default=2, ge=0)  # retries of a failed trial, from its last checkpoint
    # search.seeds > 1: seeds 1..N-1 of a trial in Ray actors of their own, each with cpu/gpu,
    # where the cluster holds max_concurrent such trials; else (and by default) they take turns.
    parallel_seeds: bool = False
    # Ranks of one trial: a data-parallel job (gradtune.dataparallel; DDP, gloo on CPU, NCCL on
    # GPU), each rank with cpu/gpu, each step's batch split between them; 1: one process.
    workers: int = Field(default=1, ge=1, le=MAX_WORKERS)

    @model_validator(mode="after")
    def _whole_gpus(self) -> ResourcesSpec:
        if self.workers > 1 and 0 < self.gpu < 1:
            raise ValueError(f"workers > 1 needs a whole GPU per rank (NCCL), but got gpu={self.gpu}")
        return self


class TrackingSpec(_Frozen):
    uri: str = "sqlite:///mlflow.db"
    experiment: str | None = None  # None: the spec's name

    @field_validator("experiment")
    @classmethod
    def _experiment(cls, experiment: str | None) -> str | None:
        return limits.check_experiment(experiment)


class RescueClipSpec(_Frozen):
    """The clipping a rescue adds (or tightens to): ``method`` and ``threshold`` as in
    ``search.space`` (``clip_method``, ``clip_threshold``); ``threshold: null`` takes twice
    the median pre-clip gradient norm of the healthy steps before the checkpoint."""

    method: Literal["norm", "value", "agc"] = "norm"
    threshold: float | None = Field(default=None, gt=0)


class RescueSpec(_Frozen):
    """Rolling a diverging trial back to its last healthy checkpoint instead of stopping it
    (:mod:`gradtune.rescue`): at most ``attempts`` rollbacks, each adding the next remedy of
    the ladder (lower LR by ``lr_factor``, then ``clip``, then skipping the
    ``skip_batches`` batches before the verdict); a remedy set to ``null`` (``0`` for
    ``skip_batches``) is left out of the ladder. ``attempts: 0`` is off (the default)."""

    attempts: int = Field(default=0, ge=0, le=10)
    lr_factor: float | None = Field(default=0.5, gt=0, lt=1)
    clip: RescueClipSpec | None = Field(default_factory=RescueClipSpec)
    skip_batches: int = Field(default=0, ge=0)  # 0: not a rung; else that many batches

    @model_validator(mode="after")
    def _some_remedy(self) -> RescueSpec:
        if self.attempts and self.lr_factor is None and self.clip is None and not self.skip_batches:
            raise ValueError("a rescue needs at least one remedy (lr_factor, clip or skip_batches), "
                             f"but got none with attempts={self.attempts}")
        return self

    @property
    def enabled(self) -> bool:
        return self.attempts > 0


class DivergenceSpec(_Frozen):
    """When a trial counts as diverging. A threshold of ``null`` turns its rule off; the
    non-finite rule (NaN/inf loss or gradient norm) is always on."""

    enabled: bool = True  # the in-trial rules beyond NaN/inf
    grace_steps: int = Field(default=10, ge=1)  # steps that form the early baseline
    window: int = Field(default=20, ge=3)  # steps a sustained signal must last
    grad_growth: float | None = Field(default=1e3, gt=1)  # fitted growth over the window
    grad_ceiling: float | None = Field(default=1e4, gt=1)  # x the early median norm
    loss_factor: float | None = Field(default=100.0, gt=1)  # x chance-level loss, whole window
    loss_vs_best: float | None = Field(default=10.0, gt=1)  # x the trial's best loss
    update_ratio: float | None = Field(default=1.0, gt=0)  # ||dw||/||w|| of a single step
    # Attention rules (gradtune.attention), for workloads that report attention signals:
    attn_logit_growth: float | None = Field(default=1e3, gt=1)  # max logit, x its initial, window
    attn_entropy_drop: float | None = Field(default=1e-3, gt=0, lt=1)  # min entropy, x initial
    cohort_factor: float | None = Field(default=1e3, gt=1)  # x the cohort's median at that step
    cohort_min_trials: int = Field(default=4, ge=2)
    scheduler: Literal["none", "asha", "median"] = "none"  # performance pruning
    grace_reports: int = Field(default=3, ge=1)  # reports before performance pruning
    rescue: RescueSpec = Field(default_factory=RescueSpec)  # off unless attempts > 0
    # Per-layer gradient and weight norms kept on the device for the verdict's "where it
    # started" table (gradtune.onset): one foreach norm per step, ~8% of a quickstart step
    # on CPU (docs/performance.md), so opt-in; `gradtune replay` always has them.
    onset: bool = False


class SweepSpec(_Frozen):
    name: str = "quickstart"
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    divergence: DivergenceSpec = Field(default_factory=DivergenceSpec)
    storage: str | None = None  # Ray Tune storage path or URI; None: Ray's default

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return limits.check_name(name)

    @model_validator(mode="after")
    def _rescue_needs_checkpoints(self) -> SweepSpec:
        if self.divergence.rescue.enabled and not self.training.checkpoint_every:
            raise ValueError("divergence.rescue rolls back to a trial checkpoint; it needs "
                             "training.checkpoint_every > 0, but got "
                             f"{self.training.checkpoint_every!r}")
        if self.divergence.rescue.enabled and self.search.seeds > 1:
            # A trial of several seeds judges each seed diverged or not (p_diverged); a
            # rescued seed is neither, and counting it either way would misreport it.
            raise ValueError("divergence.rescue works with one seed per configuration; "
                             f"search.seeds is {self.search.seeds}")
        if self.divergence.rescue.enabled and self.resources.workers > 1:
            raise ValueError("divergence.rescue works with one rank per trial; "
                             f"resources.workers is {self.resources.workers}")
        return self

    @model_validator(mode="after")
    def _data_parallel(self) -> SweepSpec:
        """``resources.workers`` > 1: one seed per trial, and every batch size splits evenly
        between the ranks (each step's batch is split, see gradtune.dataparallel)."""
        n = self.resources.workers
        if n == 1:
            return self
        if self.search.seeds > 1:
            raise ValueError(f"resources.workers: {n} ranks per trial cannot be combined with "
                             f"search.seeds: {self.search.seeds}; set one of them to 1")
        sizes = self.search.space.get("batch_size", PARAMS["batch_size"].default)
        if isinstance(sizes, Range):
            raise ValueError(f"resources.workers: {n} ranks split each batch, so space.batch_size "
                             "must list its values (each divisible by workers), but got a range")
        bad = [b for b in (sizes if isinstance(sizes, list) else [sizes])
               if isinstance(b, int) and b % n]
        if bad:
            raise ValueError(f"resources.workers: {n} ranks split each batch evenly, but "
                             f"batch_size {bad[0]} is not divisible by {n}")
        return self

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def search_seed(self) -> int:
        return self.training.seed if self.search.seed is None else self.search.seed


def check_dimension(name: str, dim: Any) -> None:
    """Raise ``ValueError`` naming ``space.<name>`` if ``dim`` does not fit the parameter. A
    name outside the registry is a workload option: here only its shape is checked."""
    if isinstance(dim, list) and not dim:
        raise ValueError(f"space.{name}: a choice needs at least one value")
    param = PARAMS.get(name)
    if param is None:
        if not name.isidentifier():
            raise ValueError(f"space.{name}: neither a parameter ({', '.join(PARAMS)}) "
                             "nor a workload option name")
        return
    values = dim if isinstance(dim, list) else [dim]
    if isinstance(dim, Range):
        if param.kind == "choice":
            raise ValueError(f"space.{name}: a choice parameter cannot take a range")
        values = [dim.low, dim.high]
    for value in values:
        param.check(name, value)
