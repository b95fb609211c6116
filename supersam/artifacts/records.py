"""Typed artifacts the stages hand each other (docs/architecture.md, "Artifacts").

Each is a small dataclass with a versioned JSON form: ``to_dict()`` writes a
``format`` tag, ``from_dict()`` is the one place that validates a file read
back (one-line errors naming the file and the fix).

- :class:`SupernetMeta`: what a supernet is (architecture, input size, variant,
  provenance); carried by :class:`supersam.model.elastic.SuperSam` as ``.meta`` and
  stored in ``supernet.pt``.
- :class:`LayerRanking`: ``rank-layers``' ``ranking.json`` (paper Fig. 3).
- :class:`ExportManifest`: an export folder's ``config.json``.
- :class:`Table1Row`: ``train``'s ``table1.json``, one variant's row of paper Table I (read by ``compare``).
- :class:`SearchFrontier`: ``search``'s ``metrics.json`` + ``pareto.json``, what ``compare`` reads of a search.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supersam.artifacts import paths
from supersam.runtime.errors import CheckpointError, ConfigError, DataError
from supersam.runtime.io import read_json, write_json

SUPERNET_META_FORMAT = "supersam-supernet-meta/2"
RANKING_FORMAT = "supersam-ranking/2"
EXPORT_FORMAT = "supersam-export/2"


def _require(data: Any, keys: tuple[str, ...], what: str, fix: str, error: type[Exception]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise error(f"{what} is not a JSON object; {fix}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise error(f"{what} lacks {missing[0]!r}; {fix}")
    return data


def _check_format(data: dict[str, Any], expected: str, what: str, fix: str, error: type[Exception]) -> None:
    found = data.get("format")
    if found != expected:
        raise error(f"{what} has format {found!r}, this supersam reads {expected!r}; {fix}")


@dataclass(frozen=True)
class SupernetMeta:
    """What a supernet is, beside its weights and search space.

    Attributes:
        model_type: SAM architecture (``vit_b``, ``vit_l``, ``vit_h``, ``vit_ti``, ``tiny``).
        img_size: encoder input size in px the supernet works at.
        pretrained: True when the weights came from a checkpoint (not random init).
        variant: reordering variant of the MLP units (``none``, ``magnitude``, ``wanda``, ``taylor``).
        checkpoint: the base model checkpoint the supernet was built from ("" = random).
        base_digest: :func:`supersam.model.sam.state_digest` of that base model as loaded ("" =
            random init, or a supernet built before it was recorded): the teacher of
            ``distill_from: base`` and relative thresholds are refused when the file changed.
        combine: how lin1/lin2 scores were combined (``rank`` or ``score``; docs/method.md).
        stats: calibration statistics file used by the variant ("" = none).
        stats_n_images: calibration images behind ``stats``.
        ranking: ``ranking.json`` the prunable set came from ("" = arch default).
        provenance: later stages' records, e.g. ``{"train": {"iterations": ..., "seed": ...}}``.
    """

    model_type: str
    img_size: int
    pretrained: bool
    variant: str
    checkpoint: str = ""
    base_digest: str = ""
    combine: str = "rank"
    stats: str = ""
    stats_n_images: int = 0
    ranking: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in ``supernet.pt`` (with a ``format`` tag)."""
        return {"format": SUPERNET_META_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Any, source: str = "supernet meta") -> SupernetMeta:
        """Validate and read the JSON form.

        Raises:
            CheckpointError: wrong format tag, a missing key or a wrong type.
        """
        fix = "re-create the supernet with supersam build-supernet"
        data = _require(data, ("model_type", "img_size", "pretrained", "variant"), source, fix, CheckpointError)
        _check_format(data, SUPERNET_META_FORMAT, source, fix, CheckpointError)
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            meta = cls(**{k: v for k, v in data.items() if k in names})
            return dataclasses.replace(
                meta,
                img_size=int(meta.img_size),
                pretrained=bool(meta.pretrained),
                stats_n_images=int(meta.stats_n_images),
                provenance=dict(meta.provenance),
            )
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source} is invalid ({exc}); {fix}") from None

    def with_provenance(self, stage: str, record: dict[str, Any]) -> SupernetMeta:
        """A copy with ``provenance[stage] = record`` (e.g. train's iterations and seed)."""
        return dataclasses.replace(self, provenance={**self.provenance, stage: record})


