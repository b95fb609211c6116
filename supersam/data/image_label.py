"""Image/label pairs: PNG or TIFF files paired by stem, 2-D images or multi-page stacks.

Covers ISBI 2012 EM (``image/N.png`` + ``label/N.png``, 255 = cell interior),
EPFL mitochondria (``training.tif`` + ``training_groundtruth.tif`` stacks, one
image per page) and DSB2018 (``img2d.tif`` + ``mask2d.tif`` instance ids).
``label_mode`` says how a label page becomes objects: ``instance`` (each
non-zero id, gaps allowed), ``binary`` (connected components of the
foreground, 4-connectivity, via ``scipy.ndimage.label``) or ``semantic``
(each class value's connected components). ``ignore_label`` (e.g. VOC's 255
void) is never an object and its pixels are excluded from every IoU.
"""

from __future__ import annotations

from pathlib import Path

import logging

import numpy as np
from scipy import ndimage

from supersam.data.base import Item, SkipLog
from supersam.data.imaging import crop, image_shape, list_images, page_count, read_page, read_rgb, tiles
from supersam.data.types import Sample
from supersam.runtime.errors import DataError

logger = logging.getLogger(__name__)

class LabelValueError(ValueError):
    """A label page whose values cannot be object ids (not whole numbers, or NaN)."""


def _label_plane(label: np.ndarray) -> np.ndarray:
    """H x W ids from a label page (RGB(A) colour-coded labels packed into one int).

    Raises:
        LabelValueError: a floating-point label with a NaN, infinite or fractional value.
        ValueError: a page that is neither 2-D nor RGB(A).
    """
    if label.ndim == 3 and label.shape[-1] in (3, 4):
        rgb = label[..., :3].astype(np.int64)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    if label.ndim != 2:
        raise ValueError(f"label page of shape {label.shape} is not 2-D")
    if np.issubdtype(label.dtype, np.floating):
        if not np.isfinite(label).all():
            raise LabelValueError("holds NaN or infinite values")
        if (label != np.round(label)).any():
            raise LabelValueError("holds fractional values")
        return label.astype(np.int64)
    return label


class TooManyLabelValues(ValueError):
    """A label page (tile) with more distinct values or regions than ``data.max_label_values``."""


