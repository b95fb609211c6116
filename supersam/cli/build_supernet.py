"""`supersam build-supernet` (not implemented yet)."""

from __future__ import annotations

from supersam.cli.app import app
from supersam.errors import SupersamError


@app.command("build-supernet")
def build_supernet_cli() -> None:
    """Not implemented yet."""
    raise SupersamError("supersam build-supernet is not implemented yet")
