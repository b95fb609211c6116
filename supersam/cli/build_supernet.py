"""`supersam build-supernet`: parse options, call :func:`supersam.build_supernet.build_supernet`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from supersam.cli.app import app, params_option


@app.command("build-supernet")
def build_supernet_cli(
    params: Path = params_option(),
    reorder: Optional[str] = typer.Option(None, "--reorder", help="supernet.reorder: none, magnitude or wanda."),
    combine: Optional[str] = typer.Option(None, "--combine", help="supernet.combine: rank (paper) or score (reference code)."),
    stats: Optional[str] = typer.Option(None, "--stats", help="supernet.stats: calibrate-wanda artifact (wanda only)."),
    out: Optional[str] = typer.Option(None, "--out", help="supernet.out folder ({reorder} is replaced)."),
    ranking: Optional[str] = typer.Option(None, "--ranking", help="space.ranking: rank-layers ranking.json."),
    model_type: Optional[str] = typer.Option(None, "--model-type", help="model.type: vit_b, vit_l, vit_h, vit_ti, tiny."),
    img_size: Optional[int] = typer.Option(None, "--img-size", help="model.img_size in pixels."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="model.checkpoint (.pth); empty = random init."),
) -> None:
    """Reorder the encoder MLPs and write supernet.pt + search_space.json; reads `model`, `space`, `supernet`."""
    from supersam.build_supernet import SpaceConfig, SupernetConfig, build_supernet
    from supersam.config import ModelConfig, TrackingConfig, read_params, stage_config

    values = read_params(params)
    model_cfg = stage_config(ModelConfig, values, "model", {"type": model_type, "img_size": img_size, "checkpoint": checkpoint})
    space_cfg = stage_config(SpaceConfig, values, "space", {"ranking": ranking})
    cfg = stage_config(SupernetConfig, values, "supernet", {"reorder": reorder, "combine": combine, "stats": stats, "out": out})
    build_supernet(model_cfg, space_cfg, cfg, stage_config(TrackingConfig, values, "mlflow"))
