"""params.yaml ``search``: which supernet to search, under which constraints, how.

Parameter counts may be written ``60e6``, ``60000000``, ``60M``, ``1.5G`` or
``500k`` (:func:`parse_count`), in params.yaml and on the command line alike;
``min_miou`` is absolute (``0.8``) or relative to the base model (``0.95x``, ``95%``;
:mod:`supersam.measure.thresholds`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from supersam.artifacts import paths
from supersam.measure.thresholds import MiouThreshold, setting_text
from supersam.runtime.errors import ConfigError

OBJECTIVES = ("min-params", "max-miou", "min-macs", "min-latency")
PARETO_X = ("params", "macs", "latency")
TECHNIQUES = ("opentuner", "random")

_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}
_COUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgb]?)\s*$", re.IGNORECASE)


def parse_count(value: str | int | float, what: str = "--max-params", unit: str = "parameter count") -> int:
    """A count (params, or MACs with ``unit``) from ``60e6``, ``60000000``, ``60M``, ``1.5G``, ``500k`` (or a number).

    Suffixes are decimal (k = 1e3, M = 1e6, G/B = 1e9), case-insensitive.

    Raises:
        ConfigError: not a positive count (one line naming ``what``).
    """
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a {unit} like 60e6, 60000000 or 60M, got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        match = _COUNT.match(str(value))
        if not match:
            raise ConfigError(f"{what} must be a {unit} like 60e6, 60000000 or 60M, got {value!r}")
        number = float(match.group(1)) * _SUFFIXES[match.group(2).lower()]
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{what} must be a positive {unit}, got {value!r}")
    return int(round(number))


@dataclass(frozen=True)
class SearchConfig:
    """params.yaml ``search`` section (paper Sec. III "Deployment").

    Attributes:
        variant: reordering variant whose trained supernet is searched
            (``none``, ``magnitude``, ``wanda``); picks the default paths.
        supernet: supernet checkpoint ("" = ``outputs/train/<variant>/supernet.pt``, :mod:`supersam.artifacts.paths`).
        space: search_space.json to search ("" = the space stored in the
            supernet checkpoint); must be a sub-space of the supernet's.
        out: output folder ("" = ``runs/search/<variant>``; the pipeline passes
            ``outputs/search/<variant>``).
        max_params: constraint, parameters of all of SAM (``60e6``, ``60M``...).
        min_miou: constraint, mIoU on the fixed validation sample: absolute in
            [0, 1] (``0.8``) or a factor of the base model's mIoU on the same
            sample (``0.95x``, ``95%``; the supernet must come from a checkpoint).
        max_macs: constraint, MACs of one image + one box prompt at the working
            input size (``supersam.model.space.subnet_macs``, equal to FlopCounterMode's
            FLOPs / 2); ``0`` = none; counts like ``max_params`` (``2G``, ``800M``).
        max_latency_ms: constraint, predicted image-encoder latency (ms, one image) on
            this device from the latency lookup table (:mod:`supersam.measure.latency`);
            ``0`` = none. The chosen subnet is then measured and both go to metrics.json.
        latency_table: the table's JSON file ("" = ``outputs/latency/<device-key>.json``).
        latency_warmup, latency_repeats, latency_rounds: how each table entry and the
            chosen subnet are timed (smallest of ``rounds`` medians of ``repeats`` runs).
        pareto_x: x-axis of pareto.png and pareto.json's frontier: params, macs or latency.
        objective: ``min-params`` (smallest subnet meeting the constraints),
            ``max-miou`` (highest mIoU meeting them), ``min-macs`` or ``min-latency``
            (fewest MACs / lowest predicted latency meeting them).
        metric: which mIoU the constraint and objective use: ``single`` or
            ``oracle`` (best of 3 masks), set by params.yaml's top-level ``metric``.
        technique: ``opentuner`` (AUC-bandit ensemble, paper) or ``random``.
        budget: maximum number of distinct subnets evaluated (0 = no limit,
            then ``time_limit`` must be set).
        time_limit: seconds of search (0 = no limit).
        seed: seeds the search (Python/NumPy RNGs before OpenTuner, or the random
            search); the validation sample is fixed by ``data.seed``.
        split: data split evaluated (``val``; ``test`` is refused: it is held out for eval).
        n_images: images in the fixed validation sample (0 = whole split).
        batch_size: images per image-encoder forward.
        device: ``auto``, ``cpu``, ``cuda``...
        amp: bf16 autocast during evaluation.
        strict: exit code 1 when no feasible subnet was found.
        hf_compatible: search only subnets transformers' ``SamModel`` can hold (``export --format
            hf``): blocks dropped, none sliced (its config has one ``mlp_dim``, and block 0 keeps
            the full width).
    """

    variant: str = "wanda"
    supernet: str = ""
    space: str = ""
    out: str = ""
    max_params: str = "60e6"
    min_miou: str = "0.8"
    max_macs: str = "0"
    max_latency_ms: float = 0.0
    latency_table: str = ""
    latency_warmup: int = 3
    latency_repeats: int = 20
    latency_rounds: int = 3
    pareto_x: str = "params"
    objective: str = "min-params"
    metric: str = "single"
    technique: str = "opentuner"
    budget: int = 200
    time_limit: float = 0.0
    seed: int = 0
    split: str = "val"
    n_images: int = 20
    batch_size: int = 1
    device: str = "auto"
    amp: bool = False
    strict: bool = False
    hf_compatible: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.min_miou, str):  # a number given in code: keep the setting as text
            object.__setattr__(self, "min_miou", setting_text(self.min_miou))

    @property
    def min_miou_threshold(self) -> MiouThreshold:
        """``min_miou`` parsed (absolute or relative to the base model).

        Raises:
            ConfigError: not a valid threshold (naming ``search.min_miou``).
        """
        return MiouThreshold.parse(self.min_miou, "search.min_miou")

    @property
    def supernet_path(self) -> Path:
        """The supernet checkpoint to load."""
        return Path(self.supernet or paths.trained_supernet(self.variant))

    def out_dir(self, variant: str | None = None) -> Path:
        """Where the search artifacts go: ``out``, else ``runs/search/<variant>``.

        The pipeline passes ``--out outputs/search/<variant>``; a search run by
        hand writes under ``runs/`` so it never overwrites DVC-tracked outputs.
        """
        return Path(self.out or paths.user_search_dir(variant or self.variant))

    @property
    def max_macs_count(self) -> int:
        """``max_macs`` as an integer count (0 = no MACs constraint)."""
        return 0 if str(self.max_macs).strip() in ("", "0") else parse_count(self.max_macs, "--max-macs", "MAC count")

    @property
    def uses_latency(self) -> bool:
        """Whether the latency table is needed (constraint, objective or Pareto axis)."""
        return self.max_latency_ms > 0 or self.objective == "min-latency" or self.pareto_x == "latency"

    @property
    def max_params_count(self) -> int:
        """``max_params`` as an integer count."""
        return parse_count(self.max_params)

    def validate(self) -> None:
        """Check enumerations and ranges.

        Raises:
            ConfigError: naming the offending ``search.<key>`` and the fix.
        """
        from supersam.data.config import check_selection_split

        check_selection_split(self.split, "search.split")
        from supersam.schema import metric_key

        metric_key(self.metric, "metric")
        for key, allowed in (("objective", OBJECTIVES), ("technique", TECHNIQUES)):
            value = getattr(self, key)
            if value not in allowed:
                raise ConfigError(f"search.{key} is {value!r}; use one of {', '.join(allowed)}")
        self.max_params_count  # noqa: B018  (raises on a bad count)
        self.max_macs_count  # noqa: B018
        if self.pareto_x not in PARETO_X:
            raise ConfigError(f"search.pareto_x is {self.pareto_x!r}; use one of {', '.join(PARETO_X)}")
        if self.max_latency_ms < 0 or not math.isfinite(self.max_latency_ms):
            raise ConfigError(
                f"--max-latency-ms must be a positive number of milliseconds (0 = none), got {self.max_latency_ms}"
            )
        if self.latency_warmup < 0 or self.latency_repeats < 1 or self.latency_rounds < 1:
            raise ConfigError("search.latency_warmup must be >= 0, latency_repeats and latency_rounds >= 1")
        self.min_miou_threshold  # noqa: B018  (raises on a bad threshold)
        if self.budget < 0 or self.time_limit < 0:
            raise ConfigError("search.budget and search.time_limit must be >= 0")
        if self.budget == 0 and self.time_limit == 0:
            raise ConfigError(
                "search has neither a budget nor a time limit; set search.budget or search.time_limit (e.g. --set "
                "search.budget=24)"
            )
        if self.n_images < 0 or self.batch_size < 1:
            raise ConfigError("search.n_images must be >= 0 and search.batch_size >= 1")
