"""The common forms every data reader and prompt generator produce.

A reader yields :class:`Sample` (an RGB uint8 image and its instance masks at
the image's own resolution). :func:`supersam.data.prepare.prepare_sample` turns a
Sample into a :class:`ModelInput`: SAM-preprocessed image tensor and prompts
mapped into the model's input frame exactly as ``SamPredictor`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Sample:
    """One image with its instance masks.

    Attributes:
        image: H x W x 3 uint8 RGB (grayscale replicated, uint16 rescaled).
        masks: N x H x W bool, one mask per object instance (N >= 1).
        name: identifier for logs and overlays (file name, ``:p<page>``, ``@y,x`` tile).
        ids: N int64 object ids as the data names them (instance label value,
            connected-component number, COCO annotation id); None = 1..N.
        categories: N int64 classes (semantic label value, COCO category id);
            None = all 1.
        ignore: H x W bool "void" pixels (``data.ignore_label``), excluded from
            every IoU; None = none.
        source: the source image (file name, ``:p<page>``); "" = ``name``.
        origin: (y0, x0) px of this tile in the source image ((0, 0) = whole image).
        image_id: the data set's own image id (COCO ``image_id``); None = ``name``.
    """

    image: np.ndarray
    masks: np.ndarray
    name: str
    ids: np.ndarray | None = None
    categories: np.ndarray | None = None
    ignore: np.ndarray | None = None
    source: str = ""
    origin: tuple[int, int] = (0, 0)
    image_id: int | str | None = None


@dataclass
class ObjectMeta:
    """Where an input's N prompted objects come from, for per-object reports (objects.csv, COCO results).

    Attributes:
        ids: N int64 object ids (:attr:`Sample.ids`).
        categories: N int64 classes (:attr:`Sample.categories`).
        prompt: ``box`` or ``point``.
        prompts: the prompts in original pixels of this image (tile): N x 4
            (x0, y0, x1, y1) float64 boxes or N x 2 (x, y) points.
        source: source image name.
        origin: (y0, x0) px of the tile in the source image.
        image_id: the data set's image id (COCO) or the item name.
    """

    ids: np.ndarray
    categories: np.ndarray
    prompt: str
    prompts: np.ndarray
    source: str
    origin: tuple[int, int] = (0, 0)
    image_id: int | str = ""


@dataclass
class ModelInput:
    """One image ready for SAM, with N prompted objects.

    Attributes:
        image: 3 x S x S float32, normalised by SAM's pixel mean/std and
            zero-padded (S = encoder img_size), as ``Sam.preprocess`` does.
        original_size: (H, W) of the source image in pixels.
        input_size: (h, w) after the longest-side resize to S (before padding).
        gt_masks: N x H x W bool ground truth at the original resolution.
        point_coords: N x 1 x 2 float (x, y) in the input frame, or None.
        point_labels: N x 1 float (1 = positive), or None.
        boxes: N x 4 float (x0, y0, x1, y1) in the input frame, or None.
        name: identifier of the source sample.
        ignore: H x W bool pixels excluded from every IoU (void), or None.
        raw_image: H x W x 3 uint8 original image (for overlays), or None.
        meta: object ids, original-pixel prompts, tile origin, or None.
    """

    image: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    gt_masks: torch.Tensor
    point_coords: torch.Tensor | None
    point_labels: torch.Tensor | None
    boxes: torch.Tensor | None
    name: str
    ignore: torch.Tensor | None = None
    raw_image: np.ndarray | None = field(default=None, repr=False)
    meta: ObjectMeta | None = None

    @property
    def n_objects(self) -> int:
        """Number of prompted objects N."""
        return int(self.gt_masks.shape[0])

    def to(self, device: torch.device | str) -> "ModelInput":
        """Copy of this input with every tensor on ``device``."""
        def move(t):
            return None if t is None else t.to(device)

        return ModelInput(
            move(self.image), self.original_size, self.input_size, move(self.gt_masks),
            move(self.point_coords), move(self.point_labels), move(self.boxes), self.name,
            move(self.ignore), self.raw_image, self.meta,
        )
