"""Image/label pairs: PNG or TIFF files paired by stem, 2-D images or multi-page stacks.

Covers ISBI 2012 EM (``image/N.png`` + ``label/N.png``, 255 = cell interior),
EPFL mitochondria (``training.tif`` + ``training_groundtruth.tif`` stacks, one
image per page) and DSB2018 (``img2d.tif`` + ``mask2d.tif`` instance ids).
``label_mode`` says how a label page becomes objects: ``instance`` (each
non-zero id, gaps allowed) or ``binary`` (connected components of the
foreground, 4-connectivity, via ``scipy.ndimage.label``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from supersam.data.base import Item, SkipLog
from supersam.data.imaging import crop, image_shape, list_images, page_count, read_page, read_rgb, tiles
from supersam.data.types import Sample
from supersam.errors import DataError

def _label_plane(label: np.ndarray) -> np.ndarray:
    """H x W ids from a label page (RGB(A) colour-coded labels packed into one int)."""
    if label.ndim == 3 and label.shape[-1] in (3, 4):
        rgb = label[..., :3].astype(np.int64)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    if label.ndim != 2:
        raise ValueError(f"label page of shape {label.shape} is not 2-D")
    return label


def object_ids(label: np.ndarray, mode: str, min_px: int) -> tuple[np.ndarray, np.ndarray]:
    """(H x W int id map, ids of objects >= min_px px) of one label page.

    ``instance``: ids are the label values != 0. ``binary``: ids are connected
    components (4-connectivity) of ``label > 0``.
    """
    plane = _label_plane(label)
    if mode == "binary":
        plane, _ = ndimage.label(plane > 0)
    ids, counts = np.unique(plane, return_counts=True)
    keep = (ids != 0) & (counts >= min_px)
    return plane, ids[keep]


def label_masks(label: np.ndarray, mode: str, min_px: int) -> np.ndarray:
    """N x H x W bool masks of the objects (>= min_px px) of one label page."""
    plane, ids = object_ids(label, mode, min_px)
    return plane[None] == ids[:, None, None]


def _pairs(images: Path, labels: Path, skips: SkipLog) -> list[tuple[Path, Path]]:
    """(image, label) files: two single files, or two folders matched by file stem."""
    for path, key in ((images, "images"), (labels, "labels")):
        if not path.exists():
            raise DataError(f"{path} not found; set data.root/data.{key} to an existing folder or file")
    if images.is_file() and labels.is_file():
        return [(images, labels)]
    if images.is_file() != labels.is_file():
        raise DataError(f"{images} and {labels} must both be folders or both be files; fix data.images/data.labels")
    by_stem: dict[str, Path] = {}
    for path in list_images(labels):
        by_stem.setdefault(path.stem, path)
    pairs = []
    for path in list_images(images):
        if path.stem in by_stem:
            pairs.append((path, by_stem[path.stem]))
        else:
            skips.add(f"without a label of the same name in {labels}", path.name)
    return pairs


class ImageLabelReader:
    """Lazy reader of image/label pairs (paper: EM mitochondria, box prompts, 256 px patches).

    Args:
        images: image folder or single (multi-page) image file.
        labels: label folder (files paired by stem) or single label file.
        label_mode: ``instance`` or ``binary``.
        min_area: smallest object kept, px.
        patch: > 0 cuts every page into patch x patch tiles.

    Raises:
        DataError: a path is missing, or a folder/file mix.
    """

    def __init__(self, images: Path, labels: Path, label_mode: str, min_area: int, patch: int):
        self.images, self.labels = images, labels
        self.mode, self.min_px, self.patch = label_mode, max(min_area, 1), patch
        self.description = f"image_label {images}"

    def _pages(self, image: Path, label: Path, skips: SkipLog) -> int:
        """Number of pages shared by an image/label pair; 0 (and a skip) when unusable."""
        try:
            n_image = page_count(image)
        except DataError:
            skips.add("that cannot be read", image.name)
            return 0
        try:
            n_label = page_count(label)
        except DataError:
            skips.add("whose label cannot be read", image.name)
            return 0
        if n_image != n_label:
            skips.add(f"with a different page count than their label ({n_image} vs {n_label})", image.name)
            return 0
        return n_image

    def index(self, skips: SkipLog) -> list[Item]:
        """Items for every page (and tile) of every usable pair; reads each label page once."""
        items = []
        for image, label in _pairs(self.images, self.labels, skips):
            n_pages = self._pages(image, label, skips)
            for page in range(n_pages):
                base = image.name if n_pages == 1 else f"{image.name}:p{page}"
                try:
                    lab = read_page(label, page)
                    plane = _label_plane(lab)
                    if image_shape(image, page) != plane.shape:
                        skips.add("whose label has another size", base)
                        continue
                except (DataError, ValueError):
                    skips.add("whose label cannot be used", base)
                    continue
                for tile in tiles(plane.shape[0], plane.shape[1], self.patch):
                    n = len(object_ids(crop(plane, tile), self.mode, self.min_px)[1])
                    name = base if tile is None else f"{base}@{tile[0]},{tile[1]}"
                    items.append(Item((image, label, page), tile, name, base, n))
        return items

    def load(self, item: Item) -> Sample:
        """The item's image (h x w x 3 uint8) and its object masks (N x h x w bool).

        Raises:
            DataError: the files can no longer be read or hold no usable object.
        """
        image_path, label_path, page = item.key
        image = crop(read_rgb(image_path, page), item.tile)
        label = crop(_label_plane(read_page(label_path, page)), item.tile)
        masks = label_masks(label, self.mode, self.min_px)
        if len(masks) == 0:
            raise DataError(f"{item.name} has no object >= {self.min_px} px; rebuild the data index")
        return Sample(np.ascontiguousarray(image), masks, item.name)
