"""The Typer app and what every command shares: params file option, logging, errors.

Command modules (one per pipeline stage, named after it) only parse options
and call a same-named plain library function that carries the docstring.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler

app = typer.Typer(
    name="supersam",
    help="SuperSAM: turn Segment Anything into a weight-sharing supernet and find small subnets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

console = Console(stderr=True)

PARAMS_HELP = "params.yaml to read this stage's section from; flags override it."


def params_option() -> Path:
    """The ``--params`` option every command takes (default ./params.yaml)."""
    return typer.Option(Path("params.yaml"), "--params", "-p", help=PARAMS_HELP)


def setup_logging(verbose: bool = False) -> None:
    """Route library logging through rich; quiet noisy third-party loggers."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = RichHandler(console=console, show_path=False, rich_tracebacks=False, markup=False)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", handlers=[handler], force=True)
    for name in ("alembic", "mlflow", "sqlalchemy", "urllib3", "matplotlib", "PIL", "codecarbon", "git", "opentuner"):
        logging.getLogger(name).setLevel(logging.WARNING)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    """SuperSAM pipeline commands (each reads its params.yaml section)."""
    setup_logging(verbose)
