"""The ``export`` stage: cut one subnet out of a supernet as a standard SAM.

An export folder holds ``model.pt`` (the standalone Sam's state dict) and
``config.json`` (:class:`supersam.artifacts.records.ExportManifest`: model type, input
size, variant, the subnet, each exported block's MLP width and attention type,
params, MACs, pixel statistics). :func:`supersam.model.checkpoint.load_model` (also
``supersam.load_model``) returns a ``segment_anything.modeling.Sam`` from it, so
``segment_anything.SamPredictor(model)`` works on it unchanged.

``--format onnx`` / ``hf`` add ``onnx/`` / ``hf/``. The whole new folder (weights,
config and the requested format) is built in a temporary sibling and swapped into
place once at the end, so an interrupted export leaves the previous one untouched.
Format folders of the previous export are carried over when its ``model.pt`` is
byte-identical to the new one (they were made from the same weights), else dropped.
"""

from __future__ import annotations

import dataclasses
import filecmp
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from supersam.artifacts import paths
from supersam.artifacts.records import EXPORT_FORMAT, ExportManifest
from supersam.model.checkpoint import load_supernet, read_export_manifest
from supersam.model.elastic import EncoderSpec
from supersam.model.sam import count_params
from supersam.model.space import SubnetConfig
from supersam.runtime.errors import ConfigError, SupersamError
from supersam.runtime.io import (
    clean_stale_temps,
    is_temp_name,
    make_temp_dir,
    read_json,
    replace_dir,
    torch_save,
    write_json,
    writer_alive,
)
from supersam.runtime.outdir import TOOL_FILES, check_writable, claim_out, releases_claims
from supersam.runtime.tracking import start_run
from supersam.schema import TrackingConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportConfig:
    """params.yaml ``export``.

    Attributes:
        variant: reordering variant whose pipeline artifacts are the defaults of
            ``supernet`` and ``subnet`` (``outputs/train/<variant>/supernet.pt``,
            ``outputs/search/<variant>/best_subnet.json``; :mod:`supersam.artifacts.paths`).
        supernet: supernet checkpoint (``supernet.pt``) to cut the subnet from;
            "" = the variant's trained supernet.
        subnet: subnet config: a JSON file (e.g. search's best_subnet.json) or an
            inline JSON object; "" = the variant's search result.
        out: output directory (replaced atomically).
        format: ``pt`` (model.pt + config.json, what ``supersam.load_model`` reads), ``onnx``
            (the same plus ``onnx/``: encoder.onnx, decoder.onnx, onnx.json;
            :mod:`supersam.model.onnx`) or ``hf`` (the same plus ``hf/model.safetensors``
            in transformers' ``SamModel`` key layout; :mod:`supersam.model.hf`).
        precision: ``onnx`` only: ``fp32`` (default), or ``fp16`` / ``int8``, which add
            ``encoder.<precision>.onnx`` and ``decoder.<precision>.onnx`` beside the float32
            pair (:mod:`supersam.model.onnx`).
    """

    variant: str = "wanda"
    supernet: str = ""
    subnet: str = ""
    out: str = str(paths.EXPORT_DIR)
    format: str = "pt"
    precision: str = "fp32"

    def resolved(self) -> ExportConfig:
        """This config with empty ``supernet``/``subnet`` filled from ``variant``."""
        return dataclasses.replace(
            self,
            supernet=self.supernet or str(paths.trained_supernet(self.variant)),
            subnet=self.subnet or str(paths.best_subnet(self.variant)),
        )


