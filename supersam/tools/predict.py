"""The ``predict`` command: apply an exported model to one image with box and/or point prompts.

Not a pipeline stage (it reads no params.yaml section and logs no MLflow run):
the step a user takes after ``supersam export`` and ``supersam eval``. The
model is :func:`supersam.model.checkpoint.load_model`'s standard ``Sam`` run through
``segment_anything.SamPredictor``, so the image is normalised with the model's
own pixel statistics (its ``config.json``) exactly as any SAM user's code would.

Prompts (original image pixels, x right, y down):

* each ``--box x0,y0,x1,y1`` is one object;
* the ``--point x,y[,label]`` items (label 1 = foreground, the default; 0 =
  background) together prompt one object, with the box when exactly one box
  is given.

Writes to ``out``: ``mask.png`` (one object) or ``mask_00.png``, ``mask_01.png``
... (one per box), 8-bit 0/255 at the image's own size; ``prediction.json``
(prompts, SAM's predicted IoU, area, the model's pixel statistics); with
``rle`` ``masks_rle.json`` (pycocotools RLE, counts as text); with ``overlay``
``overlay.png`` (:func:`supersam.runtime.overlays.save_overlay`, the image's size, scaled down past 4096 px).
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from supersam.artifacts import paths
from supersam.runtime.errors import ConfigError, DataError
from supersam.runtime.io import make_temp_dir, publish, write_json
from supersam.runtime.outdir import releases_claims

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictConfig:
    """What ``supersam predict`` was asked to do.

    Attributes:
        model: export folder (``model.pt`` + ``config.json``, ``supersam export``).
        image: image file (PNG, JPEG, TIFF; gray, RGB or 16-bit, converted as ``eval`` does).
        boxes: ``"x0,y0,x1,y1"`` texts, original pixels; each one object.
        points: ``"x,y"`` or ``"x,y,label"`` texts, original pixels; together one object.
        out: output folder; "" = ``runs/predict/<image stem>`` (:func:`supersam.artifacts.paths.user_predict_dir`).
        rle: also write ``masks_rle.json`` (pycocotools RLE).
        multimask: take the best (by SAM's predicted IoU) of SAM's 3 masks instead of its single mask.
        overlay: also write ``overlay.png``.
        device: ``auto``, ``cpu``, ``cuda``...
        everything: segment every object from a point grid instead of prompts
            (:mod:`supersam.measure.everything`); writes ``masks.json`` (COCO RLE records).
        points_per_side: the grid of ``everything`` (points_per_side x points_per_side).
        pred_iou_thresh, stability_score_thresh: everything mode's mask filters (SAM's 0.88 / 0.95).
    """

    model: str
    image: str
    boxes: tuple[str, ...] = field(default_factory=tuple)
    points: tuple[str, ...] = field(default_factory=tuple)
    out: str = ""
    rle: bool = False
    multimask: bool = False
    overlay: bool = True
    device: str = "auto"
    everything: bool = False
    points_per_side: int = 32
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95


def _numbers(text: str, option: str, form: str, counts: tuple[int, ...]) -> list[float]:
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in counts or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{option} {text!r} must be {form} (comma-separated numbers in image pixels)")
    return values


def parse_box(text: str, size: tuple[int, int]) -> np.ndarray:
    """``"x0,y0,x1,y1"`` -> float64 array of 4, checked against the image size (H, W).

    Raises:
        ConfigError: not 4 numbers, x1 < x0 or y1 < y0, or a corner outside 0..W x 0..H.
    """
    x0, y0, x1, y1 = _numbers(text, "--box", "x0,y0,x1,y1", (4,))
    h, w = size
    if x1 < x0 or y1 < y0:
        raise ConfigError(
            f"--box {text!r}: x0,y0 is the top-left and x1,y1 the bottom-right corner (x0 <= x1, y0 <= y1)"
        )
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise ConfigError(f"--box {text!r} lies outside the {w} x {h} image (x in 0..{w}, y in 0..{h})")
    return np.array([x0, y0, x1, y1], np.float64)


def parse_point(text: str, size: tuple[int, int]) -> tuple[float, float, int]:
    """``"x,y"`` or ``"x,y,label"`` -> (x, y, label), label 1 (foreground, default) or 0 (background).

    Raises:
        ConfigError: not 2 or 3 numbers, a label other than 0/1, or a point outside the image.
    """
    values = _numbers(text, "--point", "x,y or x,y,label", (2, 3))
    x, y = values[0], values[1]
    label = values[2] if len(values) == 3 else 1.0
    if label not in (0.0, 1.0):
        raise ConfigError(f"--point {text!r}: the label is 1 (foreground) or 0 (background)")
    h, w = size
    if not (0 <= x <= w and 0 <= y <= h):
        raise ConfigError(f"--point {text!r} lies outside the {w} x {h} image (x in 0..{w}, y in 0..{h})")
    return x, y, int(label)


def _read_image(path: Path) -> np.ndarray:
    from supersam.data.imaging import read_rgb

    if not path.is_file():
        raise DataError(f"image {path} not found; pass an existing image file")
    return read_rgb(path)


def _save_mask(path: Path, mask: np.ndarray) -> Path:
    from PIL import Image

    from supersam.runtime.io import _atomic

    return _atomic(path, lambda tmp: Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG"))


def _out_dir(cfg: PredictConfig, image_path: Path) -> Path:
    """The output folder (``--out`` or ``runs/predict/<image stem>``), checked before any work.

    Raises:
        ConfigError: a relative path leaving the working directory, a folder inside the
            pipeline's ``outputs/``, or one that cannot be written.
    """
    from supersam.runtime.io import clean_stale_temps
    from supersam.runtime.outdir import check_user_out, check_writable

    out = check_writable(
        check_user_out(cfg.out or paths.user_predict_dir(image_path.stem), "predict --out"), "predict --out"
    )
    clean_stale_temps(out)  # staging folders of a killed predict
    return out


def _write_staged(final: Path, write: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """``write(stage)`` into a staging folder inside ``final``, then publish every file it wrote
    (:func:`supersam.runtime.io.publish`): a failure before that keeps the previous prediction as it was.

    Returns:
        what ``write`` returned (the ``prediction.json`` dict).
    """
    stage = make_temp_dir(final / "prediction")
    try:
        report = write(stage)
        publish(stage, final, tuple(sorted(p.name for p in stage.iterdir())))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report


@releases_claims  # a failed predict removes the output folders it created and left empty
def predict(cfg: PredictConfig) -> dict[str, Any]:
    """Segment the prompted objects of one image with an exported model (``supersam predict``).

    Returns:
        the ``prediction.json`` dict: ``model``, ``image``, ``size`` [H, W],
        ``pixel_mean``/``pixel_std`` (the model's), ``multimask`` and
        ``objects``: per object ``mask`` (PNG file name), ``box`` ([x0, y0, x1, y1]
        or None), ``points`` ([[x, y, label], ...]), ``predicted_iou`` (SAM's
        estimate, 0..1) and ``area`` (mask pixels).

    Raises:
        ConfigError: no prompt, malformed or out-of-image prompts, points with several boxes.
        DataError: the image is missing or unreadable.
        CheckpointError: MODEL is not an export folder.
    """
    import torch
    from segment_anything import SamPredictor

    from supersam.model.checkpoint import load_model
    from supersam.model.sam import pixel_stats
    from supersam.runtime.device import resolve_device
    from supersam.runtime.overlays import save_overlay

    if cfg.everything:
        if cfg.boxes or cfg.points:
            raise ConfigError("--everything prompts the whole image with a point grid; leave out --box and --point")
        return predict_everything(cfg)
    if not cfg.boxes and not cfg.points:
        raise ConfigError(
            "give at least one prompt: --box x0,y0,x1,y1 (one object each) or --point x,y[,label], or --everything"
        )
    if len(cfg.boxes) > 1 and cfg.points:
        raise ConfigError("--point prompts one object, with at most one --box; run predict once per boxed object")
    image_path = Path(cfg.image)
    image = _read_image(image_path)
    size = (int(image.shape[0]), int(image.shape[1]))
    boxes = [parse_box(b, size) for b in cfg.boxes]
    points = [parse_point(p, size) for p in cfg.points]
    device = resolve_device(cfg.device)
    model = load_model(cfg.model, device)
    final = _out_dir(cfg, image_path)
    stats = pixel_stats(model)
    predictor = SamPredictor(model)
    with torch.inference_mode():
        predictor.set_image(image)
        prompts = [(b, points) for b in boxes] if boxes else [(None, points)]
        masks, results = [], []
        for box, pts in prompts:
            coords = np.array([[x, y] for x, y, _ in pts], np.float64) if pts else None
            labels = np.array([lab for _, _, lab in pts], np.int64) if pts else None
            out_masks, scores, _ = predictor.predict(
                point_coords=coords, point_labels=labels, box=box, multimask_output=cfg.multimask
            )
            best = int(np.argmax(scores)) if cfg.multimask else 0
            masks.append(out_masks[best])
            results.append(
                {
                    "box": None if box is None else [float(v) for v in box],
                    "points": [[x, y, lab] for x, y, lab in pts],
                    "predicted_iou": float(scores[best]),
                    "area": int(out_masks[best].sum()),
                }
            )

    def write(out: Path) -> dict[str, Any]:
        for k, (mask, result) in enumerate(zip(masks, results)):
            name = "mask.png" if len(masks) == 1 else f"mask_{k:02d}.png"
            _save_mask(out / name, mask)
            result["mask"] = name
        report = {
            "model": str(cfg.model),
            "image": str(image_path),
            "size": list(size),
            "pixel_mean": list(stats["pixel_mean"]),
            "pixel_std": list(stats["pixel_std"]),
            "multimask": cfg.multimask,
            "objects": results,
        }
        if cfg.rle:
            import pycocotools.mask as mask_utils

            rles = []
            for mask, result in zip(masks, results):
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                rles.append(
                    {
                        "size": [int(v) for v in rle["size"]],
                        "counts": rle["counts"].decode("ascii"),
                        "predicted_iou": result["predicted_iou"],
                        "mask": result["mask"],
                    }
                )
            write_json(out / "masks_rle.json", rles)
            report["rle"] = "masks_rle.json"
        if cfg.overlay:
            kind = "box" if boxes else "point"
            anchors = np.array([r["box"] for r in results]) if boxes else np.array([[x, y] for x, y, _ in points[:1]])
            save_overlay(
                image,
                np.stack(masks),
                anchors,
                kind,
                out / "overlay.png",
                ious=[r["predicted_iou"] for r in results],
                title="prediction (predicted IoU beside each prompt)",
            )
            report["overlay"] = "overlay.png"
        write_json(out / "prediction.json", report)
        return report

    report = _write_staged(final, write)
    out = final
    for result in results:
        log.info("%s: %d px, predicted IoU %.3f", result["mask"], result["area"], result["predicted_iou"])
    log.info("wrote %s", out)
    return report


def predict_everything(cfg: PredictConfig) -> dict[str, Any]:
    """Segment every object of one image from a point grid (``supersam predict --everything``).

    Writes ``masks.json`` (the generator's records: COCO RLE ``segmentation`` at the image's size,
    counts as text; ``area`` px, ``bbox`` x,y,w,h px, ``predicted_iou``, ``stability_score``,
    ``point_coords``), ``overlay.png`` (every mask, its grid point marked) and ``prediction.json``
    (``n_masks``, ``points_per_side``, ``n_points``, ``n_batches``, ``seconds``, ``encoder_seconds``,
    ``decoder_seconds``; seconds of wall time on ``device``).

    Raises:
        ConfigError: a bad grid. DataError: a missing or unreadable image, or one smaller than the grid.
        CheckpointError: MODEL is not an export folder.
    """
    from supersam.measure.everything import EverythingConfig, generate
    from supersam.model.checkpoint import load_model
    from supersam.model.sam import pixel_stats
    from supersam.runtime.device import resolve_device
    from supersam.runtime.overlays import save_overlay

    settings = EverythingConfig(
        points_per_side=cfg.points_per_side,
        pred_iou_thresh=cfg.pred_iou_thresh,
        stability_score_thresh=cfg.stability_score_thresh,
    )
    settings.validate()
    image_path = Path(cfg.image)
    image = _read_image(image_path)
    size = (int(image.shape[0]), int(image.shape[1]))
    settings.check_image(size, f"image {image_path}")
    model = load_model(cfg.model, resolve_device(cfg.device))
    final = _out_dir(cfg, image_path)
    result = generate(model, image, settings)

    def write(out: Path) -> dict[str, Any]:
        write_json(out / "masks.json", result.masks)
        stats = pixel_stats(model)
        report = {
            "model": str(cfg.model),
            "image": str(image_path),
            "size": list(size),
            "pixel_mean": list(stats["pixel_mean"]),
            "pixel_std": list(stats["pixel_std"]),
            "everything": True,
            "points_per_side": settings.points_per_side,
            "n_points": result.n_points,
            "pred_iou_thresh": settings.pred_iou_thresh,
            "stability_score_thresh": settings.stability_score_thresh,
            "n_batches": result.n_batches,
            "n_masks": len(result.masks),
            "masks": "masks.json",
            "seconds": round(result.seconds, 4),
            "encoder_seconds": round(result.encoder_seconds, 4),
            "decoder_seconds": round(result.decoder_seconds, 4),
        }
        if cfg.overlay:
            import pycocotools.mask as mask_utils

            if result.masks:
                masks = np.moveaxis(mask_utils.decode([m["segmentation"] for m in result.masks]), -1, 0).astype(bool)
                points = np.array([m["point_coords"][0] for m in result.masks], np.float64)
            else:
                masks, points = np.zeros((0, *size), bool), np.zeros((0, 2))
            save_overlay(
                image,
                masks,
                points,
                "point",
                out / "overlay.png",
                title=f"everything: {len(result.masks)} masks from a {settings.points_per_side}^2 point grid",
            )
            report["overlay"] = "overlay.png"
        write_json(out / "prediction.json", report)
        return report

    report = _write_staged(final, write)
    out = final
    log.info(
        "%d masks from %d point prompts in %.2f s (encoder %.2f s, decoder %d passes %.2f s); wrote %s",
        len(result.masks),
        result.n_points,
        result.seconds,
        result.encoder_seconds,
        result.n_batches,
        result.decoder_seconds,
        out,
    )
    return report
