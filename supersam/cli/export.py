"""`supersam export` (not implemented yet)."""

from __future__ import annotations

from supersam.cli.app import app
from supersam.errors import SupersamError


@app.command("export")
def export_cli() -> None:
    """Not implemented yet."""
    raise SupersamError("supersam export is not implemented yet")