@releases_claims
def export(cfg: ExportConfig, tracking: TrackingConfig | None = None) -> Path:
    """Export ``cfg.subnet`` of supernet ``cfg.supernet`` to ``cfg.out`` (``supersam export``).

    With ``tracking``, logs an MLflow run (``stage=export``) with the subnet's
    params and MACs.

    Raises:
        ConfigError: empty option, invalid subnet JSON, subnet outside the space,
            an ``out`` that exists and is not an export directory, or the format's
            package (onnx, safetensors) missing.
        CheckpointError: unreadable supernet checkpoint.
    """
    cfg = cfg.resolved()
    for key in ("supernet", "subnet", "out"):
        if not str(getattr(cfg, key)).strip():
            raise ConfigError(f"export.{key} is empty; pass --{key} or set it in params.yaml")
    if cfg.format not in EXPORT_FORMATS:
        raise ConfigError(f"export.format is {cfg.format!r}; use one of {', '.join(EXPORT_FORMATS)}")
    from supersam.model.onnx import PRECISIONS

    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"export.precision is {cfg.precision!r}; use one of {', '.join(PRECISIONS)}")
    if cfg.precision != "fp32" and cfg.format != "onnx":
        raise ConfigError(
            f"export --precision {cfg.precision} applies to ONNX graphs; add --format onnx "
            "(model.pt and hf/ stay float32)"
        )
    subnet = SubnetConfig.load(cfg.subnet)
    widths = sorted({subnet.mlp_dims[i] for i in subnet.kept_layers})
    if cfg.format == "hf" and len(widths) > 1:  # refuse before writing anything
        raise ConfigError(
            f"export --format hf needs one MLP width in every kept block (transformers' SamModel has a "
            f"single mlp_dim); this subnet has {widths}; export it with --format pt or onnx, "
            "or find one with search --hf-compatible"
        )
    claim_out(cfg.out, "export --out")  # held until the run is logged too
    with start_run(
        tracking or TrackingConfig(enabled=False),
        "export",
        cfg.variant,
        params={"supernet": cfg.supernet, "out": cfg.out, "subnet": json.dumps(subnet.to_dict())},
    ) as run:
        out = export_subnet(cfg.supernet, subnet, cfg.out, fmt=cfg.format, precision=cfg.precision)
        manifest = read_export_manifest(out)
        run.log_params({"model_type": manifest.model_type, "img_size": manifest.img_size})
        run.set_tags(
            {
                "variant": manifest.variant,
                "pretrained": str(manifest.pretrained).lower(),
                "export_dir": str(out.resolve()),
            }
        )
        run.log_metrics(
            {"params": manifest.params, "macs": manifest.macs, "kept_blocks": len(manifest.subnet["kept_layers"])}
        )
        run.log_artifact(str(out / paths.EXPORT_CONFIG_FILE), "export")
    return out


EXPORT_FORMATS = ("pt", "onnx", "hf")
# The subfolder each format adds to an export folder (``pt`` adds none).
FORMAT_DIRS = {"onnx": paths.EXPORT_ONNX_DIR, "hf": paths.EXPORT_HF_DIR}


def write_format(folder: Path, fmt: str, precision: str = "fp32") -> Path | None:
    """Write the ``onnx`` or ``hf`` files of the export in ``folder`` to ``folder/onnx`` or ``folder/hf``.

    ``folder`` is an unfinished export (model.pt + config.json) in a temporary folder that
    :func:`_write_export` renames into place as a whole, so the files are written there
    directly; the model is the one :func:`supersam.model.checkpoint.load_model` reads from it.

    ``precision`` (``onnx`` only) adds that precision's graphs (:func:`supersam.model.onnx.export_onnx`).

    Returns:
        the folder written, or None for ``pt`` (adds nothing).

    Raises:
        ConfigError: the format's package (onnx, safetensors) is missing, or ``hf`` of
            blocks with different MLP widths.
        CheckpointError: ``folder`` is not a readable export.
    """
    if fmt not in FORMAT_DIRS:
        return None
    from supersam.model.checkpoint import load_model

    sam = load_model(folder)
    target = folder / FORMAT_DIRS[fmt]
    if target.exists():
        shutil.rmtree(target)
    if fmt == "onnx":
        from supersam.model.onnx import export_onnx

        export_onnx(sam, target, precision=precision)
    else:
        from supersam.model.hf import save_hf

        save_hf(sam, target)
    return target


