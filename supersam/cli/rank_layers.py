"""`supersam rank-layers` (not implemented yet)."""

from __future__ import annotations

from supersam.cli.app import app
from supersam.errors import SupersamError


@app.command("rank-layers")
def rank_layers_cli() -> None:
    """Not implemented yet."""
    raise SupersamError("supersam rank-layers is not implemented yet")
