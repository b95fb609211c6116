"""`supersam train` (not implemented yet)."""

from __future__ import annotations

from supersam.cli.app import app
from supersam.errors import SupersamError


@app.command("train")
def train_cli() -> None:
    """Not implemented yet."""
    raise SupersamError("supersam train is not implemented yet")
