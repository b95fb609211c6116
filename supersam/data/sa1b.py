"""SA-1B reader: a folder of ``sa_N.jpg`` + ``sa_N.json`` pairs (Segment Anything 1B layout).

Each JSON holds ``{"image": {...}, "annotations": [{"segmentation": {"size":
[H, W], "counts": "<COCO RLE>"}, ...}]}``. Indexing reads every JSON once and
keeps only object counts; :meth:`Sa1bReader.load` re-reads the JSON and
decodes the masks with ``pycocotools.mask.decode``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils

from supersam.data.base import Item, SkipLog
from supersam.data.imaging import Tile, crop, crop_masks, image_shape, natural_key, read_rgb, tiles
from supersam.data.types import Sample
from supersam.runtime.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_rles(json_path: Path, size: tuple[int, int]) -> list[dict]:
    """COCO RLEs of one SA-1B annotation file, checked against the image size (H, W).

    Raises:
        ValueError: malformed JSON, missing keys, or a mask of another size.
    """
    data = json.loads(json_path.read_text())
    rles = [dict(a["segmentation"]) for a in data["annotations"]]
    for rle in rles:
        if tuple(rle["size"]) != size:
            raise ValueError(f"mask size {rle['size']} differs from image size {list(size)}")
    return rles


class Sa1bReader:
    """Lazy SA-1B reader (paper: SA-1B with point prompts, 64 objects per image).

    Args:
        folder: folder holding ``sa_N.jpg`` and ``sa_N.json`` pairs.
        min_area: smallest object kept, px.
        patch: > 0 cuts images into patch x patch tiles (0 = whole images).

    Raises:
        DataError: the folder is missing or holds no jpg files.
    """

    def __init__(self, folder: Path, min_area: int, patch: int):
        if not folder.is_dir():
            raise DataError(f"SA-1B folder {folder} not found; set data.root/data.images to the folder of sa_N.jpg + sa_N.json")
        self.images = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                             key=lambda p: natural_key(p.name))
        if not self.images:
            raise DataError(f"SA-1B folder {folder} holds no .jpg images; point data.images at the extracted SA-1B tar")
        self.min_px, self.patch = max(min_area, 1), patch
        self.description = f"sa1b {folder}"

    def _decode(self, rles: list[dict], tile: Tile | None, keep: bool = False):
        """N x h x w bool masks cut to ``tile``, objects < min_area px dropped (and, with ``keep``, their indices)."""
        if not rles:
            empty = np.zeros((0, 0, 0), bool)
            return (empty, np.zeros(0, np.int64)) if keep else empty
        masks = crop_masks(np.moveaxis(mask_utils.decode(rles), -1, 0).astype(bool), tile)
        kept = np.flatnonzero(masks.sum(axis=(1, 2)) >= self.min_px)
        return (masks[kept], kept) if keep else masks[kept]

    def _usable(self, rles: list[dict]) -> list[dict]:
        return [r for r in rles if int(mask_utils.area(r)) >= self.min_px]

    def index(self, skips: SkipLog) -> list[Item]:
        """Items of every image with a readable, size-consistent JSON (tiles when patch > 0)."""
        items = []
        for path in self.images:
            json_path = path.with_suffix(".json")
            if not json_path.is_file():
                skips.add("without annotation file (<name>.json)", path.name)
                continue
            try:
                size = image_shape(path)
            except DataError:
                skips.add("that cannot be read", path.name)
                continue
            try:
                rles = self._usable(read_rles(json_path, size))
            except (ValueError, KeyError, TypeError, OSError) as exc:
                skips.add(f"with unusable annotations ({type(exc).__name__})", json_path.name)
                continue
            for tile in tiles(size[0], size[1], self.patch):
                n = len(rles) if tile is None else len(self._decode(rles, tile))
                name = path.name if tile is None else f"{path.name}@{tile[0]},{tile[1]}"
                items.append(Item(path, tile, name, path.name, n))
        return items

    def load(self, item: Item) -> Sample:
        """The item's image (H x W x 3 uint8) and usable object masks (N x H x W bool).

        Raises:
            DataError: the image or its JSON can no longer be read.
        """
        path: Path = item.key
        image = read_rgb(path)
        try:
            rles = self._usable(read_rles(path.with_suffix(".json"), image.shape[:2]))
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise DataError(f"cannot read annotations of {path} ({exc}); replace or remove the pair") from None
        masks, kept = self._decode(rles, item.tile, keep=True)
        if len(masks) == 0:
            raise DataError(f"{item.name} has no object >= {self.min_px} px; rebuild the data index")
        origin = (0, 0) if item.tile is None else (int(item.tile[0]), int(item.tile[1]))
        return Sample(np.ascontiguousarray(crop(image, item.tile)), masks, item.name, ids=kept.astype(np.int64) + 1,
                      source=item.group, origin=origin)
