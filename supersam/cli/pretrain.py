"""``supersam pretrain``: parse options, then call :func:`supersam.pretrain.pretrain`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from supersam.cli.app import app, params_option


@app.command("pretrain")
def pretrain_cli(
    params: Path = params_option(),
    init: Optional[str] = typer.Option(None, help="Checkpoint to start from (official sam_vit_*.pth); empty = random init."),
    out: Optional[str] = typer.Option(None, help="Output folder: model.pt, config.json, metrics.json, history.json."),
    iterations: Optional[int] = typer.Option(None, help="Optimizer steps; 0 passes --init through unchanged."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per step."),
    lr: Optional[float] = typer.Option(None, help="AdamW peak learning rate."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="bf16 autocast."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N."),
    seed: Optional[int] = typer.Option(None, help="Seed of batch order, augmentation and prompts."),
    model_type: Optional[str] = typer.Option(None, "--model-type", help="model.type: vit_b, vit_l, vit_h, vit_ti, tiny."),
    img_size: Optional[int] = typer.Option(None, "--img-size", help="model.img_size in px (multiple of 16)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Data set folder (params `data.root`)."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoints/last.pt."),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", help="Stop with a checkpoint after N steps."),
) -> None:
    """Train the SAM-family base model SuperSAM compresses (SAM's recipe; or fine-tune/pass through --init)."""
    from supersam.config import ModelConfig, TrackingConfig, read_params, stage_config
    from supersam.data import DataConfig
    from supersam.pretrain import PretrainConfig, pretrain

    values = read_params(params)
    cfg = stage_config(PretrainConfig, values, "pretrain", dict(
        init=init, out=out, iterations=iterations, batch_size=batch_size, lr=lr, amp=amp, device=device, seed=seed))
    model_cfg = stage_config(ModelConfig, values, "model", dict(type=model_type, img_size=img_size))
    data_cfg = stage_config(DataConfig, values, "data", dict(root=data_root))
    tracking = stage_config(TrackingConfig, values, "mlflow", dict(tracking_uri=tracking_uri))
    pretrain(model_cfg, data_cfg, cfg, tracking, resume=resume, stop_after=stop_after)
