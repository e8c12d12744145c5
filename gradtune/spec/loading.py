"""Reading a spec: YAML (a safe loader, with YAML 1.2's floats), ``--set`` overrides, validation into a
:class:`~gradtune.spec.schema.SweepSpec`, and the resolved spec written back (YAML, and flat
``a.b.c`` keys for MLflow params). Every problem is a :class:`GradtuneError` of one line
naming the file and the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gradtune.errors import GradtuneError
from gradtune.spec.schema import SearchSpec, SweepSpec

MAX_SPEC_BYTES = 1 << 20


class Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads YAML 1.2's floats without a dot, ``1e12`` and
    ``1e-3``: YAML 1.1 (PyYAML) reads them as strings, so ``steps: 1e12`` said "unable to
    parse string as an integer". An integral float is accepted for an int field."""


Loader.add_implicit_resolver(  # copies the resolvers for Loader; SafeLoader is untouched
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """YAML through :class:`Loader`; ``RecursionError`` (nesting too deep) as YAMLError."""
    try:
        return yaml.load(text, Loader=Loader)  # Loader is a SafeLoader: no object construction
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


def load(path: str | Path | None, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Load and validate a spec; ``path=None`` gives the embedded quickstart defaults.

    ``overrides`` maps dotted keys (``training.steps``) to values and is applied before
    validation, so the resolved spec says exactly what runs. ``search.space.<name>``
    changes one dimension of the space the spec would run, the default space where the spec
    names none. Any problem raises :class:`GradtuneError` with one line naming the file and
    the key.
    """
    source = str(path) if path is not None else "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(Path(path))
    for key, value in (overrides or {}).items():
        if key.startswith("search.space.") and isinstance(raw.get("search", {}), dict):
            # Without this, the one dimension set would replace the whole default space.
            raw.setdefault("search", {}).setdefault("space", _default_space())
        set_dotted(raw, key, value, source)
    return validate(raw, source)


def _default_space() -> dict[str, Any]:
    space: dict[str, Any] = SearchSpec().model_dump(mode="json")["space"]
    return space


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise GradtuneError(f"{path}: cannot read spec ({exc.strerror or exc})") from None
    if len(data) > MAX_SPEC_BYTES:
        raise GradtuneError(f"{path}: a spec is at most {MAX_SPEC_BYTES >> 20} MiB")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise GradtuneError(f"{path}: cannot read spec (not UTF-8 text)") from None
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise GradtuneError(f"{path}:{where} invalid YAML") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise GradtuneError(f"{path}: a spec must be a mapping, but got {type(raw).__name__}")
    return raw


def validate(raw: dict[str, Any], source: str = "<spec>") -> SweepSpec:
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise GradtuneError(f"{source}: {describe(exc)}") from None


def describe(exc: ValidationError) -> str:
    """The first validation error as ``key.path: message``."""
    err = exc.errors()[0]
    # Drop pydantic's union-branch labels (e.g. 'Range', 'list[...]') from the location.
    loc = [str(p) for p in err["loc"] if not _is_branch_label(p)]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    key = ".".join(loc)
    if msg.startswith("space."):  # raised by SearchSpec, which knows the sub-key
        return f"{key}.{msg}"
    return f"{key}: {msg}" if key else msg


def _is_branch_label(part: Any) -> bool:
    return isinstance(part, str) and (
        part in {"Range", "str", "int", "float", "bool"}
        or part.startswith(("list[", "function-", "constrained-"))
    )


def set_dotted(raw: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set ``raw[a][b][c] = value`` for ``key='a.b.c'``, creating mappings on the way."""
    parts = key.split(".")
    if not all(parts):
        raise GradtuneError(f"{source}: --set {key}: empty part in key")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(parts[: i + 1])
            raise GradtuneError(f"{source}: --set {key}: {prefix} is not a mapping")
        node = child
    node[parts[-1]] = value


def parse_set(item: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE`` from ``--set``; VALUE is YAML (``[layer]`` is a list)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise GradtuneError(f"--set {item}: expected KEY=VALUE")
    try:
        value = parse_yaml(text) if text.strip() else ""
    except yaml.YAMLError:
        raise GradtuneError(f"--set {item}: VALUE is not valid YAML") from None
    return key.strip(), value


def dump(spec: SweepSpec) -> str:
    """The resolved spec as YAML (what gets logged to MLflow as ``spec.yaml``)."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}``; lists stay as values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
