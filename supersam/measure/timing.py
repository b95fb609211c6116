"""Cost measures of a SAM or a subnet on the current device: MACs, latency, the device key.

The library half of ``supersam bench`` (:mod:`supersam.tools.bench`), also used by the
search's latency table (:mod:`supersam.measure.latency`):

- **MACs** (multiply-accumulates) counted by ``torch.utils.flop_counter.FlopCounterMode``
  while the model runs: MACs = FLOPs / 2 (the counter counts a multiply and an add as
  two FLOPs; convolutions, linear layers, matmuls and attention, not norms or
  activations). Encoder: one B=1 image at the model's input size; decoder: one box
  prompt (2 sparse tokens) through the prompt encoder and the mask decoder (SAM's 4
  mask outputs).
- **Latency** in milliseconds, wall clock, after ``warmup`` untimed runs, over
  ``repeats`` timed runs (median and 90th percentile), under ``torch.no_grad`` in
  float32, with the number of torch intra-op threads recorded (CUDA is synchronised
  around every run).
"""

from __future__ import annotations

import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

# ---------------------------------------------------------------- inputs


def example_image(sam: nn.Module) -> torch.Tensor:
    """A normalised-range random image 1 x 3 x S x S on the model's device (values do not change the cost)."""
    param = next(sam.parameters())
    size = sam.image_encoder.img_size
    gen = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, size, size, generator=gen).to(param.device, param.dtype)


def example_box(sam: nn.Module) -> torch.Tensor:
    """One box prompt 1 x 4 (x0, y0, x1, y1 in input px): the middle half of the image."""
    size = sam.image_encoder.img_size
    return torch.tensor([[size / 4, size / 4, 3 * size / 4, 3 * size / 4]], device=next(sam.parameters()).device)


def run_decoder(sam: nn.Module, embedding: torch.Tensor, box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt encoder + mask decoder for one box: low-res logits 1 x 4 x S/4 x S/4 and IoU 1 x 4."""
    sparse, dense = sam.prompt_encoder(points=None, boxes=box, masks=None)
    return sam.mask_decoder.predict_masks(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
    )


# ---------------------------------------------------------------- MACs


def count_macs(fn: Callable[[], Any]) -> int:
    """MACs of one call of ``fn``, counted by ``FlopCounterMode`` (MACs = FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    return int(counter.get_total_flops()) // 2


def model_macs(sam: nn.Module) -> dict[str, int]:
    """MACs of a ``segment_anything`` Sam at its input size, counted (not a hand count).

    Returns:
        ``encoder_macs`` (one image, B=1), ``decoder_macs`` (one box prompt through the
        prompt encoder and the mask decoder) and ``macs`` (their sum).
    """
    image, box = example_image(sam), example_box(sam)
    # FlopCounterMode's module tracker trips over parameter views that still require grad
    # (SAM's prompt embeddings): count with grads switched off, then restore them.
    grads = [(p, p.requires_grad) for p in sam.parameters()]
    try:
        for p, _ in grads:
            p.requires_grad_(False)
        enc = count_macs(lambda: sam.image_encoder(image))
        with torch.no_grad():
            embedding = sam.image_encoder(image)
        dec = count_macs(lambda: run_decoder(sam, embedding, box))
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)
    return {"encoder_macs": enc, "decoder_macs": dec, "macs": enc + dec}


# ---------------------------------------------------------------- latency


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(
    fn: Callable[[], Any], warmup: int = 5, repeats: int = 30, device: torch.device | None = None
) -> list[float]:
    """Wall-clock milliseconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls (no_grad)."""
    device = device or torch.device("cpu")
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        _sync(device)
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def summarise_ms(times: list[float]) -> dict[str, float]:
    """``median_ms`` and ``p90_ms`` (nearest-rank 90th percentile) of timings in ms."""
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, max(0, int(round(0.9 * len(ordered))) - 1))]
    return {"median_ms": round(statistics.median(ordered), 4), "p90_ms": round(p90, 4)}


