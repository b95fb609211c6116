"""What every reader shares: the index entry and the skip bookkeeping.

A reader builds a list of :class:`Item` once (reading labels, never keeping
pixels) and turns one item into a :class:`~supersam.data.types.Sample` on
demand. Everything dropped on the way is counted in a :class:`SkipLog` and
reported in one warning line per reason, naming the files.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass, field

from supersam.data.imaging import Tile

logger = logging.getLogger(__name__)

MAX_NAMED = 8  # files named per skip line before "..."


@dataclass(frozen=True)
class Item:
    """One image (or tile of one) in a reader's index.

    Attributes:
        key: reader-specific locator (e.g. COCO image id, (pair, page)).
        tile: (y0, x0, y1, x1) crop in px, end exclusive; None = whole image.
        name: unique readable name (file name, ``:p<page>``, ``@y,x`` tile).
        group: source image; all tiles of one source land in the same split.
        n_objects: usable objects (area >= min_area) found while indexing.
    """

    key: Hashable
    tile: Tile | None
    name: str
    group: str
    n_objects: int


@dataclass
class SkipLog:
    """Names of skipped files per reason, reported as one warning line each."""

    reasons: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, name: str) -> None:
        """Count ``name`` as skipped because of ``reason``."""
        self.reasons.setdefault(reason, []).append(name)

    @property
    def total(self) -> int:
        """Number of skipped entries over all reasons."""
        return sum(len(v) for v in self.reasons.values())

    def report(self, where: str, log: logging.Logger = logger) -> None:
        """Log ``"<where>: skipped 3 images <reason>: a.png, b.png, c.png"`` per reason."""
        for reason, names in self.reasons.items():
            shown = ", ".join(names[:MAX_NAMED]) + (", ..." if len(names) > MAX_NAMED else "")
            noun = "image" if len(names) == 1 else "images"
            log.warning("%s: skipped %d %s %s: %s", where, len(names), noun, reason, shown)
