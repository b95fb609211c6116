"""Export one subnet of a supernet as a standard SAM, and load it back.

An export directory holds ``model.pt`` (the standalone Sam's state dict) and
``config.json``::

    {"format": "supersam-export/1", "model_type", "img_size", "pretrained", "reorder",
     "subnet": {"kept_layers": [...], "mlp_dims": [...]},
     "block_mlp_dims": [MLP width of each exported block],
     "global_attn_indexes": [exported positions of the kept global blocks],
     "params", "macs", "encoder": {...}, "pixel_mean", "pixel_std", "supernet"}

:func:`load_model` returns a ``segment_anything.modeling.Sam`` (an
``ImageEncoderViT`` with only the kept blocks, each ``MLPBlock`` at its own
width, each block with its original attention type), so
``segment_anything.SamPredictor(model)`` works on it unchanged.
"""

from __future__ import annotations

import dataclasses
import json

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import Sam

from supersam.checkpoint import assign_state, load_supernet, set_pixel_stats
from supersam.config import TrackingConfig
from supersam.elastic import EncoderSpec, build_encoder
from supersam.errors import CheckpointError, ConfigError, SupersamError
from supersam.io import read_json, torch_save, write_json
from supersam.sam import build_sam_model, count_params, read_state_dict
from supersam.space import SubnetConfig, subnet_macs

log = logging.getLogger(__name__)

EXPORT_FORMAT = "supersam-export/1"


@dataclass(frozen=True)
class ExportConfig:
    """params.yaml ``export``.

    Attributes:
        variant: reordering variant whose pipeline artifacts are the defaults of
            ``supernet`` and ``subnet`` (``outputs/train/<variant>/supernet.pt``,
            ``outputs/search/<variant>/best_subnet.json``).
        supernet: supernet checkpoint (``supernet.pt``) to cut the subnet from;
            "" = the variant's trained supernet.
        subnet: subnet config: a JSON file (e.g. search's best_subnet.json) or an
            inline JSON object; "" = the variant's search result.
        out: output directory (replaced atomically).
    """

    variant: str = "wanda"
    supernet: str = ""
    subnet: str = ""
    out: str = "outputs/export/model"

    def resolved(self) -> "ExportConfig":
        """This config with empty ``supernet``/``subnet`` filled from ``variant``."""
        return dataclasses.replace(
            self,
            supernet=self.supernet or f"outputs/train/{self.variant}/supernet.pt",
            subnet=self.subnet or f"outputs/search/{self.variant}/best_subnet.json",
        )


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
    out = export_subnet(cfg.supernet, SubnetConfig.load(cfg.subnet), cfg.out)
    if tracking is not None:
        _log_export(out, cfg, tracking)
    return out


def _log_export(out: Path, cfg: ExportConfig, tracking: TrackingConfig) -> None:
    """MLflow run ``stage=export``: the subnet, its params and MACs."""
    from supersam.tracking import start_run

    config = read_export_config(out)
    params = {"supernet": cfg.supernet, "out": str(out), "subnet": json.dumps(config["subnet"]),
              "model_type": config["model_type"], "img_size": config["img_size"]}
    with start_run(tracking, "export", config.get("reorder", ""), params=params,
                   tags={"pretrained": config["pretrained"]}) as run:
        run.log_metrics({"params": config["params"], "macs": config["macs"],
                         "kept_blocks": len(config["subnet"]["kept_layers"])})
        run.log_artifact(str(out / "config.json"))


def _check_out(out: Path) -> None:
    if out.is_file():
        raise ConfigError(f"export output {out} is a file; choose a directory path for --out")
    if out.is_dir() and any(out.iterdir()):
        config = out / "config.json"
        try:
            ok = read_json(config, "export config").get("format") == EXPORT_FORMAT
        except (SupersamError, AttributeError):
            ok = False
        if not ok:
            raise ConfigError(f"export output {out} exists and is not a supersam export; choose a new or empty --out")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move finished ``tmp`` to ``out``; an existing export is swapped out, then removed."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / out.name)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _write_export(out: Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Write model.pt + config.json into a temporary sibling of ``out``, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the export normal permissions
        torch_save(state, tmp / "model.pt")
        write_json(tmp / "config.json", config)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    _check_out(out)
    supernet, meta = load_supernet(supernet_path)
    supernet.set_active_subnet(cfg)
    sam = supernet.get_active_subnet()
    blocks = sam.image_encoder.blocks
    config = {
        "format": EXPORT_FORMAT, "model_type": meta["model_type"], "img_size": meta["img_size"],
        "pretrained": bool(meta["pretrained"]), "reorder": meta["reorder"], "subnet": cfg.to_dict(),
        "block_mlp_dims": [blk.mlp.lin1.out_features for blk in blocks],
        "global_attn_indexes": [j for j, blk in enumerate(blocks) if blk.window_size == 0],
        "params": count_params(sam), "macs": subnet_macs(meta["model_type"], meta["img_size"], cfg),
        "encoder": EncoderSpec.from_encoder(sam.image_encoder).to_dict(),
        "pixel_mean": sam.pixel_mean.flatten().tolist(), "pixel_std": sam.pixel_std.flatten().tolist(),
        "supernet": str(supernet_path),
    }
    _write_export(out, sam.state_dict(), config)
    log.info(
        "exported subnet %s (%d blocks, %s params) of %s to %s",
        list(cfg.kept_layers), len(blocks), f"{config['params']:,}", supernet_path, out,
    )
    return out


def read_export_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` of an export directory (see the module docstring).

    Raises:
        CheckpointError: not an export directory or an invalid config.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not an exported supersam model (no config.json); run supersam export first")
    try:
        config = read_json(path / "config.json", "export config")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        raise CheckpointError(
            f"{path}/config.json is not a supersam export config (no {EXPORT_FORMAT!r} format tag); run supersam export"
        )
    return config


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Sam:
    """Load an export directory as a standard ``segment_anything.modeling.Sam`` (eval mode).

    Raises:
        CheckpointError: not an export directory, or weights that do not match its config.
    """
    path = Path(path)
    config = read_export_config(path)
    state = read_state_dict(path / "model.pt")
    try:
        with torch.device("meta"):
            sam = build_sam_model(config["model_type"], config["img_size"])
        sam.image_encoder = build_encoder(
            EncoderSpec.from_dict(config["encoder"]), config["block_mlp_dims"], config["global_attn_indexes"]
        )
    except (SupersamError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}/config.json is invalid ({exc}); re-run supersam export") from None
    assign_state(sam, state, f"exported model {path}")
    set_pixel_stats(sam, config["pixel_mean"], config["pixel_std"])
    return sam.to(torch.device(device)).eval()