def _carry_formats(out: Path, new: Path, fmt: str) -> tuple[list[str], list[str]]:
    """Copy the format folders of the previous export ``out`` into the unfinished export ``new``.

    Only when ``out/model.pt`` is byte-identical to ``new/model.pt`` (:func:`supersam.runtime.io.torch_save` is
    byte-reproducible, so the same subnet gives the same bytes) and the two ``config.json`` manifests agree apart from
    the supernet's path (architecture, pixel statistics: ``onnx.json`` records them): they were made from the same
    model. ``fmt``'s own folder is written afresh, never carried. Otherwise the previous export's format folders are
    left out (the caller logs them once swapped).

    Returns:
        the names of the folders carried over, and those of the previous export's format
        folders made from other weights (empty when the weights are the same).
    """
    old = [name for name in FORMAT_DIRS.values() if (out / name).is_dir()]
    if not old:
        return [], []
    old_weights, new_weights = out / paths.EXPORT_WEIGHTS_FILE, new / paths.EXPORT_WEIGHTS_FILE
    if not (
        old_weights.is_file()
        and filecmp.cmp(old_weights, new_weights, shallow=False)
        and _manifest_sans_source(out) == _manifest_sans_source(new)
    ):
        return [], old
    kept = [name for name in old if name != FORMAT_DIRS.get(fmt)]
    for name in kept:  # copies, not links: the new files share no inode with the old ones (or a DVC cache)
        shutil.copytree(out / name, new / name, copy_function=shutil.copyfile)
    return kept, []


