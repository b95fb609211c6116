"""``TrainConfig``: the params.yaml ``train`` section (paper Sec. III "NAS Training")."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from supersam.artifacts import paths
from supersam.measure.thresholds import MiouThreshold, setting_text
from supersam.runtime.errors import ConfigError

TRAINABLE_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")
MODES = ("sandwich", "sequential", "finetune")
# train.loss: Dice only (the paper, Eq. 2), SAM's focal + Dice on the single mask, or SAM's whole
# loss (Kirillov et al. 2023, App. A: focal + Dice on the single mask and the best multimask
# output, MSE on the IoU head; supersam.measure.losses.sam_loss)
LOSSES = ("dice", "focal_dice", "sam")
# train.distill_from: the teacher of the distillation term (docs/method.md, "Sandwich rule and in-place distillation")
DISTILL_SOURCES = ("base", "max", "none")

# Fields that define the optimisation trajectory: a resumed run must match them.
TRAJECTORY_FIELDS = (
    "supernet",
    "iterations",
    "batch_size",
    "max_objects",
    "lr",
    "warmup",
    "min_lr_ratio",
    "weight_decay",
    "grad_clip",
    "amp",
    "mode",
    "loss",
    "focal_weight",
    "augment",
    "n_random",
    "distill_from",
    "distill_weight",
    "distill_embed_weight",
    "distill_mask_weight",
    "trainable",
    "seed",
)
# The input supernet's content (SHA-256 of supernet.pt, which holds the search space): a
# supernet rebuilt at the same path is another run, whatever its path says.
INPUT_FIELDS = ("supernet_digest",)
# Fields that define what the probes and Table I measure: a resumed run must match them too,
# or probes.json / history.json would mix two metrics, targets or samples.
MEASUREMENT_FIELDS = ("metric", "target_miou", "target_every", "val_images")


@dataclass(frozen=True)
class TrainConfig:
    """Sandwich-rule supernet training (paper Sec. III; Yu & Huang 2019).

    Attributes:
        variant: reordering variant trained; picks the default paths
            (``outputs/supernet/<variant>/supernet.pt`` -> ``outputs/train/<variant>``).
        supernet: input supernet.pt written by ``build-supernet`` ("" = the variant's).
        out: output folder: supernet.pt, metrics.json, history.json, checkpoints/
            ("" = ``outputs/train/<variant>``, the variant recorded in the supernet).
        iterations: optimizer iterations (one batch each); the LR decays over them.
        batch_size: images per iteration, summed over all processes (DDP shards it).
        max_objects: prompted objects per training image (random subset, or
            random repetition when fewer); 0 = ``data.max_objects``.
        lr: AdamW peak learning rate (paper: 1e-5).
        warmup: iterations of linear warm-up from ``lr / warmup`` to ``lr``; 0 = none (the paper).
        min_lr_ratio: the LR decays linearly to ``lr * min_lr_ratio`` at the last iteration (paper: 1%).
        weight_decay: AdamW decoupled weight decay (applies to whole shared tensors).
        grad_clip: max global gradient L2 norm; 0 = no clipping.
        amp: bf16 autocast for forward passes (CPU and CUDA).
        mode: ``sandwich`` (accumulate max+min+random, one step), ``sequential``
            (one optimizer step after each subnet, like the reference code) or
            ``finetune`` (the max subnet alone, one step per batch: plain fine-tuning of
            the base model, the baseline a user would run instead of SuperSAM).
        loss: ``dice`` (the paper's Eq. 2, mean over objects) or ``focal_dice``
            (``focal_weight`` x unweighted sigmoid focal loss (gamma 2, mean over pixels)
            + Dice, SAM's mask loss), both on the single-mask logits at image size; or
            ``sam``, SAM's whole training loss (Kirillov et al. 2023, App. A;
            :func:`supersam.measure.losses.sam_loss`, the loss of ``pretrain``): the same
            focal + Dice on the single mask and on the lowest-loss of the three multimask
            outputs, plus the MSE of the IoU head, on the decoder's S/4 x S/4 logits.
        focal_weight: weight of the focal term with ``loss: focal_dice`` or ``sam`` (SAM: 20).
        augment: random rot90 / flip and contrast / brightness jitter of every training
            image (:func:`supersam.data.augment.augment_sample`, as ``pretrain``).
        n_random: random subnets per iteration besides max and min.
        distill_from: the distillation teacher. ``none``: Dice against the ground truth
            only (the paper). ``max``: in-place distillation (BigNAS; was
            ``distill: true``): smaller subnets also learn the max subnet's (detached)
            mask probabilities, weighted by ``distill_weight``. ``base``: SlimSAM-style
            distillation (arXiv 2312.05284, Sec. 3.2) from the frozen base model the
            supernet was built from (``model.checkpoint``): every subnet adds
            ``distill_embed_weight * MSE(image embedding, base embedding)`` +
            ``distill_mask_weight * MSE(mask logits, base mask logits)`` to its Dice loss.
        distill_weight: ``max`` only: weight of the distillation term for smaller
            subnets (loss = (1-w) * L(GT) + w * dice(teacher), L the ``loss``'s
            ground-truth term); 1.0 = BigNAS.
        distill_embed_weight: ``base`` only: weight of the image-embedding MSE
            (B x 256 x S/16 x S/16, mean over elements; SlimSAM's final-embedding loss).
        distill_mask_weight: ``base`` only: weight of the single-mask logit MSE
            (N x H x W per image, mean over elements) against the base model's logits.
        trainable: SAM parts that are trained; the rest is frozen.
        eval_every: evaluate min/max/fixed-random subnets every this many iterations
            (also before training and at the end); 0 = only before and at the end.
        val_images: validation images in the fixed evaluation sample (each object once).
        target_every: probe the smallest subnet on that sample every this many
            iterations (and before training), so ``iterations_to_target`` is exact
            at this resolution (paper Table I); 0 = only at ``eval_every`` points.
            Probe and validation time/energy are excluded from Table I's figures.
        metric: ``single`` or ``oracle`` (params.yaml's top-level ``metric``): the
            mIoU of the validation, the probe and ``target_miou``.
        target_miou: mIoU the smallest subnet must reach (paper Table I): absolute
            in [0, 1] (``0.84``) or a factor of the base model's mIoU on the probe's
            validation sample (``0.9x``, ``90%``), resolved once when training starts.
        save_every: write a resumable checkpoint every this many iterations; 0 = never.
        seed: seeds subnet sampling, batch order and training prompts (the probe sample and its
            fixed random subnet follow ``data.seed``, so every training seed is measured alike).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``.
        emission_factor: kg CO2 per kWh (paper: 0.437).
        country_iso_code: country for codecarbon's offline estimate.
        cpu_tdp_watts: CPU power assumed when codecarbon is unusable (TDP x time).
        log_every: log the training loss to MLflow every this many iterations.
    """

    variant: str = "wanda"
    supernet: str = ""
    out: str = ""
    iterations: int = 200
    batch_size: int = 2
    max_objects: int = 0
    lr: float = 1e-5
    warmup: int = 0
    min_lr_ratio: float = 0.01
    weight_decay: float = 0.01
    grad_clip: float = 0.0
    amp: bool = False
    mode: str = "sandwich"
    loss: str = "dice"
    focal_weight: float = 20.0
    augment: bool = False
    n_random: int = 1
    distill_from: str = "none"
    distill_weight: float = 1.0
    distill_embed_weight: float = 10.0
    distill_mask_weight: float = 0.1
    trainable: tuple[str, ...] = ("image_encoder", "mask_decoder")
    eval_every: int = 25
    val_images: int = 8
    target_every: int = 1
    metric: str = "single"
    target_miou: str = "0.84"
    save_every: int = 50
    seed: int = 0
    device: str = "auto"
    emission_factor: float = 0.437
    country_iso_code: str = "USA"
    cpu_tdp_watts: float = 65.0
    log_every: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.target_miou, str):  # a number given in code: keep the setting as text
            object.__setattr__(self, "target_miou", setting_text(self.target_miou))
        self.validate()

    @property
    def supernet_path(self) -> Path:
        """The supernet checkpoint to train: ``supernet``, else the variant's built supernet."""
        return Path(self.supernet or paths.built_supernet(self.variant))

    @property
    def out_dir(self) -> Path:
        """The output folder: ``out``, else ``outputs/train/<variant>``."""
        return self.out_dir_for(self.variant)

    def out_dir_for(self, variant: str) -> Path:
        """``out``, else ``outputs/train/<variant>`` for the supernet's own ``variant``."""
        return Path(self.out or paths.train_dir(variant))

    @property
    def target_threshold(self) -> MiouThreshold:
        """``target_miou`` parsed (absolute or relative to the base model).

        Raises:
            ConfigError: not a valid threshold (naming ``train.target_miou``).
        """
        return MiouThreshold.parse(self.target_miou, "train.target_miou")

    def validate(self) -> None:
        """Check ranges and names.

        Raises:
            ConfigError: one line naming the offending ``train.<field>`` and the fix.
        """
        positive = {
            "iterations": self.iterations,
            "batch_size": self.batch_size,
            "val_images": self.val_images,
            "log_every": self.log_every,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {value}")
        for name in ("eval_every", "save_every", "n_random", "max_objects", "target_every", "warmup"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.warmup and self.warmup >= self.iterations:
            raise ConfigError(
                f"train.warmup ({self.warmup}) must be below train.iterations ({self.iterations}), or the LR "
                "never reaches train.lr; lower train.warmup (0 = none) or raise train.iterations"
            )
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if not 0 < self.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio must be in (0, 1], got {self.min_lr_ratio}")
        for name in ("weight_decay", "grad_clip", "emission_factor"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not self.cpu_tdp_watts > 0:
            raise ConfigError(f"train.cpu_tdp_watts must be > 0 (W), got {self.cpu_tdp_watts}")
        if self.mode not in MODES:
            raise ConfigError(f"train.mode {self.mode!r} is unknown; use one of {', '.join(MODES)}")
        if self.loss not in LOSSES:
            raise ConfigError(f"train.loss {self.loss!r} is unknown; use one of {', '.join(LOSSES)}")
        if not self.focal_weight >= 0:
            raise ConfigError(f"train.focal_weight must be >= 0, got {self.focal_weight}")
        if self.distill_from not in DISTILL_SOURCES:
            raise ConfigError(
                f"train.distill_from {self.distill_from!r} is unknown; use one of {', '.join(DISTILL_SOURCES)}"
            )
        if not 0 <= self.distill_weight <= 1:
            raise ConfigError(f"train.distill_weight must be in [0, 1], got {self.distill_weight}")
        for name in ("distill_embed_weight", "distill_mask_weight"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.distill_from == "base" and self.distill_embed_weight == 0 and self.distill_mask_weight == 0:
            raise ConfigError(
                "train.distill_from is base but train.distill_embed_weight and train.distill_mask_weight "
                "are both 0; set one > 0 or use distill_from: none"
            )
        bad = [p for p in self.trainable if p not in TRAINABLE_PARTS]
        if bad or not self.trainable:
            raise ConfigError(
                f"train.trainable entry {bad[0] if bad else '[]'!r} is invalid; "
                f"list one or more of {', '.join(TRAINABLE_PARTS)}"
            )
        self.target_threshold  # noqa: B018  (raises on a bad threshold)
        from supersam.schema import metric_key

        metric_key(self.metric, "metric")

    def to_dict(self) -> dict:
        """Plain dict (lists instead of tuples) for JSON, MLflow params and checkpoints."""
        d = dataclasses.asdict(self)
        d["trainable"] = list(self.trainable)
        d["supernet"] = str(self.supernet_path)  # resolved, so "" and its default path compare equal
        return d
