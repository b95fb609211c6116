"""The ``export`` stage: cut one subnet out of a supernet as a standard SAM.

An export folder holds ``model.pt`` (the standalone Sam's state dict) and
``config.json`` (:class:`supersam.artifacts.ExportManifest`: model type, input
size, variant, the subnet, each exported block's MLP width and attention type,
params, MACs, pixel statistics). :func:`supersam.checkpoint.load_model` (also
``supersam.load_model``) returns a ``segment_anything.modeling.Sam`` from it, so
``segment_anything.SamPredictor(model)`` works on it unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from supersam import paths
from supersam.artifacts import EXPORT_FORMAT, ExportManifest
from supersam.checkpoint import load_supernet, read_export_manifest
from supersam.config import TrackingConfig
from supersam.elastic import EncoderSpec
from supersam.errors import ConfigError, SupersamError
from supersam.io import (
    check_writable, claim_out, clean_stale_temps, make_temp_dir, read_json, releases_claims, torch_save, write_json,
    writer_alive,
)
from supersam.sam import count_params
from supersam.space import SubnetConfig
from supersam.tracking import start_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportConfig:
    """params.yaml ``export``.

    Attributes:
        variant: reordering variant whose pipeline artifacts are the defaults of
            ``supernet`` and ``subnet`` (``outputs/train/<variant>/supernet.pt``,
            ``outputs/search/<variant>/best_subnet.json``; :mod:`supersam.paths`).
        supernet: supernet checkpoint (``supernet.pt``) to cut the subnet from;
            "" = the variant's trained supernet.
        subnet: subnet config: a JSON file (e.g. search's best_subnet.json) or an
            inline JSON object; "" = the variant's search result.
        out: output directory (replaced atomically).
        format: ``pt`` (model.pt + config.json, what ``supersam.load_model`` reads), ``onnx``
            (the same plus ``onnx/``: encoder.onnx, decoder.onnx, onnx.json;
            :mod:`supersam.onnx_export`) or ``hf`` (the same plus ``hf/model.safetensors``
            in transformers' ``SamModel`` key layout; :mod:`supersam.hf_checkpoint`).
    """

    variant: str = "wanda"
    supernet: str = ""
    subnet: str = ""
    out: str = str(paths.EXPORT_DIR)
    format: str = "pt"

    def resolved(self) -> "ExportConfig":
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
            or an ``out`` that exists and is not an export directory.
        CheckpointError: unreadable supernet checkpoint.
    """
    cfg = cfg.resolved()
    for key in ("supernet", "subnet", "out"):
        if not str(getattr(cfg, key)).strip():
            raise ConfigError(f"export.{key} is empty; pass --{key} or set it in params.yaml")
    if cfg.format not in EXPORT_FORMATS:
        raise ConfigError(f"export.format is {cfg.format!r}; use one of {', '.join(EXPORT_FORMATS)}")
    subnet = SubnetConfig.load(cfg.subnet)
    widths = sorted({subnet.mlp_dims[i] for i in subnet.kept_layers})
    if cfg.format == "hf" and len(widths) > 1:  # refuse before writing anything
        raise ConfigError(f"export --format hf needs one MLP width in every kept block (transformers' SamModel has a "
                          f"single mlp_dim); this subnet has {widths}; export it with --format pt or onnx")
    claim_out(cfg.out, "export --out")  # held until the extra format is written too
    with start_run(tracking or TrackingConfig(enabled=False), "export", cfg.variant,
                   params={"supernet": cfg.supernet, "out": cfg.out, "subnet": json.dumps(subnet.to_dict())}) as run:
        out = export_subnet(cfg.supernet, subnet, cfg.out)
        write_format(out, cfg.format)
        manifest = read_export_manifest(out)
        run.log_params({"model_type": manifest.model_type, "img_size": manifest.img_size})
        run.set_tags({"variant": manifest.variant, "pretrained": str(manifest.pretrained).lower(),
                      "export_dir": str(out.resolve())})
        run.log_metrics({"params": manifest.params, "macs": manifest.macs,
                         "kept_blocks": len(manifest.subnet["kept_layers"])})
        run.log_artifact(str(out / paths.EXPORT_CONFIG_FILE), "export")
    return out


EXPORT_FORMATS = ("pt", "onnx", "hf")


def write_format(out: Path, fmt: str) -> Path | None:
    """Add the ``onnx`` or ``hf`` files to the export folder ``out`` (``pt`` adds nothing).

    Written into a temporary folder beside the target (:func:`supersam.io.make_temp_dir`), then
    renamed to ``out/onnx`` or ``out/hf``.

    Returns:
        the folder written, or None for ``pt``.
    """
    if fmt == "pt":
        return None
    from supersam.checkpoint import load_model

    sam = load_model(out)
    target = out / (paths.EXPORT_ONNX_DIR if fmt == "onnx" else paths.EXPORT_HF_DIR)
    tmp = make_temp_dir(target)
    try:
        if fmt == "onnx":
            from supersam.onnx_export import export_onnx

            export_onnx(sam, tmp)
        else:
            from supersam.hf_checkpoint import save_hf

            save_hf(sam, tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _check_out(out: Path) -> None:
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


def _recover(out: Path) -> None:
    """Undo an export killed between its two renames, then drop temporaries of dead runs.

    :func:`_replace_dir` moves the previous export aside (``.<name>.<pid>.<x>.old/<name>``)
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


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move finished ``tmp`` to ``out``; an existing export is moved aside, then removed.

    A kill between the two renames leaves the previous export aside, and the next
    export restores it first (:func:`_recover`); ``out`` never holds a mix.
    """
    if not out.exists():
        os.replace(tmp, out)
        return
    old = make_temp_dir(out, "old")
    os.replace(out, old / out.name)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _write_export(out: Path, state: dict[str, torch.Tensor], manifest: ExportManifest) -> None:
    """Write model.pt + config.json into a temporary sibling of ``out``, then rename it into place.

    The same subnet of the same supernet gives byte-identical files (:func:`supersam.io.torch_save`).
    """
    tmp = make_temp_dir(out)
    try:
        torch_save(state, tmp / paths.EXPORT_WEIGHTS_FILE)
        write_json(tmp / paths.EXPORT_CONFIG_FILE, manifest.to_dict())
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@releases_claims
def export_subnet(supernet_path: str | Path, subnet_cfg: SubnetConfig | str | dict, out_dir: str | Path) -> Path:
    """Write subnet ``subnet_cfg`` of the supernet at ``supernet_path`` as a standalone SAM.

    The directory (``model.pt`` + ``config.json``) is written to a temporary
    sibling and renamed into place, so ``out_dir`` never holds a partial export.

    Args:
        subnet_cfg: a SubnetConfig, its JSON dict, a JSON file path or an inline JSON string.

    Returns:
        ``out_dir``.

    Raises:
        ConfigError: bad subnet JSON or a subnet outside the supernet's space
            (naming the entry), or ``out_dir`` exists and is not an export.
        CheckpointError: missing/corrupt supernet checkpoint.
    """
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
        model_type=meta.model_type, img_size=meta.img_size, pretrained=meta.pretrained, variant=meta.variant,
        subnet=cfg.to_dict(), block_mlp_dims=[blk.mlp.lin1.out_features for blk in blocks],
        global_attn_indexes=[j for j, blk in enumerate(blocks) if blk.window_size == 0],
        params=count_params(sam), macs=supernet.macs(cfg),
        encoder=EncoderSpec.from_encoder(sam.image_encoder).to_dict(),
        pixel_mean=sam.pixel_mean.flatten().tolist(), pixel_std=sam.pixel_std.flatten().tolist(),
        supernet=str(supernet_path),
    )
    _write_export(out, sam.state_dict(), manifest)
    log.info(
        "exported subnet %s (%d blocks, %s params) of %s to %s",
        list(cfg.kept_layers), len(blocks), f"{manifest.params:,}", supernet_path, out,
    )
    return out
