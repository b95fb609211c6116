"""The config schema: typed params.yaml sections, ``-p/--params`` and ``--set`` overrides.

Each params.yaml section is a frozen dataclass (e.g. ``EvalConfig`` for ``eval``)
whose fields are the section's keys; :func:`build_config` validates a section
against it with pydantic (unknown keys and wrong types are one-line
:class:`ConfigError` naming ``section.key``). Every command reads one params
file (``-p/--params``, default ./params.yaml) and applies repeatable
``--set section.key=value`` overrides (:func:`apply_sets`; values are YAML, so
``--set train.iterations=48`` is an int and ``--set eval.prompts=[box]`` a list),
then the few flags the command keeps. docs/architecture.md, "Configuration".
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError

from supersam.runtime.errors import ConfigError

T = TypeVar("T")

DEFAULT_PARAMS = Path("params.yaml")

# The sections of params.yaml (plus the top-level ``variants`` list and ``metric``
# setting). A section that is not here is a typo: read_params refuses it instead of
# silently ignoring it.
SECTIONS = (
    "variants",
    "metric",
    "model",
    "data",
    "mlflow",
    "pretrain",
    "rank_layers",
    "calibrate",
    "space",
    "supernet",
    "train",
    "search",
    "export",
    "eval",
    "compare",
    "bench",
)
TOP_LEVEL = ("variants", "metric")  # plain values, not sections of keys

# The sections whose ``metric`` field is filled from the top-level ``metric`` (never
# set per section: one setting drives ranking, target, constraint and eval headline).
METRIC_SECTIONS = ("rank_layers", "train", "search", "compare", "eval")

# params.yaml's top-level ``metric``: which mIoU drives layer ranking, the training
# target, the search constraint and eval's headline (docs/method.md, "The metric").
METRICS = {"single": "miou", "oracle": "miou_oracle"}


def metric_key(metric: str, what: str = "metric") -> str:
    """The result key (``miou`` or ``miou_oracle``) of metric setting ``single`` or ``oracle``.

    Raises:
        ConfigError: an unknown setting (one line naming ``what``).
    """
    try:
        return METRICS[metric]
    except (KeyError, TypeError):
        raise ConfigError(
            f"{what} is {metric!r}; use single (one mask, multimask_output=False) or oracle (best of SAM's 3 masks)"
        ) from None


# Lax coercion as YAML and the command line need it ("48" -> 48, 0.84 -> "0.84" for
# fields such as min_miou that also take "0.95x"), but unknown keys are errors, and so
# are NaN and infinite floats (``--set train.lr=nan`` would train nothing, silently).
_PYDANTIC = ConfigDict(extra="forbid", coerce_numbers_to_str=True, arbitrary_types_allowed=True, allow_inf_nan=False)

# Sections that may be switched off as a whole: ``mlflow: false`` = ``mlflow: {enabled: false}``.
SWITCHABLE = ("mlflow",)


def read_params(path: str | Path | None = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read params.yaml into a dict of sections; a missing default file gives ``{}``.

    Raises:
        ConfigError: an explicitly named file is missing, the YAML is invalid, or a
            section name is unknown.
    """
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        if path == DEFAULT_PARAMS:
            return {}
        raise ConfigError(f"params file {path} does not exist; pass --params with an existing file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"params file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position "
            f"{exc.start}); save it as UTF-8 or pass the YAML file with --params"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"params file {path} is not valid YAML ({str(exc).splitlines()[0]}); fix the syntax"
        ) from None
    except RecursionError:
        raise ConfigError(
            f"params file {path} nests its lists or mappings too deeply to read; a params file has sections of keys"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"params file {path} must hold a mapping of sections")
    _check_sections(data, f"params file {path}")
    return data


