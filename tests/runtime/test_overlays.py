"""Overlay PNGs: the image's own size, and large images scaled down to a viewable canvas."""

from __future__ import annotations

import numpy as np
from PIL import Image

from supersam.runtime.overlays import MAX_PANEL_SIDE, save_overlay


def _scene(h: int, w: int):
    image = np.zeros((h, w, 3), np.uint8)
    masks = np.zeros((2, h, w), bool)
    masks[0, : h // 2, : w // 3] = True
    masks[1, h // 2 :, w // 2 :] = True
    boxes = np.array([[0, 0, w // 3, h // 2], [w // 2, h // 2, w - 1, h - 1]], np.float32)
    return image, masks, boxes


def test_overlay_is_the_image_size_per_panel(tmp_path):
    image, masks, boxes = _scene(96, 160)
    path = save_overlay(image, masks, boxes, "box", tmp_path / "o.png", gt=masks, ious=[1.0, 1.0])
    assert Image.open(path).size == (2 * 160, 96)
    alone = save_overlay(image, masks, boxes, "box", tmp_path / "p.png")
    assert Image.open(alone).size == (160, 96)


def test_large_image_overlay_is_scaled_down_to_the_panel_limit(tmp_path):
    """A 6000 px wide strip (e.g. a whole-slide crop) gives panels of MAX_PANEL_SIDE px, not 6000."""
    image, masks, boxes = _scene(300, 6000)
    path = save_overlay(image, masks, boxes, "box", tmp_path / "o.png", gt=masks)
    width, height = Image.open(path).size
    assert abs(width - 2 * MAX_PANEL_SIDE) <= 1
    assert abs(height - 300 * MAX_PANEL_SIDE / 6000) <= 1
    # the prediction panel still shows the second object's fill in its lower right quarter
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    right = rgb[:, width // 2 :]
    assert right[-height // 4 :, -MAX_PANEL_SIDE // 4 :].sum() > right[-height // 4 :, : MAX_PANEL_SIDE // 8].sum()
