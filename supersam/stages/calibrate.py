"""The ``calibrate`` stage: the calibration statistics of every reordering criterion.

For each criterion of ``calibrate.criteria`` one pass over the same
``calibrate.n_images`` images: ``wanda``, one inference pass measuring the
activation norms (paper Eq. 1); ``taylor``, one forward + backward per image
measuring SlimSAM's disturbed Taylor importance (arXiv 2312.05284, Eq. 4). The
hooks, accumulators and the :class:`~supersam.model.activation_stats.CalibrationStats`
artifact are core (:mod:`supersam.model.activation_stats`, :mod:`supersam.model.taylor`);
this module runs the passes and writes ``outputs/calibration/calibration_stats.pt``
(`wanda_stats.pt` before 2026-12-06; its ``criteria`` field says what it holds). docs/method.md,
"Wanda score and MLP reordering" and "Taylor importance".
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from supersam.artifacts import paths
from supersam.model.activation_stats import CalibrationStats, check_criteria, collect_mlp_sq_norms, weights_digest
from supersam.model.sam import build_sam_from_config, pixel_stats
from supersam.model.taylor import disturbed_taylor_importance
from supersam.runtime.device import resolve_device
from supersam.runtime.errors import ConfigError
from supersam.runtime.tracking import start_run
from supersam.schema import ModelConfig, TrackingConfig

if TYPE_CHECKING:
    from supersam.data import DataConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CalibrateConfig:
    """params.yaml ``calibrate``: the calibration passes (Wanda norms, disturbed Taylor importance).

    Attributes:
        n_images: calibration images (paper: 100; 0 = the whole split).
        batch_size: images per encoder forward.
        split: data split the images come from (``train``, ``val``, ``all``; ``test`` is refused).
        seed: seed of the data preparation (prompts are unused here) and of the
            Taylor disturbance.
        out: where the stats artifact is written.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        amp: bf16 autocast during the Wanda forward (norms still accumulated in fp32/fp64);
            the Taylor pass always runs in the model's dtype (fp32).
        criteria: which statistics to measure: ``wanda`` (variant wanda) and/or
            ``taylor`` (variant taylor; a forward + backward per image, measured 3.4x a
            plain forward on vit_ti at 256 px).
        noise_std: standard deviation of the Gaussian disturbance of the image
            embedding for ``taylor`` (SlimSAM's code: 0.01; the unit order does not
            depend on it, the scores scale with it). The noise is seeded by ``seed``.
    """

    n_images: int = 16
    batch_size: int = 4
    split: str = "train"
    seed: int = 0
    out: str = str(paths.CALIBRATION_STATS)
    device: str = "auto"
    amp: bool = False
    criteria: tuple[str, ...] = ("wanda", "taylor")
    noise_std: float = 0.01


def calibrate(
    model_cfg: ModelConfig, data_cfg: DataConfig, cfg: CalibrateConfig, tracking: TrackingConfig
) -> CalibrationStats:
    """Measure the statistics of ``cfg.criteria`` and write ``cfg.out``.

    Builds the model of ``model_cfg``, prepares ``cfg.n_images`` images of
    ``cfg.split`` with :func:`supersam.data.prepare_split`, then per criterion:
    ``wanda``, one inference pass with MLP hooks (activation norms, paper Eq. 1);
    ``taylor``, one forward + backward per image (disturbed Taylor importance,
    SlimSAM Eq. 4, :func:`supersam.model.taylor.disturbed_taylor_importance`). Saves one
    :class:`CalibrationStats` artifact whose ``criteria`` lists them. Logs an MLflow
    run (stage ``calibrate``) with ``n_images``, ``n_tokens``, ``seconds``
    and per criterion ``seconds_<criterion>``.

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
    criteria = check_criteria(cfg.criteria, "calibrate.criteria")
    if not cfg.noise_std > 0:
        raise ConfigError(f"calibrate.noise_std must be > 0, got {cfg.noise_std}")
    device = resolve_device(cfg.device)
    params = {
        "model_type": model_cfg.type,
        "img_size": model_cfg.img_size,
        "checkpoint": model_cfg.checkpoint,
        **dataclasses.asdict(cfg),
        "data_root": data_cfg.root,
        "data_kind": data_cfg.kind,
    }
    with start_run(tracking, "calibrate", "", params, {"pretrained": bool(model_cfg.checkpoint)}) as run:
        loaded = build_sam_from_config(model_cfg)
        inputs = prepare_split(
            data_cfg, cfg.split, loaded.img_size, n_images=cfg.n_images, seed=cfg.seed, **pixel_stats(loaded.model)
        )
        if cfg.n_images and len(inputs) < cfg.n_images:
            log.warning("only %d calibration images available (asked for %d)", len(inputs), cfg.n_images)
        run.log_dataset(data_cfg.root, cfg.split, len(inputs), sum(inp.n_objects for inp in inputs), data_cfg.kind)
        start = time.perf_counter()
        model = loaded.model.to(device).eval()
        images = [inp.image for inp in inputs]
        blocks: list[dict] = [{} for _ in model.image_encoder.blocks]
        n_tokens, timings = 0, {}
        for criterion in criteria:
            t0 = time.perf_counter()
            if criterion == "wanda":
                norms, n_tokens = collect_mlp_sq_norms(model, images, cfg.batch_size, device, cfg.amp)
                found = norms
            else:
                found = disturbed_taylor_importance(model, images, cfg.noise_std, cfg.seed, device)
            for block, values in zip(blocks, found):
                block.update(values)
            timings[f"seconds_{criterion}"] = time.perf_counter() - t0
        seconds = time.perf_counter() - start
        settings = {"seed": cfg.seed, "split": cfg.split, "amp": cfg.amp}
        if "taylor" in criteria:
            settings["taylor_noise_std"] = cfg.noise_std
        stats = CalibrationStats(
            criteria,
            loaded.model_type,
            loaded.img_size,
            loaded.pretrained,
            loaded.checkpoint or "",
            weights_digest(model),
            len(inputs),
            n_tokens,
            blocks,
            settings,
        )
        stats.save(cfg.out)
        run.log_metrics({"n_images": len(inputs), "n_tokens": n_tokens, "seconds": seconds, **timings})
        run.log_artifact(str(cfg.out))
    log.info(
        "calibrated %s on %d images in %.1f s (%s) -> %s",
        "+".join(criteria),
        len(inputs),
        seconds,
        ", ".join(f"{k.removeprefix('seconds_')} {v:.1f} s" for k, v in timings.items()),
        cfg.out,
    )
    return stats
