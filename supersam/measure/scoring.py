"""Scoring (core): mIoU of a SAM on prompted objects, and a repeatable scorer of supernet subnets.

Used by every stage that measures a model (rank-layers, the training probe,
search, thresholds, eval); the ``eval`` stage itself is :mod:`supersam.stages.eval`.

Both report ``miou`` (single mask, ``multimask_output=False``),
``miou_oracle`` (best of SAM's 3 multimask outputs per object, the reference
code's number) and ``fg_fraction`` (share of image pixels the single mask
predicts foreground, mean over objects: near 1 for a collapsed model).
Inputs are prepared once (images and prompts drawn under a seed), so the same
model gives the same numbers on every call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from supersam.data.types import ModelInput
from supersam.measure.inference import decode_all, embed_prompts, encode_images
from supersam.measure.metrics import MiouMeter, object_foreground_fractions
from supersam.runtime.device import autocast

log = logging.getLogger(__name__)

PredictionHook = Callable[[ModelInput, torch.Tensor], None]
DecodedHook = Callable[[str | None, ModelInput, torch.Tensor], None]
STABILITY_OFFSET = 1.0
"""Logit offset of SAM's stability score (``SamAutomaticMaskGenerator`` default)."""


def _batches(items: Iterable, size: int):
    """Consecutive lists of ``size`` items, read one at a time (a lazy split stays lazy)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _check_aligned(inputs: Sequence[ModelInput], others: Mapping[str, Sequence[ModelInput]]) -> None:
    for key, other in others.items():
        if len(other) != len(inputs):
            raise ValueError(f"run_eval: the {key!r} inputs are not the same images in the same order as `inputs`")
        if hasattr(inputs, "names") and hasattr(other, "names"):  # lazy splits: compare names, prepare nothing
            same = inputs.names == other.names
        else:
            same = all(a.name == b.name and a.original_size == b.original_size for a, b in zip(inputs, other))
        if not same:
            raise ValueError(f"run_eval: the {key!r} inputs are not the same images in the same order as `inputs`")


class _KindMeter:
    """mIoU, oracle mIoU and predicted foreground fraction of one prompt set (and, on request, per object)."""

    def __init__(self, per_object: bool = False) -> None:
        self.meter = MiouMeter()
        self.fg: list[torch.Tensor] = []
        self.seconds = 0.0
        self.per_object = per_object
        self.predicted: list[torch.Tensor] = []
        self.stability: list[torch.Tensor] = []

    def add(self, logits: torch.Tensor, inp: ModelInput, iou_pred: torch.Tensor) -> torch.Tensor:
        single = logits[:, :1]
        self.meter.add_single(single, inp.gt_masks, inp.ignore)
        self.meter.add_multimask(logits[:, 1:], inp.gt_masks, inp.ignore)
        self.fg.append(object_foreground_fractions(single[:, 0] > 0).cpu())
        if self.per_object:
            from segment_anything.utils.amg import calculate_stability_score

            self.predicted.append(iou_pred[:, 0].double().cpu())
            self.stability.append(calculate_stability_score(single[:, 0], 0.0, STABILITY_OFFSET).double().cpu())
        return single

    def result(self) -> dict[str, Any]:
        fg = float(torch.cat(self.fg).mean()) if self.fg else float("nan")
        out: dict[str, Any] = {**self.meter.result(), "fg_fraction": fg, "n_objects": self.meter.n_objects}
        if self.per_object:

            def cat(parts):
                return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)

            out["objects"] = {
                "iou": cat(self.meter.single),
                "iou_oracle": cat(self.meter.oracle),
                "predicted_iou": cat(self.predicted),
                "stability_score": cat(self.stability),
            }
        return out


def run_eval(
    model: nn.Module,
    inputs: Sequence[ModelInput],
    device: torch.device,
    amp: bool = False,
    batch_size: int = 1,
    prompt_cache: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    on_prediction: PredictionHook | None = None,
    advance: Callable[[int], None] | None = None,
    also: Mapping[str, Sequence[ModelInput]] | None = None,
    per_object: bool = False,
    on_decoded: DecodedHook | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on prepared ``inputs`` (already on ``device`` or moved here).

    Args:
        model: a Sam-shaped module (plain, elastic ``supernet.sam`` or exported).
        inputs: prepared images with N prompted objects each.
        device: where to run; inputs are moved when not there.
        amp: bf16 autocast (CPU and CUDA).
        batch_size: images per image-encoder forward.
        prompt_cache: precomputed (sparse, dense) prompt embeddings per input
            (valid while the prompt encoder is frozen).
        on_prediction: called with (input, single-mask logits N x 1 x H x W).
        advance: progress callback, called with the number of images done.
        also: other prompt sets on the same images (same order, e.g. the same
            objects with point instead of box prompts), decoded from the same
            image embeddings, so their images are encoded only once.
        per_object: also return every object's numbers (``objects`` below).
        on_decoded: called with (key, input, single-mask logits N x 1 x H x W)
            for every prompt set: key None for ``inputs``, the ``also`` key otherwise.

    Returns:
        ``miou``, ``miou_oracle``, ``fg_fraction`` (share 0..1 of image pixels
        the single mask predicts foreground, mean over objects), ``n_images``,
        ``n_objects``, ``seconds``, ``images_per_second`` and ``encoder_seconds``
        (time inside the image encoder). ``seconds`` leaves out the decoding of
        ``also``. With ``also``: ``also`` maps each key to its own ``miou``,
        ``miou_oracle``, ``fg_fraction``, ``n_objects`` and ``seconds`` (its
        decoding time, s). With ``per_object``: ``objects`` (and
        ``also[key]["objects"]``) maps ``iou`` (single mask; its mean is
        ``miou``), ``iou_oracle`` (best of 3), ``predicted_iou`` (SAM's own
        estimate for the single mask) and ``stability_score`` (IoU of the mask
        at logit thresholds +1 and -1, SAM's automatic mask generator's
        score) to float64 tensors of one value per object, in input order.

    Raises:
        ValueError: an ``also`` set is not the same images in the same order.
    """
    also = dict(also or {})
    _check_aligned(inputs, also)
    was_training = model.training
    model.eval()
    main = _KindMeter(per_object)
    extra = {key: _KindMeter(per_object) for key in also}
    start, encoder_seconds = time.perf_counter(), 0.0
    index = 0
    with torch.inference_mode(), autocast(device, amp):
        for batch in _batches(inputs, batch_size):
            batch = [inp if inp.image.device == device else inp.to(device) for inp in batch]
            t0 = time.perf_counter()
            embeddings = encode_images(model, batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            encoder_seconds += time.perf_counter() - t0
            for j, inp in enumerate(batch):
                prompts = prompt_cache[index] if prompt_cache is not None else embed_prompts(model, inp)
                emb = embeddings[j : j + 1]
                logits, iou_pred = decode_all(model, emb, prompts, inp)  # N x 4 x H x W, N x 4
                single = main.add(logits, inp, iou_pred)
                if on_prediction is not None:
                    on_prediction(inp, single)
                if on_decoded is not None:
                    on_decoded(None, inp, single)
                for key, meter in extra.items():
                    t1 = time.perf_counter()
                    other = also[key][index]
                    other = other if other.gt_masks.device == device else other.to(device)
                    other_logits, other_iou = decode_all(model, emb, embed_prompts(model, other), other)
                    other_single = meter.add(other_logits, other, other_iou)
                    meter.seconds += time.perf_counter() - t1
                    if on_decoded is not None:
                        on_decoded(key, other, other_single)
                index += 1
            if advance is not None:
                advance(len(batch))
    model.train(was_training)
    seconds = time.perf_counter() - start - sum(m.seconds for m in extra.values())
    out: dict[str, Any] = {
        **main.result(),
        "n_images": len(inputs),
        "seconds": seconds,
        "images_per_second": len(inputs) / seconds if seconds > 0 else float("nan"),
        "encoder_seconds": encoder_seconds,
    }
    if also:
        out["also"] = {key: {**m.result(), "seconds": m.seconds} for key, m in extra.items()}
    return out


class SubnetEvaluator:
    """Evaluates subnets of a supernet on a fixed validation sample (paper Sec. III search).

    Inputs are moved to the device once; with ``cache_prompts`` the prompt
    embeddings are computed once (the prompt encoder is frozen in SuperSAM), so
    each call only runs the subnet's image encoder and the mask decoder.

    Args:
        supernet: a :class:`supersam.model.elastic.SuperSam` (or any object with ``sam``,
            ``active_subnet``, ``set_active_subnet`` and ``params(subnet)``).
        inputs: the fixed validation sample (from ``prepare_split`` under a seed).
        device: torch device (CPU or CUDA).
        amp: bf16 autocast.
        batch_size: images per image-encoder forward.
        cache_prompts: reuse prompt embeddings across calls (only valid while
            the prompt encoder is not being trained).
    """

    def __init__(
        self,
        supernet: nn.Module,
        inputs: Sequence[ModelInput],
        device: torch.device,
        amp: bool = False,
        batch_size: int = 1,
        cache_prompts: bool = True,
    ) -> None:
        self.supernet = supernet
        self.device = device
        self.amp = amp
        self.batch_size = batch_size
        self.inputs = [inp.to(device) for inp in inputs]
        self._prompts = None
        if cache_prompts:
            sam = supernet.sam
            with torch.inference_mode(), autocast(device, amp):
                self._prompts = [embed_prompts(sam, inp) for inp in self.inputs]

    def params(self, subnet) -> int:
        """Parameters of all of SAM for ``subnet`` (analytic, paper's counting): ``supernet.params``."""
        return self.supernet.params(subnet)

    def evaluate(self, subnet) -> dict[str, float]:
        """mIoU of ``subnet`` (a :class:`supersam.model.space.SubnetConfig`) on the fixed sample.

        Returns:
            ``miou``, ``miou_oracle``, ``fg_fraction`` (0..1, mean over objects),
            ``params``, ``n_objects``, ``seconds``.
            The supernet's previous active subnet is restored.
        """
        previous = self.supernet.active_subnet
        self.supernet.set_active_subnet(subnet)
        try:
            result = run_eval(
                self.supernet.sam,
                self.inputs,
                self.device,
                self.amp,
                self.batch_size,
                prompt_cache=self._prompts,
            )
        finally:
            self.supernet.set_active_subnet(previous)
        out = {k: result[k] for k in ("miou", "miou_oracle", "fg_fraction", "n_objects", "seconds")}
        out["params"] = self.params(subnet)
        return out
