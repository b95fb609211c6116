"""COCO instances reader: an annotations JSON plus an image folder (MS-COCO layout).

Objects are the non-``iscrowd`` annotations whose mask covers at least
``min_area`` px (exact RLE area from pycocotools, not the rounded ``area``
field). Pixels are read lazily per item; the index keeps only the parsed
annotations pycocotools holds anyway.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from pycocotools.coco import COCO

from supersam.data.base import Item, SkipLog
from supersam.data.imaging import Tile, crop, crop_masks, image_shape, read_rgb, tiles
from supersam.data.types import Sample
from supersam.runtime.errors import DataError

logger = logging.getLogger(__name__)

def load_coco(ann_file: Path) -> COCO:
    """Parse a COCO instances JSON with pycocotools, its stdout chatter silenced.

    Raises:
        DataError: the file is missing or is not a COCO instances JSON.
    """
    if not ann_file.is_file():
        raise DataError(f"COCO annotations {ann_file} not found; set data.labels to the instances JSON under data.root")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(ann_file))
        coco.getImgIds()
    except Exception as exc:  # noqa: BLE001 - JSON/key errors all mean "not a COCO file"
        raise DataError(f"cannot parse COCO annotations {ann_file} ({type(exc).__name__}: {exc}); "
                        "point data.labels at a COCO instances JSON") from None
    return coco


class CocoReader:
    """Lazy COCO reader (paper: MS-COCO with point prompts).

    Args:
        image_dir: folder holding the images named by ``file_name``.
        ann_file: COCO instances JSON.
        min_area: smallest object kept, px.
        patch: > 0 cuts images into patch x patch tiles (0 = whole images).

    Raises:
        DataError: missing folder/JSON or unparsable JSON.
    """

    def __init__(self, image_dir: Path, ann_file: Path, min_area: int, patch: int):
        if not image_dir.is_dir():
            raise DataError(f"COCO image folder {image_dir} not found; set data.root/data.images to the image folder")
        self.image_dir, self.min_px, self.patch = image_dir, max(min_area, 1), patch
        self.coco = load_coco(ann_file)
        self.description = f"coco {image_dir}"

    def _annotations(self, img_id: int) -> list[tuple[dict, dict]]:
        """(annotation, RLE) of the usable (non-crowd, >= min_area px) objects of one image.

        Polygons with fewer than 3 points (no area; pycocotools cannot rasterise
        them) are dropped, and an annotation left without a polygon with them.
        """
        anns = [_drop_degenerate_polygons(a) for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=[img_id]))
                if not a.get("iscrowd", 0)]
        anns = [a for a in anns if a is not None]
        pairs = [(a, self.coco.annToRLE(a)) for a in anns]
        return [(a, r) for a, r in pairs if int(mask_utils.area(r)) >= self.min_px]

    def _objects(self, img_id: int) -> list[dict]:
        """RLEs of the usable (non-crowd, >= min_area px) objects of one image."""
        return [r for _, r in self._annotations(img_id)]

    def _decode(self, rles: list[dict], tile: Tile | None, keep: bool = False):
        """N x h x w bool masks of ``rles`` cut to ``tile``, small ones dropped (and, with ``keep``, their indices)."""
        if not rles:
            empty = np.zeros((0, 0, 0), bool)
            return (empty, np.zeros(0, np.int64)) if keep else empty
        masks = crop_masks(np.moveaxis(mask_utils.decode(rles), -1, 0).astype(bool), tile)
        kept = np.flatnonzero(masks.sum(axis=(1, 2)) >= self.min_px)
        return (masks[kept], kept) if keep else masks[kept]

    def index(self, skips: SkipLog) -> list[Item]:
        """Items of all images that exist and match their annotated size (tiles when patch > 0)."""
        orphans = [a["id"] for a in self.coco.anns.values() if a.get("image_id") not in self.coco.imgs]
        if orphans:
            logger.warning("%s: ignored %d annotations whose image_id is not in the JSON's images (ids %s)",
                           self.description, len(orphans), ", ".join(map(str, orphans[:8])))
        items = []
        for img_id in sorted(self.coco.getImgIds()):
            info = self.coco.imgs[img_id]
            name, size = info["file_name"], (info["height"], info["width"])
            path = self.image_dir / name
            if not path.is_file():
                skips.add("whose file is missing (annotated but not in the image folder)", name)
                continue
            try:
                shape = image_shape(path)
            except DataError:
                skips.add("that cannot be read", name)
                continue
            if shape != size:
                skips.add("whose size differs from the annotation", name)
                continue
            try:
                rles = self._objects(img_id)
            except (KeyError, TypeError, ValueError, IndexError):
                skips.add("with malformed annotations", name)
                continue
            all_tiles = tiles(size[0], size[1], self.patch)
            for tile in all_tiles:
                n = len(rles) if tile is None else len(self._decode(rles, tile))
                tile_name = name if tile is None else f"{name}@{tile[0]},{tile[1]}"
                items.append(Item((img_id, path), tile, tile_name, name, n))
        return items

    def load(self, item: Item) -> Sample:
        """The item's image (H x W x 3 uint8) and its usable object masks (N x H x W bool).

        Raises:
            DataError: the image cannot be decoded or has no usable object left.
        """
        img_id, path = item.key
        image = crop(read_rgb(path), item.tile)
        objects = self._annotations(img_id)
        masks, kept = self._decode([r for _, r in objects], item.tile, keep=True)
        if len(masks) == 0:
            raise DataError(f"{item.name} has no object >= {self.min_px} px; rebuild the data index")
        anns = [objects[i][0] for i in kept]
        origin = (0, 0) if item.tile is None else (int(item.tile[0]), int(item.tile[1]))
        return Sample(np.ascontiguousarray(image), masks, item.name,
                      ids=np.array([a.get("id", i + 1) for i, a in enumerate(anns)], np.int64),
                      categories=np.array([a.get("category_id", 1) for a in anns], np.int64),
                      source=item.group, origin=origin, image_id=int(img_id))


def _drop_degenerate_polygons(ann: dict) -> dict | None:
    """``ann`` without polygons of fewer than 3 points (6 coordinates); None when none is left."""
    seg = ann.get("segmentation")
    if not isinstance(seg, list):
        return ann  # RLE
    polygons = [p for p in seg if isinstance(p, list) and len(p) >= 6]
    if len(polygons) == len(seg):
        return ann
    return {**ann, "segmentation": polygons} if polygons else None
