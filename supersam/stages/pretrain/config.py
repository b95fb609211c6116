"""``PretrainConfig``: the params.yaml ``pretrain`` section (the base model's training recipe)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from supersam.artifacts import paths
from supersam.runtime.errors import ConfigError

# Settings that define the optimisation trajectory: a resumed run must match them.
TRAJECTORY_FIELDS = (
    "init",
    "iterations",
    "batch_size",
    "max_objects",
    "lr",
    "warmup",
    "min_lr_ratio",
    "weight_decay",
    "grad_clip",
    "focal_weight",
    "focal_alpha",
    "dice_weight",
    "iou_weight",
    "augment",
    "amp",
    "seed",
)


@dataclass(frozen=True)
class PretrainConfig:
    """Training of the base model that SuperSAM then compresses (SAM's recipe, App. A of SAM).

    Attributes:
        init: checkpoint to start from: "" = random initialisation under
            ``model.seed``; an official ``sam_vit_*.pth`` = domain adaptation.
            With a checkpoint and ``iterations: 0`` it is passed through unchanged.
        out: output folder: model.pt, config.json, metrics.json, history.json, checkpoints/.
        iterations: optimizer steps (one batch each).
        batch_size: images per step.
        max_objects: prompted objects per image (random subset / repetition).
        lr: AdamW peak learning rate.
        warmup: linear warm-up steps from 0 to ``lr``.
        min_lr_ratio: cosine decay from ``lr`` to ``lr * min_lr_ratio`` at the last step.
        weight_decay: AdamW decoupled weight decay.
        grad_clip: max global gradient L2 norm (0 = off).
        focal_weight, dice_weight, iou_weight: SAM's 20 : 1 mask loss and the IoU-head MSE weight.
        focal_alpha: foreground weight of the focal loss (background 1 - alpha); < 0 = unweighted.
        augment: random rot90/flip and contrast/brightness jitter of every training image.
        eval_every: validation every this many steps (also before and at the end; 0 = only those).
        val_images: images of the fixed validation sample (val split).
        save_every: resumable checkpoint every this many steps (0 = only at the end).
        log_every: training loss to MLflow every this many steps.
        amp: bf16 autocast.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        seed: batch order, augmentation and prompts.
    """

    init: str = ""
    out: str = str(paths.PRETRAIN_DIR)
    iterations: int = 1000
    batch_size: int = 4
    max_objects: int = 16
    lr: float = 5e-4
    warmup: int = 30
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    focal_weight: float = 20.0
    focal_alpha: float = 0.25
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    augment: bool = True
    eval_every: int = 100
    val_images: int = 8
    save_every: int = 100
    log_every: int = 10
    amp: bool = False
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_objects", "val_images", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pretrain.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("iterations", "warmup", "eval_every", "save_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"pretrain.{name} must be >= 0, got {getattr(self, name)}")
        if self.iterations == 0 and not self.init:
            raise ConfigError(
                "pretrain.iterations is 0 but pretrain.init is empty; "
                "give a checkpoint to pass through or train for some iterations"
            )
        if not self.lr > 0 or not 0 < self.min_lr_ratio <= 1:
            raise ConfigError(
                f"pretrain.lr must be > 0 and pretrain.min_lr_ratio in (0, 1], got {self.lr} and {self.min_lr_ratio}"
            )
        for name in ("weight_decay", "grad_clip", "focal_weight", "dice_weight", "iou_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"pretrain.{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        """Plain dict for JSON, MLflow params and checkpoints."""
        return dataclasses.asdict(self)