@dataclass(frozen=True)
class LayerRanking:
    """``ranking.json``: few-shot block importance and the prunable set (paper Sec. III-A, Fig. 3).

    Attributes:
        model_type, img_size, pretrained: the model that was ranked.
        n_images: few-shot images per measurement.
        n_objects: prompted objects in them (each once): what every mIoU averages.
        metric: ``single`` or ``oracle`` (params.yaml ``metric``): what importance is measured in.
        rule: ``count`` or ``budget`` (how ``prunable`` was read off the curve).
        baseline_miou: the full model's mIoU under ``metric``.
        baseline: the full model's point ``{"params", "miou", "miou_oracle"}``.
        importance: per block, the metric drop when it alone is removed.
        single: per block ``{"block", "params", "miou", "miou_oracle", "importance"}``.
        curve: true greedy removal steps ``{"step", "removed", "dropped" (removal
            order), "params", "miou", "miou_oracle", "candidates"}``; ``candidates``
            lists every block tried at that step with its result, and the step's
            point is the best of them (:func:`supersam.stages.rank_layers.greedy_curve`).
        prunable: the blocks the supernet may drop (block 0 never).
        drop_probs: theta_i per prunable block.
        n_evaluations: few-shot evaluations the ranking took.
    """

    model_type: str
    img_size: int
    pretrained: bool
    n_images: int
    n_objects: int
    metric: str
    rule: str
    baseline_miou: float
    baseline: dict[str, Any]
    importance: list[float]
    single: list[dict[str, Any]]
    curve: list[dict[str, Any]]
    prunable: list[int]
    drop_probs: list[float]
    n_evaluations: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (with a ``format`` tag)."""
        return {"format": RANKING_FORMAT, **dataclasses.asdict(self)}

    def save(self, path: str | Path) -> Path:
        """Write ``ranking.json`` atomically."""
        return write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, source: str = "layer ranking") -> LayerRanking:
        """Validate and read the JSON form.

        Raises:
            ConfigError: wrong format tag, a missing key, or prunable/drop_probs of
                different lengths.
        """
        fix = "rerun `supersam rank-layers`"
        names = tuple(f.name for f in dataclasses.fields(cls))
        data = _require(data, names, source, fix, ConfigError)
        _check_format(data, RANKING_FORMAT, source, fix, ConfigError)
        ranking = cls(**{k: data[k] for k in names})
        try:
            if len(ranking.prunable) != len(ranking.drop_probs):
                raise ValueError("prunable and drop_probs differ in length")
            return dataclasses.replace(
                ranking, prunable=[int(b) for b in ranking.prunable], drop_probs=[float(p) for p in ranking.drop_probs]
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"{source}: prunable and drop_probs must be lists of numbers of one length ({exc}); {fix}"
            ) from None

    @classmethod
    def load(cls, path: str | Path) -> LayerRanking:
        """Read and validate ``ranking.json``.

        Raises:
            ConfigError: missing, not JSON, or invalid (naming the file).
        """
        return cls.from_dict(read_json(path, "layer ranking"), f"layer ranking {path}")


@dataclass(frozen=True)
class ExportManifest:
    """An export folder's ``config.json``: how to rebuild the exported subnet as a plain Sam.

    Attributes:
        model_type, img_size, pretrained, variant: of the supernet the subnet came from.
        subnet: ``{"kept_layers": [...], "mlp_dims": [...]}`` in supernet block indices.
        block_mlp_dims: MLP width of each exported block (exported order).
        global_attn_indexes: exported positions of the kept global-attention blocks.
        params: parameters of the exported Sam (``sum(p.numel())``).
        macs: MACs of one image + one prompt at ``img_size`` (analytic, :func:`supersam.model.space.subnet_macs`).
        encoder: ``EncoderSpec`` dict of the image encoder.
        pixel_mean, pixel_std: the model's input normalisation (3 floats each).
        supernet: the supernet checkpoint the subnet was cut from.
    """

    model_type: str
    img_size: int
    pretrained: bool
    variant: str
    subnet: dict[str, Any]
    block_mlp_dims: list[int]
    global_attn_indexes: list[int]
    params: int
    macs: int
    encoder: dict[str, Any]
    pixel_mean: list[float]
    pixel_std: list[float]
    supernet: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (with a ``format`` tag)."""
        return {"format": EXPORT_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Any, source: str = "export config") -> ExportManifest:
        """Validate and read the JSON form.

        Raises:
            CheckpointError: wrong format tag or a missing key.
        """
        fix = "re-run supersam export"
        names = tuple(f.name for f in dataclasses.fields(cls))
        data = _require(data, names, source, fix, CheckpointError)
        _check_format(data, EXPORT_FORMAT, source, fix, CheckpointError)
        _check_pixel_stats(data, source, fix)
        from supersam.model.sam import check_img_size

        try:
            check_img_size(data["img_size"])
        except (ConfigError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: {exc}; {fix}") from None
        return cls(**{k: data[k] for k in names})


def _check_pixel_stats(data: dict[str, Any], source: str, fix: str) -> None:
    """``pixel_mean`` and ``pixel_std`` are 3 finite numbers each, every std > 0 (a std of 0
    would divide the image by zero: NaN masks and NaN predicted IoUs)."""
    import math

    for key in ("pixel_mean", "pixel_std"):
        value = data[key]
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        ):
            raise CheckpointError(
                f"{source}: {key} must be 3 finite numbers (0-255 pixel units), got {value!r:.60}; {fix}"
            )
    if min(data["pixel_std"]) <= 0:
        raise CheckpointError(
            f"{source}: pixel_std {data['pixel_std']} has a value <= 0 (the image is divided by it); {fix}"
        )


