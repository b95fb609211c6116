"""Dice loss (paper Eq. 2) and IoU on hand-made masks."""

from __future__ import annotations

import pytest
import torch

from supersam.measure.metrics import MiouMeter, dice_loss, mask_iou, object_ious


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
    a = _square(0, 4, 0, 4)  # 16 px
    b = _square(2, 6, 2, 6)  # 16 px, overlap 4 -> IoU 4/28
    assert mask_iou(a, b).item() == 4 / 28
    assert mask_iou(a, a).item() == 1.0
    empty = torch.zeros(8, 8, dtype=torch.bool)
    assert mask_iou(empty, empty).item() == 1.0
    assert mask_iou(a, empty).item() == 0.0


def test_miou_single_and_oracle():
    gt = torch.stack([_square(0, 4, 0, 4), _square(4, 8, 4, 8)])
    # object 0: masks = [exact, empty, half]; object 1: [quarter, exact, empty]
    m = (
        torch.stack(
            [
                torch.stack([gt[0], torch.zeros_like(gt[0]), _square(0, 4, 0, 2)]),
                torch.stack([_square(4, 6, 4, 6), gt[1], torch.zeros_like(gt[1])]),
            ]
        ).float()
        * 2
        - 1
    )
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

    gt = _square(0, 4, 0, 4)  # 16 px
    pred = _square(0, 4, 2, 8)  # 24 px, overlap 8 -> IoU 8/32 without ignore
    void = _square(0, 8, 6, 8)  # 16 px, 8 of them predicted, none in gt
    assert mask_iou(pred, gt).item() == 8 / 32
    assert mask_iou(pred, gt, void).item() == 8 / 24
    enc = lambda m: mask_utils.encode(np.asfortranarray((m & ~void).numpy().astype(np.uint8)))  # noqa: E731
    assert abs(mask_utils.iou([enc(pred)], [enc(gt)], [0])[0, 0] - 8 / 24) < 1e-12
    logits = torch.stack([pred, gt])[:, None].float() * 2 - 1  # 2 objects x 1 mask
    meter = MiouMeter()
    meter.add_single(logits, torch.stack([gt, gt]), void)
    assert meter.result()["miou"] == (8 / 24 + 1.0) / 2


def test_void_pixels_leave_the_training_losses():
    """Dice (train) and SAM's focal + Dice + IoU loss (pretrain) ignore void pixels: a hand-computed
    Dice, and any prediction on the void pixels leaves both losses unchanged."""
    from supersam.measure.losses import SamLossWeights, low_res_valid, sam_loss

    logits = torch.full((1, 2, 2), 20.0)  # predicts foreground everywhere
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    void = torch.tensor([[False, True], [False, False]])
    # |P n G| = 1, |P| = 3 valid pixels, |G| = 1: 1 - (2 + 1) / (3 + 1 + 1) = 0.4 (0.5 with the void pixel)
    assert float(dice_loss(logits, target, ignore=void)) == pytest.approx(0.4, abs=1e-6)
    assert float(dice_loss(logits, target)) == pytest.approx(0.5, abs=1e-6)

    torch.manual_seed(0)
    void = torch.zeros(64, 64, dtype=torch.bool)
    void[10:30, 5:50] = True
    gt = torch.zeros(3, 64, 64)
    gt[0, 20:40, 20:40] = 1
    gt[1, :8, :8] = 1
    gt[2, 50:, 30:] = 1
    a = torch.randn(3, 64, 64)
    b = a.clone()
    b[:, void] = 20.0  # foreground predicted on every void pixel, nothing else changed
    assert float(dice_loss(a, gt, ignore=void)) == pytest.approx(float(dice_loss(b, gt, ignore=void)), abs=1e-6)
    assert float(dice_loss(a, gt)) != pytest.approx(float(dice_loss(b, gt)), abs=1e-3)

    void_input = torch.zeros(256, 256, dtype=torch.bool)  # the same void at the 256 px input size
    void_input[40:120, 20:200] = True
    valid = low_res_valid(void_input, (256, 256), 256)  # -> the decoder's 64 x 64 low-res frame
    assert torch.equal(valid == 0, void) and torch.equal(valid == 1, ~void)
    iou = torch.rand(3, 4)
    la, lb = (x[:, None].expand(3, 4, 64, 64).contiguous() for x in (a, b))
    weights = SamLossWeights(focal_alpha=-1.0)
    loss_a, _ = sam_loss(la, iou, gt, weights, valid)
    loss_b, _ = sam_loss(lb, iou, gt, weights, valid)
    assert float(loss_a) == pytest.approx(float(loss_b), abs=1e-5)
    assert float(sam_loss(la, iou, gt, weights)[0]) != pytest.approx(float(sam_loss(lb, iou, gt, weights)[0]), abs=1e-3)
