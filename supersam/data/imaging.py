"""Reading image files (PNG, JPEG, TIFF incl. multi-page stacks) and converting to RGB uint8.

Every reader funnels pixels through :func:`to_rgb_uint8` so SAM always sees
H x W x 3 uint8: grayscale is replicated, alpha dropped, and non-uint8 data
(uint16 microscopy, float EM) rescaled by a robust 0.5/99.5-percentile
min-max.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from supersam.runtime.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
LOW_PCT, HIGH_PCT = 0.5, 99.5

Tile = tuple[int, int, int, int]  # y0, x0, y1, x1 (end exclusive), px


def natural_key(name: str) -> list:
    """Sort key putting ``2.png`` before ``10.png``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_images(folder: Path) -> list[Path]:
    """Image files in ``folder`` (by suffix), naturally sorted.

    Raises:
        DataError: a file name that is not valid UTF-8 (it could not be written to JSON or CSV
            after the work is done, so it is refused before).
    """
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    for p in files:
        try:
            p.name.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(p.name).decode("utf-8", "backslashreplace")
            raise DataError(f"file name {shown!r} in {folder} is not valid UTF-8; rename it "
                            "(the results name every image)") from None
    return sorted(files, key=lambda p: natural_key(p.name))


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Any numeric array -> uint8 (same shape).

    uint8 passes through; bool maps to 0/255; anything else is rescaled so the
    0.5th..99.5th percentile spans 0..255 (full min..max when that range is
    empty; a constant array gives zeros).
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    data = array.astype(np.float64)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return np.zeros(array.shape, np.uint8)
    lo, hi = np.percentile(finite, [LOW_PCT, HIGH_PCT])
    if hi <= lo:
        lo, hi = finite.min(), finite.max()
    if hi <= lo:
        return np.zeros(array.shape, np.uint8)
    scaled = np.clip((np.nan_to_num(data, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    return np.round(scaled * 255.0).astype(np.uint8)


def to_rgb_uint8(array: np.ndarray) -> np.ndarray:
    """H x W, H x W x C or C x H x W (C <= 4) pixels -> H x W x 3 uint8 RGB.

    Raises:
        ValueError: the array is not a 2-D image (callers turn it into DataError).
    """
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first TIFF
    if array.ndim == 3 and array.shape[-1] in (1, 2):
        array = array[..., 0]  # gray (+ alpha)
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]  # drop alpha
    if array.ndim == 2:
        array = np.repeat(to_uint8(array)[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"pixel array of shape {array.shape} is not a 2-D image")
    return np.ascontiguousarray(to_uint8(array))


def _hw(shape: tuple[int, ...]) -> tuple[int, int]:
    """(H, W) of one page's shape: H x W, H x W x C or channels-first C x H x W."""
    if len(shape) == 3 and shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
        return int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[1])


def page_count(path: Path) -> int:
    """Number of 2-D images in a file (pages of a TIFF stack; 1 otherwise).

    Raises:
        DataError: the file cannot be opened as an image.
    """
    if path.suffix.lower() not in TIFF_SUFFIXES:
        image_shape(path)
        return 1
    try:
        with tifffile.TiffFile(path) as tif:
            return len(tif.pages)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means unreadable
        raise DataError(f"cannot read image {path} ({exc}); replace or remove the file") from None


def image_shape(path: Path, page: int = 0) -> tuple[int, int]:
    """(H, W) of one page from the file header, without decoding pixels.

    Raises:
        DataError: the file cannot be opened as an image.
    """
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                return _hw(tuple(tif.pages[page].shape))
        with Image.open(path) as im:
            return (im.height, im.width)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read image {path} ({exc}); replace or remove the file") from None


def read_page(path: Path, page: int = 0, image: bool = False) -> np.ndarray:
    """Raw pixels of one page, dtype kept.

    Palette PNGs give their indices (label maps) unless ``image`` is True, which
    converts them to RGB colours.

    Raises:
        DataError: the file cannot be decoded.
    """
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                return tif.pages[page].asarray()
        with Image.open(path) as im:
            if im.mode == "1":
                im = im.convert("L")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV") or (image and im.mode in ("P", "PA")):
                im = im.convert("RGB")
            return np.asarray(im)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read image {path} ({exc}); replace or remove the file") from None


def read_rgb(path: Path, page: int = 0) -> np.ndarray:
    """One page as H x W x 3 uint8 RGB (see :func:`to_rgb_uint8`).

    Raises:
        DataError: unreadable file or not a 2-D image.
    """
    pixels = read_page(path, page, image=True)
    try:
        return to_rgb_uint8(pixels)
    except ValueError as exc:
        raise DataError(f"image {path} page {page}: {exc}; use 2-D gray or RGB images") from None


def tiles(height: int, width: int, patch: int) -> list[Tile | None]:
    """Tiles covering an image, row-major; ``[None]`` (whole image) when patch == 0.

    Tiles are patch x patch px with stride patch; when a side is not a multiple
    of patch the last tile is aligned to the border (overlapping its
    neighbour). A side shorter than patch is taken whole.
    """
    if patch <= 0:
        return [None]

    def starts(size: int) -> list[int]:
        if size <= patch:
            return [0]
        out = list(range(0, size - patch + 1, patch))
        return out + [size - patch] if out[-1] + patch < size else out

    return [(y, x, min(y + patch, height), min(x + patch, width))
            for y in starts(height) for x in starts(width)]


def crop(array: np.ndarray, tile: Tile | None) -> np.ndarray:
    """H x W[ x C] image (or label) cut to ``tile``; the whole array when None."""
    if tile is None:
        return array
    y0, x0, y1, x1 = tile
    return array[y0:y1, x0:x1]


def crop_masks(masks: np.ndarray, tile: Tile | None) -> np.ndarray:
    """N x H x W masks cut to ``tile``."""
    if tile is None:
        return masks
    y0, x0, y1, x1 = tile
    return masks[:, y0:y1, x0:x1]
