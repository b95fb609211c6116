"""Dice loss (paper Eq. 2) and IoU / mIoU on mask logits.

Conventions: a predicted mask is ``logits > 0``; IoU of two empty masks is 1;
pixels of an ``ignore`` mask (void, ``data.ignore_label``) count in neither the
intersection nor the union, which is pycocotools' mask IoU of the two masks
with those pixels cleared.
``miou`` is the single-mask mIoU (``multimask_output=False``); ``miou_oracle`` is
the best-of-3 IoU per object over SAM's three multimask outputs, averaged over
objects. params.yaml's top-level ``metric`` (``single`` | ``oracle``) picks which one
the pipeline selects and reports on (:func:`supersam.schema.metric_key`).
"""

from __future__ import annotations

import torch


def per_mask_dice(
    logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Soft Dice loss (paper Eq. 2) per mask: logits and target ... x H x W -> (...).

    target may be soft (values in [0, 1]); eps is added to numerator and denominator.
    ``valid``: H x W (broadcast) weights in [0, 1] of the pixels that count (0 = void,
    ``data.ignore_label``); None = every pixel.
    """
    prob = torch.sigmoid(logits.float()).flatten(-2)
    gt = target.float().flatten(-2)
    if valid is not None:
        w = valid.float().flatten(-2)
        prob, gt = prob * w, gt * w
    return 1.0 - (2.0 * (prob * gt).sum(-1) + eps) / (prob.sum(-1) + gt.sum(-1) + eps)


def dice_loss(
    logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0, ignore: torch.Tensor | None = None
) -> torch.Tensor:
    """Soft Dice loss, paper Eq. 2: 1 - 2|GT n Pred| / (|GT| + |Pred|), mean over objects.

    Args:
        logits: N x H x W mask logits (Pred = sigmoid(logits)).
        target: N x H x W ground truth in {0, 1}.
        eps: smoothing added to numerator and denominator (keeps empty masks finite).
        ignore: H x W bool void pixels (``data.ignore_label``), left out of both sets; None = none.

    Returns:
        scalar loss in [0, 1]; ~0 for a perfect prediction, ~1 for a disjoint one.
    """
    return per_mask_dice(logits, target, eps, None if ignore is None else ~ignore.bool()).mean()


def mask_iou(pred: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
    """Per-mask IoU of boolean masks ``pred`` and ``target`` (... x H x W) -> (...), float64.

    ``ignore``: H x W bool (broadcast) pixels excluded from intersection and union; None = none.
    """
    pred, target = pred.bool(), target.bool()
    if ignore is not None:
        keep = ~ignore.bool()
        pred, target = pred & keep, target & keep
    inter = (pred & target).flatten(-2).sum(-1).double()
    union = (pred | target).flatten(-2).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def object_ious(logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
    """IoU per object and mask output at logit threshold 0.

    Args:
        logits: N x M x H x W (M mask outputs per object).
        target: N x H x W bool.
        ignore: H x W bool pixels excluded from every IoU (void), or None.

    Returns:
        N x M IoU.
    """
    return mask_iou(logits > 0, target[:, None].expand_as(logits), ignore)


class MiouMeter:
    """Accumulates per-object IoUs into ``miou`` (single mask) and ``miou_oracle`` (best of 3)."""

    def __init__(self) -> None:
        self.single: list[torch.Tensor] = []
        self.oracle: list[torch.Tensor] = []

    def add_single(self, logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None = None) -> None:
        """Add a single-mask prediction: logits N x 1 x H x W, target N x H x W, ignore H x W or None."""
        self.single.append(object_ious(logits[:, :1], target, ignore)[:, 0].cpu())

    def add_multimask(self, logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None = None) -> None:
        """Add a 3-mask prediction: logits N x 3 x H x W; keeps the best IoU per object."""
        self.oracle.append(object_ious(logits, target, ignore).max(dim=1).values.cpu())

    @property
    def n_objects(self) -> int:
        """Objects seen so far (single-mask count, else oracle count)."""
        return int(sum(t.numel() for t in (self.single or self.oracle)))

    def result(self) -> dict[str, float]:
        """``{"miou": ..., "miou_oracle": ...}`` for what was added (NaN when none)."""

        def mean(parts):
            return float(torch.cat(parts).mean()) if parts else float("nan")

        return {"miou": mean(self.single), "miou_oracle": mean(self.oracle)}


def object_foreground_fractions(pred: torch.Tensor) -> torch.Tensor:
    """N float64: share (0..1) of the image's pixels predicted foreground, per N x H x W bool mask."""
    return pred.bool().flatten(1).double().mean(1)
