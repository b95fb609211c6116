"""The build-supernet stage: reorder SAM's encoder MLPs and wrap it as a supernet.

Loads the model of the ``model`` section (seeded random init when no
checkpoint, so it matches the calibrated one), reorders every block's MLP
hidden units by the chosen variant (paper Sec. III, Eq. 1; see
:mod:`supersam.model.reorder`), builds the search space (paper Sec. III: prunable
blocks with drop probabilities theta_i, MLP dims) and writes
``supernet.pt`` (:func:`supersam.model.checkpoint.save_supernet`) and
``search_space.json`` into ``outputs/supernet/<variant>`` (:mod:`supersam.artifacts.paths`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch

from supersam.artifacts import paths
from supersam.artifacts.records import LayerRanking, SupernetMeta
from supersam.model.activation_stats import CalibrationStats
from supersam.model.reorder import COMBINES, get_variant, reorder_sam
from supersam.model.sam import build_sam_from_config, count_params, state_digest
from supersam.runtime.errors import ConfigError
from supersam.runtime.tracking import start_run
from supersam.schema import ModelConfig, TrackingConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SpaceConfig:
    """params.yaml ``space``: the search space of the supernet (paper Sec. III).

    Attributes:
        prunable: blocks that may be dropped (paper: 1, 2, 5, 6, 9); None = arch default.
        drop_probs: drop probability theta_i per prunable block (reference code: 0.5); None = default.
        mlp_dim_choices: allowed MLP widths (the paper's "windows"), ascending, last =
            full width: fractions of the model's MLP width (<= 1) or absolute widths;
            None = the paper's 0.25, 0.332, 0.5, 0.75, 1 (vit_b: 768, 1020, 1536, 2304, 3072).
        ranking: ``ranking.json`` of ``supersam rank-layers`` (default: the pipeline's);
            its ``prunable`` and ``drop_probs`` are used instead of the two fields
            above. "" = no ranking (the fields above or the arch default).
    """

    prunable: tuple[int, ...] | None = None
    drop_probs: tuple[float, ...] | None = None
    mlp_dim_choices: tuple[float, ...] | None = None
    ranking: str = str(paths.RANKING)


@dataclasses.dataclass(frozen=True)
class SupernetConfig:
    """params.yaml ``supernet``: one reordering variant of the supernet.

    Attributes:
        variant: ``none``, ``magnitude``, ``wanda`` (paper Table I variants) or ``taylor``
            (SlimSAM's disturbed Taylor importance, arXiv 2312.05284 Eq. 4; docs/method.md).
        combine: ``rank`` (paper: mean of lin1-row and lin2-column ranks) or
            ``score`` (reference code: mean of raw scores).
        stats: calibration stats of ``supersam calibrate`` (``wanda`` and ``taylor``;
            the file must hold the variant's criterion).
        out: output folder; "" = ``outputs/supernet/<variant>``.
    """

    variant: str = "wanda"
    combine: str = "rank"
    stats: str = str(paths.CALIBRATION_STATS)
    out: str = ""


def space_settings(space_cfg: SpaceConfig, model_type: str, img_size: int) -> dict[str, Any]:
    """``prunable``/``drop_probs``/``mlp_dim_choices`` for ``SearchSpace.for_arch``, from the ranking when given.

    Raises:
        ConfigError: unreadable or invalid ranking, or one of another model type.
    """
    settings = {
        "prunable": space_cfg.prunable,
        "drop_probs": space_cfg.drop_probs,
        "mlp_dim_choices": space_cfg.mlp_dim_choices,
    }
    if not space_cfg.ranking:
        return settings
    if not Path(space_cfg.ranking).is_file():
        raise ConfigError(
            f"layer ranking {space_cfg.ranking} does not exist; run `supersam rank-layers` first, or build "
            "without one: --set space.ranking= (then space.prunable or the paper's blocks 1, 2, 5, 6, 9)"
        )
    ranking = LayerRanking.load(space_cfg.ranking)
    if ranking.model_type != model_type:
        raise ConfigError(
            f"layer ranking {space_cfg.ranking} is for {ranking.model_type}, the model is {model_type}; "
            "rerun `supersam rank-layers` with the same model section or fix space.ranking"
        )
    if ranking.img_size != img_size:
        log.warning(
            "layer ranking %s was measured at %s px, the supernet is built at %d px",
            space_cfg.ranking,
            ranking.img_size,
            img_size,
        )
    if space_cfg.prunable is not None or space_cfg.drop_probs is not None:
        log.warning(
            "the layer ranking %s sets prunable/drop_probs: space.prunable/space.drop_probs are ignored "
            "(--set space.ranking= uses them)",
            space_cfg.ranking,
        )
    settings["prunable"] = tuple(ranking.prunable)
    settings["drop_probs"] = tuple(ranking.drop_probs)
    return settings


def build_supernet(
    model_cfg: ModelConfig, space_cfg: SpaceConfig, cfg: SupernetConfig, tracking: TrackingConfig
) -> Path:
    """Reorder the encoder MLPs by ``cfg.variant`` and write the supernet (paper Sec. III).

    Writes ``supernet.pt`` (its :class:`SupernetMeta`: model_type, img_size,
    pretrained, checkpoint, variant, combine, stats, stats_n_images, ranking) and
    ``search_space.json`` into the output folder, and logs an MLflow run (stage
    ``build-supernet``, tag variant) with ``params`` (full SAM), ``params_min`` (smallest
    subnet), ``space_size``, ``units_moved_frac`` and ``seconds``.

    Returns:
        the output folder.

    Raises:
        ConfigError: unknown variant or combination, stats missing for
            ``wanda``/``taylor``, lacking the variant's criterion, or measured on
            another model/img_size/checkpoint/weights,
            bad search-space settings or ranking.
        CheckpointError: unreadable checkpoint or stats file.
    """
    from supersam.model.checkpoint import save_supernet
    from supersam.model.elastic import SuperSam
    from supersam.model.space import SearchSpace

    variant = get_variant(cfg.variant)
    if cfg.combine not in COMBINES:
        raise ConfigError(f"unknown supernet.combine {cfg.combine!r}; use one of {', '.join(COMBINES)}")
    if "{" in cfg.out:
        raise ConfigError(
            f"supernet.out {cfg.out!r} holds a placeholder; give a folder (default outputs/supernet/<variant>)"
        )
    out = Path(cfg.out or paths.supernet_dir(cfg.variant))
    with start_run(tracking, "build-supernet", cfg.variant, tags={"pretrained": bool(model_cfg.checkpoint)}) as run:
        start = time.perf_counter()  # "seconds": the stage's work inside its MLflow run
        stats = CalibrationStats.load(cfg.stats) if variant.stats_kind else None
        space = SearchSpace.for_arch(model_cfg.type, **space_settings(space_cfg, model_cfg.type, model_cfg.img_size))
        run.log_params(space.to_dict())
        loaded = build_sam_from_config(model_cfg)
        if stats is not None:
            stats.check_matches(loaded, f"calibration stats {cfg.stats}")
        meta = SupernetMeta(
            model_type=loaded.model_type,
            img_size=loaded.img_size,
            pretrained=loaded.pretrained,
            variant=cfg.variant,
            checkpoint=loaded.checkpoint or "",
            base_digest=state_digest(loaded.model) if loaded.checkpoint else "",
            combine=cfg.combine,
            stats=cfg.stats if stats is not None else "",
            stats_n_images=stats.n_images if stats is not None else 0,
            ranking=space_cfg.ranking,
        )
        run.log_params({k: v for k, v in dataclasses.asdict(meta).items() if k != "provenance"})
        orders = reorder_sam(loaded.model, cfg.variant, stats, cfg.combine)
        supernet = SuperSam(loaded.model, space, meta)
        save_supernet(out / paths.SUPERNET_FILE, supernet)
        space.save(out / paths.SEARCH_SPACE_FILE)
        moved = torch.cat([o != torch.arange(o.numel()) for o in orders]).double().mean().item()
        run.log_metrics(
            {
                "params": count_params(loaded.model),
                "params_min": supernet.params(space.min_subnet()),
                "space_size": space.size(),
                "units_moved_frac": moved,
                "seconds": time.perf_counter() - start,
            }
        )
        run.log_artifact(str(out / paths.SEARCH_SPACE_FILE))
    log.info("supernet (%s variant, %s) written to %s", cfg.variant, cfg.combine, out)
    return out
