"""Build the base model's pretraining data: a generalist image/label folder.

The shipped base model (``models/``, docs/base-model.md) stands where SAM's
SA-1B checkpoint stands in the paper: trained once on data other than the
downstream task's (the ISBI EM sections), then passed through by the pipeline.
This script writes that data as one ``image_label`` folder
(``OUT/image/<name>.png`` RGB + ``OUT/label/<name>.png``, instance ids packed
into RGB, 0 = background) from three offline sources:

- procedural scenes (``scene_*``): textured shapes with occlusion, region
  partitions with boundaries of random width, lighting gradients, blur, noise,
  colour or grey; seeded, unlimited;
- the tiny COCO train + val images (``coco_*``), non-crowd instances rasterised
  with pycocotools, longest side resized to 256 px;
- the DSB 2018 nuclei image (``dsb_*``), cut into four 256 px tiles.

Every file is a pure function of ``--seed`` and its index, so the same command
gives the same bytes.

    python scripts/make_base_data.py data/base --scenes 1200
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

log = logging.getLogger("make_base_data")
SIZE = 256


# -- procedural scenes ----------------------------------------------------------
def smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """size x size float in [0, 1]: Gaussian-filtered white noise, min-max scaled."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    lo, hi = field.min(), field.max()
    return (field - lo) / max(hi - lo, 1e-8)


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """size x size x 3 float in [0, 1]: a random colour modulated by one random pattern."""
    base = rng.uniform(0.05, 0.95, 3)
    if rng.random() < 0.35:
        base = np.full(3, rng.uniform(0.05, 0.95))  # grey
    kind = rng.integers(0, 5)
    yy, xx = np.mgrid[0:size, 0:size] / size
    if kind == 0:  # flat
        pattern = np.zeros((size, size))
    elif kind == 1:  # smooth noise
        pattern = smooth_noise(rng, size, rng.uniform(2, 12)) - 0.5
    elif kind == 2:  # stripes
        angle, freq = rng.uniform(0, np.pi), rng.uniform(8, 40)
        pattern = 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)))
    elif kind == 3:  # checker / dots
        freq = rng.uniform(6, 24)
        pattern = 0.5 * np.sign(np.sin(2 * np.pi * freq * xx) * np.sin(2 * np.pi * freq * yy))
    else:  # fine grain
        pattern = smooth_noise(rng, size, rng.uniform(0.5, 1.5)) - 0.5
    amp = rng.uniform(0.05, 0.45)
    gradient = rng.uniform(-0.25, 0.25) * (xx - 0.5) + rng.uniform(-0.25, 0.25) * (yy - 0.5)
    return np.clip(base[None, None, :] + (amp * pattern + gradient)[..., None], 0, 1)


def shape_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """size x size bool: one random shape (ellipse, polygon, blob, ring, bar) at a random place and scale."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = rng.uniform(0, size, 2)
    radius = size * np.exp(rng.uniform(np.log(0.04), np.log(0.3)))
    kind = rng.integers(0, 5)
    if kind == 0:  # rotated ellipse
        a, b, t = radius, radius * rng.uniform(0.3, 1.0), rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    if kind == 1:  # star-shaped polygon
        n = rng.integers(3, 9)
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = radius * rng.uniform(0.5, 1.0, n)
        poly = [(cx + r * np.cos(a), cy + r * np.sin(a)) for a, r in zip(angles, radii)]
        img = Image.new("1", (size, size))
        from PIL import ImageDraw

        ImageDraw.Draw(img).polygon(poly, fill=1)
        return np.array(img, bool)
    if kind == 2:  # blob: thresholded smooth noise inside a disk
        field = smooth_noise(rng, size, rng.uniform(4, 10))
        disk = np.hypot(yy - cy, xx - cx) / radius
        return (field - 0.6 * disk) > rng.uniform(0.0, 0.25)
    if kind == 3:  # ring
        d = np.hypot(yy - cy, xx - cx)
        return (d <= radius) & (d >= radius * rng.uniform(0.4, 0.8))
    t = rng.uniform(0, np.pi)  # bar
    u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
    v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
    return (np.abs(u) <= radius) & (np.abs(v) <= radius * rng.uniform(0.08, 0.3))


def objects_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(H x W x 3 float, H x W int ids): textured shapes painted back to front (later ones occlude)."""
    image = texture(rng, size)
    ids = np.zeros((size, size), np.int64)
    for k in range(1, rng.integers(3, 14) + 1):
        mask = shape_mask(rng, size)
        if mask.sum() < 30:
            continue
        tex = texture(rng, size)
        if rng.random() < 0.4:  # outlined object
            edge = mask & ~ndimage.binary_erosion(mask, iterations=int(rng.integers(1, 4)))
            tex[edge] = tex[edge] * rng.uniform(0.0, 0.5)
        if rng.random() < 0.3:  # shading towards the rim
            inside = ndimage.distance_transform_edt(mask)
            tex = tex * (0.6 + 0.4 * np.clip(inside / max(inside.max(), 1), 0, 1))[..., None]
        image[mask] = tex[mask]
        ids[mask] = k
    return image, ids


