"""The common forms every data reader and prompt generator produce.

A reader yields :class:`Sample` (an RGB uint8 image and its instance masks at
the image's own resolution). :func:`supersam.data.prepare.prepare_sample` turns a
Sample into a :class:`ModelInput`: SAM-preprocessed image tensor and prompts
mapped into the model's input frame exactly as ``SamPredictor`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Sample:
    """One image with its instance masks.

    Attributes:
        image: H x W x 3 uint8 RGB (grayscale replicated, uint16 rescaled).
        masks: N x H x W bool, one mask per object instance (N >= 1).
        name: identifier for logs and overlays (file name, patch index).
    """

    image: np.ndarray
    masks: np.ndarray
    name: str


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
    """

    image: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    gt_masks: torch.Tensor
    point_coords: torch.Tensor | None
    point_labels: torch.Tensor | None
    boxes: torch.Tensor | None
    name: str

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
        )