def _check_sections(values: dict[str, Any], where: str) -> None:
    unknown = sorted(set(values) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown section {unknown[0]!r}; known sections: {', '.join(SECTIONS)}")
    for name, value in values.items():
        if name in TOP_LEVEL or value is None or isinstance(value, dict):
            continue
        if name in SWITCHABLE and value is False:
            continue
        extra = " or false" if name in SWITCHABLE else ""
        raise ConfigError(
            f"{where}: section {name} must be a mapping of keys{extra}, got "
            f"{type(value).__name__} {value!r:.60}; write it as `{name}:` followed by indented `key: value` lines"
        )


def parse_set(item: str) -> tuple[tuple[str, ...], Any]:
    """``"section.key=value"`` -> (("section", "key"), value parsed as YAML).

    Raises:
        ConfigError: no ``=``, an empty key, or an unknown section.
    """
    key, sep, text = item.partition("=")
    parts = tuple(p.strip() for p in key.split("."))
    if not sep or not all(parts):
        raise ConfigError(f"--set {item!r} must look like section.key=value, e.g. --set train.iterations=48")
    if parts[0] not in SECTIONS:
        raise ConfigError(f"--set {item!r}: unknown section {parts[0]!r}; known sections: {', '.join(SECTIONS)}")
    if len(parts) == 1 and parts[0] not in TOP_LEVEL:
        raise ConfigError(f"--set {item!r} names a whole section; set one key, e.g. --set {parts[0]}.KEY=VALUE")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except (yaml.YAMLError, RecursionError):
        value = text  # not YAML (e.g. an unbalanced bracket in a path): keep the text
    return parts, value


def apply_sets(values: dict[str, Any], sets: Sequence[str] = (), flags: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of ``values`` with ``--set`` items, then non-None ``flags`` applied.

    Args:
        values: params as read by :func:`read_params`.
        sets: ``["train.iterations=48", "data.root=/my/data", ...]`` (later wins).
        flags: ``{"search.max_params": "60e6", ...}``: a command's own flags by
            dotted key; ``None`` means the flag was not given.

    Raises:
        ConfigError: a malformed ``--set``, an unknown section, or a key path that
            runs through a non-mapping value.
    """
    out = copy.deepcopy(values)
    items = [parse_set(s) for s in sets]
    items += [(tuple(k.split(".")), v) for k, v in (flags or {}).items() if v is not None]
    for parts, value in items:
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {'.'.join(parts)}: {'.'.join(parts[: depth + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def apply_metric(values: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``values`` with the top-level ``metric`` copied into every metric section.

    ``metric`` (``single`` or ``oracle``, default ``single``) is the one setting
    for which mIoU the layer ranking, the training target, the search constraint
    and eval's headline use (docs/method.md, "The metric").

    Raises:
        ConfigError: an unknown metric, or a section that sets a ``metric`` other
            than the top-level one.
    """
    metric = values.get("metric", "single")
    metric_key(metric, "metric")
    out = dict(values)
    for section in METRIC_SECTIONS:
        own = out.get(section)
        if isinstance(own, dict) and own.get("metric", metric) != metric:
            raise ConfigError(
                f"{section}.metric is set; set the top-level `metric: {own['metric']}` instead "
                "(one metric drives ranking, training target, search and eval)"
            )
        if own is None or isinstance(own, dict):
            out[section] = {**(own or {}), "metric": metric}
    return out


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    if "__pydantic_config__" not in cls.__dict__:
        cls.__pydantic_config__ = _PYDANTIC  # class attribute: the instances stay frozen dataclasses
    return TypeAdapter(cls)


def _message(exc: ValidationError, cls: type, where: str) -> str:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
    key = f"{where}.{loc}" if loc else where
    if err["type"] == "unexpected_keyword_argument":
        names = ", ".join(f.name for f in dataclasses.fields(cls))
        return f"unknown key {key}; known keys: {names}"
    msg = err["msg"].removeprefix("Value error, ")
    fix = "fix it in params.yaml or with --set"
    if "input" in err:
        return f"{key}: {msg[0].lower()}{msg[1:]}, got {err['input']!r}; {fix}"
    return f"{key}: {msg}; {fix}"


def build_config(cls: type[T], values: dict[str, Any] | None, where: str) -> T:
    """Validate ``values`` against dataclass ``cls`` (pydantic, lax coercion, no extra keys).

    Raises:
        ConfigError: unknown key, wrong type, or a non-mapping section, naming ``where.key``.
    """
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping of keys, got {values!r}")
    try:
        return _adapter(cls).validate_python(values)
    except ValidationError as exc:
        raise ConfigError(_message(exc, cls, where)) from None


def stage_config(cls: type[T], params: dict[str, Any], section: str, overrides: dict[str, Any] | None = None) -> T:
    """Config ``cls`` from ``params[section]`` with non-None ``overrides`` applied."""
    raw = params.get(section)
    if raw is False and section in SWITCHABLE:
        raw = {"enabled": False}
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"section {section} must be a mapping of keys, got {type(raw).__name__} {raw!r:.60}")
    values = dict(raw or {})
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    return build_config(cls, values, section)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """params.yaml ``model``: which SAM, at which input size, from which checkpoint.

    Attributes:
        type: ``vit_b``, ``vit_l``, ``vit_h``, ``vit_ti`` or ``tiny``.
        img_size: encoder input size in pixels (multiple of 16); when not set, the
            checkpoint's own size (16 x its ``pos_embed`` grid), else the model
            type's default (1024 for vit_b/l/h), logged: never a silent resize.
        checkpoint: official SAM ``.pth``; empty = random initialisation.
        seed: seed of the random initialisation (no checkpoint), so every stage
            builds the same random SAM.
    """

    type: str = "vit_b"
    img_size: int | None = None
    checkpoint: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.img_size is not None:
            return
        import logging

        from supersam.model.sam import checkpoint_img_size, get_arch

        size = checkpoint_img_size(self.checkpoint) if self.checkpoint and Path(self.checkpoint).is_file() else None
        source = f"the input size of {self.checkpoint}"
        if size is None:
            size, source = get_arch(self.type).default_img_size, f"the {self.type} default"
        logging.getLogger(__name__).info("model.img_size is not set: using %d px (%s)", size, source)
        object.__setattr__(self, "img_size", size)

    def validate(self) -> None:
        """Check the model type and the input size (``supersam validate``; building the model checks both too).

        Raises:
            ConfigError: an unknown ``model.type``, or an ``img_size`` that is not a multiple of
                16 up to :data:`supersam.model.sam.MAX_IMG_SIZE`.
        """
        from supersam.model.sam import check_img_size, get_arch

        get_arch(self.type)
        check_img_size(self.img_size)


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
