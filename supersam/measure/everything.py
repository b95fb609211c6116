"""Everything mode: segment every object of an image from a grid of point prompts.

SAM's "segment everything" (Kirillov et al. 2023, Sec. 7.1 / App. B; the ``SamAutomaticMaskGenerator``
of segment_anything, used as it is): the image is encoded once, then a ``points_per_side`` x
``points_per_side`` grid of single-point prompts goes through the prompt encoder and mask decoder
``points_per_batch`` points at a time (3 masks each); masks below a predicted-IoU or stability
threshold are dropped and box NMS removes duplicates. Its cost is therefore one encoder pass plus
``ceil(points_per_side**2 / points_per_batch)`` decoder passes, which :func:`generate` measures
separately (MobileSAM's maintainers note the decoder calls dominate with small encoders).

Used by ``supersam predict --everything`` (one image), ``supersam eval --everything`` (recall of
the ground-truth objects on a split, :func:`recall`) and ``supersam bench --everything`` (the
cost at a given grid).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from supersam.runtime.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MAX_POINTS_PER_SIDE = 128
"""Largest grid accepted (16,384 point prompts per image; SAM's own runs use 32 and 64)."""
RECALL_IOUS = (0.5, 0.75)
"""IoU thresholds at which a ground-truth object counts as found by some generated mask."""


@dataclass(frozen=True)
class EverythingConfig:
    """Settings of everything mode (``SamAutomaticMaskGenerator``'s, SAM's defaults).

    Attributes:
        points_per_side: the prompt grid is points_per_side x points_per_side points, evenly
            spaced over the image (SAM: 32).
        points_per_batch: point prompts per mask-decoder pass.
        pred_iou_thresh: masks whose predicted IoU is lower are dropped (0..1).
        stability_score_thresh: masks whose stability score (IoU of the mask thresholded at
            +-1 logit) is lower are dropped (0..1).
        box_nms_thresh: box IoU above which the lower-scored of two masks is dropped (0..1).
        min_mask_region_area: holes and islands smaller than this many pixels are removed (0 = off).
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0

    def validate(self) -> None:
        """Raises:
        ConfigError: a grid outside 1..MAX_POINTS_PER_SIDE, a batch < 1 or a threshold outside 0..1.
        """
        if (
            isinstance(self.points_per_side, bool)
            or not isinstance(self.points_per_side, int)
            or not 1 <= self.points_per_side <= MAX_POINTS_PER_SIDE
        ):
            raise ConfigError(
                f"--points-per-side must be a whole number in 1..{MAX_POINTS_PER_SIDE} (SAM uses 32), "
                f"got {self.points_per_side!r}"
            )
        if self.points_per_batch < 1:
            raise ConfigError(f"points_per_batch must be >= 1 (SAM uses 64), got {self.points_per_batch}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must lie in 0..1, got {value}")
        if self.min_mask_region_area < 0:
            raise ConfigError(f"min_mask_region_area must be >= 0, got {self.min_mask_region_area}")

    def check_image(self, size: tuple[int, int], what: str = "the image") -> None:
        """Refuse an image with fewer pixels per side than grid points (points would share pixels).

        Args:
            size: (H, W) in pixels.

        Raises:
            DataError: naming the image size, the grid and the largest grid that fits.
        """
        h, w = size
        if min(h, w) < self.points_per_side:
            raise DataError(
                f"{what} is {w} x {h} px, smaller than the {self.points_per_side} x {self.points_per_side} "
                f"point grid; use --points-per-side {min(h, w)} or less"
            )

    @property
    def n_points(self) -> int:
        """Point prompts per image (points_per_side squared)."""
        return self.points_per_side**2

    @property
    def n_batches(self) -> int:
        """Mask-decoder passes per image: ceil(n_points / points_per_batch)."""
        return math.ceil(self.n_points / self.points_per_batch)


@dataclass
class EverythingResult:
    """The masks of one image and what they cost.

    Attributes:
        masks: ``SamAutomaticMaskGenerator`` records: ``segmentation`` (COCO RLE, counts as text,
            at the image's H x W), ``area`` (px), ``bbox`` (x, y, w, h px), ``predicted_iou``,
            ``stability_score``, ``point_coords`` ([[x, y]] px), ``crop_box``.
        seconds: wall time of the whole generation (ms = 1000 x seconds).
        encoder_seconds: of which the image encoder (one pass).
        n_points, n_batches: point prompts and mask-decoder passes.
    """

    masks: list[dict[str, Any]]
    seconds: float
    encoder_seconds: float
    n_points: int
    n_batches: int

    @property
    def decoder_seconds(self) -> float:
        """Everything but the encoder: prompt encoder + mask decoder passes, filtering and NMS."""
        return max(self.seconds - self.encoder_seconds, 0.0)


def generate(model: Any, image: np.ndarray, cfg: EverythingConfig) -> EverythingResult:
    """Segment everything in ``image`` with ``model`` (``SamAutomaticMaskGenerator``).

    Args:
        model: a ``segment_anything`` Sam (an export, a base model, or a supernet's active subnet).
        image: H x W x 3 uint8 RGB.
        cfg: the grid and thresholds.

    Returns:
        the masks (COCO RLE at H x W) and the time taken, the encoder's pass timed apart.

    Raises:
        ConfigError: bad settings. DataError: an image smaller than the grid.
    """
    import torch
    from segment_anything import SamAutomaticMaskGenerator

    cfg.validate()
    cfg.check_image((int(image.shape[0]), int(image.shape[1])))
    generator = SamAutomaticMaskGenerator(
        model,
        points_per_side=cfg.points_per_side,
        points_per_batch=cfg.points_per_batch,
        pred_iou_thresh=cfg.pred_iou_thresh,
        stability_score_thresh=cfg.stability_score_thresh,
        box_nms_thresh=cfg.box_nms_thresh,
        min_mask_region_area=cfg.min_mask_region_area,
        output_mode="coco_rle",
    )
    encoder_time = [0.0]
    started: list[float] = []
    pre = model.image_encoder.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))
    post = model.image_encoder.register_forward_hook(
        lambda *_: encoder_time.__setitem__(0, encoder_time[0] + time.perf_counter() - started.pop())
    )
    try:
        t0 = time.perf_counter()
        with torch.inference_mode():
            masks = generator.generate(image)
        seconds = time.perf_counter() - t0
    finally:
        pre.remove()
        post.remove()
    return EverythingResult(masks, seconds, encoder_time[0], cfg.n_points, cfg.n_batches)


def otsu_threshold(gray: np.ndarray) -> float:
    """Otsu's threshold of an 8-bit gray image: the level that maximises the between-class variance.

    Args:
        gray: H x W uint8.

    Returns:
        t in 0..255; pixels > t are one class.
    """
    hist = np.bincount(np.asarray(gray, np.uint8).ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * levels)
    mu0 = np.divide(m0, w0, out=np.zeros(256), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros(256), where=w1 > 0)
    return float(np.argmax(w0 * w1 * (mu0 - mu1) ** 2))


def component_masks(image: np.ndarray) -> list[dict[str, Any]]:
    """The classical everything-mode baseline: connected regions of the Otsu-thresholded image.

    Every 4-connected component of the pixels above the threshold and of those at or below it
    becomes one mask, so bright objects on a dark background and dark ones on a bright background
    are both proposed (as in EM, where cells are bright regions between dark membranes).

    Args:
        image: H x W x 3 uint8 RGB.

    Returns:
        records like :func:`generate`'s (``segmentation`` as COCO RLE, ``area`` px).
    """
    import pycocotools.mask as mask_utils
    from scipy import ndimage

    gray = np.asarray(image, np.float64) @ np.array([0.299, 0.587, 0.114])
    gray = np.clip(np.round(gray), 0, 255).astype(np.uint8)
    above = gray > otsu_threshold(gray)
    records = []
    for side in (above, ~above):
        labels, n = ndimage.label(side)
        for k in range(1, n + 1):
            rle = mask_utils.encode(np.asfortranarray((labels == k).astype(np.uint8)))
            records.append(
                {
                    "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
                    "area": int(mask_utils.area(rle)),
                }
            )
    return records


def best_ious(gt_masks: np.ndarray, masks: list[dict[str, Any]], ignore: np.ndarray | None = None) -> np.ndarray:
    """For each ground-truth object, the highest IoU any generated mask reaches with it.

    Args:
        gt_masks: N x H x W bool ground truth.
        masks: generated records with a COCO RLE ``segmentation`` at H x W (:func:`generate`).
        ignore: H x W bool void pixels, left out of every IoU (as in eval's mIoU), or None.

    Returns:
        N float64 IoUs in [0, 1] (0 where nothing was generated).
    """
    import pycocotools.mask as mask_utils

    n = int(gt_masks.shape[0])
    if n == 0 or not masks:
        return np.zeros(n)
    keep = None if ignore is None else ~np.asarray(ignore, bool)
    if keep is None:
        gt = mask_utils.encode(np.asfortranarray(np.moveaxis(gt_masks.astype(np.uint8), 0, -1)))
        dt = [dict(m["segmentation"]) for m in masks]
    else:
        gt = mask_utils.encode(np.asfortranarray(np.moveaxis((gt_masks & keep).astype(np.uint8), 0, -1)))
        decoded = mask_utils.decode([m["segmentation"] for m in masks]).astype(bool)  # H x W x M
        dt = mask_utils.encode(np.asfortranarray((decoded & keep[..., None]).astype(np.uint8)))
    ious = np.asarray(mask_utils.iou(dt, gt, [0] * n), np.float64).reshape(len(masks), n)  # M x N
    return ious.max(axis=0)


def recall(best: np.ndarray, thresholds: tuple[float, ...] = RECALL_IOUS) -> dict[str, float]:
    """Share of ground-truth objects whose best IoU reaches each threshold.

    Args:
        best: per-object best IoUs (:func:`best_ious`), all images concatenated.

    Returns:
        ``{"recall_50": r, "recall_75": r, "mean_best_iou": m}`` (keys from the thresholds x 100).
    """
    best = np.asarray(best, np.float64)
    if best.size == 0:
        raise DataError("no ground-truth objects to measure everything-mode recall on; check the split and labels")
    out = {f"recall_{round(t * 100)}": float((best >= t).mean()) for t in thresholds}
    out["mean_best_iou"] = float(best.mean())
    return out
