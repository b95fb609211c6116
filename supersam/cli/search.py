"""``supersam search``: parse options, then call :func:`supersam.stages.search.search`."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from supersam.cli.app import app, load_params, params_option, set_option, variant_help

log = logging.getLogger(__name__)


@app.command("search")
def search_cli(
    params: Path = params_option(),
    sets: list[str] = set_option(),
    max_params: str | None = typer.Option(
        None, "--max-params", help="Largest subnet, parameters of all of SAM: 60e6, 60000000, 60M, 1.5G, 500k."
    ),
    min_miou: str | None = typer.Option(
        None,
        "--min-miou",
        help=(
            "Smallest acceptable mIoU on the validation sample: absolute (0.8) or relative to the base model (0.95x "
            "or 95%: within 5% of its mIoU)."
        ),
    ),
    max_macs: str | None = typer.Option(
        None,
        "--max-macs",
        help="Largest subnet in MACs of one image + one prompt at the working size: 2G, 800M, 8e8 (0 = none).",
    ),
    max_latency_ms: float | None = typer.Option(
        None,
        "--max-latency-ms",
        help=(
            "Largest predicted image-encoder latency on this device, ms (latency table "
            "outputs/latency/<device-key>.json; 0 = none)."
        ),
    ),
    hf_compatible: bool | None = typer.Option(
        None,
        "--hf-compatible/--any-widths",
        help=(
            "Search only subnets transformers' SamModel can hold (blocks dropped, MLPs at full width; export "
            "--format hf)."
        ),
    ),
    pareto_x: str | None = typer.Option(None, "--pareto-x", help="x-axis of the Pareto plot: params, macs or latency."),
    variant: str | None = typer.Option(None, help=variant_help("picks the default supernet")),
    supernet: str | None = typer.Option(
        None, help="Supernet checkpoint (default outputs/train/<variant>/supernet.pt)."
    ),
    out: str | None = typer.Option(
        None, help="Output folder (default runs/search/<variant>; the pipeline writes outputs/search/<variant>)."
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help=(
            "Continue the interrupted search in OUT (its candidates.partial.jsonl); the result equals an "
            "uninterrupted search's."
        ),
    ),
    auto_resume: bool = typer.Option(
        False,
        "--auto-resume",
        help="Continue an interrupted search in OUT when it is this search's, else start afresh (the DVC stage).",
    ),
    force: bool = typer.Option(False, "--force", help="Write into an OUT that holds files search did not write."),
) -> None:
    """Search the trained supernet for the best subnet under --max-params, --min-miou, --max-macs and --max-latency-ms
    (OpenTuner)."""
    from supersam.data import DataConfig
    from supersam.runtime.errors import ConfigError
    from supersam.schema import TrackingConfig, stage_config
    from supersam.stages.search import SearchConfig, search

    if resume and auto_resume:
        raise ConfigError("--resume and --auto-resume exclude each other; pass one")
    values = load_params(
        "search",
        params,
        sets,
        {
            "search.max_params": max_params,
            "search.min_miou": min_miou,
            "search.max_macs": max_macs,
            "search.max_latency_ms": max_latency_ms,
            "search.pareto_x": pareto_x,
            "search.hf_compatible": hf_compatible,
            "search.variant": variant,
            "search.supernet": supernet,
            "search.out": out,
        },
    )
    cfg = stage_config(SearchConfig, values, "search")
    metrics = search(
        cfg,
        stage_config(DataConfig, values, "data"),
        stage_config(TrackingConfig, values, "mlflow"),
        resume="auto" if auto_resume else resume,
        force=force,
    )
    if cfg.strict and not metrics["feasible"]:
        log.error("no feasible subnet found and search.strict is set")
        raise typer.Exit(1)
