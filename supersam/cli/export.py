"""``supersam export``: parse options, then call :func:`supersam.stages.export.export`."""

from __future__ import annotations

from pathlib import Path

import typer

from supersam.cli.app import app, load_params, params_option, set_option


@app.command("export")
def export_cli(
    params: Path = params_option(),
    sets: list[str] = set_option(),
    variant: str | None = typer.Option(
        None, help="Reordering variant whose trained supernet and search result are the defaults."
    ),
    supernet: str | None = typer.Option(None, help="supernet.pt written by build-supernet or train."),
    subnet: str | None = typer.Option(None, help="Subnet config: a JSON file or an inline JSON object."),
    out: str | None = typer.Option(
        None, help="Output folder: model.pt + config.json, replaced atomically (default outputs/export/model)."
    ),
    fmt: str | None = typer.Option(
        None,
        "--format",
        help=(
            "pt (default: model.pt + config.json), onnx (adds onnx/encoder.onnx, decoder.onnx, onnx.json) or hf "
            "(adds hf/model.safetensors in transformers SamModel keys, config.json and preprocessor_config.json)."
        ),
    ),
    precision: str | None = typer.Option(
        None,
        help=(
            "With --format onnx: fp32 (default), fp16 (onnxruntime's converter) or int8 (onnxruntime dynamic "
            "quantization); fp16/int8 add encoder.<precision>.onnx and decoder.<precision>.onnx beside the fp32 pair."
        ),
    ),
) -> None:
    """Export a subnet as a standard segment_anything Sam (see supersam.stages.export.export)."""
    from supersam.schema import TrackingConfig, stage_config
    from supersam.stages.export import ExportConfig, export

    values = load_params(
        "export",
        params,
        sets,
        {
            "export.variant": variant,
            "export.supernet": supernet,
            "export.subnet": subnet,
            "export.out": out,
            "export.format": fmt,
            "export.precision": precision,
        },
    )
    export(stage_config(ExportConfig, values, "export"), stage_config(TrackingConfig, values, "mlflow"))
