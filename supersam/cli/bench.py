"""``supersam bench``: parse options, then call :func:`supersam.tools.bench.bench`."""

from __future__ import annotations

from pathlib import Path

import typer

from supersam.cli.app import app, load_params, params_option, set_option


@app.command("bench")
def bench_cli(
    model: str | None = typer.Argument(
        None,
        metavar="MODEL_OR_SUPERNET",
        help="Export folder, supernet.pt or SAM checkpoint (default params model.checkpoint).",
    ),
    params: Path = params_option(),
    sets: list[str] = set_option(),
    subnet: str | None = typer.Option(
        None, help="With a supernet: subnet JSON file or inline JSON (default its max subnet)."
    ),
    repeats: int | None = typer.Option(None, help="Timed runs (bench.repeats)."),
    warmup: int | None = typer.Option(None, help="Untimed warm-up runs (bench.warmup)."),
    threads: int | None = typer.Option(None, help="torch intra-op threads, 0 = torch's default (bench.threads)."),
    out: str | None = typer.Option(None, help="Write the figures to this JSON file."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file that is not a bench result."),
    everything: bool | None = typer.Option(
        None,
        "--everything/--no-everything",
        help=(
            "Also measure everything mode: the encoder once plus one decoder pass per point batch, predicted and "
            "measured (bench.everything)."
        ),
    ),
    points_per_side: int | None = typer.Option(
        None, "--points-per-side", help="Everything mode's grid, N x N points (bench.points_per_side, SAM's 32)."
    ),
) -> None:
    """Params, MACs (FlopCounterMode, MACs = FLOPs/2) and median/p90 encoder and decoder latency (ms) on this device."""
    from supersam.schema import ModelConfig, stage_config
    from supersam.tools.bench import BenchConfig, bench

    values = load_params(
        "bench",
        params,
        sets,
        {
            "bench.model": model,
            "bench.subnet": subnet,
            "bench.repeats": repeats,
            "bench.warmup": warmup,
            "bench.threads": threads,
            "bench.out": out,
            "bench.everything": everything,
            "bench.points_per_side": points_per_side,
        },
    )
    bench(stage_config(BenchConfig, values, "bench"), stage_config(ModelConfig, values, "model"), force=force)
