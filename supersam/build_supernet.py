"""The build-supernet stage: reorder SAM's encoder MLPs and wrap it as a supernet.

Loads the model of the ``model`` section (seeded random init when no
checkpoint, so it matches the calibrated one), reorders every block's MLP
hidden units by the chosen criterion (paper Sec. III, Eq. 1; see
:mod:`supersam.reorder`), builds the search space (paper Sec. III: prunable
blocks with drop probabilities theta_i, MLP windows) and writes
``supernet.pt`` (:func:`supersam.checkpoint.save_supernet`) and
``search_space.json`` into ``supernet.out``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch

from supersam.calibrate import ActivationStats
from supersam.sam import build_sam_from_config
from supersam.config import ModelConfig, TrackingConfig
from supersam.errors import ConfigError
from supersam.io import read_json
from supersam.reorder import COMBINES, get_criterion, reorder_sam
from supersam.sam import count_params
from supersam.tracking import start_run

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SpaceConfig:
    """params.yaml ``space``: the search space of the supernet (paper Sec. III).

    Attributes:
        prunable: blocks that may be dropped (paper: 1, 2, 5, 6, 9); None = arch default.
        drop_probs: drop probability theta_i per prunable block (reference code: 0.5); None = default.
        windows: allowed MLP widths, ascending, last = full width: fractions of the
            model's MLP width (<= 1) or absolute widths; None = the paper's
            0.25, 0.332, 0.5, 0.75, 1 (vit_b: 768, 1020, 1536, 2304, 3072).
        ranking: ``ranking.json`` of ``supersam rank-layers``; when given, its
            ``prunable`` and ``drop_probs`` are used instead of the two fields above.
    """

    prunable: tuple[int, ...] | None = None
    drop_probs: tuple[float, ...] | None = None
    windows: tuple[float, ...] | None = None
    ranking: str = ""


@dataclasses.dataclass(frozen=True)
class SupernetConfig:
    """params.yaml ``supernet``: one reordering variant of the supernet.

    Attributes:
        reorder: criterion, ``none``, ``magnitude`` or ``wanda`` (paper Table I variants).
        combine: ``rank`` (paper: mean of lin1-row and lin2-column ranks) or
            ``score`` (reference code: mean of raw scores).
        stats: calibration stats of ``supersam calibrate-wanda`` (``wanda`` only).
        out: output folder; ``{reorder}`` is replaced by the criterion name.
    """

    reorder: str = "wanda"
    combine: str = "rank"
    stats: str = "outputs/calibration/wanda_stats.pt"
    out: str = "outputs/supernet/{reorder}"


def space_settings(space_cfg: SpaceConfig, model_type: str, img_size: int) -> dict[str, Any]:
    """``prunable``/``drop_probs``/``windows`` for ``SearchSpace.for_arch``, from the ranking when given.

    Raises:
        ConfigError: unreadable ranking, one of another model type, or missing keys.
    """
    settings = {"prunable": space_cfg.prunable, "drop_probs": space_cfg.drop_probs, "windows": space_cfg.windows}
    if not space_cfg.ranking:
        return settings
    ranking = read_json(space_cfg.ranking, "layer ranking")
    if not isinstance(ranking, dict) or not isinstance(ranking.get("prunable"), list):
        raise ConfigError(f"layer ranking {space_cfg.ranking} has no 'prunable' list; rerun `supersam rank-layers`")
    if ranking.get("model_type", model_type) != model_type:
        raise ConfigError(
            f"layer ranking {space_cfg.ranking} is for {ranking['model_type']}, the model is {model_type}; "
            "rerun `supersam rank-layers` with the same model section or fix space.ranking"
        )
    if ranking.get("img_size", img_size) != img_size:
        log.warning("layer ranking %s was measured at %s px, the supernet is built at %d px",
                    space_cfg.ranking, ranking["img_size"], img_size)
    if space_cfg.prunable is not None or space_cfg.drop_probs is not None:
        log.warning("space.ranking given: its prunable/drop_probs override space.prunable/space.drop_probs")
    settings["prunable"] = tuple(int(i) for i in ranking["prunable"])
    probs = ranking.get("drop_probs")
    settings["drop_probs"] = tuple(float(p) for p in probs) if probs is not None else None
    return settings


def _output_dir(cfg: SupernetConfig) -> Path:
    try:
        return Path(cfg.out.format(reorder=cfg.reorder))
    except (KeyError, IndexError, ValueError):
        raise ConfigError(f"supernet.out {cfg.out!r} may only use the placeholder {{reorder}}") from None


def build_supernet(
    model_cfg: ModelConfig, space_cfg: SpaceConfig, cfg: SupernetConfig, tracking: TrackingConfig
) -> Path:
    """Reorder the encoder MLPs by ``cfg.reorder`` and write the supernet (paper Sec. III).

    Writes ``supernet.pt`` (meta: model_type, img_size, pretrained, checkpoint,
    reorder, combine, stats, stats_n_images, ranking) and ``search_space.json``
    into the output folder, and logs an MLflow run (stage ``build-supernet``,
    variant = criterion) with ``params`` (full SAM), ``params_min`` (smallest
    subnet), ``space_size``, ``units_moved_frac`` and ``seconds``.

    Returns:
        the output folder.

    Raises:
        ConfigError: unknown criterion or combination, stats missing for
            ``wanda`` or measured on another model/img_size/checkpoint/weights,
            bad search-space settings or ranking.
        CheckpointError: unreadable checkpoint or stats file.
    """
    from supersam.checkpoint import save_supernet
    from supersam.elastic import SuperSam
    from supersam.space import SearchSpace, subnet_params

    start = time.perf_counter()
    criterion = get_criterion(cfg.reorder)
    if cfg.combine not in COMBINES:
        raise ConfigError(f"unknown supernet.combine {cfg.combine!r}; use one of {', '.join(COMBINES)}")
    out = _output_dir(cfg)
    stats = ActivationStats.load(cfg.stats) if criterion.stats_kind else None
    space = SearchSpace.for_arch(model_cfg.type, **space_settings(space_cfg, model_cfg.type, model_cfg.img_size))
    loaded = build_sam_from_config(model_cfg)
    if stats is not None:
        stats.check_matches(loaded, f"calibration stats {cfg.stats}")
    meta = {
        **loaded.describe(), "reorder": cfg.reorder, "combine": cfg.combine,
        "stats": cfg.stats if stats is not None else "", "stats_n_images": stats.n_images if stats is not None else 0,
        "ranking": space_cfg.ranking,
    }
    params = {**meta, **space.to_dict()}
    with start_run(tracking, "build-supernet", cfg.reorder, params, {"pretrained": loaded.pretrained}) as run:
        orders = reorder_sam(loaded.model, cfg.reorder, stats, cfg.combine)
        supernet = SuperSam(loaded.model, space)
        save_supernet(out / "supernet.pt", supernet, meta)
        space.save(out / "search_space.json")
        moved = torch.cat([o != torch.arange(o.numel()) for o in orders]).double().mean().item()
        run.log_metrics({
            "params": count_params(loaded.model),
            "params_min": subnet_params(loaded.model_type, loaded.img_size, space.min_subnet()),
            "space_size": space.size(), "units_moved_frac": moved, "seconds": time.perf_counter() - start,
        })
        run.log_artifact(str(out / "search_space.json"))
    log.info("supernet (%s reordering, %s) written to %s", cfg.reorder, cfg.combine, out)
    return out
