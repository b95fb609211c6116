"""Overlay pictures of predictions: image, ground-truth outlines, predicted masks."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy import ndimage  # noqa: E402

from supersam.data.types import ModelInput  # noqa: E402
from supersam.io import save_figure  # noqa: E402
from supersam.sam import PIXEL_MEAN, PIXEL_STD  # noqa: E402



def original_image(inp: ModelInput) -> np.ndarray:
    """Undo SAM preprocessing: H x W x 3 uint8 at the original size."""
    h, w = inp.input_size
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (PIXEL_MEAN, PIXEL_STD))
    img = inp.image[:, :h, :w].float().cpu() * std + mean  # 3 x h x w
    img = F.interpolate(img[None], size=inp.original_size, mode="bilinear", align_corners=False)[0]
    return img.clamp(0, 255).byte().permute(1, 2, 0).numpy()


def save_overlay(inp: ModelInput, logits: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """Write a PNG: the image, ground truth as outlines, predictions as coloured fill.

    Args:
        inp: the evaluated input (gt_masks N x H x W, prompts in the input frame).
        logits: N x 1 x H x W single-mask logits (mask = logits > 0).
        path: output PNG path (written atomically).
    """
    image = original_image(inp)
    pred = (logits[:, 0] > 0).cpu().numpy()  # N x H x W
    gt = inp.gt_masks.cpu().numpy()
    colours = plt.get_cmap("tab20")(np.arange(max(len(pred), 1)) % 20)[:, :3]
    fill = np.zeros(image.shape, dtype=float)
    alpha = np.zeros(image.shape[:2], dtype=float)
    outline = np.zeros(image.shape[:2], dtype=bool)
    for k in range(len(pred)):
        fill[pred[k]] = colours[k]
        alpha[pred[k]] = 0.45
        outline |= gt[k] & ~ndimage.binary_erosion(gt[k])
    blended = image / 255.0 * (1 - alpha[..., None]) + fill * alpha[..., None]
    blended[outline] = (1.0, 1.0, 0.0)
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    axes[0].imshow(image)
    axes[0].set_title(f"{inp.name}")
    axes[1].imshow(blended)
    axes[1].set_title(title or "prediction (fill) / ground truth (yellow outline)")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    out = save_figure(fig, path, dpi=80)
    plt.close(fig)
    return out
