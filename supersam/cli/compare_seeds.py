"""``supersam compare-seeds``: parse options, then call :func:`supersam.tools.compare_seeds.compare_seeds`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import typer

from supersam.cli.app import app, load_params, params_option, set_option
from supersam.cli.compare import variants_of


@app.command("compare-seeds")
def compare_seeds_cli(
    params: Path = params_option(),
    sets: list[str] = set_option(),
    exp_json: Path | None = typer.Option(None, "--from", help="Saved `dvc exp show --json` output (default: run it)."),
    out: str | None = typer.Option(None, help="Output folder (default runs/compare)."),
) -> None:
    """Mean +- std per variant over several runs (`dvc exp run -S train.seed=N` experiments; README)."""
    from supersam.runtime.errors import ConfigError
    from supersam.tools.compare_seeds import compare_seeds

    values = load_params("compare-seeds", params, sets)
    if exp_json is not None:
        try:
            exp_show = json.loads(exp_json.read_bytes())  # bytes: json detects UTF-8/16/32
        except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
            reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
            raise ConfigError(f"--from {exp_json} is not readable `dvc exp show --json` output ({reason})") from None
    else:
        beside = Path(sys.executable).parent / "dvc"  # the environment supersam runs in
        dvc = shutil.which("dvc") or (str(beside) if beside.is_file() else None)
        if dvc is None:
            raise ConfigError("dvc is not on PATH; activate the project's environment or pass --from FILE")
        done = subprocess.run([dvc, "exp", "show", "--json"], capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(f"`dvc exp show --json` failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        try:
            exp_show = json.loads(done.stdout)
        except json.JSONDecodeError:
            raise ConfigError("`dvc exp show --json` printed no JSON; run it by hand to see why") from None
    compare_seeds(exp_show, variants_of(values), out or "")
