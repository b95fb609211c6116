"""One training iteration of the sandwich rule (paper Sec. III "NAS Training"; docs/method.md,
"Sandwich rule and in-place distillation").

Per batch the max subnet, the min subnet and ``n_random`` random subnets each
run forward + backward on the same images and prompts; their gradients
accumulate in the shared supernet weights and one AdamW step follows
(Yu & Huang 2019). ``sequential`` mode instead steps after every subnet, as
the paper's reference code does. Loss (``train.loss``): Dice (paper Eq. 2) of the
single-mask output (``multimask_output=False``) against the ground truth, SAM's focal +
Dice on it, or SAM's whole loss on all four low-res decoder outputs; optionally with
distillation (``train.distill_from``): in-place from the max subnet (``max``,
BigNAS) or SlimSAM-style from the frozen base model (``base``: image-embedding
and mask-logit MSE; arXiv 2312.05284 Sec. 3.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from supersam.data.types import ModelInput
from supersam.measure.inference import decode_low_res, decode_masks, embed_prompts, encode_images
from supersam.measure.losses import SamLossWeights, low_res_targets, low_res_valid, per_mask_focal, sam_loss
from supersam.measure.metrics import dice_loss
from supersam.model.checkpoint import load_base_model
from supersam.runtime.device import autocast
from supersam.runtime.errors import CheckpointError, ConfigError
from supersam.runtime.sampling import subnet_generator
from supersam.stages.train.config import TrainConfig
from supersam.stages.train.distributed import DistContext, all_reduce_grads, all_reduce_sum

Prompts = tuple[torch.Tensor, torch.Tensor]


@dataclass
class StepResult:
    """What one iteration did.

    Attributes:
        kinds: ``max``, ``min``, ``random`` (repeated for n_random > 1), in run order.
        subnets: the sampled configs, aligned with ``kinds``.
        losses: global-batch mean loss of each subnet (summed over ranks), distillation included.
        distill_losses: ``distill_from: base`` only: each subnet's weighted distillation
            part of ``losses`` (embedding + mask-logit MSE terms); empty otherwise.
        lr: learning rate used by this iteration's optimizer step(s).
        grad_norm: total gradient norm before clipping (last step), NaN when not clipped.
    """

    kinds: list[str]
    subnets: list
    losses: list[float] = field(default_factory=list)
    distill_losses: list[float] = field(default_factory=list)
    lr: float = float("nan")
    grad_norm: float = float("nan")

    @property
    def loss(self) -> float:
        """Mean loss over the iteration's subnets."""
        return sum(self.losses) / len(self.losses)

    def loss_by_kind(self) -> dict[str, float]:
        """``loss_max``, ``loss_min``, ``loss_random`` (mean over random draws)."""
        out: dict[str, list[float]] = {}
        for kind, value in zip(self.kinds, self.losses):
            out.setdefault(f"loss_{kind}", []).append(value)
        return {k: sum(v) / len(v) for k, v in out.items()}

    @property
    def distill_loss(self) -> float | None:
        """Mean weighted base-distillation loss over the iteration's subnets (None without)."""
        return sum(self.distill_losses) / len(self.distill_losses) if self.distill_losses else None


@dataclass
class BaseTargets:
    """The frozen base model's outputs on one batch: SlimSAM-style distillation targets.

    Attributes:
        embeddings: B x D x S/16 x S/16 image embeddings (float32, no grad).
        logits: per input N_i x H x W single-mask logits (float32, no grad).
        embed_weight: weight of the embedding MSE; mask_weight: weight of the logit MSE.
    """

    embeddings: torch.Tensor
    logits: list[torch.Tensor]
    embed_weight: float
    mask_weight: float


def load_base_teacher(meta, source: str, device: torch.device) -> torch.nn.Module:
    """The frozen base SAM a supernet was built from (:func:`supersam.model.checkpoint.load_base_model`), for
    ``distill_from: base``.

    Args:
        meta: the supernet's :class:`~supersam.artifacts.records.SupernetMeta` (model_type, img_size, checkpoint).
        source: the supernet's path, for messages.

    Returns:
        the model on ``device``, eval mode, every parameter frozen.

    Raises:
        ConfigError: the supernet comes from a randomly initialised SAM (no base checkpoint).
        CheckpointError: the recorded base checkpoint is missing, unreadable, or holds other
            weights than the supernet was built from.
    """
    if not meta.checkpoint:
        raise ConfigError(
            f"train.distill_from is base, but {source} was built from a randomly initialised SAM "
            "(model.checkpoint was empty); rebuild it from a base checkpoint or use distill_from: max or none"
        )
    if not Path(meta.checkpoint).exists():  # a checkpoint file or a Hugging Face model folder
        raise CheckpointError(
            f"train.distill_from is base, but the base model {meta.checkpoint} that {source} was "
            "built from does not exist (run from the project folder)"
        )
    model = load_base_model(meta, source).model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def base_targets(
    base: torch.nn.Module,
    inputs: Sequence[ModelInput],
    device: torch.device,
    amp: bool,
    embed_weight: float,
    mask_weight: float,
) -> BaseTargets:
    """Run the frozen base SAM (its own prompt encoder and decoder) on this rank's ``inputs``."""
    with torch.no_grad(), autocast(device, amp):
        embeddings = encode_images(base, inputs)  # B x D x G x G
        logits = [
            decode_masks(base, embeddings[j : j + 1], embed_prompts(base, inp), inp, multimask=False)[0][:, 0]
            for j, inp in enumerate(inputs)
        ]  # N_i x H x W each
    return BaseTargets(embeddings.float(), [t.float() for t in logits], embed_weight, mask_weight)


