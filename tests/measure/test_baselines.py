"""Trivial baselines and the collapse check, on hand-built inputs with hand-computed IoUs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from supersam.data.prepare import prepare_sample
from supersam.data.types import ModelInput, Sample
from supersam.measure.baselines import (
    box_fill_masks,
    collapse_check,
    disk_masks,
    input_to_original,
    median_equivalent_radius,
    trivial_baselines,
)
from supersam.measure.metrics import object_foreground_fractions


def square(h: int = 10, w: int = 10, y0: int = 3, x0: int = 3, size: int = 4) -> torch.Tensor:
    """H x W bool with a size x size square of foreground at (y0, x0) (inclusive corners)."""
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[y0 : y0 + size, x0 : x0 + size] = True
    return mask


def model_input(masks: torch.Tensor, input_size: tuple[int, int], boxes=None, points=None) -> ModelInput:
    """A ModelInput whose prompts are already in the input frame (no image needed here)."""
    n = masks.shape[0]
    coords = None if points is None else torch.tensor(points, dtype=torch.float32)[:, None, :]
    labels = None if points is None else torch.ones(n, 1)
    box = None if boxes is None else torch.tensor(boxes, dtype=torch.float32)
    return ModelInput(torch.zeros(3, 1, 1), tuple(masks.shape[1:]), input_size, masks, coords, labels, box, "t")


def test_box_prompts_on_a_4x4_square_in_a_10x10_image():
    masks = square()[None].repeat(2, 1, 1)  # the same object prompted twice
    # exactly the square (inclusive pixel bounds 3..6), and 2 px larger on each side (1..8: 8 x 8 = 64 px)
    inp = model_input(masks, (10, 10), boxes=[[3, 3, 6, 6], [1, 1, 8, 8]])
    fills = box_fill_masks(inp)
    assert fills[0].equal(masks[0]) and int(fills[1].sum()) == 64
    baselines = trivial_baselines([inp])
    assert set(baselines) == {"all_foreground", "box_fill"}
    assert baselines["all_foreground"] == pytest.approx(16 / 100, abs=1e-12)  # 0.16 for both objects
    assert baselines["box_fill"] == pytest.approx((1.0 + 16 / 64) / 2, abs=1e-12)  # mean of 1.0 and 0.25
    # one box per input: the per-object IoUs themselves
    assert trivial_baselines([model_input(masks[:1], (10, 10), boxes=[[1, 1, 8, 8]])])["box_fill"] == 0.25


def test_box_fill_clips_to_the_image():
    inp = model_input(square()[None], (10, 10), boxes=[[-3, -3, 20, 20]])
    assert bool(box_fill_masks(inp).all())
    assert trivial_baselines([inp])["box_fill"] == pytest.approx(0.16, abs=1e-12)


def test_prompts_are_mapped_from_the_input_frame_back_to_original_pixels():
    masks = square()[None].repeat(2, 1, 1)
    # input frame twice the original (S = 20 for a 10 x 10 image): boxes scaled by 2
    inp = model_input(masks, (20, 20), boxes=[[6, 6, 12, 12], [2, 2, 16, 16]])
    assert input_to_original(inp) == (0.5, 0.5)
    baselines = trivial_baselines([inp])
    assert baselines["box_fill"] == pytest.approx((1.0 + 0.25) / 2, abs=1e-12)
    assert baselines["all_foreground"] == pytest.approx(0.16, abs=1e-12)
    # the same boxes read in the original frame would be wrong (e.g. box 0 covers 6..12 -> 4 x 4 px at 6..9)
    wrong = model_input(masks, (10, 10), boxes=[[6, 6, 12, 12], [2, 2, 16, 16]])
    assert trivial_baselines([wrong])["box_fill"] != pytest.approx(baselines["box_fill"])


@pytest.mark.parametrize("shape", [(10, 10), (10, 25), (25, 10)])
def test_boxes_from_prepare_sample_fill_the_tight_box(shape):
    """SAM's ResizeLongestSide at S = 32 (factor 3.2 or 1.28, h/w rounded): tight boxes map back exactly."""
    h, w = shape
    mask = np.zeros((1, h, w), dtype=bool)
    mask[0, 3:7, 3:7] = True
    sample = Sample(np.zeros((h, w, 3), np.uint8), mask, "s")
    inp = prepare_sample(sample, 32, "box", 0, 0, np.random.default_rng(0))
    assert inp.input_size != inp.original_size
    assert box_fill_masks(inp)[0].equal(torch.as_tensor(mask[0]))
    baselines = trivial_baselines([inp])
    assert baselines == pytest.approx({"all_foreground": 16 / (h * w), "box_fill": 1.0}, abs=1e-12)


