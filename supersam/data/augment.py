"""Training-time augmentation of a :class:`Sample` (image and masks together).

Geometric: a random multiple of 90 degrees and a random horizontal flip (the
8 symmetries of the square; EM sections have no preferred orientation).
Photometric: random contrast (x 0.8..1.2) and brightness (+-20 grey levels),
the same for the three channels. Everything is drawn from the ``rng`` passed
in, so a (seed, iteration, slot) generator gives the same batch after resume.
"""

from __future__ import annotations

import numpy as np

from supersam.data.types import Sample


def augment_sample(sample: Sample, rng: np.random.Generator, photometric: bool = True) -> Sample:
    """A randomly rotated/flipped (and contrast/brightness-jittered) copy of ``sample``.

    Args:
        sample: H x W x 3 uint8 image, N x H x W bool masks.
        rng: source of every random choice.
        photometric: also jitter contrast and brightness.

    Returns:
        a new Sample (H x W swapped for odd rotations), masks still N x H' x W' bool.
    """
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    image, masks = np.rot90(sample.image, k, axes=(0, 1)), np.rot90(sample.masks, k, axes=(1, 2))
    ignore = None if sample.ignore is None else np.rot90(sample.ignore, k, axes=(0, 1))
    if flip:
        image, masks = image[:, ::-1], masks[:, :, ::-1]
        ignore = None if ignore is None else ignore[:, ::-1]
    if photometric:
        contrast, brightness = rng.uniform(0.8, 1.2), rng.uniform(-20.0, 20.0)
        mean = float(image.mean())
        image = np.clip((image.astype(np.float32) - mean) * contrast + mean + brightness, 0, 255).astype(np.uint8)
    return Sample(np.ascontiguousarray(image), np.ascontiguousarray(masks), sample.name, ids=sample.ids,
                  categories=sample.categories, ignore=None if ignore is None else np.ascontiguousarray(ignore),
                  source=sample.source, image_id=sample.image_id)