def model_latency(sam: nn.Module, warmup: int = 5, repeats: int = 30) -> dict[str, float]:
    """Median/p90 latency (ms) of the image encoder (one image) and of prompt encoder + mask decoder (one box).

    Returns:
        ``encoder_median_ms``, ``encoder_p90_ms``, ``decoder_median_ms``, ``decoder_p90_ms``.
    """
    device = next(sam.parameters()).device
    image, box = example_image(sam), example_box(sam)
    enc = summarise_ms(time_ms(lambda: sam.image_encoder(image), warmup, repeats, device))
    with torch.no_grad():
        embedding = sam.image_encoder(image)
    dec = summarise_ms(time_ms(lambda: run_decoder(sam, embedding, box), warmup, repeats, device))
    return {
        "encoder_median_ms": enc["median_ms"],
        "encoder_p90_ms": enc["p90_ms"],
        "decoder_median_ms": dec["median_ms"],
        "decoder_p90_ms": dec["p90_ms"],
    }


def everything_cost(sam: nn.Module, points_per_side: int, warmup: int = 5, repeats: int = 30) -> dict[str, Any]:
    """Cost of everything mode at a ``points_per_side`` grid: the encoder once plus one pass per point batch.

    On an S x S random image (S = the encoder's input size): the encoder's median latency; the
    cost of one point batch, as a one-batch generation (an 8 x 8 grid: 64 points, prompt encoder +
    mask decoder with 3 masks each, upsampling, stability scores, filters and NMS) minus the
    encoder; the prediction encoder + n_batches x batch for the requested grid; and the
    generation at that grid measured (:func:`supersam.measure.everything.generate`). Generations are timed
    min(repeats, 3) times after one warm-up (medians); filtering and NMS cost less on a random image
    than on a real one, where more masks pass the filters.

    Returns:
        ``everything_points_per_side``, ``everything_n_points``, ``everything_n_batches``,
        ``everything_points_per_batch``, ``everything_encoder_ms``, ``everything_batch_ms``,
        ``everything_predicted_ms``, ``everything_measured_ms`` (ms) and ``everything_prediction_error`` ((predicted -
        measured) / measured).
    """
    import numpy as np

    from supersam.measure.everything import EverythingConfig, generate

    settings = EverythingConfig(points_per_side=points_per_side)
    one_batch = EverythingConfig(points_per_side=int(settings.points_per_batch**0.5))  # 8 x 8 = 64 points
    device = next(sam.parameters()).device
    size = sam.image_encoder.img_size
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)

    def generation_ms(cfg: EverythingConfig) -> float:
        generate(sam, image, cfg)  # warm-up
        return statistics.median(generate(sam, image, cfg).seconds * 1e3 for _ in range(min(repeats, 3)))

    encoder = summarise_ms(time_ms(lambda: sam.image_encoder(example_image(sam)), warmup, repeats, device))
    batch = max(generation_ms(one_batch) - encoder["median_ms"], 0.0)
    measured = generation_ms(settings)
    predicted = encoder["median_ms"] + settings.n_batches * batch
    return {
        "everything_points_per_side": points_per_side,
        "everything_n_points": settings.n_points,
        "everything_n_batches": settings.n_batches,
        "everything_points_per_batch": settings.points_per_batch,
        "everything_encoder_ms": encoder["median_ms"],
        "everything_batch_ms": round(batch, 3),
        "everything_predicted_ms": round(predicted, 3),
        "everything_measured_ms": round(measured, 3),
        "everything_prediction_error": round((predicted - measured) / measured, 4),
    }


# ---------------------------------------------------------------- device key


def device_name(device: torch.device) -> str:
    """The CUDA device name, or the CPU model (``/proc/cpuinfo``'s model name, else ``platform.processor()``);
    other accelerators (``mps``, ``xpu``) are named by their device type."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return device.type
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_key(device: torch.device, model_type: str, img_size: int, threads: int | None = None) -> str:
    """File-name-safe key of a latency table: device name, torch threads, model type, input size.

    E.g. ``amd-epyc-7b13-64-core-processor_t2_vit_ti_256``.
    """
    threads = torch.get_num_threads() if threads is None else threads
    name = re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-") or "device"
    return f"{name}_t{threads}_{model_type}_{img_size}"
