"""Overlay pictures of predictions at the image's own resolution (matplotlib).

One PNG per image (or tile): the ground truth on the left and the prediction on
the right, each panel exactly the image's size in pixels (the PNG is 2W x H;
W x H for a prediction alone, :func:`save_overlay` without ``gt``). Every object
has its own colour (the same in both panels): a translucent fill, a contour,
its prompt (dashed box or star) and, on the prediction side, its IoU beside the
prompt; void pixels (``data.ignore_label``) are shown grey on the ground-truth
side. The image is the original uint8 image, not the model's resized input.
An image whose longer side exceeds :data:`MAX_PANEL_SIDE` is drawn scaled down to it
(masks and prompts are still those of the full image), so a whole-slide or
satellite-size image gives a viewable PNG instead of a multi-gigabyte canvas.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap, hsv_to_rgb  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from supersam.runtime.io import save_figure  # noqa: E402

DPI = 100
MAX_PANEL_SIDE = 4096  # px: the longest side of one overlay panel; larger images are drawn scaled down
FILL_ALPHA = 0.4
GOLDEN = 0.618033988749895


def object_colours(n: int) -> np.ndarray:
    """n x 3 RGB in [0, 1]: distinct hues (golden-ratio steps), bright and saturated, stable per index."""
    hues = (np.arange(n) * GOLDEN) % 1.0
    sat = np.where(np.arange(n) % 2 == 0, 0.9, 0.65)
    return hsv_to_rgb(np.stack([hues, sat, np.full(n, 0.95)], axis=1))


def overlay_name(source: str, origin: tuple[int, int] = (0, 0), tiled: bool = False) -> str:
    """File name of an image's overlay: ``<stem>.png``, or ``<stem>_y0256_x0000.png`` for a tile at (256, 0).

    ``source`` is the image's name (``17.png``, ``stack.tif:p3``); its image
    suffix is dropped and anything but letters, digits, ``.``, ``_`` and ``-``
    becomes ``_``.
    """
    stem = re.sub(r"\.(png|jpe?g|tiff?|bmp)(?=$|:)", "", source, flags=re.IGNORECASE)
    stem = re.sub(r"[^\w.-]+", "_", stem).strip("_") or "image"
    if tiled:
        stem += f"_y{origin[0]:04d}_x{origin[1]:04d}"
    return f"{stem}.png"


def _label_image(masks: np.ndarray) -> np.ma.MaskedArray:
    """H x W index of the object shown at each pixel (largest first, so small objects stay on top), masked where
    none."""
    h, w = masks.shape[1:]
    label = np.full((h, w), -1, np.int64)
    for k in np.argsort(-masks.reshape(len(masks), -1).sum(1), kind="stable"):
        label[masks[k]] = k
    return np.ma.masked_less(label, 0)


def _contour(ax, mask: np.ndarray, colour) -> None:
    """The outline of one mask, computed on its padded bounding box."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return
    y0, y1 = max(ys.min() - 1, 0), min(ys.max() + 2, mask.shape[0])
    x0, x1 = max(xs.min() - 1, 0), min(xs.max() + 2, mask.shape[1])
    crop = np.pad(mask[y0:y1, x0:x1].astype(float), 1)
    gx = np.arange(x0 - 1, x1 + 1)
    gy = np.arange(y0 - 1, y1 + 1)
    ax.contour(gx, gy, crop, levels=[0.5], colors=[colour], linewidths=1.2)


def _prompt(ax, kind: str, prompt: np.ndarray, colour) -> tuple[float, float]:
    """Draw one prompt (box: dashed rectangle on its inclusive pixel bounds; point: star); returns the label anchor."""
    if kind == "box":
        x0, y0, x1, y1 = (float(v) for v in prompt[:4])
        ax.add_patch(
            Rectangle(
                (x0 - 0.5, y0 - 0.5),
                x1 - x0 + 1,
                y1 - y0 + 1,
                fill=False,
                edgecolor=colour,
                linewidth=1.2,
                linestyle="--",
            )
        )
        return x0 - 0.5, y0 - 1.5
    x, y = float(prompt[0]), float(prompt[1])
    ax.plot(
        [x],
        [y],
        marker="*",
        markersize=11,
        markerfacecolor=colour,
        markeredgecolor="white",
        markeredgewidth=0.8,
        linestyle="none",
    )
    return x + 5, y - 5


