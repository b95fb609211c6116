"""``supersam pretrain``: parse options, then call :func:`supersam.stages.pretrain.pretrain`."""

from __future__ import annotations

from pathlib import Path

import typer

from supersam.cli.app import app, load_params, params_option, set_option


@app.command("pretrain")
def pretrain_cli(
    params: Path = params_option(),
    sets: list[str] = set_option(),
    init: str | None = typer.Option(
        None, help="Checkpoint to start from (official sam_vit_*.pth); empty = random init."
    ),
    out: str | None = typer.Option(
        None, help="Output folder: model.pt, config.json, metrics.json, history.json (default outputs/pretrain)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoints/last.pt."),
    auto_resume: bool = typer.Option(
        False,
        "--auto-resume",
        help=(
            "Continue from OUT/checkpoints/last.pt when it matches this run and is unfinished, else start afresh "
            "(the DVC stage)."
        ),
    ),
    stop_after: int | None = typer.Option(None, "--stop-after", help="Stop with a checkpoint after N steps."),
) -> None:
    """Train the SAM-family base model SuperSAM compresses (SAM's recipe; or fine-tune/pass through --init)."""
    from supersam.data import DataConfig
    from supersam.runtime.errors import ConfigError
    from supersam.schema import ModelConfig, TrackingConfig, stage_config
    from supersam.stages.pretrain import PretrainConfig, pretrain

    if resume and auto_resume:
        raise ConfigError("--resume and --auto-resume exclude each other; pass one")
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"--stop-after is {stop_after}; use a number of steps >= 1")
    values = load_params("pretrain", params, sets, {"pretrain.init": init, "pretrain.out": out})
    pretrain(
        stage_config(ModelConfig, values, "model"),
        stage_config(DataConfig, values, "data"),
        stage_config(PretrainConfig, values, "pretrain"),
        stage_config(TrackingConfig, values, "mlflow"),
        resume="auto" if auto_resume else resume,
        stop_after=stop_after,
    )
