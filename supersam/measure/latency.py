"""Per-device latency lookup table of the image encoder (once-for-all style).

A subnet's encoder latency is predicted as a sum of measured parts, at the
supernet's working input size S (one image, B=1, float32, ``torch.no_grad``):

    latency(subnet) = scale * (rest_ms + sum over kept blocks i of blocks_ms[i][mlp_dims[i]])

``rest_ms`` is the part every subnet runs (patch embedding, absolute position embedding, neck); ``blocks_ms[i][d]`` is
encoder block i alone (its own window or global attention, its real weights cut to MLP width d as an export holds
them) on a 1 x S/16 x S/16 x C input. Blocks timed alone miss what runs between them (memory traffic, layout changes),
so the sum falls short of a whole encoder by a few percent (5-9% for vit_ti at 256 px on 2 CPU threads); ``scale`` is
measured with the table: the max subnet, exported and timed whole, divided by its sum of parts. ``decoder_ms`` (prompt
encoder + mask decoder for one box) does not depend on the subnet and is recorded next to it. Every entry is a median
over ``repeats`` timed runs after ``warmup`` runs.

The table is measured once per device key (:func:`supersam.measure.timing.device_key`: device
name, torch threads, model type, input size) and cached as JSON under
``outputs/latency/<device-key>.json`` (:func:`supersam.artifacts.paths.latency_table`). A cached
table is measured again when it was made for another encoder shape, other widths,
another torch version or another device: the key's short name can be shared by
different machines (a VM's cpuinfo may say just "AMD EPYC"), so the table also
records the full :func:`device_description` and the thread count, which must match.
A table whose timings or ``scale`` are not positive finite numbers is unreadable
(one warning, measured again).

``scale`` is plausible in ``SCALE_RANGE`` = [0.8, 1.5]: the whole encoder runs the same
blocks as its parts plus the work between them, so it is >= 1 up to noise (1.02-1.10
measured with nothing else running, 1.05-1.09 for the tiny test model). Below 0.8 the
parts were timed >= 25% slow, above 1.5 the whole was timed 50% slow (five times the
largest overhead seen): the machine was busy during the measurement. Such a table is
measured once more; if the second scale is implausible too it is kept (``attempts`` 2)
with a warning naming the fix.

``TOLERANCE`` (10%) is the table's stated prediction error: measured tables predicted
whole subnets within -5.4% to +5.2% even on a shared machine (README, "Deploy"). The
search times its chosen subnet directly and reports it as infeasible when the measured
latency exceeds ``--max-latency-ms`` by more than that (:mod:`supersam.stages.search.run`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from supersam.measure.timing import device_key, device_name, run_decoder, summarise_ms, time_ms
from supersam.runtime.errors import ConfigError, SupersamError
from supersam.runtime.io import read_json, write_json

log = logging.getLogger(__name__)

FORMAT = "supersam-latency/1"
TOLERANCE = 0.10  # relative prediction error the table is trusted to (see the module docstring)
SCALE_RANGE = (0.8, 1.5)  # plausible whole-encoder / sum-of-parts ratios (see the module docstring)

_CPUINFO_KEYS = (
    "vendor_id",
    "model name",
    "cpu family",
    "model",
    "stepping",
    "cache size",
    "CPU implementer",
    "CPU architecture",
    "CPU variant",
    "CPU part",
    "CPU revision",
)


def device_description(device: torch.device) -> dict[str, Any]:
    """What identifies the hardware a table was timed on, beyond the key's short device name.

    CPU: ``/proc/cpuinfo``'s identification fields of the first processor (vendor, model name,
    family, model, stepping, cache size; the ARM ``CPU *`` fields), a digest of its feature
    flags, the architecture and the number of CPUs this process may run on. CUDA: name,
    compute capability, memory (MiB) and CUDA version. Other devices: their type.
    """
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {
            "type": "cuda",
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_mib": props.total_memory // 2**20,
            "cuda": torch.version.cuda,
        }
    if device.type != "cpu":
        return {"type": device.type}
    info: dict[str, Any] = {"type": "cpu", "name": device_name(device), "machine": platform.machine()}
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
    except OSError:
        first = ""
    for line in first.splitlines():
        name, _, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if name in _CPUINFO_KEYS:
            info[name] = value
        elif name in ("flags", "Features"):
            info["flags_sha256"] = hashlib.sha256(" ".join(sorted(value.split())).encode()).hexdigest()[:16]
    try:
        info["cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        info["cpus"] = os.cpu_count() or 1
    return info


def _positive_ms(value: Any, what: str) -> float:
    """``value`` as a float when it is a positive finite number (not a bool or a string), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} is {value!r}, not a positive finite number")
    return float(value)


