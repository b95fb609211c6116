"""``supersam build-supernet``: parse options, then call :func:`supersam.build_supernet.build_supernet`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from supersam.cli.app import app, load_params, params_option, set_option


@app.command("build-supernet")
def build_supernet_cli(
    params: Path = params_option(),
    sets: list[str] = set_option(),
    variant: Optional[str] = typer.Option(None, help="Reordering variant: none, magnitude, wanda or taylor (params supernet.variant)."),
    out: Optional[str] = typer.Option(None, help="Output folder (default outputs/supernet/<variant>)."),
) -> None:
    """Reorder the encoder MLPs and write supernet.pt + search_space.json."""
    from supersam.build_supernet import SpaceConfig, SupernetConfig, build_supernet
    from supersam.config import ModelConfig, TrackingConfig, stage_config

    values = load_params("build-supernet", ("supernet", "space", "model", "mlflow"), params, sets, {"supernet.variant": variant, "supernet.out": out})
    build_supernet(stage_config(ModelConfig, values, "model"), stage_config(SpaceConfig, values, "space"),
                   stage_config(SupernetConfig, values, "supernet"), stage_config(TrackingConfig, values, "mlflow"))
