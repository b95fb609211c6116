"""``supersam rank-layers``: parse options, then call :func:`supersam.rank_layers.rank_layers`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from supersam.cli.app import app, params_option


@app.command("rank-layers")
def rank_layers_cli(
    params: Path = params_option(),
    n_images: Optional[int] = typer.Option(None, "--n-images", help="Few-shot images per measurement (paper: 100)."),
    split: Optional[str] = typer.Option(None, help="Data split the images come from."),
    rule: Optional[str] = typer.Option(None, help="count (n least important blocks) or budget (largest set within --max-miou-drop)."),
    n_prunable: Optional[int] = typer.Option(None, "--n-prunable", help="Prunable blocks for rule count (paper: 5)."),
    max_miou_drop: Optional[float] = typer.Option(None, "--max-miou-drop", help="Allowed mIoU drop for rule budget (0..1)."),
    drop_prob: Optional[str] = typer.Option(None, "--drop-prob", help="theta_i: a probability (0.5) or 'importance'."),
    metric: Optional[str] = typer.Option(None, help="miou (single mask) or miou_oracle (best of 3)."),
    out: Optional[str] = typer.Option(None, help="Output folder (ranking.json, importance.json/.png, curve.json/.png)."),
    model_type: Optional[str] = typer.Option(None, "--model-type", help="vit_b, vit_l, vit_h, vit_ti or tiny."),
    img_size: Optional[int] = typer.Option(None, "--img-size", help="Encoder input size in px (multiple of 16)."),
    checkpoint: Optional[str] = typer.Option(None, help="Official SAM .pth; empty = random init."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per encoder forward."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="bf16 autocast."),
    seed: Optional[int] = typer.Option(None, help="Seed of the image sample and prompts."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default sqlite:///mlflow.db)."),
) -> None:
    """Rank encoder blocks by few-shot importance and choose the prunable set (paper Fig. 3)."""
    from supersam.config import ModelConfig, TrackingConfig, read_params, stage_config
    from supersam.data import DataConfig
    from supersam.rank_layers import RankLayersConfig, rank_layers

    values = read_params(params)
    cfg = stage_config(RankLayersConfig, values, "rank_layers", dict(
        n_images=n_images, split=split, rule=rule, n_prunable=n_prunable, max_miou_drop=max_miou_drop,
        drop_prob=drop_prob, metric=metric, out=out, batch_size=batch_size, device=device, amp=amp, seed=seed))
    model_cfg = stage_config(ModelConfig, values, "model", dict(type=model_type, img_size=img_size, checkpoint=checkpoint))
    data_cfg = stage_config(DataConfig, values, "data")
    tracking = stage_config(TrackingConfig, values, "mlflow", dict(tracking_uri=tracking_uri))
    rank_layers(cfg, model_cfg, data_cfg, tracking)
