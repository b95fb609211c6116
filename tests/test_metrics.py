"""Dice loss (paper Eq. 2) and IoU on hand-made masks."""

from __future__ import annotations

import torch

from supersam.metrics import MiouMeter, dice_loss, mask_iou, object_ious


def _square(y0, y1, x0, x1, size=8):
    m = torch.zeros(size, size, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_dice_perfect_is_0_and_disjoint_is_1():
    gt = torch.stack([_square(0, 4, 0, 4), _square(4, 8, 4, 8)]).float()
    perfect = (gt * 2 - 1) * 100.0  # logits: +100 inside, -100 outside
    assert dice_loss(perfect, gt, eps=0.0).item() < 1e-6
    disjoint = -perfect
    assert abs(dice_loss(disjoint, gt, eps=0.0).item() - 1.0) < 1e-6


def test_dice_half_overlap_hand_computed():
    gt = _square(0, 4, 0, 4).float()[None]  # 16 px
    pred = _square(0, 4, 2, 6).float()[None]  # 16 px, 8 overlap
    logits = (pred * 2 - 1) * 100.0
    assert abs(dice_loss(logits, gt, eps=0.0).item() - (1 - 2 * 8 / 32)) < 1e-6


def test_iou_exact_on_hand_made_masks():
    a = _square(0, 4, 0, 4)        # 16 px
    b = _square(2, 6, 2, 6)        # 16 px, overlap 4 -> IoU 4/28
    assert mask_iou(a, b).item() == 4 / 28
    assert mask_iou(a, a).item() == 1.0
    empty = torch.zeros(8, 8, dtype=torch.bool)
    assert mask_iou(empty, empty).item() == 1.0
    assert mask_iou(a, empty).item() == 0.0


def test_miou_single_and_oracle():
    gt = torch.stack([_square(0, 4, 0, 4), _square(4, 8, 4, 8)])
    # object 0: masks = [exact, empty, half]; object 1: [quarter, exact, empty]
    m = torch.stack([
        torch.stack([gt[0], torch.zeros_like(gt[0]), _square(0, 4, 0, 2)]),
        torch.stack([_square(4, 6, 4, 6), gt[1], torch.zeros_like(gt[1])]),
    ]).float() * 2 - 1
    ious = object_ious(m, gt)
    assert ious.tolist() == [[1.0, 0.0, 0.5], [0.25, 1.0, 0.0]]
    meter = MiouMeter()
    meter.add_single(m[:, :1], gt)
    meter.add_multimask(m, gt)
    assert meter.result() == {"miou": (1.0 + 0.25) / 2, "miou_oracle": 1.0}
    assert meter.n_objects == 2


def test_ignore_pixels_leave_intersection_and_union():
    """Void pixels count nowhere: hand-computed, and pycocotools' mask IoU with them cleared agrees."""
    import numpy as np
    import pycocotools.mask as mask_utils

    gt = _square(0, 4, 0, 4)           # 16 px
    pred = _square(0, 4, 2, 8)         # 24 px, overlap 8 -> IoU 8/32 without ignore
    void = _square(0, 8, 6, 8)         # 16 px, 8 of them predicted, none in gt
    assert mask_iou(pred, gt).item() == 8 / 32
    assert mask_iou(pred, gt, void).item() == 8 / 24
    enc = lambda m: mask_utils.encode(np.asfortranarray((m & ~void).numpy().astype(np.uint8)))  # noqa: E731
    assert abs(mask_utils.iou([enc(pred)], [enc(gt)], [0])[0, 0] - 8 / 24) < 1e-12
    logits = (torch.stack([pred, gt])[:, None].float() * 2 - 1)  # 2 objects x 1 mask
    meter = MiouMeter()
    meter.add_single(logits, torch.stack([gt, gt]), void)
    assert meter.result()["miou"] == (8 / 24 + 1.0) / 2
