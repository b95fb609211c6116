"""SAM preprocessing and prompts: Sample -> ModelInput exactly as SamPredictor does it.

Image: ``ResizeLongestSide(S).apply_image`` (uint8, PIL bilinear), 3 x h x w
float, ``(x - pixel_mean) / pixel_std``, zero-padded bottom/right to S x S
(``Sam.preprocess``). Prompts (paper Sec. IV, training setup): one uniformly
random pixel inside each object (label 1), or the object's tight box padded by
a random 0..box_pad px per side, clipped to the image; both in original (x, y)
pixels, then mapped with ``apply_coords``/``apply_boxes``. Objects are capped
at ``max_objects`` per image: a random subset when more, random repetition
when fewer (paper: 64 SA-1B, 8 COCO).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from supersam.data.config import PROMPTS, DataConfig
from supersam.data.dataset import load_split
from supersam.data.types import ModelInput, Sample
from supersam.errors import ConfigError
from supersam.sam import PIXEL_MEAN, PIXEL_STD


def preprocess_image(image: np.ndarray, img_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """H x W x 3 uint8 RGB -> (3 x S x S float32 normalised + padded, input size (h, w))."""
    resized = ResizeLongestSide(img_size).apply_image(image)  # h x w x 3 uint8
    x = torch.as_tensor(resized).permute(2, 0, 1).float()
    mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(3, 1, 1)
    x = (x - mean) / std
    h, w = resized.shape[:2]
    return F.pad(x, (0, img_size - w, 0, img_size - h)).contiguous(), (h, w)


def select_objects(n: int, max_objects: int, rng: np.random.Generator, repeat: bool = True) -> np.ndarray:
    """Indices of the objects to prompt: all n (+ random repeats up to the cap), or a random subset.

    max_objects == 0 keeps all n once; ``repeat=False`` never repeats.
    """
    if max_objects <= 0 or n == max_objects:
        return np.arange(n)
    if n > max_objects:
        return np.sort(rng.choice(n, size=max_objects, replace=False))
    if not repeat:
        return np.arange(n)
    return np.concatenate([np.arange(n), rng.integers(0, n, size=max_objects - n)])


def random_points(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """N x 2 (x, y) original-pixel coordinates of one uniformly random pixel inside each N x H x W mask."""
    points = np.zeros((len(masks), 2), np.float64)
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        k = rng.integers(len(ys))
        points[i] = (xs[k], ys[k])
    return points


def tight_boxes(masks: np.ndarray) -> np.ndarray:
    """N x 4 (x0, y0, x1, y1) inclusive pixel bounds of each N x H x W mask."""
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # N x H, N x W
    h, w = masks.shape[1:]
    y0, x0 = rows.argmax(axis=1), cols.argmax(axis=1)
    y1, x1 = h - 1 - rows[:, ::-1].argmax(axis=1), w - 1 - cols[:, ::-1].argmax(axis=1)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.float64)


def padded_boxes(masks: np.ndarray, box_pad: int, rng: np.random.Generator) -> np.ndarray:
    """N x 4 tight boxes widened by uniform random 0..box_pad px per side, clipped to the image."""
    h, w = masks.shape[1:]
    pad = rng.integers(0, box_pad + 1, size=(len(masks), 4)) * np.array([-1, -1, 1, 1])
    boxes = tight_boxes(masks) + pad
    return np.clip(boxes, 0, [w - 1, h - 1, w - 1, h - 1])


def prepare_sample(
    sample: Sample, img_size: int, prompt: str, max_objects: int, box_pad: int,
    rng: np.random.Generator, repeat: bool = True,
) -> ModelInput:
    """SAM-ready input with N = max_objects prompted objects (all objects when max_objects == 0).

    Args:
        sample: H x W x 3 uint8 image and N0 x H x W bool masks (N0 >= 1, none empty).
        img_size: encoder input size S (px).
        prompt: ``point`` or ``box``.
        rng: drives the object choice and the prompts (same rng state -> same input).
        repeat: False disables the random repetition up to ``max_objects``.

    Returns:
        ModelInput: image 3 x S x S, gt_masks N x H x W, point_coords N x 1 x 2 +
        point_labels N x 1 (point) or boxes N x 4 (box), in the input frame.

    Raises:
        ConfigError: unknown prompt.
    """
    if prompt not in PROMPTS:
        raise ConfigError(f"prompt {prompt!r} is unknown; use one of {', '.join(PROMPTS)}")
    image, size = preprocess_image(sample.image, img_size)
    original = (int(sample.image.shape[0]), int(sample.image.shape[1]))
    masks = sample.masks[select_objects(len(sample.masks), max_objects, rng, repeat)]
    transform = ResizeLongestSide(img_size)
    coords = labels = boxes = None
    if prompt == "point":
        points = transform.apply_coords(random_points(masks, rng), original)
        coords = torch.as_tensor(points, dtype=torch.float32)[:, None, :]
        labels = torch.ones(len(masks), 1)
    else:
        mapped = transform.apply_boxes(padded_boxes(masks, box_pad, rng), original)
        boxes = torch.as_tensor(mapped, dtype=torch.float32)
    return ModelInput(image, original, size, torch.as_tensor(masks), coords, labels, boxes, sample.name)


def prepare_split(
    cfg: DataConfig, split: str, img_size: int, n_images: int = 0, seed: int | None = None,
    repeat: bool = True,
) -> list[ModelInput]:
    """A fixed list of SAM inputs for evaluation/calibration, identical for the same arguments.

    ``n_images`` > 0 takes a seeded random subset of the split (in split
    order); each image's prompts come from ``np.random.default_rng([seed,
    index])``, so an image gets the same prompts whatever ``n_images`` is.
    ``seed`` defaults to ``cfg.seed``; ``repeat=False`` keeps each object once
    (unbiased mIoU when an image has fewer than ``max_objects`` objects).

    Raises:
        ConfigError / DataError: see :func:`load_split`.
    """
    seed = cfg.seed if seed is None else seed
    dataset = load_split(cfg, split)
    indices = range(len(dataset))
    if 0 < n_images < len(dataset):
        indices = sorted(int(i) for i in np.random.default_rng([seed, 2]).choice(len(dataset), n_images, replace=False))
    return [
        prepare_sample(dataset[i], img_size, cfg.prompt, cfg.max_objects, cfg.box_pad,
                       np.random.default_rng([seed, i]), repeat)
        for i in indices
    ]
