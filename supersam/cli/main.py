"""Console entry point ``supersam``: registers every stage command and maps user errors to exit 1."""

from __future__ import annotations

import sys

from supersam.cli import (  # noqa: F401  (imports register the commands)
    bench, build_supernet, calibrate_wanda, compare, compare_seeds, eval, export, predict, pretrain, rank_layers, search, train,
)
from supersam.cli.app import app, console
from supersam.errors import SupersamError


def main() -> None:
    """Run the CLI; a :class:`SupersamError` becomes one red line and exit code 1."""
    try:
        app()
    except SupersamError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