def _panel(fig: Figure, left: float, width: float, image: np.ndarray):
    ax = fig.add_axes((left, 0.0, width, 1.0))
    ax.imshow(image, interpolation="nearest")
    h, w = image.shape[:2]
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.axis("off")
    return ax


def _caption(ax, text: str) -> None:
    ax.text(
        2,
        2,
        text,
        fontsize=7,
        color="white",
        va="top",
        ha="left",
        bbox={"facecolor": "black", "alpha": 0.6, "pad": 1.5, "linewidth": 0},
    )


def save_overlay(
    image: np.ndarray,
    pred: np.ndarray,
    prompts: np.ndarray,
    prompt_kind: str,
    path: str | Path,
    gt: np.ndarray | None = None,
    ious: Sequence[float] | None = None,
    ignore: np.ndarray | None = None,
    labels: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """Write the overlay PNG of one image at its own resolution (atomically).

    Args:
        image: H x W x 3 uint8, the original image (or tile).
        pred: N x H x W bool predicted masks.
        prompts: N x 4 (x0, y0, x1, y1) boxes or N x 2 (x, y) points, original pixels.
        prompt_kind: ``box`` or ``point``.
        path: output PNG.
        gt: N x H x W bool ground truth: drawn as a left panel (PNG 2W x H); None = prediction only (W x H).
        ious: N IoUs written beside each prompt on the prediction panel (None = not written).
        ignore: H x W bool void pixels, shown grey on the ground-truth panel.
        labels: N object names written on the ground-truth panel (e.g. ids).
        title: caption of the prediction panel.

    Returns:
        the written path. Its panels are the image's size, or scaled down by
        ``MAX_PANEL_SIDE / max(H, W)`` when the image is larger.
    """
    h, w = image.shape[:2]
    scale = min(1.0, MAX_PANEL_SIDE / max(h, w, 1))  # text and lines keep their size in points
    n = len(pred)
    colours = object_colours(max(n, 1))
    cmap = ListedColormap(colours)
    panels = [gt, pred] if gt is not None else [pred]
    fig = Figure(figsize=(len(panels) * w * scale / DPI, h * scale / DPI), dpi=DPI)
    for p, masks in enumerate(panels):
        ax = _panel(fig, p / len(panels), 1.0 / len(panels), image)
        is_gt = gt is not None and p == 0
        if is_gt and ignore is not None and ignore.any():
            ax.imshow(
                np.ma.masked_where(~ignore, np.ones(ignore.shape)),
                cmap=ListedColormap([(0.85, 0.85, 0.85)]),
                alpha=0.6,
                interpolation="nearest",
                vmin=0,
                vmax=1,
            )
        if n:
            ax.imshow(
                _label_image(masks),
                cmap=cmap,
                vmin=-0.5,
                vmax=max(n, 1) - 0.5,
                alpha=FILL_ALPHA,
                interpolation="nearest",
            )
        for k in range(n):
            _contour(ax, masks[k], colours[k])
            anchor = _prompt(ax, prompt_kind, prompts[k], colours[k])
            text = (
                (labels[k] if labels is not None else None)
                if is_gt
                else (f"{ious[k]:.2f}" if ious is not None else None)
            )
            if text:
                # keep the label inside (24 x 11 px at the PNG's scale)
                anchor = (min(max(anchor[0], 0.0), w - 24.0 / scale), max(anchor[1], 11.0 / scale))
                ax.text(
                    *anchor,
                    text,
                    fontsize=6.5,
                    color="black",
                    va="bottom",
                    ha="left",
                    bbox={"facecolor": colours[k], "alpha": 0.8, "pad": 0.8, "linewidth": 0},
                )
        _caption(ax, "ground truth" if is_gt else (title or "prediction"))
    return save_figure(fig, path, dpi=DPI)
