"""Sandwich-rule training of a SuperSAM supernet (paper Sec. III "NAS Training", Table I).

Modules: :mod:`config` (TrainConfig), :mod:`sandwich` (one iteration),
:mod:`optim` (trainable parts, AdamW, LambdaLR), :mod:`probe` (periodic
validation, time/energy to target), :mod:`energy` (NVML / RAPL / estimate),
:mod:`distributed` (multi-process gradient all-reduce), :mod:`loop` (the run).
Core modules it shares with ``pretrain``: :mod:`supersam.runtime.sampling` (randomness as
a pure function of seed and iteration) and :mod:`supersam.runtime.resume` (atomic
resumable state).
"""

from __future__ import annotations

import logging

from supersam.data import DataConfig
from supersam.runtime.outdir import releases_claims
from supersam.schema import TrackingConfig
from supersam.stages.train.config import TrainConfig
from supersam.stages.train.distributed import close_distributed, init_distributed
from supersam.stages.train.loop import Trainer, TrainResult

log = logging.getLogger(__name__)


@releases_claims
def train(
    cfg: TrainConfig,
    data_cfg: DataConfig,
    tracking: TrackingConfig,
    resume: bool | str = False,
    stop_after: int | None = None,
    show_progress: bool = True,
) -> TrainResult:
    """Train the supernet at ``cfg.supernet`` with the sandwich rule and write ``cfg.out``.

    Per iteration the max, min and ``n_random`` random subnets run forward +
    backward on the same batch (``train.loss``: Dice, paper Eq. 2, of the single-mask
    output; focal + Dice; or SAM's whole loss on all four low-res outputs; with
    ``data.train_prompt`` prompts, ``train.max_objects`` objects per image, optionally
    augmented; plus
    distillation per ``train.distill_from``: ``max`` in-place from the max subnet,
    ``base`` image-embedding + mask-logit MSE to the frozen base model, SlimSAM-style);
    gradients accumulate in the shared
    weights, then one AdamW step (``mode=sequential``: a step per subnet). The
    LR decays linearly from ``lr`` to ``lr * min_lr_ratio`` (after ``warmup`` linear
    warm-up iterations). Every
    ``eval_every`` iterations the smallest, largest and a fixed random subnet
    are evaluated (mIoU) on ``val_images`` validation images; the first
    iteration where the smallest reaches ``target_miou`` (absolute, or relative
    to the base model: ``0.98x``) is recorded with the
    wall time (s) and energy (kWh) up to it (paper Table I).

    Run under ``torchrun --nproc_per_node K -m supersam.stages.train ...`` (or
    ``supersam train --nproc K``) for data parallelism: ``batch_size`` is the
    global batch, sharded over ranks; gradients are all-reduced manually
    (see :mod:`supersam.stages.train.distributed`); only rank 0 writes files and MLflow.

    Writes (rank 0): ``out/supernet.pt`` (``checkpoint.save_supernet`` format,
    input's SupernetMeta with ``provenance["train"]``), ``out/metrics.json``,
    ``out/history.json`` and ``out/checkpoints/last.pt`` (every ``save_every``
    iterations and when stopping). One MLflow run tagged ``stage=train``,
    ``variant=<meta.variant>``, ``pretrained``, ``energy_method``.

    Args:
        cfg: the ``train`` section.
        data_cfg: the ``data`` section (train split for batches, val for the probe).
        tracking: the ``mlflow`` section.
        resume: True continues from ``out/checkpoints/last.pt`` (draws the same subnets,
            batches and prompts an uninterrupted run would) and refuses one whose
            settings, data or input supernet content differ; ``"auto"`` (the DVC stage)
            continues only from a matching unfinished checkpoint, else starts afresh.
        stop_after: stop (with a checkpoint) once this many iterations are done,
            without final artifacts; for time-limited jobs.
        show_progress: rich progress bar on stderr (rank 0).

    Returns:
        :class:`TrainResult` (metrics, history, per-iteration losses and subnets).

    Raises:
        ConfigError: bad settings (e.g. batch_size < number of processes).
        CheckpointError: unreadable supernet, or an incompatible/missing resume checkpoint.
        DataError: unusable data.
    """
    ctx = init_distributed(cfg.device)
    try:
        if not ctx.is_main:
            logging.getLogger("supersam").setLevel(logging.WARNING)
        trainer = Trainer(cfg, data_cfg, ctx)
        return trainer.run(resume, stop_after, tracking, show_progress)
    finally:
        close_distributed(ctx)


__all__ = ["TrainConfig", "TrainResult", "train"]
