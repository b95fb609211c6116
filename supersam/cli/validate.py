"""``supersam validate``: a whole params file against the schema, before any stage runs.

The pipeline's first stage, ``validate``, runs it: DVC removes a stage's outputs before it
runs the stage's command, so without it ``dvc exp run -S search.budget=abc`` would delete
the previous search's results before the search could refuse the value
(docs/contracts.md, "Failures"). The schema it checks against is :class:`supersam.cli.schema.Params`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import typer

from supersam.cli.app import app, load_params, params_option, set_option

VALID_FORMAT = "supersam-params/1"
"""``format`` of the marker ``validate --out`` writes; its content never depends on the params,
so the stages that depend on it are not re-run when it is rewritten."""


@app.command("validate")
def validate_cli(
    params: Path = params_option(),
    sets: list[str] = set_option(),
    out: str | None = typer.Option(
        None,
        help="Also write this marker file when the params are valid (the "
        "pipeline's first stage writes outputs/params/valid.json).",
    ),
) -> None:
    """Check a whole params file against the schema (every section, every range) before any stage runs.

    supersam validate                          # ./params.yaml
    supersam validate -p profiles/paper.yaml --set search.budget=48
    """
    from supersam.cli.schema import Params
    from supersam.runtime.io import write_json

    checked = Params.from_values(load_params("validate", params, sets))
    if out is not None:
        write_json(out, {"format": VALID_FORMAT})
    logging.getLogger(__name__).info("%s is valid (%d sections)", params, len(dataclasses.fields(checked)))