def test_disk_baseline_with_point_prompts():
    mask = square()[None]  # 4 x 4 = 16 px; equivalent radius sqrt(16 / pi) = 2.257 px, r^2 = 5.09
    inp = model_input(mask, (20, 20), points=[[10.0, 10.0]])  # (x, y) = (5, 5) in original pixels
    disk = disk_masks(inp, math.sqrt(16 / math.pi))
    # offsets with dx^2 + dy^2 <= 5.09: 1 + 4 (d=1) + 4 (d^2=2) + 4 (d=2) + 8 (d^2=5) = 21 px
    assert int(disk.sum()) == 21 and bool(disk[0, 5, 5])
    # inside the square (offsets -2..1 on both axes): the 21 minus the 6 with an offset of +2 -> 15
    baselines = trivial_baselines([inp])
    assert set(baselines) == {"all_foreground", "disk"}
    assert baselines["disk"] == pytest.approx(15 / (21 + 16 - 15), abs=1e-12)  # 15 / 22
    assert baselines["all_foreground"] == pytest.approx(0.16, abs=1e-12)
    # radius exactly 2 px: 1 + 4 + 4 + 4 = 13 px
    assert int(disk_masks(inp, 2.0).sum()) == 13


def test_median_equivalent_radius_over_all_objects():
    masks = torch.stack([square(size=2), square(size=4), square(size=6)])  # areas 4, 16, 36
    inp = model_input(masks, (10, 10), points=[[4, 4], [5, 5], [6, 6]])
    assert median_equivalent_radius([inp]) == pytest.approx(math.sqrt(16 / math.pi), abs=1e-12)
    two = [model_input(masks[:1], (10, 10), points=[[4, 4]]), model_input(masks[1:2], (10, 10), points=[[5, 5]])]
    assert median_equivalent_radius(two) == pytest.approx((2 + 4) / 2 / math.sqrt(math.pi), abs=1e-12)


def test_mixed_prompt_kinds_are_refused():
    box = model_input(square()[None], (10, 10), boxes=[[3, 3, 6, 6]])
    point = model_input(square()[None], (10, 10), points=[[5, 5]])
    with pytest.raises(ValueError, match="one prompt kind"):
        trivial_baselines([box, point])


def test_foreground_fractions_are_per_object_shares_of_the_image():
    preds = torch.stack([torch.ones(10, 10, dtype=torch.bool), square()])  # 100 % and 16 %
    fractions = object_foreground_fractions(preds)
    assert fractions.dtype == torch.float64 and fractions.tolist() == pytest.approx([1.0, 0.16], abs=1e-12)
    assert float(fractions.mean()) == pytest.approx(0.58, abs=1e-12)
    assert object_foreground_fractions(torch.zeros(1, 5, 8, dtype=torch.bool)).tolist() == [0.0]
    assert object_foreground_fractions(torch.zeros(0, 4, 4, dtype=torch.bool)).numel() == 0


def test_collapse_check_both_ways():
    baselines = {"all_foreground": 0.16, "box_fill": 0.25}
    collapsed, reason = collapse_check(0.30, 0.20, baselines)
    assert not collapsed and "box fill 0.250" in reason
    collapsed, reason = collapse_check(0.26, 0.20, baselines)  # within 0.02 of box fill
    assert collapsed and "box fill 0.250" in reason
    assert collapse_check(0.10, 0.20, baselines)[0]  # below a trivial baseline
    collapsed, reason = collapse_check(0.80, 0.95, baselines)  # predicts nearly the whole image
    assert collapsed and "95%" in reason and "mIoU" not in reason
    assert not collapse_check(0.80, 0.90, baselines)[0]  # 0.9 is the limit, not above it
    assert not collapse_check(0.30, float("nan"), baselines)[0]  # unknown fraction: mIoU criterion only
