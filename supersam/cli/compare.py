"""``supersam compare``: parse options, then call :func:`supersam.stages.compare.compare`."""

from __future__ import annotations

from pathlib import Path

import typer

from supersam.cli.app import app, load_params, params_option, set_option


@app.command("compare")
def compare_cli(
    params: Path = params_option(),
    sets: list[str] = set_option(),
    out: str | None = typer.Option(None, help="Output folder (default outputs/compare)."),
) -> None:
    """Compare the reordering variants: Table I (iterations/time/energy to target), Fig. 4 and Fig. 5."""
    from supersam.data import DataConfig
    from supersam.schema import TrackingConfig, stage_config
    from supersam.stages.compare import CompareConfig, compare

    values = load_params("compare", params, sets, {"compare.out": out})
    compare(
        stage_config(CompareConfig, values, "compare"),
        variants_of(values),
        stage_config(DataConfig, values, "data"),
        stage_config(TrackingConfig, values, "mlflow"),
    )


def variants_of(values: dict) -> list[str]:
    """params.yaml ``variants`` (:func:`supersam.model.reorder.check_variants`; default all four).

    Raises:
        ConfigError: not a list of known variant names.
    """
    from supersam.model.reorder import check_variants

    return check_variants(values)
