"""The ``bench`` stage: cost measures of a SAM or a subnet on the current device.

Two measures next to the parameter count:

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

:func:`bench` is ``supersam bench``: it loads an exported subnet folder, a supernet
(``--subnet`` picks the subnet, default its max subnet) or a SAM checkpoint, and
writes the figures as JSON.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from supersam.errors import ConfigError
from supersam.outdir import releases_claims

BENCH_FORMAT = "supersam-bench/1"  # the ``format`` key of bench's --out JSON

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchConfig:
    """params.yaml ``bench``.

    Attributes:
        model: what to measure: an export folder (``supersam export``), a supernet
            checkpoint (``supernet.pt``) or a SAM checkpoint (``.pt``/``.pth``/HF
            ``.safetensors``; params ``model`` gives its type and input size);
            "" = params ``model.checkpoint``.
        subnet: with a supernet: subnet JSON file or inline JSON ("" = max subnet).
        warmup: untimed runs before timing.
        repeats: timed runs (median and p90 over these).
        threads: torch intra-op threads (0 = leave torch's default).
        device: ``auto``, ``cpu``, ``cuda``...
        out: JSON file for the figures ("" = only the log).
        everything: also measure everything mode (:func:`everything_cost`) at this grid.
        points_per_side: everything mode's grid (points_per_side x points_per_side point prompts).
    """

    model: str = ""
    subnet: str = ""
    warmup: int = 5
    repeats: int = 30
    threads: int = 0
    device: str = "cpu"
    out: str = ""
    everything: bool = False
    points_per_side: int = 32

    def validate(self) -> None:
        """Raises ConfigError on a negative warm-up, fewer than 1 repeat, or threads outside
        0..4 x this machine's CPUs (torch aborts on absurd thread counts)."""
        if self.warmup < 0:
            raise ConfigError(f"bench.warmup is {self.warmup}; use 0 or more untimed runs")
        if self.repeats < 1:
            raise ConfigError(f"bench.repeats is {self.repeats}; use 1 or more timed runs")
        most = 4 * (os.cpu_count() or 1)
        if not 0 <= self.threads <= most:
            raise ConfigError(f"bench.threads is {self.threads}; use 0 (torch's default) to {most} "
                              f"(this machine has {os.cpu_count()} CPUs)")
        if self.everything:
            from supersam.everything import EverythingConfig

            EverythingConfig(points_per_side=self.points_per_side).validate()


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
    return sam.mask_decoder.predict_masks(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)


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


def time_ms(fn: Callable[[], Any], warmup: int = 5, repeats: int = 30, device: torch.device | None = None) -> list[float]:
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
    return {"encoder_median_ms": enc["median_ms"], "encoder_p90_ms": enc["p90_ms"],
            "decoder_median_ms": dec["median_ms"], "decoder_p90_ms": dec["p90_ms"]}


def everything_cost(sam: nn.Module, points_per_side: int, warmup: int = 5, repeats: int = 30) -> dict[str, Any]:
    """Cost of everything mode at a ``points_per_side`` grid: the encoder once plus one pass per point batch.

    On an S x S random image (S = the encoder's input size): the encoder's median latency; the
    cost of one point batch, as a one-batch generation (an 8 x 8 grid: 64 points, prompt encoder +
    mask decoder with 3 masks each, upsampling, stability scores, filters and NMS) minus the
    encoder; the prediction encoder + n_batches x batch for the requested grid; and the
    generation at that grid measured (:func:`supersam.everything.generate`). Generations are timed
    min(repeats, 3) times after one warm-up (medians); filtering and NMS cost less on a random image
    than on a real one, where more masks pass the filters.

    Returns:
        ``everything_points_per_side``, ``everything_n_points``, ``everything_n_batches``,
        ``everything_points_per_batch``, ``everything_encoder_ms``, ``everything_batch_ms``, ``everything_predicted_ms``,
        ``everything_measured_ms`` (ms) and ``everything_prediction_error`` ((predicted - measured) / measured).
    """
    import numpy as np

    from supersam.everything import EverythingConfig, generate

    settings = EverythingConfig(points_per_side=points_per_side)
    one_batch = EverythingConfig(points_per_side=int(settings.points_per_batch ** 0.5))  # 8 x 8 = 64 points
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
    return {"everything_points_per_side": points_per_side, "everything_n_points": settings.n_points,
            "everything_n_batches": settings.n_batches, "everything_points_per_batch": settings.points_per_batch,
            "everything_encoder_ms": encoder["median_ms"], "everything_batch_ms": round(batch, 3),
            "everything_predicted_ms": round(predicted, 3),
            "everything_measured_ms": round(measured, 3),
            "everything_prediction_error": round((predicted - measured) / measured, 4)}


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


# ---------------------------------------------------------------- the stage


def _load(cfg: BenchConfig, model_cfg: Any, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The Sam to measure and a description of it."""
    from supersam import paths
    from supersam.checkpoint import load_model, load_supernet
    from supersam.io import load_torch
    from supersam.sam import build_sam
    from supersam.space import SubnetConfig

    source = cfg.model or model_cfg.checkpoint
    if not source:
        raise ConfigError("bench has nothing to measure; pass MODEL_OR_SUPERNET (an export folder, supernet.pt or a checkpoint)")
    path = Path(source)
    # a folder is a supersam export when it holds model.pt; else a Hugging Face SamModel folder (its own
    # config.json beside model.safetensors / pytorch_model.bin), read as a checkpoint by sam.read_state_dict,
    # which names both kinds of folder when it is neither
    if path.is_dir() and (path / paths.EXPORT_WEIGHTS_FILE).is_file():
        if cfg.subnet:
            raise ConfigError(f"--subnet applies to a supernet; {path} is an exported model (its subnet is fixed)")
        return load_model(path, device), {"source": f"export:{path}"}
    if not path.exists():
        raise ConfigError(f"bench: {path} does not exist; pass an export folder, a supernet.pt or a SAM checkpoint")
    if path.is_file() and path.suffix != ".safetensors":
        obj = load_torch(path, "checkpoint", "point to an existing file", "point to a supernet.pt or a SAM checkpoint")
        if isinstance(obj, dict) and str(obj.get("format", "")).startswith("supersam-supernet/"):
            del obj
            supernet = load_supernet(path, device)
            subnet = SubnetConfig.load(cfg.subnet) if cfg.subnet else supernet.space.max_subnet()
            supernet.set_active_subnet(subnet)
            return supernet.get_active_subnet(), {"source": f"supernet:{path}", "subnet": subnet.to_dict(),
                                                   "variant": supernet.meta.variant}
    if cfg.subnet:
        raise ConfigError(f"--subnet applies to a supernet; {path} is a plain SAM checkpoint")
    loaded = build_sam(model_cfg.type, model_cfg.img_size, str(path), seed=model_cfg.seed)
    return loaded.model.to(device).eval(), {"source": f"sam:{path}"}


def check_out_file(out: Path, force: bool = False) -> None:
    """Check bench's ``--out`` JSON file before any timing: a writable folder, and an existing
    file replaced only when it is an earlier bench result (``format`` ``BENCH_FORMAT``) or ``force``.

    Raises:
        ConfigError: an empty path, a folder, another kind of file without ``force``, or a
            folder that cannot be written (one line naming it and the fix).
    """
    from supersam.outdir import check_writable

    if not str(out).strip():
        raise ConfigError("bench --out is empty; pass a JSON file path")
    if out.is_dir():
        raise ConfigError(f"bench --out {out} is a folder; pass a JSON file path such as {out / 'bench.json'}")
    if out.exists() and not force:
        try:
            earlier = json.loads(out.read_bytes())
            ours = earlier.get("format") == BENCH_FORMAT or "encoder_median_ms" in earlier  # before the format key
        except (ValueError, AttributeError):
            ours = False
        if not ours:
            raise ConfigError(f"bench --out {out} exists and is not a bench result; choose another file, "
                              "or pass --force to replace it")
    check_writable(out.parent, "bench --out's folder")


@releases_claims  # a folder created for --out is removed again when the command fails
def bench(cfg: BenchConfig, model_cfg: Any, force: bool = False) -> dict[str, Any]:
    """Measure params, MACs and encoder/decoder latency of ``cfg.model`` (``supersam bench``).

    ``force`` replaces an existing ``cfg.out`` that is not a bench result.

    Returns:
        ``params``, ``encoder_macs``, ``decoder_macs``, ``macs`` (MACs = FLOPs / 2),
        ``encoder_median_ms``, ``encoder_p90_ms``, ``decoder_median_ms``, ``decoder_p90_ms``,
        ``img_size``, ``threads``, ``device``, ``device_name``, ``warmup``, ``repeats``, ``source``,
        ``format`` (``BENCH_FORMAT``).

    Raises:
        ConfigError: bad settings, an ``out`` that is not writable or would replace another file
            (without ``force``), or a model that is neither an export, a supernet nor a checkpoint.
        CheckpointError: unreadable checkpoint.
    """
    from supersam.device import resolve_device
    from supersam.io import write_json
    from supersam.sam import count_params

    cfg.validate()
    if cfg.out:
        check_out_file(Path(cfg.out), force)  # before the timing, not after it
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    sam, described = _load(cfg, model_cfg, device)
    result: dict[str, Any] = {"format": BENCH_FORMAT, **described, "params": count_params(sam), "img_size": sam.image_encoder.img_size,
                              **model_macs(sam), **model_latency(sam, cfg.warmup, cfg.repeats),
                              "threads": torch.get_num_threads(), "device": str(device),
                              "device_name": device_name(device), "warmup": cfg.warmup, "repeats": cfg.repeats,
                              "dtype": str(next(sam.parameters()).dtype).removeprefix("torch.")}
    log.info("%s: %s params, %.3f GMACs (encoder %.3f); encoder %.2f ms (p90 %.2f), decoder %.2f ms (p90 %.2f) "
             "on %s, %d threads", result["source"], f"{result['params']:,}", result["macs"] / 1e9,
             result["encoder_macs"] / 1e9, result["encoder_median_ms"], result["encoder_p90_ms"],
             result["decoder_median_ms"], result["decoder_p90_ms"], result["device_name"], result["threads"])
    if cfg.everything:
        result.update(everything_cost(sam, cfg.points_per_side, cfg.warmup, cfg.repeats))
        log.info("everything mode at %d x %d points: %d decoder passes of %.2f ms after the encoder; predicted "
                 "%.1f ms, measured %.1f ms", cfg.points_per_side, cfg.points_per_side, result["everything_n_batches"],
                 result["everything_batch_ms"], result["everything_predicted_ms"],
                 result["everything_measured_ms"])
    if cfg.out:
        write_json(Path(cfg.out), result)
    return result
