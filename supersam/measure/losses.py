"""SAM's training losses: focal + Dice on the masks, MSE on the IoU head.

Segment Anything (Kirillov et al. 2023, Sec. 3 and App. A "Losses and
training"): mask loss = 20 x focal + 1 x Dice, the IoU head regressed to the
predicted mask's IoU with the ground truth by mean-squared error; with several
mask outputs only the lowest-loss mask is back-propagated. The focal loss is
torchvision's ``sigmoid_focal_loss`` (alpha 0.25, gamma 2); Dice is the paper's
Eq. 2 (:func:`supersam.measure.metrics.per_mask_dice`). SuperSAM's sandwich training uses
plain Dice (paper Sec. III; ``train.loss: dice``); ``supersam pretrain`` and ``train.loss: sam``
(the downstream profile) use this recipe.

The loss is taken on the decoder's low-resolution masks (S/4 x S/4, the
resolution SAM predicts at) against the ground truth brought into the same
frame (:func:`low_res_targets`): on 2 CPU cores a loss on four full-size
masks per object costs more than the whole model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from supersam.measure.metrics import mask_iou, per_mask_dice


@dataclass(frozen=True)
class SamLossWeights:
    """Weights of the three terms (SAM: focal 20, Dice 1, IoU 1) and the focal loss's alpha.

    ``focal_alpha`` weighs foreground pixels by alpha and background by 1 - alpha
    (0.25 in RetinaNet/DETR-style focal losses); a negative value disables the
    weighting (every pixel counts alike).
    """

    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    focal_alpha: float = 0.25


def low_res_targets(gt: torch.Tensor, input_size: tuple[int, int], img_size: int) -> torch.Tensor:
    """Ground truth in the decoder's low-res frame: N x H x W bool -> N x S/4 x S/4 float in [0, 1].

    The masks are resized to the model's input frame (h, w) as the image was
    (``ResizeLongestSide``), zero-padded to S x S like ``Sam.preprocess``, then
    area-averaged by 4 (soft targets at the boundaries).
    """
    h, w = input_size
    x = gt[:, None].float()
    if x.shape[-2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    x = F.pad(x, (0, img_size - w, 0, img_size - h))
    return F.avg_pool2d(x, 4)[:, 0]


def low_res_valid(ignore: torch.Tensor | None, input_size: tuple[int, int], img_size: int) -> torch.Tensor | None:
    """Weights of the non-void pixels in the decoder's low-res frame: H x W bool void -> S/4 x S/4
    in [0, 1] (:func:`low_res_targets` of the void mask, subtracted from 1); None without void."""
    if ignore is None:
        return None
    return 1.0 - low_res_targets(ignore[None], input_size, img_size)[0]


def per_mask_focal(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Sigmoid focal loss (gamma 2, ``alpha``; < 0 = unweighted) averaged over pixels: ... x H x W -> (...).

    ``valid``: H x W (broadcast) weights in [0, 1] of the pixels that count (0 = void); the
    mean is then over the valid pixels. None = every pixel.
    """
    loss = sigmoid_focal_loss(logits.float(), target.float(), alpha=alpha, gamma=2.0, reduction="none")
    if valid is None:
        return loss.flatten(-2).mean(-1)
    w = valid.float().expand_as(loss).flatten(-2)
    return (loss.flatten(-2) * w).sum(-1) / w.sum(-1).clamp_min(1.0)


def sam_loss(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    target: torch.Tensor,
    weights: SamLossWeights = SamLossWeights(),
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SAM's loss for one image's N objects and all four decoder outputs.

    Channel 0 is the single-mask output (``multimask_output=False``, the
    headline mIoU) and always gets the loss; channels 1..3 are the
    ambiguity-aware outputs, of which only the lowest-loss one per object is
    trained (SAM App. A). The IoU head of every channel regresses the detached
    IoU of its thresholded mask.

    Args:
        logits: N x 4 x h x w mask logits (``MaskDecoder.predict_masks``).
        iou_pred: N x 4 predicted IoUs.
        target: N x h x w ground truth in [0, 1] in the same frame (soft
            targets allowed; the IoU target uses target > 0.5).
        valid: h x w weights in [0, 1] of the pixels that count, in the same frame
            (0 = void, ``data.ignore_label``; :func:`low_res_valid`); None = every pixel.

    Returns:
        (scalar loss, {"focal", "dice", "iou_mse"} of channel 0 / the chosen masks, as floats).
    """
    gt = target[:, None].expand_as(logits)
    focal = per_mask_focal(logits, gt, weights.focal_alpha, valid)  # N x 4
    dice = per_mask_dice(logits, gt, valid=valid)  # N x 4
    mask_loss = weights.focal * focal + weights.dice * dice
    best = mask_loss[:, 1:].min(dim=1).values if logits.shape[1] > 1 else torch.zeros_like(mask_loss[:, 0])
    with torch.no_grad():
        actual = mask_iou(logits > 0, gt > 0.5, None if valid is None else valid < 0.5).float()  # N x 4
    iou_mse = ((iou_pred.float() - actual) ** 2).mean()
    loss = mask_loss[:, 0].mean() + best.mean() + weights.iou * iou_mse
    return loss, {
        "focal": float(focal[:, 0].detach().mean()),
        "dice": float(dice[:, 0].detach().mean()),
        "iou_mse": float(iou_mse.detach()),
    }
