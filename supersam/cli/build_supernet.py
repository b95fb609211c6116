"""``supersam build-supernet``: parse options, then call :func:`supersam.stages.build_supernet.build_supernet`."""

from __future__ import annotations

from pathlib import Path

import typer

from supersam.cli.app import app, load_params, params_option, set_option, variant_help


@app.command("build-supernet")
def build_supernet_cli(
    params: Path = params_option(),
    sets: list[str] = set_option(),
    variant: str | None = typer.Option(None, help=variant_help("params supernet.variant")),
    out: str | None = typer.Option(None, help="Output folder (default outputs/supernet/<variant>)."),
) -> None:
    """Reorder the encoder MLPs and write supernet.pt + search_space.json."""
    from supersam.schema import ModelConfig, TrackingConfig, stage_config
    from supersam.stages.build_supernet import SpaceConfig, SupernetConfig, build_supernet

    values = load_params(
        "build-supernet",
        params,
        sets,
        {"supernet.variant": variant, "supernet.out": out},
    )
    build_supernet(
        stage_config(ModelConfig, values, "model"),
        stage_config(SpaceConfig, values, "space"),
        stage_config(SupernetConfig, values, "supernet"),
        stage_config(TrackingConfig, values, "mlflow"),
    )