TABLE1_TO_TARGET = ("iterations_to_target", "seconds_to_target", "energy_kwh_to_target", "co2_kg_to_target")
"""The paper's Table I columns: the cost until the smallest subnet reaches the target."""


@dataclass(frozen=True)
class Table1Row:
    """``outputs/train/<variant>/table1.json``: one variant's row of paper Table I (Sec. IV-B), written by
    ``train`` and read by ``compare``.

    Every field may be None (a run that never reached the target, or energy not measured).

    Attributes:
        iterations_to_target: optimizer steps until the smallest subnet's validation metric first met the
            target (0 = met before training); exact when ``target_every`` is 1.
        seconds_to_target: training time to that step, s (validation and probes excluded).
        energy_kwh_to_target: energy to that step, kWh (codecarbon/NVML, or the CPU estimate).
        co2_kg_to_target: emissions to that step, kg CO2.
        target_miou: the target, an mIoU in [0, 1]; target_miou_setting: as configured ("0.98x", "0.7").
        target_every: probe period, iterations; metric: ``single`` or ``oracle``.
        iterations, seconds, energy_kwh, co2_kg: the whole run (training only), s / kWh / kg CO2.
        seconds_total, energy_kwh_total: the whole run including validation and probes.
        energy_method, energy_detail: how energy was measured.
        miou_min, params_min: the smallest subnet's final validation mIoU and its params.
    """

    iterations_to_target: int | None = None
    seconds_to_target: float | None = None
    energy_kwh_to_target: float | None = None
    co2_kg_to_target: float | None = None
    target_miou: float | None = None
    target_miou_setting: str | None = None
    target_every: int | None = None
    metric: str | None = None
    iterations: int | None = None
    seconds: float | None = None
    energy_kwh: float | None = None
    co2_kg: float | None = None
    seconds_total: float | None = None
    energy_kwh_total: float | None = None
    energy_method: str | None = None
    energy_detail: Any = None
    miou_min: float | None = None
    params_min: int | None = None

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any]) -> Table1Row:
        """The row of a train run's metrics.json (its Table I fields; the rest is left out)."""
        return cls(**{f.name: metrics.get(f.name) for f in dataclasses.fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the fields in declaration order."""
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write ``table1.json`` atomically."""
        return write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, source: str = "Table I row") -> Table1Row:
        """Validate and read the JSON form.

        Raises:
            DataError: not a JSON object, or a key that is not a Table I field (one line naming the file).
        """
        fix = "re-run the train stage (dvc repro) to rewrite it"
        data = _require(data, (), source, fix, DataError)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in names]
        if unknown:
            raise DataError(f"{source} has {unknown[0]!r}, which is not a Table I field; {fix}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> Table1Row:
        """Read and validate ``table1.json``.

        Raises:
            ConfigError: missing or not JSON; DataError: invalid (naming the file).
        """
        return cls.from_dict(read_json(path, "Table I row"), f"Table I row {path}")


PARETO_AXES = ("params", "macs", "latency")
"""Cost axes of a search's Pareto frontier (params.yaml ``search.pareto_x``)."""


@dataclass(frozen=True)
class SearchFrontier:
    """What ``compare`` reads of one search folder: ``metrics.json``'s metric and frontier axis, and ``pareto.json``.

    Attributes:
        metric: ``single`` or ``oracle`` (params.yaml ``metric``), the mIoU the search maximised.
        pareto_x: the cost axis the frontier was built on: ``params`` (all of SAM), ``macs`` (one image + one
            prompt) or ``latency`` (predicted encoder ms); searches written before the key was recorded: ``params``.
        points: the frontier, ascending in cost and in mIoU: each a candidate's ``params``, ``macs``,
            ``latency_ms`` (where measured), ``miou``, ``miou_oracle``, ``subnet``...
    """

    metric: str
    pareto_x: str
    points: list[dict[str, Any]]

    @classmethod
    def load(cls, folder: str | Path) -> SearchFrontier:
        """Read a search's ``metrics.json`` and ``pareto.json`` from ``folder``.

        Raises:
            ConfigError: a file missing or not JSON; DataError: an unknown axis or a frontier that is not a list.
        """
        folder = Path(folder)
        metrics = _require(
            read_json(folder / paths.METRICS_FILE, "search metrics"),
            ("metric",),
            f"search metrics {folder / paths.METRICS_FILE}",
            "re-run the search",
            DataError,
        )
        pareto_x = metrics.get("pareto_x", "params")
        if pareto_x not in PARETO_AXES:
            raise DataError(f"search {folder} has pareto_x {pareto_x!r}; use one of {', '.join(PARETO_AXES)}")
        points = read_json(folder / paths.PARETO_FILE, "Pareto frontier")
        if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
            raise DataError(f"{folder / paths.PARETO_FILE} is not a list of candidates; re-run the search")
        return cls(metrics["metric"], pareto_x, points)