def _manifest_sans_source(folder: Path) -> dict | None:
    """An export's ``config.json`` without the supernet's path (None when unreadable)."""
    try:
        manifest = json.loads((folder / paths.EXPORT_CONFIG_FILE).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return {k: v for k, v in manifest.items() if k != "supernet"} if isinstance(manifest, dict) else None


def _check_out(out: Path) -> None:
    """Refuse an ``out`` that is a file, a folder that is not an export, or an export folder
    holding files export did not write (the swap would delete them).

    Raises:
        ConfigError: one line naming the problem and the fix.
    """
    if out.is_file():
        raise ConfigError(f"export output {out} is a file; choose a directory path for --out")
    if out.is_dir() and any(out.iterdir()):
        config = out / paths.EXPORT_CONFIG_FILE
        try:
            ok = str(read_json(config, "export config").get("format", "")).startswith(EXPORT_FORMAT.split("/")[0] + "/")
        except (SupersamError, AttributeError):
            ok = False
        if not ok:
            raise ConfigError(f"export output {out} exists and is not a supersam export; choose a new or empty --out")
        ours = {paths.EXPORT_WEIGHTS_FILE, paths.EXPORT_CONFIG_FILE, *FORMAT_DIRS.values(), *TOOL_FILES}
        foreign = sorted(p.name for p in out.iterdir() if p.name not in ours and not is_temp_name(p.name))
        if foreign:
            raise ConfigError(
                f"export output {out} holds files export did not write ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}), which the new export would replace; "
                "move them out or choose another --out"
            )


def _recover(out: Path) -> None:
    """Undo an export killed between its two renames, then drop temporaries of dead runs.

    :func:`supersam.runtime.io.replace_dir` moves the previous export aside (``.<name>.<pid>.<x>.old/<name>``)
    before renaming the new one into place; when the process died in between,
    ``out`` is missing and the previous export is moved back.
    """
    if not out.exists() and out.parent.is_dir():
        for aside in sorted(out.parent.glob(f".{out.name}.*.old")):
            kept = aside / out.name
            if kept.is_dir() and not writer_alive(aside):
                os.replace(kept, out)
                log.warning("restored the previous export %s that an interrupted export had moved aside", out)
                break
    clean_stale_temps(out.parent)


def _write_export(
    out: Path, state: dict[str, torch.Tensor], manifest: ExportManifest, fmt: str = "pt", precision: str = "fp32"
) -> list[str]:
    """Build the whole new export in a temporary sibling of ``out``, then swap it into place once.

    The temporary folder gets model.pt, config.json, the previous export's format folders
    when its weights are the same (:func:`_carry_formats`) and ``fmt``'s folder
    (:func:`write_format`); only then does :func:`supersam.runtime.io.replace_dir` swap it with ``out``. An
    interruption before the swap leaves ``out`` as it was (the temporary folder is removed,
    or, after a kill, by the next export). The same subnet of the same supernet gives
    byte-identical files (:func:`supersam.runtime.io.torch_save`).

    Returns:
        the format folders the new export holds (carried over or written).

    Raises:
        ConfigError / CheckpointError: as :func:`write_format`; ``out`` is then unchanged.
    """
    tmp = make_temp_dir(out)
    try:
        torch_save(state, tmp / paths.EXPORT_WEIGHTS_FILE)
        write_json(tmp / paths.EXPORT_CONFIG_FILE, manifest.to_dict())
        formats, stale = _carry_formats(out, tmp, fmt)
        written = write_format(tmp, fmt, precision)
        if written is not None:
            formats.append(written.name)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if stale:  # logged once swapped: an interrupted export replaced nothing
        dropped = [f"--format {f}" for f, d in FORMAT_DIRS.items() if d in stale and d not in formats]
        log.info(
            "replaced the previous export in %s and its %s (made from other weights)%s",
            out,
            ", ".join(f"{name}/" for name in stale),
            f"; export again with {' and '.join(dropped)} to add {'them' if len(dropped) > 1 else 'it'}"
            if dropped
            else "",
        )
    return sorted(formats)


@releases_claims
def export_subnet(
    supernet_path: str | Path,
    subnet_cfg: SubnetConfig | str | dict,
    out_dir: str | Path,
    fmt: str = "pt",
    precision: str = "fp32",
) -> Path:
    """Write subnet ``subnet_cfg`` of the supernet at ``supernet_path`` as a standalone SAM.

    The directory (``model.pt`` + ``config.json``, plus ``fmt``'s folder) is written to a
    temporary sibling and renamed into place, so ``out_dir`` never holds a partial export
    and an interrupted export leaves the previous one untouched (:func:`_write_export`).

    Args:
        subnet_cfg: a SubnetConfig, its JSON dict, a JSON file path or an inline JSON string.
        fmt: ``pt``, ``onnx`` (adds ``onnx/``) or ``hf`` (adds ``hf/``); see :class:`ExportConfig`.
        precision: ``onnx``'s extra precision (``fp16``, ``int8``); ``fp32`` adds none.

    Returns:
        ``out_dir``.

    Raises:
        ConfigError: bad subnet JSON or a subnet outside the supernet's space
            (naming the entry), ``out_dir`` exists and is not an export, an unknown
            ``fmt``, its package missing, or ``hf`` of a subnet with several MLP widths.
        CheckpointError: missing/corrupt supernet checkpoint.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"export format {fmt!r} is unknown; use one of {', '.join(EXPORT_FORMATS)}")
    cfg = subnet_cfg if isinstance(subnet_cfg, SubnetConfig) else SubnetConfig.load(subnet_cfg)
    out = Path(out_dir)
    claim_out(out, "export --out")
    _recover(out)
    _check_out(out)
    check_writable(out.parent, "export --out's parent folder")
    supernet = load_supernet(supernet_path)
    meta = supernet.meta
    supernet.set_active_subnet(cfg)
    sam = supernet.get_active_subnet()
    blocks = sam.image_encoder.blocks
    manifest = ExportManifest(
        model_type=meta.model_type,
        img_size=meta.img_size,
        pretrained=meta.pretrained,
        variant=meta.variant,
        subnet=cfg.to_dict(),
        block_mlp_dims=[blk.mlp.lin1.out_features for blk in blocks],
        global_attn_indexes=[j for j, blk in enumerate(blocks) if blk.window_size == 0],
        params=count_params(sam),
        macs=supernet.macs(cfg),
        encoder=EncoderSpec.from_encoder(sam.image_encoder).to_dict(),
        pixel_mean=sam.pixel_mean.flatten().tolist(),
        pixel_std=sam.pixel_std.flatten().tolist(),
        supernet=str(supernet_path),
    )
    formats = _write_export(out, sam.state_dict(), manifest, fmt, precision)
    log.info(
        "exported subnet %s (%d blocks, %s params) of %s to %s%s",
        list(cfg.kept_layers),
        len(blocks),
        f"{manifest.params:,}",
        supernet_path,
        out,
        f" (with {', '.join(f'{name}/' for name in formats)})" if formats else "",
    )
    return out
