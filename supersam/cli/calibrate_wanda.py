"""`supersam calibrate-wanda`: parse options, call :func:`supersam.calibrate.calibrate_wanda`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from supersam.cli.app import app, params_option


@app.command("calibrate-wanda")
def calibrate_wanda_cli(
    params: Path = params_option(),
    model_type: Optional[str] = typer.Option(None, "--model-type", help="model.type: vit_b, vit_l, vit_h, vit_ti, tiny."),
    img_size: Optional[int] = typer.Option(None, "--img-size", help="model.img_size in pixels."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="model.checkpoint (.pth); empty = random init."),
    n_images: Optional[int] = typer.Option(None, "--n-images", help="Calibration images (paper: 100; 0 = whole split)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per encoder forward."),
    split: Optional[str] = typer.Option(None, "--split", help="Data split: train, val or all (test is held out for eval)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Stats artifact to write (.pt)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="bf16 autocast."),
) -> None:
    """Measure the activation norms Wanda reordering needs (paper Eq. 1); reads `model`, `data`, `calibrate`."""
    from supersam.calibrate import CalibrateConfig, calibrate_wanda
    from supersam.config import ModelConfig, TrackingConfig, read_params, stage_config
    from supersam.data import DataConfig

    values = read_params(params)
    model_cfg = stage_config(ModelConfig, values, "model", {"type": model_type, "img_size": img_size, "checkpoint": checkpoint})
    data_cfg = stage_config(DataConfig, values, "data")
    cfg = stage_config(CalibrateConfig, values, "calibrate", {
        "n_images": n_images, "batch_size": batch_size, "split": split,
        "out": str(out) if out is not None else None, "device": device, "amp": amp,
    })
    calibrate_wanda(model_cfg, data_cfg, cfg, stage_config(TrackingConfig, values, "mlflow"))
