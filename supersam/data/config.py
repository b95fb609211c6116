"""params.yaml ``data``: which data set, how it is split, filtered and prompted.

One frozen dataclass shared by every stage that reads data (rank-layers,
calibrate-wanda, train, search, eval). Relative paths resolve against the
current working directory (the project root when run through DVC).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from supersam.errors import ConfigError

KINDS = ("coco", "sa1b", "image_label")
LABEL_MODES = ("instance", "binary")
PROMPTS = ("point", "box")
SPLITS = ("train", "val", "all")


@dataclass(frozen=True)
class DataConfig:
    """params.yaml ``data`` section.

    Attributes:
        kind: ``coco`` (instances JSON + image folder), ``sa1b`` (folder of
            ``sa_N.jpg`` + ``sa_N.json``) or ``image_label`` (image/label files
            paired by stem, PNG or TIFF, 2-D or multi-page stacks).
        root: data set folder; ``images``/``labels`` are relative to it.
        images: image folder or single (multi-page) image file; coco: image
            folder; sa1b: folder holding the jpg/json pairs.
        labels: image_label: label folder or file; coco: annotations JSON;
            sa1b: unused.
        val_images: optional separate validation source ("" = split ``images``
            by ``val_fraction``).
        val_labels: labels of ``val_images`` (required with it, except sa1b).
        label_mode: image_label only: ``instance`` (0 = background, k > 0 = one
            object, ids may have gaps) or ``binary`` (connected components of
            the foreground are the objects).
        patch: > 0 cuts every image into patch x patch px tiles (paper, EM:
            512x512 -> four 256x256); 0 = whole images.
        min_area: objects smaller than this many px are dropped.
        max_objects: objects per image (paper: 64 SA-1B, 8 COCO); a random
            subset when more, random repetition when fewer; 0 = all, no repeat.
        prompt: ``point`` (one random pixel inside the object) or ``box``
            (tight box padded by a random 0..box_pad px per side).
        box_pad: maximum box padding in px (paper: 20).
        val_fraction: share of source images held out for ``val``.
        max_images: per-split cap on images (tiles), 0 = all.
        seed: seed of the split, the caps and the prompts.
    """

    kind: str = "image_label"
    root: str = "../shared/data/isbi2012_em"
    images: str = "image"
    labels: str = "label"
    val_images: str = ""
    val_labels: str = ""
    label_mode: str = "binary"
    patch: int = 0
    min_area: int = 100
    max_objects: int = 8
    prompt: str = "box"
    box_pad: int = 20
    val_fraction: float = 0.5
    max_images: int = 0
    seed: int = 0

    def path(self, relative: str) -> Path:
        """``relative`` resolved against ``root`` (absolute paths kept)."""
        return Path(self.root) / relative

    def validate(self) -> None:
        """Check the enumerations and ranges.

        Raises:
            ConfigError: naming the offending ``data.<key>`` and its allowed values.
        """
        for key, allowed in (("kind", KINDS), ("label_mode", LABEL_MODES), ("prompt", PROMPTS)):
            value = getattr(self, key)
            if value not in allowed:
                raise ConfigError(f"data.{key} is {value!r}; use one of {', '.join(allowed)}")
        for key in ("patch", "min_area", "max_objects", "box_pad", "max_images"):
            if getattr(self, key) < 0:
                raise ConfigError(f"data.{key} is {getattr(self, key)}; use a value >= 0")
        if not 0.0 <= self.val_fraction <= 1.0:
            raise ConfigError(f"data.val_fraction is {self.val_fraction}; use a value in [0, 1]")
        if self.val_images and not self.val_labels and self.kind != "sa1b":
            raise ConfigError("data.val_images is set but data.val_labels is empty; set both or neither")
