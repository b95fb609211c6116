"""``supersam search``: parse options, then call :func:`supersam.search.search`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from supersam.cli.app import app, params_option

log = logging.getLogger(__name__)


@app.command("search")
def search_cli(
    params: Path = params_option(),
    max_params: Optional[str] = typer.Option(None, "--max-params", help="Largest subnet, parameters of all of SAM: 60e6, 60000000, 60M, 1.5G, 500k."),
    min_miou: Optional[str] = typer.Option(None, "--min-miou", help="Smallest acceptable mIoU on the validation sample: absolute (0.8) or relative to the base model (0.95x or 95%: within 5% of its mIoU)."),
    objective: Optional[str] = typer.Option(None, help="min-params (smallest feasible subnet) or max-miou (most accurate feasible subnet)."),
    metric: Optional[str] = typer.Option(None, help="miou (single mask) or miou_oracle (best of 3 masks)."),
    technique: Optional[str] = typer.Option(None, help="opentuner (AUC-bandit ensemble) or random."),
    budget: Optional[int] = typer.Option(None, help="Distinct subnets to evaluate (0 = no limit)."),
    time_limit: Optional[float] = typer.Option(None, "--time-limit", help="Seconds of search (0 = no limit)."),
    seed: Optional[int] = typer.Option(None, help="Search seed (same seed, same result)."),
    variant: Optional[str] = typer.Option(None, help="Reordering variant: none, magnitude or wanda (default paths)."),
    supernet: Optional[str] = typer.Option(None, help="Supernet checkpoint (default outputs/train/<variant>/supernet.pt)."),
    space: Optional[str] = typer.Option(None, help="search_space.json to search (default: the supernet's own space)."),
    out: Optional[str] = typer.Option(None, help="Output folder (default outputs/search/<variant>)."),
    split: Optional[str] = typer.Option(None, help="Data split to evaluate on (val)."),
    n_images: Optional[int] = typer.Option(None, "--n-images", help="Images in the fixed validation sample (0 = whole split)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per encoder forward."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="bf16 autocast."),
    strict: Optional[bool] = typer.Option(None, "--strict/--no-strict", help="Exit 1 when no subnet meets the constraints."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default sqlite:///mlflow.db)."),
) -> None:
    """Search the trained supernet for the best subnet under --max-params and --min-miou (OpenTuner)."""
    from supersam.config import TrackingConfig, read_params, stage_config
    from supersam.data import DataConfig
    from supersam.search import SearchConfig, search

    values = read_params(params)
    cfg = stage_config(SearchConfig, values, "search", dict(
        max_params=max_params, min_miou=min_miou, objective=objective, metric=metric, technique=technique,
        budget=budget, time_limit=time_limit, seed=seed, variant=variant, supernet=supernet, space=space,
        out=out, split=split, n_images=n_images, batch_size=batch_size, device=device, amp=amp, strict=strict))
    data_cfg = stage_config(DataConfig, values, "data")
    tracking = stage_config(TrackingConfig, values, "mlflow", dict(tracking_uri=tracking_uri))
    metrics = search(cfg, data_cfg, tracking)
    if cfg.strict and not metrics["feasible"]:
        log.error("no feasible subnet found and --strict is set")
        raise typer.Exit(1)
