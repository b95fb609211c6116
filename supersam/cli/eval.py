"""``supersam eval``: parse options, then call :func:`supersam.eval.evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from supersam.cli.app import app, load_params, params_option, set_option


@app.command("eval")
def eval_cli(
    params: Path = params_option(),
    sets: list[str] = set_option(),
    model: Optional[str] = typer.Option(None, help="Exported subnet folder (supersam export); default: the base model of params `model`."),
    supernet: Optional[str] = typer.Option(None, help="Supernet checkpoint; evaluates --subnet (default its max subnet)."),
    subnet: Optional[str] = typer.Option(None, help="Subnet JSON file or inline JSON, with --supernet."),
    checkpoint: Optional[str] = typer.Option(None, help="SAM checkpoint to evaluate when neither --model nor --supernet is given (params model.checkpoint)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Data set folder (params data.root)."),
    split: Optional[str] = typer.Option(None, help="test (default), val, train or all."),
    name: Optional[str] = typer.Option(None, help="Label of this evaluation (MLflow run; default output folder runs/eval/<name>)."),
    out: Optional[str] = typer.Option(None, help="Output folder for metrics.json and overlays/ (default runs/eval/<name>; the pipeline writes outputs/eval/<name>)."),
) -> None:
    """Evaluate SAM, an exported subnet or a supernet subnet: mIoU next to trivial baselines, overlays, MLflow run."""
    from supersam.config import ModelConfig, TrackingConfig, stage_config
    from supersam.data import DataConfig
    from supersam.eval import EvalConfig, evaluate

    values = load_params("eval", ("eval", "model", "data", "mlflow"), params, sets, {
        "eval.model": model, "eval.supernet": supernet, "eval.subnet": subnet, "model.checkpoint": checkpoint,
        "data.root": data_root, "eval.split": split, "eval.name": name, "eval.out": out})
    evaluate(stage_config(EvalConfig, values, "eval"), stage_config(ModelConfig, values, "model"),
             stage_config(DataConfig, values, "data"), stage_config(TrackingConfig, values, "mlflow"))
