"""The Typer app and what every command shares: ``-p/--params``, ``--set``, logging.

Command modules (one per pipeline stage, named after it) only parse options
and call a same-named stage function that carries the docstring. Each command
keeps as flags only what users type often (its inputs, outputs and the search
constraints); every params.yaml key is reachable with ``--set section.key=value``
(docs/architecture.md, "Configuration").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from supersam.schema import SECTIONS

app = typer.Typer(
    name="supersam",
    help="SuperSAM: turn Segment Anything into a weight-sharing supernet and find small subnets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

console = Console(stderr=True)

PARAMS_HELP = "params.yaml to read the settings from; --set and flags override it."
SET_HELP = (
    "Override one params.yaml key, e.g. --set train.iterations=48 or --set data.root=/my/data "
    "(repeatable; values are read as YAML, so numbers, booleans and lists keep their type)."
)


# Flags naming files or folders: given empty ("$UNSET_VAR"), they are refused, not defaulted.
PATH_FLAGS = ("out", "model", "supernet", "subnet", "checkpoint", "root", "space", "images", "labels")


READS: dict[str, tuple[str, ...]] = {
    "validate": SECTIONS,  # every section
    "pretrain": ("pretrain", "model", "data", "mlflow"),
    "rank-layers": ("rank_layers", "metric", "model", "data", "mlflow"),
    "calibrate": ("calibrate", "model", "data", "mlflow"),
    "build-supernet": ("supernet", "space", "model", "mlflow"),
    "train": ("train", "metric", "data", "mlflow"),
    "search": ("search", "metric", "data", "mlflow"),
    "compare": ("compare", "metric", "variants", "data", "mlflow"),
    "export": ("export", "mlflow"),
    "eval": ("eval", "metric", "model", "data", "mlflow"),
    "bench": ("bench", "model"),
    "compare-seeds": ("variants",),
}
"""command -> the params.yaml sections it reads (``metric`` and ``variants`` are top-level values)."""


def params_option() -> Path:
    """The ``-p/--params`` option every command takes (default ./params.yaml)."""
    return typer.Option(Path("params.yaml"), "--params", "-p", help=PARAMS_HELP)


def set_option() -> list[str]:
    """The repeatable ``--set section.key=value`` option every command takes."""
    return typer.Option([], "--set", help=SET_HELP, metavar="SECTION.KEY=VALUE")


def load_params(
    command: str,
    params: Path,
    sets: list[str],
    flags: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """params.yaml, then ``defaults``, then ``--set`` items, then the command's own flags (by dotted key; None = not
    given).

    Args:
        command: the command's name (:data:`READS` gives the sections it reads; a
            ``--set`` of another section would be silently ignored, so it is an error).
        defaults: dotted keys that replace the params file's values but yield to
            ``--set`` and flags (``eval --data-root``'s user-folder settings).

    Raises:
        ConfigError: unreadable params file, a malformed ``--set``, an unknown section,
            a section this command does not read, or an empty path flag (``--out ""``).
    """
    from supersam.runtime.errors import ConfigError
    from supersam.schema import apply_metric, apply_sets, parse_set, read_params

    reads = READS[command]

    for key, value in (flags or {}).items():
        if isinstance(value, str) and not value.strip() and key.rsplit(".", 1)[-1] in PATH_FLAGS:
            flag = key.rsplit(".", 1)[-1].replace("_", "-")
            raise ConfigError(f"--{flag} is empty; pass a path (an empty one would mean the working directory)")
    for item in sets:
        section = parse_set(item)[0][0]
        if section not in reads:
            raise ConfigError(
                f"--set {item}: `supersam {command}` does not read the {section} section (it reads {', '.join(reads)})"
            )
    return apply_metric(apply_sets(apply_sets(read_params(params), (), defaults), sets, flags))


def setup_logging(verbose: bool = False) -> None:
    """Route library logging through rich; quiet noisy third-party loggers."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = RichHandler(console=console, show_path=False, rich_tracebacks=False, markup=False)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", handlers=[handler], force=True
    )
    for name in ("alembic", "mlflow", "sqlalchemy", "urllib3", "matplotlib", "PIL", "codecarbon", "git", "opentuner"):
        logging.getLogger(name).setLevel(logging.WARNING)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    """SuperSAM pipeline commands (each reads its params.yaml section)."""
    setup_logging(verbose)


def variant_help(where: str) -> str:
    """``--variant``'s help: the registered reordering variants (:data:`supersam.model.reorder.VARIANTS`), then
    ``where``."""
    from supersam.model.reorder import VARIANTS

    names = list(VARIANTS)
    return f"Reordering variant: {', '.join(names[:-1])} or {names[-1]} ({where})."
