"""``supersam eval``: parse options, then call :func:`supersam.eval.evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from supersam.cli.app import app, params_option


@app.command("eval")
def eval_cli(
    params: Path = params_option(),
    model: Optional[str] = typer.Option(None, help="Exported subnet directory (supersam export); default: plain SAM from params `model`."),
    supernet: Optional[str] = typer.Option(None, help="Supernet checkpoint; evaluates --subnet (default its max subnet)."),
    subnet: Optional[str] = typer.Option(None, help="Subnet JSON file or inline JSON, with --supernet."),
    checkpoint: Optional[str] = typer.Option(None, help="Official SAM .pth for plain SAM; empty = random init."),
    model_type: Optional[str] = typer.Option(None, "--model-type", help="vit_b, vit_l, vit_h, vit_ti or tiny (plain SAM)."),
    img_size: Optional[int] = typer.Option(None, "--img-size", help="Encoder input size in px, multiple of 16 (plain SAM)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Data set folder (params `data.root`)."),
    data_kind: Optional[str] = typer.Option(None, "--data-kind", help="coco, sa1b or image_label (params `data.kind`)."),
    images: Optional[str] = typer.Option(None, help="Images folder/file relative to the data root."),
    labels: Optional[str] = typer.Option(None, help="Labels folder/file or COCO annotations JSON relative to the root."),
    label_mode: Optional[str] = typer.Option(None, "--label-mode", help="instance or binary (image_label data)."),
    split: Optional[str] = typer.Option(None, help="test (default), val, train or all."),
    n_images: Optional[int] = typer.Option(None, "--n-images", help="Images to evaluate (0 = whole split)."),
    prompt: Optional[str] = typer.Option(None, help="point or box: prompts of the headline mIoU (default params `data.prompt`)."),
    prompts: Optional[str] = typer.Option(None, help="Comma-separated prompt kinds the same objects are also evaluated with, e.g. box,point."),
    max_objects: Optional[int] = typer.Option(None, "--max-objects", help="Objects per image (0 = all; params `data.max_objects`)."),
    min_area: Optional[int] = typer.Option(None, "--min-area", help="Smallest object in px (params `data.min_area`)."),
    out: Optional[str] = typer.Option(None, help="Output folder for metrics.json and overlays/."),
    overlays: Optional[int] = typer.Option(None, help="Number of overlay PNGs to save."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per encoder forward."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="bf16 autocast."),
    seed: Optional[int] = typer.Option(None, help="Seed of the prompt draw."),
    name: Optional[str] = typer.Option(None, help="Label of this evaluation in MLflow."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default sqlite:///mlflow.db)."),
) -> None:
    """Evaluate SAM, an exported subnet or a supernet subnet: mIoU, overlays, MLflow run."""
    from supersam.config import ModelConfig, TrackingConfig, read_params, stage_config
    from supersam.data import DataConfig
    from supersam.eval import EvalConfig, evaluate

    values = read_params(params)
    cfg = stage_config(EvalConfig, values, "eval", dict(
        model=model, supernet=supernet, subnet=subnet, split=split, n_images=n_images, prompt=prompt,
        prompts=None if prompts is None else [p.strip() for p in prompts.split(",") if p.strip()],
        out=out, overlays=overlays, batch_size=batch_size, device=device, amp=amp, seed=seed, name=name))
    model_cfg = stage_config(ModelConfig, values, "model", dict(type=model_type, img_size=img_size, checkpoint=checkpoint))
    data_cfg = stage_config(DataConfig, values, "data", dict(
        root=data_root, kind=data_kind, images=images, labels=labels, label_mode=label_mode,
        max_objects=max_objects, min_area=min_area))
    tracking = stage_config(TrackingConfig, values, "mlflow", dict(tracking_uri=tracking_uri))
    evaluate(cfg, model_cfg, data_cfg, tracking)
