"""`supersam export`: cut one subnet out of a supernet as a standard SAM."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from supersam.cli.app import app, params_option
from supersam.config import TrackingConfig, read_params, stage_config


@app.command("export")
def export_cli(
    variant: Optional[str] = typer.Option(None, "--variant", help="Reordering variant whose trained supernet and search result are the defaults."),
    supernet: Optional[Path] = typer.Option(None, "--supernet", help="supernet.pt written by build-supernet or train."),
    subnet: Optional[str] = typer.Option(None, "--subnet", help="Subnet config: a JSON file or an inline JSON object."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (model.pt + config.json), replaced atomically."),
    params: Path = params_option(),
) -> None:
    """Export a subnet as a standard segment_anything Sam (see supersam.export.export)."""
    from supersam.export import ExportConfig, export

    overrides = {"variant": variant, "supernet": supernet and str(supernet), "subnet": subnet, "out": out and str(out)}
    values = read_params(params)
    export(stage_config(ExportConfig, values, "export", overrides), stage_config(TrackingConfig, values, "mlflow"))