def partition_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(H x W x 3 float, H x W int ids): a random partition (warped Voronoi cells) with boundaries of random width."""
    n = int(rng.integers(6, 40))
    seeds = rng.uniform(0, size, (n, 2))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    warp = rng.uniform(0, 12)
    wy = yy + warp * (smooth_noise(rng, size, 10) - 0.5) * 2
    wx = xx + warp * (smooth_noise(rng, size, 10) - 0.5) * 2
    d = (wy[None] - seeds[:, 0, None, None]) ** 2 + (wx[None] - seeds[:, 1, None, None]) ** 2
    cells = d.argmin(0) + 1
    width = int(rng.integers(0, 5))
    boundary = np.zeros((size, size), bool)
    if width:
        boundary = ndimage.grey_dilation(cells, size=3) != ndimage.grey_erosion(cells, size=3)
        boundary = ndimage.binary_dilation(boundary, iterations=width - 1) if width > 1 else boundary
    image = np.zeros((size, size, 3))
    for k in range(1, n + 1):
        m = cells == k
        image[m] = texture(rng, size)[m]
    if width:
        image[boundary] = texture(rng, size)[boundary] * rng.uniform(0.0, 0.6)
    ids = np.where(boundary, 0, cells)
    return image, ids


def finish(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8: blur, gamma, noise and an optional grey conversion of a float scene."""
    if rng.random() < 0.6:
        image = ndimage.gaussian_filter(image, (rng.uniform(0.3, 1.5),) * 2 + (0,))
    image = np.clip(image, 0, 1) ** rng.uniform(0.6, 1.6)
    image = image + rng.normal(0, rng.uniform(0.0, 0.08), image.shape)
    if rng.random() < 0.3:
        image = np.repeat(image.mean(-1, keepdims=True), 3, -1)
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def scene(seed: int, index: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(H x W x 3 uint8 image, H x W int ids) of procedural scene ``index`` (pure function of seed, index)."""
    rng = np.random.default_rng([seed, index])
    image, ids = (partition_scene if rng.random() < 0.3 else objects_scene)(rng, size)
    return finish(rng, image), ids


# -- real images ---------------------------------------------------------------
def resize_pair(image: np.ndarray, ids: np.ndarray, longest: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize image (bilinear) and ids (nearest) so the longest side is ``longest`` px."""
    h, w = ids.shape
    scale = longest / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = np.array(Image.fromarray(image).resize(size, Image.BILINEAR))
    lab = np.array(Image.fromarray(ids.astype(np.int32)).resize(size, Image.NEAREST)).astype(np.int64)
    return img, lab


def coco_pairs(root: Path):
    """Yield (name, image, ids) of every tiny-COCO image: non-crowd instances, larger ones painted first."""
    for split in ("train2017", "val2017"):
        data = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        anns: dict[int, list] = {}
        for ann in data["annotations"]:
            if not ann.get("iscrowd", 0):
                anns.setdefault(ann["image_id"], []).append(ann)
        for info in sorted(data["images"], key=lambda i: i["id"]):
            h, w = info["height"], info["width"]
            image = np.array(Image.open(root / split / info["file_name"]).convert("RGB"))
            ids = np.zeros((h, w), np.int64)
            for k, ann in enumerate(sorted(anns.get(info["id"], []), key=lambda a: -a["area"]), start=1):
                seg = ann["segmentation"]
                rle = (
                    mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
                    if isinstance(seg, list)
                    else mask_utils.frPyObjects(seg, h, w)
                )
                ids[mask_utils.decode(rle).astype(bool)] = k
            image, ids = resize_pair(image, ids, SIZE)
            yield f"coco_{split}_{info['id']}", image, ids


def dsb_pairs(root: Path):
    """Yield (name, image, ids) of the four 256 px tiles of the DSB 2018 nuclei image."""
    image = tifffile.imread(root / "img2d.tif").astype(np.float64)
    lo, hi = np.percentile(image, [0.5, 99.5])
    image = np.round(np.clip((image - lo) / max(hi - lo, 1e-8), 0, 1) * 255).astype(np.uint8)
    ids = tifffile.imread(root / "mask2d.tif").astype(np.int64)
    for y in range(0, image.shape[0], SIZE):
        for x in range(0, image.shape[1], SIZE):
            tile = np.repeat(image[y : y + SIZE, x : x + SIZE, None], 3, -1)
            yield f"dsb_{y}_{x}", tile, ids[y : y + SIZE, x : x + SIZE]


def write_pair(out: Path, name: str, image: np.ndarray, ids: np.ndarray) -> None:
    """Write image PNG and RGB-packed instance-id PNG (ids renumbered 1..K)."""
    _, ids = np.unique(ids, return_inverse=True)
    ids = ids.reshape(image.shape[:2]) if ids.ndim == 1 else ids
    packed = np.stack([(ids >> 16) & 255, (ids >> 8) & 255, ids & 255], -1).astype(np.uint8)
    Image.fromarray(image).save(out / "image" / f"{name}.png", optimize=False)
    Image.fromarray(packed).save(out / "label" / f"{name}.png", optimize=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder (image/ and label/ are created)")
    parser.add_argument("--scenes", type=int, default=1200, help="procedural scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--shared", type=Path, default=Path("../shared/data"), help="folder holding tiny_coco/ and dsb2018_nuclei/"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for sub in ("image", "label"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    for i in range(args.scenes):
        write_pair(args.out, f"scene_{i:05d}", *scene(args.seed, i))
    n_coco = n_dsb = 0
    for name, image, ids in coco_pairs(args.shared / "tiny_coco"):
        write_pair(args.out, name, image, ids)
        n_coco += 1
    for name, image, ids in dsb_pairs(args.shared / "dsb2018_nuclei"):
        write_pair(args.out, name, image, ids)
        n_dsb += 1
    log.info("wrote %d scenes, %d COCO images, %d DSB tiles to %s", args.scenes, n_coco, n_dsb, args.out)


if __name__ == "__main__":
    main()