def object_ids(label: np.ndarray, mode: str, min_px: int, ignore: int = -1,
               max_values: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(H x W int id map, ids of objects >= min_px px) of one label page.

    ``instance``: ids are the label values other than 0 and ``ignore``.
    ``binary``: ids are connected components (4-connectivity) of the
    foreground (``label > 0`` and not ``ignore``). ``semantic``: every class
    value's connected components, numbered 1..K over all classes in class
    order (:func:`object_classes` gives each id's class). ``ignore`` (-1 =
    none) is never an object.

    Raises:
        TooManyLabelValues: ``max_values`` > 0 and the page holds more distinct values
            (semantic: classes) or regions than that, before the ``min_px`` filter.
        LabelValueError: a float label that is not whole numbers (:func:`_label_plane`).
    """
    plane = _label_plane(label)
    void = plane == ignore if ignore >= 0 else None
    if mode == "binary":
        fg = plane > 0 if void is None else (plane > 0) & ~void
        plane, _ = ndimage.label(fg)
    elif mode == "semantic":
        values = np.unique(plane)
        n_classes = int(((values != 0) & ((values != ignore) if ignore >= 0 else True)).sum())
        _check_count(n_classes, max_values, "class values")  # before a labelling pass per class
        plane = _semantic_components(plane, ignore)
    elif void is not None:
        plane = np.where(void, 0, plane)
    ids, counts = np.unique(plane, return_counts=True)
    _check_count(len(ids) - 1, max_values, "values" if mode == "instance" else "regions")
    keep = (ids != 0) & (counts >= min_px)
    return plane, ids[keep]


def _check_count(n: int, max_values: int, what: str) -> None:
    if max_values > 0 and n > max_values:
        raise TooManyLabelValues(f"holds {n} distinct {what}, more than data.max_label_values={max_values}")


def _semantic_components(plane: np.ndarray, ignore: int) -> np.ndarray:
    """H x W int64: each class value's connected components numbered 1..K (classes ascending), 0 elsewhere."""
    out = np.zeros(plane.shape, np.int64)
    next_id = 0
    for value in np.unique(plane):
        if value == 0 or (ignore >= 0 and value == ignore):
            continue
        comp, n = ndimage.label(plane == value)
        out[comp > 0] = comp[comp > 0] + next_id
        next_id += n
    return out


def object_classes(label: np.ndarray, ids_plane: np.ndarray, ids: np.ndarray, mode: str) -> np.ndarray:
    """N int64 class of each object id: its label value in ``semantic`` mode, 1 otherwise."""
    if mode != "semantic" or len(ids) == 0:
        return np.ones(len(ids), np.int64)
    values, first = np.unique(ids_plane, return_index=True)  # a component has one label value
    classes = _label_plane(label).ravel()[first]
    return classes[np.searchsorted(values, ids)].astype(np.int64)


def merged_instances(label: np.ndarray, ignore: int = -1) -> int:
    """How many foreground components of one label page join regions of different label values.

    ``binary`` mode makes every connected foreground region one object; when
    the label holds instance ids, touching instances silently become one
    object. A count > 0 means this page looks like an instance-id label.
    """
    plane = _label_plane(label)
    fg = plane > 0 if ignore < 0 else (plane > 0) & (plane != ignore)
    values = np.unique(plane[fg])
    if len(values) < 2:
        return 0
    comp, n = ndimage.label(fg)
    pairs = np.unique(np.stack([comp[fg], np.searchsorted(values, plane[fg])]), axis=1)  # (component, value)
    per_comp = np.bincount(pairs[0], minlength=n + 1)
    return int((per_comp > 1).sum())


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
        label_mode: ``instance``, ``binary`` or ``semantic``.
        min_area: smallest object kept, px.
        patch: > 0 cuts every page into patch x patch tiles.
        ignore_label: void label value (never an object, excluded from IoU); -1 = none.

    Raises:
        DataError: a path is missing, or a folder/file mix.
    """

    def __init__(self, images: Path, labels: Path, label_mode: str, min_area: int, patch: int,
                 ignore_label: int = -1, max_values: int = 0):
        self.images, self.labels = images, labels
        self.mode, self.min_px, self.patch = label_mode, max(min_area, 1), patch
        self.ignore, self.max_values = ignore_label, max_values
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
        """Items for every page (and tile) of every usable pair; reads each label page once.

        In ``binary`` mode, labels whose touching regions carry different values
        (instance ids) are named in one warning: those instances were merged.
        """
        items = []
        merged = SkipLog()
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
                except LabelValueError as exc:
                    raise DataError(f"label {label} (page {page}) {exc}: object ids must be whole numbers; "
                                    "save the label with an integer type (8/16-bit PNG or TIFF)") from None
                except (DataError, ValueError):
                    skips.add("whose label cannot be used", base)
                    continue
                if self.mode == "binary" and merged_instances(plane, self.ignore):
                    merged.add("", base)
                for tile in tiles(plane.shape[0], plane.shape[1], self.patch):
                    name = base if tile is None else f"{base}@{tile[0]},{tile[1]}"
                    try:
                        n = len(object_ids(crop(plane, tile), self.mode, self.min_px, self.ignore,
                                           self.max_values)[1])
                    except TooManyLabelValues as exc:
                        raise DataError(f"label {label} ({name}) {exc}: it looks like a photo or noise, not a "
                                        "label; point data.labels at the label files, or raise the limit if "
                                        "it is right") from None
                    items.append(Item((image, label, page), tile, name, base, n))
        for _, names in merged.reasons.items():
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            logger.warning("%s: label_mode binary merged touching regions of different label values into one "
                           "object in %d %s (%s); for instance-id labels use --label-mode instance "
                           "(data.label_mode: instance), for class labels semantic", self.description, len(names),
                           "image" if len(names) == 1 else "images", shown)
        return items

    def load(self, item: Item) -> Sample:
        """The item's image (h x w x 3 uint8) and its object masks (N x h x w bool).

        Raises:
            DataError: the files can no longer be read or hold no usable object.
        """
        image_path, label_path, page = item.key
        image = crop(read_rgb(image_path, page), item.tile)
        label = crop(_label_plane(read_page(label_path, page)), item.tile)
        plane, ids = object_ids(label, self.mode, self.min_px, self.ignore)
        masks = plane[None] == ids[:, None, None]
        if len(masks) == 0:
            raise DataError(f"{item.name} has no object >= {self.min_px} px; rebuild the data index")
        ignore = label == self.ignore if self.ignore >= 0 else None
        origin = (0, 0) if item.tile is None else (int(item.tile[0]), int(item.tile[1]))
        return Sample(np.ascontiguousarray(image), masks, item.name, ids=ids.astype(np.int64),
                      categories=object_classes(label, plane, ids, self.mode),
                      ignore=ignore if ignore is not None and ignore.any() else None,
                      source=item.group, origin=origin)