@dataclass
class LatencyTable:
    """Measured encoder parts of one supernet shape on one device (all times in ms).

    Attributes:
        key: device key (file name without ``.json``).
        shape: what the table is valid for: encoder spec, global blocks, MLP width choices.
        rest_ms: patch embedding + position embedding + neck, one image.
        blocks_ms: ``blocks_ms[i][d]``: block i at MLP width d (keys are strings in JSON).
        decoder_ms: prompt encoder + mask decoder, one box prompt (not subnet-dependent).
        scale: the max subnet's whole-encoder latency / its sum of parts (1 = plain sum).
        threads, device_name, warmup, repeats, rounds, torch_version, device: how it was measured
            (:func:`measure_table`; ``device`` is :func:`device_description`); a table of another
            torch version, thread count, device name or description is measured again.
        attempts: measurements it took: 2 when the first one's ``scale`` was implausible
            (outside ``SCALE_RANGE``); a table kept with an implausible scale after 2 is not
            measured a third time.
        tolerance: relative prediction error the table is trusted to (``TOLERANCE``, not stored).
    """

    tolerance: ClassVar[float] = TOLERANCE

    key: str
    shape: dict[str, Any]
    rest_ms: float
    blocks_ms: dict[int, dict[int, float]]
    decoder_ms: float
    threads: int
    device_name: str
    warmup: int
    repeats: int
    rounds: int = 1
    scale: float = 1.0
    torch_version: str = ""
    format: str = field(default=FORMAT)
    device: dict[str, Any] = field(default_factory=dict)
    attempts: int = 1

    @property
    def scale_plausible(self) -> bool:
        """Whether ``scale`` lies in ``SCALE_RANGE`` (else the machine was probably busy while measuring)."""
        return SCALE_RANGE[0] <= self.scale <= SCALE_RANGE[1]

    def predict_ms(self, subnet: Any) -> float:
        """Predicted encoder latency (ms) of ``subnet`` (``kept_layers``, ``mlp_dims``).

        Raises:
            ConfigError: a block or width the table does not hold.
        """
        total = self.rest_ms
        for i in subnet.kept_layers:
            width = subnet.mlp_dims[i]
            try:
                total += self.blocks_ms[i][width]
            except KeyError:
                raise ConfigError(
                    f"latency table {self.key} has no entry for block {i} at MLP width {width}; "
                    "delete the table to measure it again"
                ) from None
        return total * self.scale

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        data = asdict(self)
        data["blocks_ms"] = {str(i): {str(d): t for d, t in row.items()} for i, row in self.blocks_ms.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyTable:
        """Inverse of :meth:`to_dict`.

        Raises:
            KeyError / TypeError / ValueError: a malformed table: a missing or unknown field, a timing
                (ms) or ``scale`` that is not a positive finite number, a block or MLP width of its
                ``shape`` without a timing.
        """
        data = dict(data)
        data["blocks_ms"] = {
            int(i): {int(d): _positive_ms(t, f"blocks_ms[{i}][{d}]") for d, t in row.items()}
            for i, row in data["blocks_ms"].items()
        }
        for name in ("rest_ms", "decoder_ms", "scale"):
            if name in data:
                data[name] = _positive_ms(data[name], name)
        table = cls(**data)
        shape = table.shape
        for i in range(int(shape["depth"])):
            missing = set(shape["mlp_dim_choices"]) - set(table.blocks_ms.get(i, {}))
            if missing:
                raise ValueError(f"blocks_ms[{i}] has no timing at MLP width {min(missing)}")
        return table

    def mismatch(self, key: str, shape: dict[str, Any], device: torch.device) -> str:
        """What makes this table another device's, encoder's or torch version's ("" = none)."""
        current = {
            "format": FORMAT,
            "key": key,
            "shape": shape,
            "torch_version": torch.__version__,
            "threads": torch.get_num_threads(),
            "device_name": device_name(device),
            "device": device_description(device),
        }
        return ", ".join(
            f"{name} {getattr(self, name)!r} (here {value!r})"
            if name not in ("shape", "device")
            else f"{name} {'(missing)' if not getattr(self, name) else 'differs'}"
            for name, value in current.items()
            if getattr(self, name) != value
        )


def table_shape(supernet: Any) -> dict[str, Any]:
    """What a table depends on besides the device: encoder spec, global blocks, width choices, model type."""
    from supersam.model.elastic import EncoderSpec

    enc = supernet.sam.image_encoder
    return {
        "model_type": supernet.meta.model_type,
        "encoder": EncoderSpec.from_encoder(enc).to_dict(),
        "depth": len(enc.blocks),
        "global_blocks": [i for i, b in enumerate(enc.blocks) if b.window_size == 0],
        "mlp_dim_choices": list(supernet.space.mlp_dim_choices),
    }


def _block_at_width(encoder: nn.Module, index: int, width: int) -> nn.Module:
    """Encoder block ``index`` as an export builds it: a fresh ``segment_anything`` Block whose MLP holds
    the first ``width`` hidden units of the shared weights (contiguous copies, as :func:`get_active_subnet`)."""
    from supersam.model.elastic import EncoderSpec, build_encoder, cut_mlp_tensor

    block = encoder.blocks[index]
    device = block.norm1.weight.device
    one = build_encoder(EncoderSpec.from_encoder(encoder), [width], [0] if block.window_size == 0 else [], device="cpu")
    state = {
        name: cut_mlp_tensor(name, value.detach(), width).clone(memory_format=torch.contiguous_format)
        for name, value in block.state_dict().items()
    }
    cut = one.blocks[0]
    cut.load_state_dict(state, strict=True)
    return cut.to(device).eval()


def measure_table(supernet: Any, warmup: int = 3, repeats: int = 20, rounds: int = 3) -> LatencyTable:
    """Measure every block at every width choice, the fixed rest and the decoder on the supernet's device.

    Each entry is the smallest of ``rounds`` medians, each over ``repeats`` timed runs, the rounds
    interleaved over all entries: a burst of load from another process on a shared machine
    then spoils one round of a few entries, not the table (:func:`measure_subnet_ms` uses the same estimator).
    """
    from supersam.measure.timing import example_box, example_image

    sam = supernet.sam
    enc = sam.image_encoder
    device = next(sam.parameters()).device
    image = example_image(sam)
    with torch.no_grad():
        tokens = enc.patch_embed(image)  # 1 x G x G x C
        if enc.pos_embed is not None:
            tokens = tokens + enc.pos_embed
        embedding = enc.neck(tokens.permute(0, 3, 1, 2))

    def rest() -> torch.Tensor:
        x = enc.patch_embed(image)
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        return enc.neck(x.permute(0, 3, 1, 2))

    shape = table_shape(supernet)
    box = example_box(sam)
    previous = supernet.active_subnet
    supernet.set_active_subnet(supernet.space.max_subnet())
    try:
        whole = supernet.get_active_subnet().image_encoder  # the max subnet as export builds it
    finally:
        supernet.set_active_subnet(previous)
    parts: dict[Any, Any] = {
        "rest": rest,
        "decoder": lambda: run_decoder(sam, embedding, box),
        "max_subnet": lambda: whole(image),
    }
    cuts = [(i, width) for i in range(len(enc.blocks)) for width in shape["mlp_dim_choices"]]
    best = {name: float("inf") for name in [*parts, *cuts]}
    for _ in range(max(1, rounds)):
        for name, fn in parts.items():
            best[name] = min(best[name], summarise_ms(time_ms(fn, warmup, repeats, device))["median_ms"])
        for i, width in cuts:  # one cut block alive at a time: vit_h's 32 x 5 copies would not fit a GPU
            cut = _block_at_width(enc, i, width)
            ms = summarise_ms(time_ms(lambda cut=cut: cut(tokens), warmup, repeats, device))["median_ms"]
            best[(i, width)] = min(best[(i, width)], ms)
            del cut
    blocks_ms: dict[int, dict[int, float]] = {}
    for name, value in best.items():
        if isinstance(name, tuple):
            blocks_ms.setdefault(name[0], {})[name[1]] = value
    widest = max(shape["mlp_dim_choices"])
    parts_sum = best["rest"] + sum(row[widest] for row in blocks_ms.values())
    return LatencyTable(
        key=device_key(device, supernet.meta.model_type, supernet.meta.img_size),
        shape=shape,
        rest_ms=best["rest"],
        blocks_ms=blocks_ms,
        decoder_ms=best["decoder"],
        threads=torch.get_num_threads(),
        device_name=device_name(device),
        warmup=warmup,
        repeats=repeats,
        rounds=max(1, rounds),
        scale=round(best["max_subnet"] / parts_sum, 4),
        torch_version=torch.__version__,
        device=device_description(device),
    )


def load_or_measure(
    supernet: Any, path: str | Path | None = None, warmup: int = 3, repeats: int = 20, rounds: int = 3
) -> tuple[LatencyTable, Path]:
    """The cached table of this device and supernet shape, or a new measurement written to the cache.

    A cached table is used when its format, key, encoder shape, torch version, thread count,
    device name and :func:`device_description` are this run's. It is measured again (one
    warning) when it is unreadable (truncated JSON, a timing or ``scale`` that is not a
    positive finite number of ms), when it was made on another device under the same key,
    or when its ``scale`` is implausible and it was measured only once; a table kept with an
    implausible scale after two measurements is used with a warning. A new measurement
    whose ``scale`` is implausible is repeated once (:func:`_measure`).

    Args:
        path: the table file; None = ``outputs/latency/<device-key>.json``.

    Returns:
        the table and its file.
    """
    from supersam.artifacts import paths

    device = next(supernet.sam.parameters()).device
    key = device_key(device, supernet.meta.model_type, supernet.meta.img_size)
    path = Path(path) if path else paths.latency_table(key)
    if path.is_file():
        try:
            table = LatencyTable.from_dict(read_json(path, "latency table"))
        except (SupersamError, KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("latency table %s is unreadable (%s); measuring again", path, exc)
        else:
            differs = table.mismatch(key, table_shape(supernet), device)
            if differs:
                same_machine = table.key == key and table.shape == table_shape(supernet)
                (log.warning if same_machine and table.device else log.info)(
                    "latency table %s was made for another device, encoder or torch version (%s); measuring again",
                    path,
                    differs,
                )
            elif not table.scale_plausible and table.attempts < 2:
                log.warning(
                    "latency table %s has an implausible scale %.3f (whole max subnet / sum of its parts, "
                    "plausible %g-%g): the machine was probably busy when it was measured; measuring again",
                    path,
                    table.scale,
                    *SCALE_RANGE,
                )
            else:
                if not table.scale_plausible:
                    log.warning(
                        "latency table %s keeps an implausible scale %.3f (plausible %g-%g; measured twice): "
                        "predicted latencies may be off; delete it and measure again on an idle machine",
                        path,
                        table.scale,
                        *SCALE_RANGE,
                    )
                log.info("latency table %s (measured on %s, %d threads)", path, table.device_name, table.threads)
                return table, path
    log.info(
        "measuring the latency table of %s (%d blocks x %d widths, %d runs each)",
        key,
        len(supernet.sam.image_encoder.blocks),
        len(supernet.space.mlp_dim_choices),
        repeats,
    )
    table = _measure(supernet, path, warmup, repeats, rounds)
    log.info(
        "latency table %s: max subnet %.2f ms whole = %.3f x its sum of parts",
        path,
        table.predict_ms(supernet.space.max_subnet()),
        table.scale,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, table.to_dict())
    return table, path


def _measure(supernet: Any, path: Path, warmup: int, repeats: int, rounds: int) -> LatencyTable:
    """:func:`measure_table`, once more when its ``scale`` is implausible (outside ``SCALE_RANGE``).

    The second table is kept (``attempts`` 2) even when its scale is implausible too, with a warning.
    """
    table = measure_table(supernet, warmup, repeats, rounds)
    if table.scale_plausible:
        return table
    log.warning(
        "latency table %s: implausible scale %.3f (whole max subnet / sum of its parts, plausible %g-%g): "
        "the machine was probably busy; measuring once more",
        path,
        table.scale,
        *SCALE_RANGE,
    )
    table = measure_table(supernet, warmup, repeats, rounds)
    table.attempts = 2
    if not table.scale_plausible:
        log.warning(
            "latency table %s: scale still implausible (%.3f); keeping it, but predicted latencies may be off: "
            "delete %s and measure again on an idle machine",
            path,
            table.scale,
            path,
        )
    return table


def measure_subnet_ms(
    supernet: Any, subnet: Any, warmup: int = 3, repeats: int = 20, rounds: int = 3
) -> dict[str, float]:
    """Measured encoder latency (ms, one image) of ``subnet`` as exported (a standalone Sam).

    Returns:
        ``measured_ms`` (smallest of ``rounds`` medians of ``repeats`` runs, the table's estimator),
        ``median_ms`` and ``p90_ms`` over all runs.
    """
    from supersam.measure.timing import example_image

    previous = supernet.active_subnet
    supernet.set_active_subnet(subnet)
    try:
        sam = supernet.get_active_subnet()
    finally:
        supernet.set_active_subnet(previous)
    image = example_image(sam)
    device = next(sam.parameters()).device
    runs = [time_ms(lambda: sam.image_encoder(image), warmup, repeats, device) for _ in range(max(1, rounds))]
    every = summarise_ms([t for r in runs for t in r])
    return {"measured_ms": min(summarise_ms(r)["median_ms"] for r in runs), **every}
