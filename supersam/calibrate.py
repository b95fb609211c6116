"""The ``calibrate-wanda`` stage: one inference pass that measures Wanda's activation norms.

The hooks, accumulators and the :class:`~supersam.activation_stats.ActivationStats`
artifact are core (:mod:`supersam.activation_stats`); this module runs the pass on
``calibrate.n_images`` images and writes ``outputs/calibration/wanda_stats.pt``
(paper Eq. 1; docs/method.md, "Wanda score and MLP reordering").
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from supersam import paths
from supersam.activation_stats import ActivationStats, collect_mlp_sq_norms, weights_digest
from supersam.config import ModelConfig, TrackingConfig
from supersam.device import resolve_device
from supersam.errors import ConfigError
from supersam.sam import build_sam_from_config, pixel_stats
from supersam.tracking import start_run

if TYPE_CHECKING:
    from supersam.data import DataConfig

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class CalibrateConfig:
    """params.yaml ``calibrate``: the Wanda calibration pass.

    Attributes:
        n_images: calibration images (paper: 100; 0 = the whole split).
        batch_size: images per encoder forward.
        split: data split the images come from (``train``, ``val``, ``all``; ``test`` is refused).
        seed: seed of the data preparation (prompts are unused here).
        out: where the stats artifact is written.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        amp: bf16 autocast during the forward (norms still accumulated in fp32/fp64).
    """

    n_images: int = 16
    batch_size: int = 4
    split: str = "train"
    seed: int = 0
    out: str = str(paths.CALIBRATION_STATS)
    device: str = "auto"
    amp: bool = False


def calibrate_wanda(
    model_cfg: ModelConfig, data_cfg: DataConfig, cfg: CalibrateConfig, tracking: TrackingConfig
) -> ActivationStats:
    """Measure Wanda activation norms (paper Eq. 1) and write ``cfg.out``.

    Builds the model of ``model_cfg``, prepares ``cfg.n_images`` images of
    ``cfg.split`` with :func:`supersam.data.prepare_split`, runs one inference
    pass with MLP hooks and saves an :class:`ActivationStats` artifact. Logs an
    MLflow run (stage ``calibrate-wanda``) with ``n_images``, ``n_tokens`` and ``seconds``.

    Raises:
        ConfigError, CheckpointError, DataError: bad settings, checkpoint or data.
    """
    from supersam.data import prepare_split
    from supersam.data.config import check_selection_split

    if cfg.n_images < 0:
        raise ConfigError(f"calibrate.n_images must be >= 0 (0 = whole split), got {cfg.n_images}")
    check_selection_split(cfg.split, "calibrate.split")
    if cfg.batch_size < 1:
        raise ConfigError(f"calibrate.batch_size must be >= 1, got {cfg.batch_size}")
    device = resolve_device(cfg.device)
    params = {"model_type": model_cfg.type, "img_size": model_cfg.img_size, "checkpoint": model_cfg.checkpoint,
              **dataclasses.asdict(cfg), "data_root": data_cfg.root, "data_kind": data_cfg.kind}
    with start_run(tracking, "calibrate-wanda", "", params, {"pretrained": bool(model_cfg.checkpoint)}) as run:
        loaded = build_sam_from_config(model_cfg)
        inputs = prepare_split(data_cfg, cfg.split, loaded.img_size, n_images=cfg.n_images, seed=cfg.seed,
                               **pixel_stats(loaded.model))
        if cfg.n_images and len(inputs) < cfg.n_images:
            log.warning("only %d calibration images available (asked for %d)", len(inputs), cfg.n_images)
        run.log_dataset(data_cfg.root, cfg.split, len(inputs), sum(inp.n_objects for inp in inputs), data_cfg.kind)
        start = time.perf_counter()
        model = loaded.model.to(device).eval()
        blocks, n_tokens = collect_mlp_sq_norms(model, [inp.image for inp in inputs], cfg.batch_size, device, cfg.amp)
        seconds = time.perf_counter() - start
        stats = ActivationStats("wanda", loaded.model_type, loaded.img_size, loaded.pretrained,
                                loaded.checkpoint or "", weights_digest(model), len(inputs), n_tokens, blocks)
        stats.save(cfg.out)
        run.log_metrics({"n_images": len(inputs), "n_tokens": n_tokens, "seconds": seconds})
        run.log_artifact(str(cfg.out))
    log.info("calibrated %d images (%d tokens/block) in %.1f s -> %s", len(inputs), n_tokens, seconds, cfg.out)
    return stats
