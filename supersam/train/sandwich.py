"""One training iteration of the sandwich rule (paper Sec. III "NAS Training"; docs/method.md,
"Sandwich rule and in-place distillation").

Per batch the max subnet, the min subnet and ``n_random`` random subnets each
run forward + backward on the same images and prompts; their gradients
accumulate in the shared supernet weights and one AdamW step follows
(Yu & Huang 2019). ``sequential`` mode instead steps after every subnet, as
the paper's reference code does. Loss: Dice (paper Eq. 2) of the single-mask
output (``multimask_output=False``) against the ground truth, optionally mixed
with in-place distillation from the max subnet (BigNAS).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from supersam.data.types import ModelInput
from supersam.device import autocast
from supersam.metrics import dice_loss
from supersam.inference import decode_masks, embed_prompts, encode_images
from supersam.train.config import TrainConfig
from supersam.train.distributed import DistContext, all_reduce_grads, all_reduce_sum
from supersam.sampling import subnet_generator

Prompts = tuple[torch.Tensor, torch.Tensor]


@dataclass
class StepResult:
    """What one iteration did.

    Attributes:
        kinds: ``max``, ``min``, ``random`` (repeated for n_random > 1), in run order.
        subnets: the sampled configs, aligned with ``kinds``.
        losses: global-batch mean Dice loss of each subnet (summed over ranks).
        lr: learning rate used by this iteration's optimizer step(s).
        grad_norm: total gradient norm before clipping (last step), NaN when not clipped.
    """

    kinds: list[str]
    subnets: list
    losses: list[float] = field(default_factory=list)
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


def draw_subnets(space, seed: int, iteration: int, n_random: int) -> tuple[list[str], list]:
    """The subnets of 0-based ``iteration``: max, min, then ``n_random`` draws.

    A pure function of (seed, iteration), identical on every rank and after resume.
    """
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
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """This rank's share of the global-batch mean Dice loss for the active subnet.

    Args:
        sam: the supernet's ``.sam`` with the subnet activated.
        inputs: this rank's images (on ``device``), N_i prompted objects each.
        prompts: frozen (sparse, dense) embeddings per input, or None to embed
            with gradients (trainable prompt encoder).
        global_batch: images in the batch over all ranks (the loss divisor).
        teacher: per input N_i x H x W target probabilities from the max subnet.
        distill_weight: w in (1 - w) * dice(GT) + w * dice(teacher).

    Returns:
        (sum over this rank's images of the per-image mean object Dice loss,
        divided by ``global_batch``; per input single-mask logits N_i x H x W).
    """
    with autocast(device, amp):
        embeddings = encode_images(sam, inputs)  # B x D x G x G
    total = embeddings.new_zeros((), dtype=torch.float32)
    all_logits = []
    for j, inp in enumerate(inputs):
        with autocast(device, amp):
            p = prompts[j] if prompts is not None else embed_prompts(sam, inp)
            logits, _ = decode_masks(sam, embeddings[j : j + 1], p, inp, multimask=False)
        logits = logits[:, 0]  # N x H x W
        loss = dice_loss(logits, inp.gt_masks)
        if teacher is not None and distill_weight > 0:
            loss = (1 - distill_weight) * loss + distill_weight * dice_loss(logits, teacher[j])
        total = total + loss
        all_logits.append(logits)
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
) -> StepResult:
    """Run one sandwich (or sequential) iteration on this rank's ``inputs``.

    Args:
        supernet: a ``SuperSam`` with trainable ``params`` (requires_grad set).
        params: the trainable parameters, in a fixed order shared by all ranks.
        inputs: this rank's shard of the global batch, on ``ctx.device``.
        global_batch: images in the global batch.
        iteration: 0-based iteration (selects the subnets).

    Returns:
        a :class:`StepResult`; the scheduler has advanced one iteration.
    """
    kinds, subnets = draw_subnets(supernet.space, cfg.seed, iteration, cfg.n_random)
    result = StepResult(kinds, subnets, lr=optimizer.param_groups[0]["lr"])
    sam = supernet.sam
    sam.train()
    prompts = None if "prompt_encoder" in cfg.trainable else frozen_prompts(sam, inputs)
    teacher = None
    local = []
    optimizer.zero_grad(set_to_none=True)
    for kind, subnet in zip(kinds, subnets):
        supernet.set_active_subnet(subnet)
        use_teacher = teacher if kind != "max" else None
        loss, logits = batch_loss(sam, inputs, prompts, global_batch, ctx.device, cfg.amp,
                                  use_teacher, cfg.distill_weight if cfg.distill else 0.0)
        loss.backward()
        local.append(float(loss.detach()))
        if cfg.distill and kind == "max":
            teacher = [torch.sigmoid(t.detach()) for t in logits]
        if cfg.mode == "sequential":
            result.grad_norm = _optimizer_step(optimizer, params, ctx, cfg.grad_clip)
    if cfg.mode == "sandwich":
        result.grad_norm = _optimizer_step(optimizer, params, ctx, cfg.grad_clip)
    scheduler.step()
    supernet.set_active_subnet(subnets[0])
    result.losses = all_reduce_sum(local, ctx)
    return result
