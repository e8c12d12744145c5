"""The sweep spec: :mod:`~gradtune.spec.schema` (what a spec may say, frozen and validated)
and :mod:`~gradtune.spec.loading` (YAML, ``--set``, dump). ``from gradtune.spec import
SweepSpec, load`` is the public surface."""

from gradtune.spec.limits import beyond
from gradtune.spec.loading import describe, dump, flatten, load, parse_set, read_yaml, set_dotted, validate
from gradtune.spec.schema import (
    DivergenceSpec,
    OptimizerSpec,
    Range,
    RescueClipSpec,
    RescueSpec,
    ResourcesSpec,
    SearchSpec,
    SweepSpec,
    TrackingSpec,
    TrainingSpec,
    WorkloadSpec,
    check_dimension,
)

__all__ = [
    "DivergenceSpec", "OptimizerSpec", "Range", "RescueClipSpec", "RescueSpec", "ResourcesSpec",
    "SearchSpec", "SweepSpec", "TrackingSpec", "TrainingSpec", "WorkloadSpec", "beyond", "check_dimension",
    "describe", "dump", "flatten", "load", "parse_set", "read_yaml", "set_dotted", "validate",
]
