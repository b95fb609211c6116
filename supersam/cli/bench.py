"""``supersam bench``: parse options, then call :func:`supersam.bench.bench`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from supersam.cli.app import app, load_params, params_option, set_option


@app.command("bench")
def bench_cli(
    model: Optional[str] = typer.Argument(None, metavar="MODEL_OR_SUPERNET", help="Export folder, supernet.pt or SAM checkpoint (default params model.checkpoint)."),
    params: Path = params_option(),
    sets: list[str] = set_option(),
    subnet: Optional[str] = typer.Option(None, help="With a supernet: subnet JSON file or inline JSON (default its max subnet)."),
    repeats: Optional[int] = typer.Option(None, help="Timed runs (bench.repeats)."),
    warmup: Optional[int] = typer.Option(None, help="Untimed warm-up runs (bench.warmup)."),
    threads: Optional[int] = typer.Option(None, help="torch intra-op threads, 0 = torch's default (bench.threads)."),
    out: Optional[str] = typer.Option(None, help="Write the figures to this JSON file."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file that is not a bench result."),
    everything: Optional[bool] = typer.Option(None, "--everything/--no-everything", help="Also measure everything mode: the encoder once plus one decoder pass per point batch, predicted and measured (bench.everything)."),
    points_per_side: Optional[int] = typer.Option(None, "--points-per-side", help="Everything mode's grid, N x N points (bench.points_per_side, SAM's 32)."),
) -> None:
    """Params, MACs (FlopCounterMode, MACs = FLOPs/2) and median/p90 encoder and decoder latency (ms) on this device."""
    from supersam.bench import BenchConfig, bench
    from supersam.config import ModelConfig, stage_config

    values = load_params("bench", ("bench", "model"), params, sets, {
        "bench.model": model, "bench.subnet": subnet, "bench.repeats": repeats, "bench.warmup": warmup,
        "bench.threads": threads, "bench.out": out, "bench.everything": everything,
        "bench.points_per_side": points_per_side})
    bench(stage_config(BenchConfig, values, "bench"), stage_config(ModelConfig, values, "model"), force=force)
