"""Typed configuration from params.yaml sections, with CLI flags overriding.

Each stage owns a frozen dataclass (e.g. ``EvalConfig``) whose fields are the
keys of its params.yaml section. :func:`stage_config` reads the section, rejects
unknown keys naming them, applies flag overrides (``None`` = not given) and
coerces scalars to the field types.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from supersam.errors import ConfigError

T = TypeVar("T")

DEFAULT_PARAMS = Path("params.yaml")


def read_params(path: str | Path | None = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read params.yaml into a dict; a missing default file gives ``{}``.

    Raises:
        ConfigError: an explicitly named file is missing, or the YAML is invalid.
    """
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        if path == DEFAULT_PARAMS:
            return {}
        raise ConfigError(f"params file {path} does not exist; pass --params with an existing file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"params file {path} is not valid YAML ({str(exc).splitlines()[0]}); fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"params file {path} must hold a mapping of sections")
    return data


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where) if len(inner) == 1 else value
    if dataclasses.is_dataclass(hint):
        return build_config(hint, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, where) for v in value]
        return tuple(items) if origin is tuple else items
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError
            return bool(value)
        if hint is int:
            as_float = float(value)
            if as_float != int(as_float):
                raise ValueError
            return int(as_float)
        if hint in (float, str):
            return hint(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}") from None
    return value


def build_config(cls: type[T], values: dict[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from ``values``, naming unknown keys and bad types.

    Raises:
        ConfigError: unknown key, wrong type, or a non-mapping section.
    """
    values = values or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown key {where}.{unknown[0]}; known keys: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def stage_config(
    cls: type[T], params: dict[str, Any], section: str, overrides: dict[str, Any] | None = None
) -> T:
    """Config ``cls`` from ``params[section]`` with non-None ``overrides`` applied."""
    values = dict(params.get(section) or {})
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    return build_config(cls, values, section)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """params.yaml ``model``: which SAM, at which input size, from which checkpoint.

    Attributes:
        type: ``vit_b``, ``vit_l``, ``vit_h``, ``vit_ti`` or ``tiny``.
        img_size: encoder input size in pixels (multiple of 16).
        checkpoint: official SAM ``.pth``; empty = random initialisation.
        seed: seed of the random initialisation (no checkpoint), so every stage
            builds the same random SAM.
    """

    type: str = "vit_b"
    img_size: int = 1024
    checkpoint: str = ""
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    """params.yaml ``mlflow``: where runs are logged.

    Attributes:
        tracking_uri: MLflow tracking URI (default ``sqlite:///mlflow.db``).
        experiment: experiment name shared by every stage.
        artifact_location: where a new experiment stores run artifacts; "" =
            ``mlartifacts/`` beside a sqlite database (else MLflow's default).
        enabled: set False to skip MLflow entirely.
    """

    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "supersam"
    artifact_location: str = ""
    enabled: bool = True
