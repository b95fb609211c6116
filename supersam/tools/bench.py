"""``supersam bench``: cost measures of a SAM or a subnet on the current device.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from supersam.measure.timing import device_name, everything_cost, model_latency, model_macs
from supersam.runtime.errors import ConfigError
from supersam.runtime.outdir import releases_claims

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
            raise ConfigError(
                f"bench.threads is {self.threads}; use 0 (torch's default) to {most} "
                f"(this machine has {os.cpu_count()} CPUs)"
            )
        if self.everything:
            from supersam.measure.everything import EverythingConfig

            EverythingConfig(points_per_side=self.points_per_side).validate()


# ---------------------------------------------------------------- the stage


def _load(cfg: BenchConfig, model_cfg: Any, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The Sam to measure and a description of it."""
    from supersam.artifacts import paths
    from supersam.model.checkpoint import load_model, load_supernet
    from supersam.model.sam import build_sam
    from supersam.model.space import SubnetConfig
    from supersam.runtime.io import load_torch

    source = cfg.model or model_cfg.checkpoint
    if not source:
        raise ConfigError(
            "bench has nothing to measure; pass MODEL_OR_SUPERNET (an export folder, supernet.pt or a checkpoint)"
        )
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
            return supernet.get_active_subnet(), {
                "source": f"supernet:{path}",
                "subnet": subnet.to_dict(),
                "variant": supernet.meta.variant,
            }
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
    from supersam.runtime.outdir import check_writable

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
            raise ConfigError(
                f"bench --out {out} exists and is not a bench result; choose another file, "
                "or pass --force to replace it"
            )
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
    from supersam.runtime.device import resolve_device

    cfg.validate()
    if cfg.out:
        check_out_file(Path(cfg.out), force)  # before the timing, not after it
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _measure(cfg, model_cfg, resolve_device(cfg.device))
    finally:
        torch.set_num_threads(threads)  # the caller's setting (a test, a notebook) is left as it was


def _measure(cfg: BenchConfig, model_cfg: Any, device: torch.device) -> dict[str, Any]:
    """bench's measurements under the thread count already set; writes ``cfg.out`` when given."""
    from supersam.model.sam import count_params
    from supersam.runtime.io import write_json

    sam, described = _load(cfg, model_cfg, device)
    result: dict[str, Any] = {
        "format": BENCH_FORMAT,
        **described,
        "params": count_params(sam),
        "img_size": sam.image_encoder.img_size,
        **model_macs(sam),
        **model_latency(sam, cfg.warmup, cfg.repeats),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": device_name(device),
        "warmup": cfg.warmup,
        "repeats": cfg.repeats,
        "dtype": str(next(sam.parameters()).dtype).removeprefix("torch."),
    }
    log.info(
        "%s: %s params, %.3f GMACs (encoder %.3f); encoder %.2f ms (p90 %.2f), decoder %.2f ms (p90 %.2f) "
        "on %s, %d threads",
        result["source"],
        f"{result['params']:,}",
        result["macs"] / 1e9,
        result["encoder_macs"] / 1e9,
        result["encoder_median_ms"],
        result["encoder_p90_ms"],
        result["decoder_median_ms"],
        result["decoder_p90_ms"],
        result["device_name"],
        result["threads"],
    )
    if cfg.everything:
        result.update(everything_cost(sam, cfg.points_per_side, cfg.warmup, cfg.repeats))
        log.info(
            "everything mode at %d x %d points: %d decoder passes of %.2f ms after the encoder; predicted "
            "%.1f ms, measured %.1f ms",
            cfg.points_per_side,
            cfg.points_per_side,
            result["everything_n_batches"],
            result["everything_batch_ms"],
            result["everything_predicted_ms"],
            result["everything_measured_ms"],
        )
    if cfg.out:
        write_json(Path(cfg.out), result)
    return result
