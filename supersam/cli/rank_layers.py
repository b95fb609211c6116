"""``supersam rank-layers``: parse options, then call :func:`supersam.stages.rank_layers.rank_layers`."""

from __future__ import annotations

from pathlib import Path

import typer

from supersam.cli.app import app, load_params, params_option, set_option


@app.command("rank-layers")
def rank_layers_cli(
    params: Path = params_option(),
    sets: list[str] = set_option(),
    checkpoint: str | None = typer.Option(
        None, help="Base model checkpoint (params model.checkpoint); empty = random init."
    ),
    out: str | None = typer.Option(
        None, help="Output folder: ranking.json, importance.json/.png, curve.json/.png (default outputs/rank_layers)."
    ),
) -> None:
    """Rank encoder blocks by few-shot importance and choose the prunable set (paper Fig. 3)."""
    from supersam.data import DataConfig
    from supersam.schema import ModelConfig, TrackingConfig, stage_config
    from supersam.stages.rank_layers import RankLayersConfig, rank_layers

    values = load_params(
        "rank-layers",
        params,
        sets,
        {"model.checkpoint": checkpoint, "rank_layers.out": out},
    )
    rank_layers(
        stage_config(RankLayersConfig, values, "rank_layers"),
        stage_config(ModelConfig, values, "model"),
        stage_config(DataConfig, values, "data"),
        stage_config(TrackingConfig, values, "mlflow"),
    )
