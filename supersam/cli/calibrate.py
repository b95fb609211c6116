"""``supersam calibrate`` (alias ``calibrate-wanda``, the stage's name in the paper's pipeline): parse options,
then call :func:`supersam.stages.calibrate.calibrate`."""

from __future__ import annotations

from pathlib import Path

import typer

from supersam.cli.app import app, load_params, params_option, set_option


@app.command("calibrate")
def calibrate_cli(
    params: Path = params_option(),
    sets: list[str] = set_option(),
    checkpoint: str | None = typer.Option(
        None, help="Base model checkpoint (params model.checkpoint); empty = random init."
    ),
    out: str | None = typer.Option(
        None, help="Stats file to write (default outputs/calibration/calibration_stats.pt)."
    ),
) -> None:
    """Measure the calibration statistics of calibrate.criteria: Wanda's activation norms (paper Eq. 1) and SlimSAM's
    disturbed Taylor importance (its Eq. 4)."""
    from supersam.data import DataConfig
    from supersam.schema import ModelConfig, TrackingConfig, stage_config
    from supersam.stages.calibrate import CalibrateConfig, calibrate

    values = load_params(
        "calibrate",
        params,
        sets,
        {"model.checkpoint": checkpoint, "calibrate.out": out},
    )
    calibrate(
        stage_config(ModelConfig, values, "model"),
        stage_config(DataConfig, values, "data"),
        stage_config(CalibrateConfig, values, "calibrate"),
        stage_config(TrackingConfig, values, "mlflow"),
    )


app.command(
    "calibrate-wanda",
    help="Alias of `supersam calibrate` (its name in the paper's pipeline; it measures every criterion).",
)(calibrate_cli)
