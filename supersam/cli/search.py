"""`supersam search` (not implemented yet)."""

from __future__ import annotations

from supersam.cli.app import app
from supersam.errors import SupersamError


@app.command("search")
def search_cli() -> None:
    """Not implemented yet."""
    raise SupersamError("supersam search is not implemented yet")