def draw_subnets(space, seed: int, iteration: int, n_random: int, mode: str = "sandwich") -> tuple[list[str], list]:
    """The subnets of 0-based ``iteration``: max, min, then ``n_random`` draws (``finetune``: max only).

    A pure function of (seed, iteration), identical on every rank and after resume.
    """
    if mode == "finetune":
        return ["max"], [space.max_subnet()]
    gen = subnet_generator(seed, iteration)
    kinds = ["max", "min"] + ["random"] * n_random
    subnets = [space.max_subnet(), space.min_subnet()] + [space.sample(gen) for _ in range(n_random)]
    return kinds, subnets


def frozen_prompts(sam: torch.nn.Module, inputs: Sequence[ModelInput]) -> list[Prompts]:
    """Prompt embeddings of every input, computed once per batch (prompt encoder frozen)."""
    with torch.no_grad():
        return [tuple(t.detach() for t in embed_prompts(sam, inp)) for inp in inputs]


def batch_loss(
    sam: torch.nn.Module,
    inputs: Sequence[ModelInput],
    prompts: Sequence[Prompts] | None,
    global_batch: int,
    device: torch.device,
    amp: bool,
    teacher: Sequence[torch.Tensor] | None = None,
    distill_weight: float = 0.0,
    base: BaseTargets | None = None,
    parts: dict[str, float] | None = None,
    focal_weight: float = 0.0,
    sam_weights: SamLossWeights | None = None,
    keep_logits: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """This rank's share of the global-batch mean loss for the active subnet.

    Args:
        sam: the supernet's ``.sam`` with the subnet activated.
        inputs: this rank's images (on ``device``), N_i prompted objects each.
        prompts: frozen (sparse, dense) embeddings per input, or None to embed
            with gradients (trainable prompt encoder).
        global_batch: images in the batch over all ranks (the loss divisor).
        teacher: per input N_i x H x W target probabilities from the max subnet.
        distill_weight: w in (1 - w) * L(GT) + w * dice(teacher), L the ground-truth loss
            (Dice, focal + Dice or SAM's loss) and the teacher term Dice at image size.
        base: the frozen base model's outputs (``distill_from: base``): adds per image
            ``embed_weight * mean((E - E_base)^2) + mask_weight * mean((logits - logits_base)^2)``
            (E: 1 x D x G x G; logits: N_i x H x W).
        parts: when given, ``parts["distill"]`` receives this rank's weighted base-distillation
            share (same divisor), for logging.
        focal_weight: > 0 adds ``focal_weight`` x the unweighted sigmoid focal loss (gamma 2,
            mean over non-void pixels and objects) of the single-mask logits to the Dice term
            (``train.loss: focal_dice``, SAM's mask loss); 0 = Dice only (the paper).
        sam_weights: given, the ground-truth term is SAM's whole loss instead
            (``train.loss: sam``; :func:`supersam.measure.losses.sam_loss`): the decoder's four
            N_i x 4 x S/4 x S/4 low-res outputs against the ground truth in that frame, single
            mask + best multimask mask + IoU-head MSE; ``focal_weight`` and the Dice of the
            full-size mask are then unused. The full-size single-mask logits are still
            computed for distillation and returned when ``keep_logits``.
        keep_logits: return each input's full-size single-mask logits (else None with
            ``sam_weights``, which saves their upsampling when nothing reads them).

    Returns:
        (sum over this rank's images of the per-image loss (mean object loss, plus the
        distillation terms), divided by ``global_batch``; per input single-mask logits
        N_i x H x W, or None with ``sam_weights`` and not ``keep_logits``).
    """
    with autocast(device, amp):
        embeddings = encode_images(sam, inputs)  # B x D x G x G
    total = embeddings.new_zeros((), dtype=torch.float32)
    distill_total = 0.0
    all_logits = []
    for j, inp in enumerate(inputs):
        with autocast(device, amp):
            p = prompts[j] if prompts is not None else embed_prompts(sam, inp)
            if sam_weights is not None:
                low_res, iou_pred = decode_low_res(sam, embeddings[j : j + 1], p)  # N x 4 x S/4 x S/4
        if sam_weights is not None:
            img_size = sam.image_encoder.img_size
            target = low_res_targets(inp.gt_masks, inp.input_size, img_size)  # N x S/4 x S/4
            valid = low_res_valid(inp.ignore, inp.input_size, img_size)  # void pixels do not count
            loss, _ = sam_loss(low_res, iou_pred, target, sam_weights, valid)
            needs_logits = keep_logits or base is not None or (teacher is not None and distill_weight > 0)
            logits = None
            if needs_logits:
                logits = sam.postprocess_masks(low_res[:, :1].float(), inp.input_size, inp.original_size)[:, 0]
        else:
            with autocast(device, amp):
                logits, _ = decode_masks(sam, embeddings[j : j + 1], p, inp, multimask=False)
            logits = logits[:, 0]  # N x H x W
            loss = dice_loss(logits, inp.gt_masks, ignore=inp.ignore)  # void pixels (data.ignore_label) do not count
        if focal_weight > 0 and sam_weights is None:
            valid = None if inp.ignore is None else ~inp.ignore.bool()
            loss = loss + focal_weight * per_mask_focal(logits, inp.gt_masks, alpha=-1.0, valid=valid).mean()
        if teacher is not None and distill_weight > 0:
            loss = (1 - distill_weight) * loss + distill_weight * dice_loss(logits, teacher[j])
        if base is not None:
            distill = base.embed_weight * F.mse_loss(
                embeddings[j : j + 1].float(), base.embeddings[j : j + 1]
            ) + base.mask_weight * F.mse_loss(logits, base.logits[j])
            loss = loss + distill
            distill_total += float(distill.detach())
        total = total + loss
        all_logits.append(logits)
    if parts is not None:
        parts["distill"] = distill_total / global_batch
    return total / global_batch, all_logits


def _optimizer_step(optimizer, params, ctx: DistContext, grad_clip: float) -> float:
    all_reduce_grads(params, ctx)
    norm = float("nan")
    if grad_clip > 0:
        norm = float(torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], grad_clip))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def train_step(
    supernet: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    params: list[torch.nn.Parameter],
    inputs: Sequence[ModelInput],
    global_batch: int,
    iteration: int,
    cfg: TrainConfig,
    ctx: DistContext,
    base_model: torch.nn.Module | None = None,
) -> StepResult:
    """Run one sandwich (or sequential) iteration on this rank's ``inputs``.

    Args:
        supernet: a ``SuperSam`` with trainable ``params`` (requires_grad set).
        params: the trainable parameters, in a fixed order shared by all ranks.
        inputs: this rank's shard of the global batch, on ``ctx.device``.
        global_batch: images in the global batch.
        iteration: 0-based iteration (selects the subnets).
        base_model: the frozen base SAM, required when ``cfg.distill_from`` is ``base``
            (its outputs on the batch are computed once and serve every subnet).

    Returns:
        a :class:`StepResult`; the scheduler has advanced one iteration.
    """
    kinds, subnets = draw_subnets(supernet.space, cfg.seed, iteration, cfg.n_random, cfg.mode)
    result = StepResult(kinds, subnets, lr=optimizer.param_groups[0]["lr"])
    sam = supernet.sam
    sam.train()
    prompts = None if "prompt_encoder" in cfg.trainable else frozen_prompts(sam, inputs)
    teacher = None
    in_place = cfg.distill_from == "max"
    base = None
    if cfg.distill_from == "base":
        if base_model is None:
            raise ValueError("train.distill_from is base but no base model was given to train_step")
        base = base_targets(base_model, inputs, ctx.device, cfg.amp, cfg.distill_embed_weight, cfg.distill_mask_weight)
    # SAM's loss: focal (unweighted, as focal_dice) : Dice : IoU-head MSE = focal_weight : 1 : 1
    sam_weights = SamLossWeights(cfg.focal_weight, 1.0, 1.0, focal_alpha=-1.0) if cfg.loss == "sam" else None
    local, local_distill = [], []
    optimizer.zero_grad(set_to_none=True)
    for kind, subnet in zip(kinds, subnets):
        supernet.set_active_subnet(subnet)
        use_teacher = teacher if kind != "max" else None
        parts: dict[str, float] = {}
        loss, logits = batch_loss(
            sam,
            inputs,
            prompts,
            global_batch,
            ctx.device,
            cfg.amp,
            use_teacher,
            cfg.distill_weight if in_place else 0.0,
            base,
            parts,
            focal_weight=cfg.focal_weight if cfg.loss == "focal_dice" else 0.0,
            sam_weights=sam_weights,
            keep_logits=in_place and kind == "max",
        )
        loss.backward()
        local.append(float(loss.detach()))
        if base is not None:
            local_distill.append(parts["distill"])
        if in_place and kind == "max":
            teacher = [torch.sigmoid(t.detach()) for t in logits]
        if cfg.mode == "sequential":
            result.grad_norm = _optimizer_step(optimizer, params, ctx, cfg.grad_clip)
    if cfg.mode in ("sandwich", "finetune"):
        result.grad_norm = _optimizer_step(optimizer, params, ctx, cfg.grad_clip)
    scheduler.step()
    supernet.set_active_subnet(subnets[0])
    result.losses = all_reduce_sum(local, ctx)
    if base is not None:
        result.distill_losses = all_reduce_sum(local_distill, ctx)
    return result
