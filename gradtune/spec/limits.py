"""How big a spec may be.

Hard limits, checked by the schema on every spec: names that MLflow and the file system can
hold (:func:`check_name`, :func:`check_experiment`) and the size of ``workload.options``
once YAML aliases are expanded (:func:`check_options`: an alias bomb is rejected before
anything copies it out).

Soft limits (:data:`SOFT`, :func:`beyond`): sizes no real sweep reaches by a slip of the
keyboard (``--trials 100000``, ``steps: 1000000000000``). The CLI refuses them unless
``--yes`` is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradtune.spec.schema import SweepSpec

# The parent run is named "sweep <name> YYYY-mm-dd HH:MM:SS" and MLflow's runs.name column
# holds 250 characters; Tune's experiment folder is "<name>-YYYYmmdd-HHMMSS", and a file
# name holds 255 bytes.
NAME_CHARS = 250 - len("sweep ") - len(" 2000-01-01 00:00:00")
NAME_BYTES = 255 - len("-20000101-000000")
EXPERIMENT_CHARS = 256  # MLflow's experiments.name column (PostgreSQL and MySQL enforce it)
OPTIONS_VALUES = 100_000  # keys, values and containers, aliases expanded
OPTIONS_DEPTH = 50

SOFT = {
    "search.trials": 10_000,  # also the points of a grid
    "training.steps": 100_000_000,
    "search.space.batch_size": 65_536,
}


def check_name(name: str) -> str:
    """``name`` names the MLflow parent run and the sweep's folder in the storage."""
    if not name:
        raise ValueError("must not be empty")
    if "/" in name or "\0" in name:
        raise ValueError("must not contain '/' or NUL (it names the sweep's folder)")
    if len(name) > NAME_CHARS:
        raise ValueError(f"at most {NAME_CHARS} characters (the MLflow run 'sweep <name> "
                         f"<time>' holds 250), but got {len(name)}")
    size = len(name.encode())
    if size > NAME_BYTES:
        raise ValueError(f"at most {NAME_BYTES} bytes in UTF-8 (the folder '<name>-<time>' is "
                         f"a file name of at most 255 bytes), but got {size}")
    return name


def check_experiment(experiment: str | None) -> str | None:
    if experiment is None:
        return None
    if not experiment:
        raise ValueError("must not be empty (leave it out to use the spec's name)")
    if len(experiment) > EXPERIMENT_CHARS:
        raise ValueError(f"at most {EXPERIMENT_CHARS} characters (MLflow's limit), but got "
                         f"{len(experiment)}")
    return experiment


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """At most :data:`OPTIONS_VALUES` values counted with aliases expanded, nested at most
    :data:`OPTIONS_DEPTH` deep, no cycle. Shared parts are counted once per use but walked
    once, so a billion-laughs spec fails in microseconds."""
    expanded_size(options, OPTIONS_VALUES, OPTIONS_DEPTH)
    return options


def expanded_size(value: Any, limit: int, max_depth: int) -> int:
    """The number of values in ``value`` (containers, keys and leaves) as if every shared
    list or dict were copied; ``ValueError`` beyond ``limit``, ``max_depth`` or on a cycle."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: Any, depth: int) -> int:
        if not isinstance(node, (dict, list, tuple)):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise ValueError("refers to itself (a recursive YAML alias)")
        if depth > max_depth:
            raise ValueError(f"nested deeper than {max_depth} levels")
        open_.add(key)
        total = 1
        for child in ([*node.keys(), *node.values()] if isinstance(node, dict) else node):
            total += size(child, depth + 1)
            if total > limit:
                raise ValueError(f"more than {limit} values once YAML aliases are expanded")
        open_.discard(key)
        sizes[key] = total
        return total

    return size(value, 0)


def beyond(spec: SweepSpec) -> list[str]:
    """The soft limits ``spec`` goes beyond, each as ``key: what``."""
    found = []
    trials, what = spec.search.trials, "trials"
    if spec.search.sampler == "grid":
        trials, what = 1, "grid points"
        for dim in spec.search.space.values():
            trials *= len(dim) if isinstance(dim, list) else 1
    if trials > SOFT["search.trials"]:
        key = "search.space" if spec.search.sampler == "grid" else "search.trials"
        found.append(f"{key}: {trials} {what}, more than {SOFT['search.trials']}")
    if spec.training.steps > SOFT["training.steps"]:
        found.append(f"training.steps: {spec.training.steps}, more than {SOFT['training.steps']}")
    batch = spec.search.space.get("batch_size")
    values = batch if isinstance(batch, list) else [getattr(batch, "high", batch)]
    biggest = max((v for v in values if isinstance(v, (int, float))), default=0)
    if biggest > SOFT["search.space.batch_size"]:
        found.append(f"search.space.batch_size: {biggest:g}, more than "
                     f"{SOFT['search.space.batch_size']}")
    return found
