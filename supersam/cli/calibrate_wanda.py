"""`supersam calibrate-wanda` (not implemented yet)."""

from __future__ import annotations

from supersam.cli.app import app
from supersam.errors import SupersamError


@app.command("calibrate-wanda")
def calibrate_wanda_cli() -> None:
    """Not implemented yet."""
    raise SupersamError("supersam calibrate-wanda is not implemented yet")
