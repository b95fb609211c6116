"""``supersam calibrate-wanda``: parse options, then call :func:`supersam.calibrate.calibrate_wanda`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from supersam.cli.app import app, load_params, params_option, set_option


@app.command("calibrate-wanda")
def calibrate_wanda_cli(
    params: Path = params_option(),
    sets: list[str] = set_option(),
    checkpoint: Optional[str] = typer.Option(None, help="Base model checkpoint (params model.checkpoint); empty = random init."),
    out: Optional[str] = typer.Option(None, help="Stats file to write (default outputs/calibration/wanda_stats.pt)."),
) -> None:
    """Measure the calibration statistics of calibrate.criteria: Wanda's activation norms (paper Eq. 1) and SlimSAM's disturbed Taylor importance (its Eq. 4)."""
    from supersam.calibrate import CalibrateConfig, calibrate_wanda
    from supersam.config import ModelConfig, TrackingConfig, stage_config
    from supersam.data import DataConfig

    values = load_params("calibrate-wanda", ("calibrate", "model", "data", "mlflow"), params, sets, {"model.checkpoint": checkpoint, "calibrate.out": out})
    calibrate_wanda(stage_config(ModelConfig, values, "model"), stage_config(DataConfig, values, "data"),
                    stage_config(CalibrateConfig, values, "calibrate"), stage_config(TrackingConfig, values, "mlflow"))
