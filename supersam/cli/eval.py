"""`supersam eval` (not implemented yet)."""

from __future__ import annotations

from supersam.cli.app import app
from supersam.errors import SupersamError


@app.command("eval")
def eval_cli() -> None:
    """Not implemented yet."""
    raise SupersamError("supersam eval is not implemented yet")
