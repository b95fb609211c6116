"""Data set splits: pick the reader, split train/val/test deterministically, cap, load lazily.

:func:`load_split` indexes the source once (labels read, no pixels kept),
splits whole source images (so tiles of one image never straddle train and
val) under ``cfg.seed``, drops images without usable objects and caps the
split, logging every skip. :class:`SegDataset` then reads one item per
``[i]``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from supersam.data.base import Item, SkipLog
from supersam.data.coco import CocoReader
from supersam.data.config import SPLITS, DataConfig
from supersam.data.image_label import ImageLabelReader
from supersam.data.sa1b import Sa1bReader
from supersam.data.types import Sample
from supersam.runtime.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


class Reader(Protocol):
    """What :class:`SegDataset` needs from a reader."""

    description: str

    def index(self, skips: SkipLog) -> list[Item]: ...

    def load(self, item: Item) -> Sample: ...


class SegDataset(Sequence[Sample]):
    """Lazy sequence of :class:`Sample`: ``ds[i]`` reads and decodes one image.

    Attributes:
        names: item names in order (file name, ``:p<page>``, ``@y,x`` tile).
        object_counts: usable objects per item found while indexing.
        description: reader and split, for logs.
    """

    def __init__(self, entries: list[tuple[Reader, Item]], description: str):
        self._entries = entries
        self.description = description

    @property
    def names(self) -> list[str]:
        """Item names in index order."""
        return [item.name for _, item in self._entries]

    @property
    def object_counts(self) -> list[int]:
        """Usable objects per item (before the max_objects cap)."""
        return [item.n_objects for _, item in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index):  # type: ignore[override]
        """Sample ``index`` (read now); a slice gives a list. Raises DataError on unreadable files."""
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        reader, item = self._entries[index]
        return reader.load(item)


def make_reader(cfg: DataConfig, images: str, labels: str) -> Reader:
    """The reader of ``cfg.kind`` over ``images``/``labels`` (relative to ``cfg.root``).

    Raises:
        DataError: a folder or file is missing (message names it and the key to fix).
    """
    if not cfg.root or not cfg.path("").is_dir():
        raise DataError(f"data root {cfg.root!r} not found; set data.root to the data set folder")
    if cfg.kind == "coco":
        return CocoReader(cfg.path(images), cfg.path(labels), cfg.min_area, cfg.patch)
    if cfg.kind == "sa1b":
        return Sa1bReader(cfg.path(images), cfg.min_area, cfg.patch)
    return ImageLabelReader(cfg.path(images), cfg.path(labels), cfg.label_mode, cfg.min_area, cfg.patch,
                            cfg.ignore_label, cfg.max_label_values)


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(n_val, n_test) units: round(n * fraction) each, at least one per non-zero fraction while a unit is left for train."""
    def share(fraction: float) -> int:
        return int(np.floor(n * fraction + 0.5))

    n_val, n_test = share(val_fraction), share(test_fraction)
    if 0.0 < test_fraction and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    if 0.0 < val_fraction < 1.0 and n - n_test >= 2:
        n_val = min(max(n_val, 1), n - n_test - 1)
    return min(n_val, n - n_test), n_test


def split_items(
    items: list[Item], split: str, val_fraction: float, seed: int,
    test_fraction: float = 0.0, mode: str = "random",
) -> list[Item]:
    """Items of ``split`` (train | val | test | all), deterministic under ``seed``.

    The unit is the source image (``Item.group``); with a single source image
    (e.g. one DSB2018 image cut into tiles) it is the tile. round(n *
    test_fraction) units go to test and round(n * val_fraction) to val, at
    least one each when the fraction is > 0 and units remain for training.
    ``mode="ordered"`` assigns contiguous blocks in index (natural name) order:
    train first, then val, then test (ISBI EM: sections 20-29 test); ``random``
    draws a seeded permutation.
    """
    if split == "all":
        return list(items)
    groups = list(dict.fromkeys(item.group for item in items))
    by_group = len(groups) > 1
    units = groups if by_group else [item.name for item in items]
    n = len(units)
    n_val, n_test = _split_sizes(n, val_fraction, test_fraction)
    order = np.arange(n)[::-1] if mode == "ordered" else np.random.default_rng(seed).permutation(n)
    # random mode keeps the historic val draw (first n_val of the permutation) when test_fraction is 0
    test = {units[i] for i in (order[:n_test] if mode == "ordered" else order[len(order) - n_test:])}
    rest = [i for i in order if units[i] not in test]
    val = {units[i] for i in rest[:n_val]}
    which = {"test": test, "val": val}

    def unit(item: Item) -> str:
        return item.group if by_group else item.name

    if split in which:
        return [item for item in items if unit(item) in which[split]]
    return [item for item in items if unit(item) not in test and unit(item) not in val]


