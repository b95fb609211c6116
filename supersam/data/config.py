"""params.yaml ``data``: which data set, how it is split, filtered and prompted.

One frozen dataclass shared by every stage that reads data (pretrain,
rank-layers, calibrate, train, search, eval). Relative paths resolve against the
current working directory (the project root when run through DVC).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from supersam.runtime.errors import ConfigError

KINDS = ("coco", "sa1b", "image_label")
LABEL_MODES = ("instance", "binary", "semantic")
PROMPTS = ("point", "box")
TRAIN_PROMPTS = PROMPTS + ("mixed",)
POINT_PLACEMENTS = ("random", "center")
SPLITS = ("train", "val", "test", "all")
SPLIT_MODES = ("ordered", "random")
MIN_PATCH = 32  # smallest tile side in px (data.patch): smaller tiles hold no object worth a SAM pass
BOX_PAD_FORMS = "N (fixed N px per side, 0 = tight boxes) or LO-HI (a seeded random LO..HI px per side, e.g. 0-20)"


def parse_box_pad(value: int | str, key: str = "data.box_pad") -> tuple[int, int]:
    """``data.box_pad`` / ``--box-pad`` -> (lo, hi) px added to each side of a tight box.

    ``N`` (int or text) is a fixed pad (lo = hi = N; ``0`` = tight boxes);
    ``"LO-HI"`` draws each side's pad uniformly from LO..HI (inclusive) under the
    prompt seed (the paper's EM protocol is ``0-20``).

    Raises:
        ConfigError: anything else, in one line naming ``key`` and the accepted forms.
    """
    text = str(value).strip()
    match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", text)
    if isinstance(value, bool) or match is None:
        raise ConfigError(f"{key} is {value!r}; use {BOX_PAD_FORMS}")
    lo = int(match.group(1))
    hi = int(match.group(2)) if match.group(2) is not None else lo
    if hi < lo:
        raise ConfigError(f"{key} is {value!r}: LO is above HI; use {BOX_PAD_FORMS}")
    return lo, hi


def check_selection_split(split: str, key: str) -> None:
    """Refuse the held-out ``test`` split (or an unknown one) for a stage that selects or trains.

    Ranking, calibration, search and training targets choose things; choosing on
    the test split would leak it into the figures ``eval`` publishes.

    Raises:
        ConfigError: naming ``key`` and the splits to use instead.
    """
    if split == "test":
        raise ConfigError(f"{key} is 'test': the test split is held out for `supersam eval`; use val (or train)")
    if split not in SPLITS:
        raise ConfigError(f"{key} is {split!r}; use val, train or all")


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
        test_images: optional separate held-out test source ("" = split ``images``
            by ``test_fraction``).
        test_labels: labels of ``test_images`` (required with it, except sa1b).
        label_mode: image_label only: ``instance`` (0 = background, k > 0 = one
            object, ids may have gaps), ``binary`` (connected components of
            the foreground are the objects; touching instances merge, with a
            warning when they carry different label values) or ``semantic``
            (label values are classes; each class's connected components are
            the objects, so touching objects of different classes stay apart).
        ignore_label: image_label only: label value of "void" pixels (e.g. 255
            in Pascal VOC), never an object and excluded from every object's
            IoU (intersection and union); -1 = none.
        patch: > 0 cuts every image into patch x patch px tiles (paper, EM:
            512x512 -> four 256x256); 0 = whole images.
        min_area: objects smaller than this many px are dropped.
        max_label_values: image_label only: most distinct label values (binary:
            regions; semantic: classes) one page or tile may hold; more is refused
            as a photo or noise given as a label, whose N x H x W object masks would
            not fit in memory (4096 masks of 512 x 512 px are 1 GiB).
        max_objects: objects per image (paper: 64 SA-1B, 8 COCO); a random
            subset when more, random repetition when fewer; 0 = all, no repeat.
        prompt: evaluation prompt (ranking, calibration, validation probe,
            search, eval): ``point`` (one pixel inside the object, see ``point``)
            or ``box`` (the tight box padded per ``box_pad``).
        point: where an evaluation point goes: ``center`` (the interior pixel
            farthest from the boundary) or ``random`` (uniform inside the object).
        box_pad: box padding per side in px: ``N`` fixed (0 = tight boxes) or
            ``LO-HI`` a seeded random LO..HI per side (paper, EM: ``0-20``);
            :func:`parse_box_pad`.
        train_prompt: prompts of the training stages (pretrain, train): ``box``,
            ``point`` (uniform random interior pixel) or ``mixed`` (box or point
            per image); "" = same as ``prompt``.
        box_jitter: training boxes: every side moved by a random
            -box_jitter..box_jitter px (after the padding).
        val_fraction: share of source images held out for ``val`` (selection:
            ranking, search, training targets).
        test_fraction: share of source images held out for ``test`` (read only by
            ``eval``; the figures to publish).
        split_mode: ``ordered``: source images in natural name order, the last
            ``test_fraction`` of them are ``test``, the ``val_fraction`` before them
            ``val``, the rest ``train`` (contiguous blocks: serial sections are
            correlated); ``random``: a seeded permutation decides.
        max_images: per-split cap on images (tiles), 0 = all.
        seed: seed of the split, the caps and the prompts.
    """

    kind: str = "image_label"
    root: str = "../shared/data/isbi2012_em"
    images: str = "image"
    labels: str = "label"
    val_images: str = ""
    val_labels: str = ""
    test_images: str = ""
    test_labels: str = ""
    label_mode: str = "binary"
    ignore_label: int = -1
    patch: int = 0
    min_area: int = 100
    max_label_values: int = 4096
    max_objects: int = 8
    prompt: str = "box"
    point: str = "random"
    box_pad: str = "0-20"
    train_prompt: str = ""
    box_jitter: int = 0
    val_fraction: float = 0.5
    test_fraction: float = 0.0
    split_mode: str = "random"
    max_images: int = 0
    seed: int = 0

    @property
    def box_pad_range(self) -> tuple[int, int]:
        """(lo, hi) px of padding per box side (:func:`parse_box_pad`)."""
        return parse_box_pad(self.box_pad)

    @property
    def training_prompt(self) -> str:
        """Prompt kind of the training stages (``train_prompt``, else ``prompt``)."""
        return self.train_prompt or self.prompt

    def path(self, relative: str) -> Path:
        """``relative`` resolved against ``root`` (absolute paths kept)."""
        return Path(self.root) / relative

    def validate(self) -> None:
        """Check the enumerations and ranges.

        Raises:
            ConfigError: naming the offending ``data.<key>`` and its allowed values.
        """
        for key, allowed in (("kind", KINDS), ("label_mode", LABEL_MODES), ("prompt", PROMPTS),
                             ("split_mode", SPLIT_MODES), ("point", POINT_PLACEMENTS)):
            value = getattr(self, key)
            if value not in allowed:
                raise ConfigError(f"data.{key} is {value!r}; use one of {', '.join(allowed)}")
        if self.train_prompt and self.train_prompt not in TRAIN_PROMPTS:
            raise ConfigError(f"data.train_prompt is {self.train_prompt!r}; use one of {', '.join(TRAIN_PROMPTS)} or \"\"")
        parse_box_pad(self.box_pad)
        if self.ignore_label < -1:
            raise ConfigError(f"data.ignore_label is {self.ignore_label}; use a label value >= 0, or -1 for none")
        for key in ("patch", "min_area", "max_objects", "max_images", "box_jitter"):
            if getattr(self, key) < 0:
                raise ConfigError(f"data.{key} is {getattr(self, key)}; use a value >= 0")
        if self.max_label_values < 1:
            raise ConfigError(f"data.max_label_values is {self.max_label_values}; use a value >= 1")
        if 0 < self.patch < MIN_PATCH:
            raise ConfigError(f"data.patch is {self.patch}; use 0 (whole images) or tiles of at least {MIN_PATCH} px "
                              "(SAM sees each tile as one image)")
        for key in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"data.{key} is {getattr(self, key)}; use a value in [0, 1]")
        if self.val_fraction + self.test_fraction > 1.0:
            raise ConfigError(f"data.val_fraction + data.test_fraction is {self.val_fraction + self.test_fraction:g}; "
                              "use fractions that sum to at most 1")
        for key in ("val", "test"):
            if getattr(self, f"{key}_images") and not getattr(self, f"{key}_labels") and self.kind != "sa1b":
                raise ConfigError(f"data.{key}_images is set but data.{key}_labels is empty; set both or neither")
