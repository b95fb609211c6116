"""``supersam train``: parse options, then call :func:`supersam.stages.train.train`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from supersam.cli.app import app, load_params, params_option, set_option, variant_help


@app.command("train")
def train_cli(
    params: Path = params_option(),
    sets: list[str] = set_option(),
    variant: str | None = typer.Option(None, help=variant_help("picks the default paths")),
    supernet: str | None = typer.Option(
        None, help="Input supernet.pt (default outputs/supernet/<variant>/supernet.pt)."
    ),
    out: str | None = typer.Option(
        None,
        help="Output folder: supernet.pt, metrics.json, history.json, checkpoints/ (default outputs/train/<variant>).",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue from OUT/checkpoints/last.pt (refused when its settings, data or input supernet differ).",
    ),
    auto_resume: bool = typer.Option(
        False,
        "--auto-resume",
        help=(
            "Continue from OUT/checkpoints/last.pt when it matches this run and is unfinished, else start afresh "
            "(the DVC stage)."
        ),
    ),
    stop_after: int | None = typer.Option(None, "--stop-after", help="Stop with a checkpoint after N iterations."),
    nproc: int = typer.Option(1, "--nproc", help="Processes (data parallel; re-launches under torchrun --standalone)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Sandwich-rule supernet training with periodic min/max/random evaluation, energy and MLflow."""
    from supersam.data import DataConfig
    from supersam.runtime.errors import ConfigError
    from supersam.schema import TrackingConfig, stage_config
    from supersam.stages.train import TrainConfig, train
    from supersam.stages.train.distributed import launch_torchrun, strip_option

    if nproc < 1:
        raise ConfigError(f"--nproc is {nproc}; use 1 (one process) or more")
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"--stop-after is {stop_after}; use a number of iterations >= 1")
    values = load_params(
        "train",
        params,
        sets,
        {"train.variant": variant, "train.supernet": supernet, "train.out": out},
    )
    cfg = stage_config(TrainConfig, values, "train")
    data_cfg = stage_config(DataConfig, values, "data")
    tracking = stage_config(TrackingConfig, values, "mlflow")
    if nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        if cfg.batch_size < nproc:  # checked here so the launcher fails once, before any rank starts
            raise ConfigError(
                f"train.batch_size {cfg.batch_size} is smaller than the {nproc} processes; "
                f"pass --set train.batch_size={nproc} (or more) or use fewer processes"
            )
        args = sys.argv[sys.argv.index("train") + 1 :]
        raise typer.Exit(launch_torchrun(nproc, strip_option(args, "--nproc")))
    if resume and auto_resume:
        raise ConfigError("--resume and --auto-resume exclude each other; pass one")
    train(
        cfg, data_cfg, tracking, resume="auto" if auto_resume else resume, stop_after=stop_after, show_progress=progress
    )