def cap_indices(n: int, cap: int, seed: int) -> list[int]:
    """Sorted seeded random subset of ``range(n)`` of size ``cap`` (all when cap is 0 or >= n)."""
    if cap <= 0 or n <= cap:
        return list(range(n))
    return sorted(int(i) for i in np.random.default_rng([seed, 1]).choice(n, size=cap, replace=False))


def _sources(cfg: DataConfig, split: str) -> list[tuple[str, str, str]]:
    """(images, labels, split within that source) per source feeding ``split``.

    A separate ``val_images``/``test_images`` source replaces the corresponding
    share of ``images``; the other splits are still carved from ``images``.
    """
    own = {"val": (cfg.val_images, cfg.val_labels), "test": (cfg.test_images, cfg.test_labels)}
    own = {k: v for k, v in own.items() if v[0]}
    if split == "all":
        return [(cfg.images, cfg.labels, "all")] + [(im, lab, "all") for im, lab in own.values()]
    if split in own:
        return [(*own[split], "all")]
    return [(cfg.images, cfg.labels, split)]


def load_split(cfg: DataConfig, split: str) -> SegDataset:
    """The ``split`` (train | val | test | all) of the data set ``cfg`` describes, as a lazy SegDataset.

    Split by ``cfg.val_fraction``/``cfg.test_fraction`` and ``cfg.split_mode``
    under ``cfg.seed`` (or from ``val_images``/``test_images`` when set); images without an object >= ``min_area`` px are
    dropped and logged in one warning line; ``max_images`` caps the split.

    Raises:
        ConfigError: unknown split or invalid ``cfg`` entries.
        DataError: missing folder/file, or nothing usable left in the split.
    """
    if split not in SPLITS:
        raise ConfigError(f"data split {split!r} is unknown; use one of {', '.join(SPLITS)}")
    cfg.validate()
    if split == "test" and not cfg.test_images and cfg.test_fraction <= 0:
        raise ConfigError("the test split is empty: data.test_fraction is 0 and data.test_images is not set; "
                          "set one of them, or evaluate another split (--split val or all)")
    entries: list[tuple[Reader, Item]] = []
    for images, labels, sub in _sources(cfg, split):
        reader = make_reader(cfg, images, labels)
        skips = SkipLog()
        items = reader.index(skips)
        skips.report(reader.description, logger)
        if not items:
            raise DataError(f"no usable image in {reader.description} ({skips.total} skipped, see warnings); "
                            "fix the files or point data.root/data.images elsewhere")
        empty = SkipLog()
        val_fraction = 0.0 if cfg.val_images else cfg.val_fraction
        test_fraction = 0.0 if cfg.test_images else cfg.test_fraction
        for item in split_items(items, sub, val_fraction, cfg.seed, test_fraction, cfg.split_mode):
            if item.n_objects:
                entries.append((reader, item))
            else:
                empty.add(f"with no objects >= {max(cfg.min_area, 1)} px", item.name)
        empty.report(f"{reader.description} [{split}]", logger)
    entries = [entries[i] for i in cap_indices(len(entries), cfg.max_images, cfg.seed)]
    if not entries:
        raise DataError(f"split {split!r} of {cfg.root} is empty (val_fraction={cfg.val_fraction}, "
                        f"test_fraction={cfg.test_fraction}, min_area={cfg.min_area}); lower data.min_area, "
                        "change data.val_fraction/test_fraction or use split 'all'")
    description = f"{cfg.kind} {cfg.root} [{split}]"
    ds = SegDataset(entries, description)
    logger.info("%s: %d images, %d objects", description, len(ds), sum(ds.object_counts))
    return ds
