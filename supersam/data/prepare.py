"""SAM preprocessing and prompts: Sample -> ModelInput exactly as SamPredictor does it.

Image: ``ResizeLongestSide(S).apply_image`` (uint8, PIL bilinear), 3 x h x w
float, ``(x - pixel_mean) / pixel_std`` with the model's own statistics
(``Sam.pixel_mean``/``pixel_std``, an export's ``config.json``; SAM's by
default), zero-padded bottom/right to S x S (``Sam.preprocess``). Prompts
(paper Sec. IV, training setup): one positive
point per object -- a uniformly random pixel inside it (training) or its
interior pixel farthest from the boundary (``center``, the usual single-point
evaluation protocol) -- or the object's tight box padded per side by a fixed N
or a random LO..HI px (``data.box_pad``: ``0`` tight, ``0-20`` the paper's EM
protocol) and jittered by a random -box_jitter..box_jitter px per side,
clipped to the image; both in original (x, y) pixels, then mapped with
``apply_coords``/``apply_boxes``. ``mixed`` draws box or point per image (SAM's
own training mixes prompt kinds). Objects are capped at ``max_objects`` per
image: a random subset when more, random repetition when fewer (paper: 64
SA-1B, 8 COCO).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from collections.abc import Sequence

from supersam.data.config import POINT_PLACEMENTS, PROMPTS, TRAIN_PROMPTS, DataConfig, parse_box_pad
from supersam.data.dataset import load_split
from supersam.data.types import ModelInput, ObjectMeta, Sample
from supersam.runtime.errors import ConfigError
from supersam.model.sam import PIXEL_MEAN, PIXEL_STD


def preprocess_image(
    image: np.ndarray, img_size: int,
    pixel_mean: Sequence[float] = PIXEL_MEAN, pixel_std: Sequence[float] = PIXEL_STD,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """H x W x 3 uint8 RGB -> (3 x S x S float32 normalised + padded, input size (h, w)).

    ``pixel_mean``/``pixel_std`` (3 floats each, RGB 0..255) are the model's
    own (:func:`supersam.model.sam.pixel_stats`); SAM's by default.
    """
    resized = ResizeLongestSide(img_size).apply_image(image)  # h x w x 3 uint8
    x = torch.as_tensor(resized).permute(2, 0, 1).float()
    mean = torch.tensor(tuple(pixel_mean), dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(tuple(pixel_std), dtype=torch.float32).view(3, 1, 1)
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


def center_points(masks: np.ndarray) -> np.ndarray:
    """N x 2 (x, y) of each N x H x W mask's interior pixel farthest from its boundary.

    Euclidean distance transform of the mask padded by one background pixel, so
    the image border counts as boundary; ties go to the first pixel in row-major order.
    """
    points = np.zeros((len(masks), 2), np.float64)
    for i, mask in enumerate(masks):
        dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        points[i] = (x, y)
    return points


def tight_boxes(masks: np.ndarray) -> np.ndarray:
    """N x 4 (x0, y0, x1, y1) inclusive pixel bounds of each N x H x W mask."""
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # N x H, N x W
    h, w = masks.shape[1:]
    y0, x0 = rows.argmax(axis=1), cols.argmax(axis=1)
    y1, x1 = h - 1 - rows[:, ::-1].argmax(axis=1), w - 1 - cols[:, ::-1].argmax(axis=1)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.float64)


def padded_boxes(masks: np.ndarray, box_pad: int | str | tuple[int, int], rng: np.random.Generator,
                 box_jitter: int = 0) -> np.ndarray:
    """N x 4 tight boxes widened per side by ``box_pad`` px, clipped to the image.

    ``box_pad``: ``N`` / ``(N, N)`` a fixed N px, ``"LO-HI"`` / ``(LO, HI)`` a
    uniform random LO..HI px per side (:func:`supersam.data.config.parse_box_pad`).
    The rng is drawn from in both cases, so a fixed 0 and the old random 0..0
    give the same later draws. ``box_jitter`` > 0 then moves every side by a
    uniform random -box_jitter..box_jitter px.

    Raises:
        ConfigError: a malformed ``box_pad``.
    """
    h, w = masks.shape[1:]
    lo, hi = box_pad if isinstance(box_pad, tuple) else parse_box_pad(box_pad)
    pad = rng.integers(lo, hi + 1, size=(len(masks), 4)) * np.array([-1, -1, 1, 1])
    boxes = tight_boxes(masks) + pad
    if box_jitter > 0:
        boxes = boxes + rng.integers(-box_jitter, box_jitter + 1, size=(len(masks), 4))
    boxes = np.clip(boxes, 0, [w - 1, h - 1, w - 1, h - 1])
    return np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], axis=1)


def prepare_sample(
    sample: Sample, img_size: int, prompt: str, max_objects: int, box_pad: int | str | tuple[int, int],
    rng: np.random.Generator, repeat: bool = True, box_jitter: int = 0, point: str = "random",
    pixel_mean: Sequence[float] = PIXEL_MEAN, pixel_std: Sequence[float] = PIXEL_STD,
) -> ModelInput:
    """SAM-ready input with N = max_objects prompted objects (all objects when max_objects == 0).

    Args:
        sample: H x W x 3 uint8 image and N0 x H x W bool masks (N0 >= 1, none empty).
        img_size: encoder input size S (px).
        prompt: ``point``, ``box`` or ``mixed`` (box or point, drawn per image).
        box_pad: box padding per side: ``N`` fixed px or ``"LO-HI"`` random (:func:`padded_boxes`).
        rng: drives the object choice and the prompts (same rng state -> same input).
        repeat: False disables the random repetition up to ``max_objects``.
        box_jitter: random per-side box noise in px (training).
        point: ``random`` (uniform interior pixel) or ``center`` (farthest from the boundary).
        pixel_mean, pixel_std: the model's input normalisation (3 floats each).

    Returns:
        ModelInput: image 3 x S x S, gt_masks N x H x W, point_coords N x 1 x 2 +
        point_labels N x 1 (point) or boxes N x 4 (box), in the input frame;
        ``ignore`` (the sample's void pixels), ``raw_image`` (the uint8 image)
        and ``meta`` (object ids, prompts in original pixels, tile origin).

    Raises:
        ConfigError: unknown prompt or malformed ``box_pad``.
    """
    if prompt not in TRAIN_PROMPTS:
        raise ConfigError(f"prompt {prompt!r} is unknown; use one of {', '.join(TRAIN_PROMPTS)}")
    if point not in POINT_PLACEMENTS:
        raise ConfigError(f"point placement {point!r} is unknown; use one of {', '.join(POINT_PLACEMENTS)}")
    if prompt == "mixed":
        prompt = PROMPTS[int(rng.integers(len(PROMPTS)))]
    image, size = preprocess_image(sample.image, img_size, pixel_mean, pixel_std)
    original = (int(sample.image.shape[0]), int(sample.image.shape[1]))
    chosen = select_objects(len(sample.masks), max_objects, rng, repeat)
    masks = sample.masks[chosen]
    transform = ResizeLongestSide(img_size)
    coords = labels = boxes = None
    if prompt == "point":
        prompts = random_points(masks, rng) if point == "random" else center_points(masks)
        coords = torch.as_tensor(transform.apply_coords(prompts, original), dtype=torch.float32)[:, None, :]
        labels = torch.ones(len(masks), 1)
    else:
        prompts = padded_boxes(masks, box_pad, rng, box_jitter)
        boxes = torch.as_tensor(transform.apply_boxes(prompts, original), dtype=torch.float32)
    ids = sample.ids[chosen] if sample.ids is not None else chosen.astype(np.int64) + 1
    categories = sample.categories[chosen] if sample.categories is not None else np.ones(len(chosen), np.int64)
    meta = ObjectMeta(ids, categories, prompt, prompts, sample.source or sample.name, sample.origin,
                      sample.image_id if sample.image_id is not None else sample.name)
    ignore = None if sample.ignore is None else torch.as_tensor(sample.ignore, dtype=torch.bool)
    return ModelInput(image, original, size, torch.as_tensor(masks), coords, labels, boxes, sample.name,
                      ignore, sample.image, meta)


class PreparedSplit(Sequence[ModelInput]):
    """Lazy sequence of prepared inputs: ``split[i]`` reads and prepares one image now.

    Like :class:`supersam.data.dataset.SegDataset` one level down: nothing is held
    between accesses, so a pass over the split holds one image's tensors at a time
    (``eval`` on thousands of images runs in flat memory), and every access gives
    the same input (prompts from ``np.random.default_rng([seed, index])``).

    Attributes:
        names: the prepared images' names in order (no image is read to list them).
    """

    def __init__(self, dataset: Sequence[Sample], indices: Sequence[int], prepare) -> None:
        self._dataset, self._indices, self._prepare = dataset, list(indices), prepare

    @property
    def names(self) -> list[str]:
        """Item names in order (``SegDataset.names``)."""
        all_names = self._dataset.names
        return [all_names[i] for i in self._indices]

    def __len__(self) -> int:
        return len(self._indices)

    def __iter__(self):
        """Every input in order, prepared one at a time (an IndexError inside is an error, not the end)."""
        for k in range(len(self)):
            yield self[k]

    def __getitem__(self, k):  # type: ignore[override]
        """Input ``k`` (prepared now); a slice gives a list. Raises DataError on unreadable files."""
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        index = self._indices[k]
        return self._prepare(self._dataset[index], index)


def prepare_split(
    cfg: DataConfig, split: str, img_size: int, n_images: int = 0, seed: int | None = None,
    repeat: bool = False, prompt: str | None = None,
    pixel_mean: Sequence[float] = PIXEL_MEAN, pixel_std: Sequence[float] = PIXEL_STD,
    lazy: bool = False,
) -> list[ModelInput] | PreparedSplit:
    """A fixed list of SAM inputs for evaluation/calibration, identical for the same arguments.

    ``n_images`` > 0 takes a seeded random subset of the split (in split
    order); each image's prompts come from ``np.random.default_rng([seed,
    index])``, so an image gets the same prompts whatever ``n_images`` is.
    ``seed`` defaults to ``cfg.seed``; each object is prompted once (unbiased
    mIoU when an image has fewer than ``max_objects`` objects; ``repeat=True``
    repeats objects up to the cap as training batches do);
    ``prompt`` overrides ``cfg.prompt`` (same objects, other prompt kind).
    Points are placed by ``cfg.point``, boxes padded by ``cfg.box_pad``;
    ``pixel_mean``/``pixel_std`` are the model's (:func:`supersam.model.sam.pixel_stats`).
    ``lazy=True`` returns a :class:`PreparedSplit` that prepares each input when
    it is read (whole-split evaluation); otherwise the inputs are prepared now
    (small samples that are read many times: probes, search, calibration).

    Raises:
        ConfigError / DataError: see :func:`load_split`.
    """
    seed = cfg.seed if seed is None else seed
    box_pad = cfg.box_pad_range
    dataset = load_split(cfg, split)
    indices = range(len(dataset))
    if 0 < n_images < len(dataset):
        indices = sorted(int(i) for i in np.random.default_rng([seed, 2]).choice(len(dataset), n_images, replace=False))

    def prepare(sample: Sample, i: int) -> ModelInput:
        return prepare_sample(sample, img_size, prompt or cfg.prompt, cfg.max_objects, box_pad,
                              np.random.default_rng([seed, i]), repeat, point=cfg.point,
                              pixel_mean=pixel_mean, pixel_std=pixel_std)

    split_inputs = PreparedSplit(dataset, indices, prepare)
    return split_inputs if lazy else list(split_inputs)
