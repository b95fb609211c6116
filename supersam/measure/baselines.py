"""Trivial baselines that every reported mIoU is compared with, and a collapse check.

docs/method.md, "mIoU and trivial baselines".

A model that predicts the whole image as foreground, or just fills the prompt
box, scores a non-zero mIoU. To make such a collapsed model visible, every
stage reports these predictors' mIoU on the very same objects:

* ``all_foreground``: every pixel of the image is foreground.
* ``box_fill`` (box prompts): the prompt box filled, inclusive pixel bounds,
  clipped to the image.
* ``disk`` (point prompts): a disk around the prompt point whose radius is the
  median equivalent radius sqrt(area / pi) of the evaluated objects.

IoUs come from :func:`supersam.measure.metrics.mask_iou` (IoU of two empty masks is 1)
against ``gt_masks`` at the original image size, void pixels (``inp.ignore``)
excluded as for the model. Prompts live in the model's
input frame (``ResizeLongestSide``), so they are mapped back to original pixels
first (:func:`input_to_original`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from supersam.data.types import ModelInput
from supersam.measure.metrics import mask_iou

log = logging.getLogger(__name__)

FG_LIMIT = 0.9
"""A model predicting more than this share of the image as foreground (mean over objects) is collapsed."""
MARGIN = 0.02
"""A model whose mIoU is not more than this above the best trivial baseline is collapsed."""
LABELS = {"all_foreground": "all-foreground", "box_fill": "box fill", "disk": "disk", "untrained": "untrained"}
"""Readable names of the baselines for log lines."""
PROMPT_BASELINE = {"box": "box_fill", "point": "disk"}
"""The prompt-shaped trivial baseline of each prompt kind."""


def prompt_kind(inputs: Sequence[ModelInput]) -> str:
    """``box`` or ``point``: the prompt kind shared by all ``inputs``.

    Raises:
        ValueError: no inputs, an input without prompts, or a mix of kinds.
    """
    kinds = {"box" if inp.boxes is not None else "point" if inp.point_coords is not None else None for inp in inputs}
    if len(kinds) != 1 or None in kinds:
        raise ValueError(
            f"trivial baselines need inputs of one prompt kind (box or point), got {sorted(map(str, kinds))}"
        )
    return kinds.pop()


def input_to_original(inp: ModelInput) -> tuple[float, float]:
    """(x, y) factors mapping input-frame coordinates back to original pixels: (W / w, H / h).

    ``original_size`` is (H, W), ``input_size`` is (h, w) after
    ``ResizeLongestSide``; its ``apply_coords`` multiplies x by w / W and y by
    h / H (both ~ S / max(H, W), up to rounding of h and w), so this is its
    exact inverse.
    """
    (big_h, big_w), (h, w) = inp.original_size, inp.input_size
    return big_w / w, big_h / h


def boxes_in_original(inp: ModelInput) -> torch.Tensor:
    """N x 4 float64 (x0, y0, x1, y1) prompt boxes in original pixels (boxes required)."""
    sx, sy = input_to_original(inp)
    scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float64, device=inp.boxes.device)
    return inp.boxes.double() * scale


def points_in_original(inp: ModelInput) -> torch.Tensor:
    """N x 2 float64 (x, y) prompt points in original pixels (the first point of each object)."""
    sx, sy = input_to_original(inp)
    scale = torch.tensor([sx, sy], dtype=torch.float64, device=inp.point_coords.device)
    return inp.point_coords[:, 0].double() * scale


def all_foreground_masks(inp: ModelInput) -> torch.Tensor:
    """N x H x W bool, all True: every pixel of the image predicted foreground."""
    return torch.ones_like(inp.gt_masks, dtype=torch.bool)


def box_fill_masks(inp: ModelInput) -> torch.Tensor:
    """N x H x W bool: each prompt box filled.

    The box is mapped to original pixels, its corners rounded to the nearest
    pixel and clipped to the image; pixel (x, y) is inside when x0 <= x <= x1
    and y0 <= y <= y1 (inclusive bounds, as the prompt boxes are drawn).
    """
    n, big_h, big_w = inp.gt_masks.shape
    boxes = boxes_in_original(inp).round()
    x0, x1 = boxes[:, 0].clamp(0, big_w - 1), boxes[:, 2].clamp(0, big_w - 1)
    y0, y1 = boxes[:, 1].clamp(0, big_h - 1), boxes[:, 3].clamp(0, big_h - 1)
    xs = torch.arange(big_w, device=boxes.device, dtype=torch.float64)
    ys = torch.arange(big_h, device=boxes.device, dtype=torch.float64)
    cols = (xs[None] >= x0[:, None]) & (xs[None] <= x1[:, None])  # N x W
    rows = (ys[None] >= y0[:, None]) & (ys[None] <= y1[:, None])  # N x H
    return rows[:, :, None] & cols[:, None, :]


def disk_masks(inp: ModelInput, radius: float) -> torch.Tensor:
    """N x H x W bool: pixels (x, y) with (x - cx)^2 + (y - cy)^2 <= radius^2.

    Args:
        inp: an input with point prompts; (cx, cy) is each point in original pixels.
        radius: disk radius in original pixels.
    """
    n, big_h, big_w = inp.gt_masks.shape
    centres = points_in_original(inp)  # N x 2
    xs = torch.arange(big_w, device=centres.device, dtype=torch.float64)
    ys = torch.arange(big_h, device=centres.device, dtype=torch.float64)
    dx2 = (xs[None] - centres[:, :1]) ** 2  # N x W
    dy2 = (ys[None] - centres[:, 1:]) ** 2  # N x H
    return dy2[:, :, None] + dx2[:, None, :] <= radius**2


def equivalent_radii(gt_masks: torch.Tensor) -> torch.Tensor:
    """N float64: sqrt(area / pi) in pixels of each N x H x W mask (radius of the disk of equal area)."""
    return torch.sqrt(gt_masks.flatten(1).sum(1).double() / math.pi)


def median_equivalent_radius(inputs: Sequence[ModelInput]) -> float:
    """Median over all objects of ``inputs`` of sqrt(area / pi), in original pixels.

    Mean of the two middle values for an even count; NaN without objects.
    """
    radii = [equivalent_radii(inp.gt_masks).cpu() for inp in inputs]
    if not radii or sum(r.numel() for r in radii) == 0:
        return float("nan")
    return float(np.median(torch.cat(radii).numpy()))


def baseline_ious(inputs: Sequence[ModelInput]) -> dict[str, torch.Tensor]:
    """Per-object IoUs of the trivial baselines on ``inputs`` (one prompt kind).

    Args:
        inputs: prepared images; gt_masks N x H x W bool at the original size,
            prompts (boxes N x 4 or point_coords N x 1 x 2) in the input frame.

    Returns:
        ``all_foreground`` plus ``box_fill`` (box prompts) or ``disk`` (point
        prompts): float64 tensors of length (total objects), in input order, on CPU.
        The disk radius is the median equivalent radius of these same objects
        (:func:`median_equivalent_radius`), which gives that baseline the benefit
        of knowing the objects' typical size.

    Raises:
        ValueError: inputs of mixed or missing prompt kinds.
    """
    if not inputs:
        return {"all_foreground": torch.zeros(0, dtype=torch.float64)}
    kind = prompt_kind(inputs)
    radius = median_equivalent_radius(inputs) if kind == "point" else 0.0
    out: dict[str, list[torch.Tensor]] = {"all_foreground": [], PROMPT_BASELINE[kind]: []}
    for inp in inputs:
        out["all_foreground"].append(mask_iou(all_foreground_masks(inp), inp.gt_masks, inp.ignore).cpu())
        shaped = box_fill_masks(inp) if kind == "box" else disk_masks(inp, radius)
        out[PROMPT_BASELINE[kind]].append(mask_iou(shaped, inp.gt_masks, inp.ignore).cpu())
    return {name: torch.cat(parts) for name, parts in out.items()}


def trivial_baselines(inputs: Sequence[ModelInput]) -> dict[str, float]:
    """mIoU (mean over objects, in [0, 1]) of the trivial baselines on ``inputs``.

    Returns:
        ``{"all_foreground": .., "box_fill": ..}`` for box prompts or
        ``{"all_foreground": .., "disk": ..}`` for point prompts (see
        :func:`baseline_ious`; the disk knows the objects' median size);
        ``{"all_foreground": nan}`` for no inputs.

    Raises:
        ValueError: inputs of mixed or missing prompt kinds.
    """
    return {name: float(ious.mean()) if ious.numel() else float("nan") for name, ious in baseline_ious(inputs).items()}


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(float(value))


def collapse_check(
    miou: float,
    fg_fraction: float,
    baselines: Mapping[str, float],
    fg_limit: float = FG_LIMIT,
    margin: float = MARGIN,
) -> tuple[bool, str]:
    """Whether a model looks collapsed, and why.

    Collapsed when it predicts more than ``fg_limit`` of the image as foreground
    (mean over objects) or its mIoU is below, or within ``margin`` of, the best
    trivial baseline. NaN/None values skip their criterion.

    Args:
        miou: the model's single-mask mIoU, in [0, 1].
        fg_fraction: mean share of image pixels it predicts foreground, in [0, 1].
        baselines: trivial baseline mIoUs (e.g. :func:`trivial_baselines`).

    Returns:
        (collapsed, reason): the reason is a readable clause for the log.
    """
    reasons = []
    if _finite(fg_fraction) and fg_fraction > fg_limit:
        reasons.append(f"it predicts {fg_fraction:.0%} of the image as foreground (limit {fg_limit:.0%})")
    known = {k: float(v) for k, v in baselines.items() if _finite(v)}
    best_name, best = max(known.items(), key=lambda kv: kv[1]) if known else (None, float("nan"))
    label = LABELS.get(best_name, best_name)
    if known and _finite(miou) and miou <= best + margin:
        reasons.append(
            f"its mIoU {miou:.3f} is not more than {margin:g} above the best trivial baseline ({label} {best:.3f})"
        )
    if reasons:
        return True, "; ".join(reasons)
    if not _finite(miou) or not known:
        return False, "not checked (no mIoU or no baseline)"
    fg = f"{fg_fraction:.0%}" if _finite(fg_fraction) else "unknown share"
    return False, (
        f"mIoU {miou:.3f} is {miou - best:.3f} above the best trivial baseline ({label} {best:.3f}); "
        f"{fg} of the image predicted foreground"
    )


def describe(baselines: Mapping[str, float]) -> str:
    """``all-foreground 0.03, box fill 0.60``: baselines for a log line (2 decimals)."""
    return ", ".join(f"{LABELS.get(k, k)} {v:.2f}" for k, v in baselines.items())


@contextlib.contextmanager
def _quiet_random_init():
    """Drop build_sam's "no checkpoint: RANDOM initialisation" warning (the untrained baseline is meant to be)."""
    logger = logging.getLogger("supersam.model.sam")

    def keep(record: logging.LogRecord) -> bool:
        return "RANDOM initialisation" not in record.getMessage()

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def untrained_mious(
    model_type: str,
    img_size: int,
    seed: int,
    inputs_by_kind: dict[str, list],
    device: torch.device,
    amp: bool = False,
    batch_size: int = 1,
    advance=None,
) -> dict[str, float]:
    """Single-mask mIoU of an untrained (randomly initialised) SAM on the same inputs.

    The model is ``build_sam(model_type, img_size, None, seed=seed)``: the full
    architecture of ``model_type`` (for an exported or supernet subnet too, not
    the subnet's pruned shape), random weights drawn under ``seed`` (params
    ``model.seed``, the random start every pipeline stage shares).

    Args:
        inputs_by_kind: prompt kind -> prepared inputs (the same images in the
            same order for every kind; encoded once).

    Returns:
        prompt kind -> mIoU in [0, 1].
    """
    from supersam.measure.scoring import run_eval
    from supersam.model.sam import build_sam

    with _quiet_random_init():
        model = build_sam(model_type, img_size, None, seed=seed).model.to(device)
    kinds = list(inputs_by_kind)
    result = run_eval(
        model,
        inputs_by_kind[kinds[0]],
        device,
        amp,
        batch_size,
        advance=advance,
        also={k: inputs_by_kind[k] for k in kinds[1:]},
    )
    del model
    return {kinds[0]: result["miou"], **{k: r["miou"] for k, r in result.get("also", {}).items()}}


def kind_metrics(kind: str, result: dict, baselines: dict[str, float], untrained: float | None) -> dict:
    """The ``<key>_<kind>`` entries of one prompt kind, and logs its summary (and a collapse warning).

    Args:
        result: ``run_eval`` result of this kind (``miou``, ``miou_oracle``, ``fg_fraction``).
        baselines: :func:`trivial_baselines` of this kind's inputs.
        untrained: mIoU of the untrained model on the same inputs (None = not measured).

    Returns:
        ``miou_<kind>``, ``miou_oracle_<kind>``, ``fg_fraction_<kind>``,
        ``baseline_all_foreground_<kind>``, ``baseline_box_fill_box`` or
        ``baseline_disk_point``, ``baseline_untrained_<kind>``, ``collapsed_<kind>``.
    """
    collapsed, reason = collapse_check(result["miou"], result["fg_fraction"], baselines)
    out = {
        f"miou_{kind}": result["miou"],
        f"miou_oracle_{kind}": result["miou_oracle"],
        f"fg_fraction_{kind}": result["fg_fraction"],
    }
    out.update({f"baseline_{name}_{kind}": value for name, value in baselines.items()})
    out[f"baseline_untrained_{kind}"] = untrained
    out[f"collapsed_{kind}"] = collapsed
    shown = ", ".join(f"{LABELS[k]} {v:.2f}" for k, v in {**baselines, "untrained": untrained}.items() if v is not None)
    log.info("%s prompts: mIoU %.2f (%s)", kind, result["miou"], shown)
    if collapsed:
        log.warning("%s prompts: the model looks collapsed: %s", kind, reason)
    return out
