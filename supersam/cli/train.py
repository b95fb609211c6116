"""``supersam train``: parse options, then call :func:`supersam.train.train`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from supersam.cli.app import app, params_option


@app.command("train")
def train_cli(
    params: Path = params_option(),
    supernet: Optional[str] = typer.Option(None, help="Input supernet.pt (supersam build-supernet)."),
    out: Optional[str] = typer.Option(None, help="Output folder: supernet.pt, metrics.json, history.json, checkpoints/."),
    iterations: Optional[int] = typer.Option(None, help="Optimizer iterations (one batch each)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per iteration over all processes."),
    lr: Optional[float] = typer.Option(None, help="AdamW start learning rate (paper 1e-5)."),
    min_lr_ratio: Optional[float] = typer.Option(None, "--min-lr-ratio", help="Final LR as a fraction of lr (paper 0.01)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="AdamW weight decay."),
    grad_clip: Optional[float] = typer.Option(None, "--grad-clip", help="Max gradient norm, 0 = off."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="bf16 autocast."),
    mode: Optional[str] = typer.Option(None, help="sandwich (one step per batch) or sequential (a step per subnet)."),
    n_random: Optional[int] = typer.Option(None, "--n-random", help="Random subnets per batch besides max and min."),
    distill: Optional[bool] = typer.Option(None, "--distill/--no-distill", help="In-place distillation from the max subnet."),
    distill_weight: Optional[float] = typer.Option(None, "--distill-weight", help="Weight of the distillation term."),
    trainable: Optional[str] = typer.Option(None, help="Comma-separated trained parts: image_encoder,mask_decoder[,prompt_encoder]."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Evaluate min/max/random subnets every N iterations."),
    val_images: Optional[int] = typer.Option(None, "--val-images", help="Validation images in the fixed probe sample."),
    target_miou: Optional[str] = typer.Option(None, "--target-miou", help="mIoU the smallest subnet must reach: absolute (0.84) or relative to the base model (0.9x or 90%)."),
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Resumable checkpoint every N iterations, 0 = off."),
    seed: Optional[int] = typer.Option(None, help="Seed of subnets, batch order, prompts."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N."),
    emission_factor: Optional[float] = typer.Option(None, "--emission-factor", help="kg CO2e per kWh (paper 0.437)."),
    country_iso_code: Optional[str] = typer.Option(None, "--country-iso-code", help="Country for codecarbon's estimate."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Data set folder (params `data.root`)."),
    data_kind: Optional[str] = typer.Option(None, "--data-kind", help="coco, sa1b or image_label."),
    prompt: Optional[str] = typer.Option(None, help="point or box: the validation probe's prompts (params `data.prompt`)."),
    train_prompt: Optional[str] = typer.Option(None, "--train-prompt", help="Training prompts: box, point or mixed (params `data.train_prompt`)."),
    max_objects: Optional[int] = typer.Option(None, "--max-objects", help="Prompted objects per training image (0 = data.max_objects)."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoints/last.pt."),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", help="Stop with a checkpoint after N iterations."),
    nproc: int = typer.Option(1, "--nproc", help="Processes (data parallel; re-launches under torchrun --standalone)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Sandwich-rule supernet training with periodic min/max/random evaluation, energy and MLflow."""
    from supersam.config import TrackingConfig, read_params, stage_config
    from supersam.errors import ConfigError
    from supersam.data import DataConfig
    from supersam.train import TrainConfig, train
    from supersam.train.distributed import launch_torchrun, strip_option

    values = read_params(params)
    parts = None if trainable is None else [p.strip() for p in trainable.split(",") if p.strip()]
    cfg = stage_config(TrainConfig, values, "train", dict(
        supernet=supernet, out=out, iterations=iterations, batch_size=batch_size, lr=lr,
        min_lr_ratio=min_lr_ratio, weight_decay=weight_decay, grad_clip=grad_clip, amp=amp, mode=mode,
        n_random=n_random, distill=distill, distill_weight=distill_weight, trainable=parts,
        eval_every=eval_every, val_images=val_images, target_miou=target_miou, save_every=save_every,
        seed=seed, device=device, emission_factor=emission_factor, country_iso_code=country_iso_code,
        max_objects=max_objects))
    data_cfg = stage_config(DataConfig, values, "data", dict(root=data_root, kind=data_kind, prompt=prompt,
                                                             train_prompt=train_prompt))
    tracking = stage_config(TrackingConfig, values, "mlflow", dict(tracking_uri=tracking_uri))
    if nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        if cfg.batch_size < nproc:  # checked here so the launcher fails once, before any rank starts
            raise ConfigError(f"train.batch_size {cfg.batch_size} is smaller than the {nproc} processes; "
                              f"pass --batch-size {nproc} (or more) or use fewer processes")
        args = sys.argv[sys.argv.index("train") + 1:]
        raise typer.Exit(launch_torchrun(nproc, strip_option(args, "--nproc")))
    train(cfg, data_cfg, tracking, resume=resume, stop_after=stop_after, show_progress=progress)
