"""``supersam compare-seeds``: the variant comparison over several training seeds.

One CPU run cannot separate the reordering variants from noise (docs/method.md,
"Comparing the variants"). README's one-liner runs the pipeline as DVC experiments
with other ``train.seed`` values; this module reads ``dvc exp show --json``, keeps one
run per seed of one configuration, and summarises every per-variant figure of
``outputs/compare/metrics.json`` as mean +- std (``runs/compare/seeds.{json,md}``).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from supersam.artifacts import paths
from supersam.runtime.errors import ConfigError
from supersam.runtime.io import write_json, write_text

log = logging.getLogger(__name__)


def experiments_from_dvc(exp_show: Any, metrics_path: str = "outputs/compare/metrics.json") -> list[dict]:
    """The compare metrics and ``train.seed`` of every run in ``dvc exp show --json`` output.

    Every run with ``metrics_path`` counts (the workspace, commits, their
    experiments), one per ``train.seed``: an experiment wins over the workspace or
    a commit with the same seed (they are usually the same run restored), and
    dropped duplicates are logged.

    Returns:
        ``[{"name", "seed", "metrics"}]`` in the order found.

    Raises:
        ConfigError: not ``dvc exp show --json`` output, or runs whose params differ
            in more than ``train.seed`` (they would be averaged as if only the seed
            had changed; the message names a differing key).
    """
    if not isinstance(exp_show, list) or not all(isinstance(e, dict) for e in exp_show):
        raise ConfigError(
            "not `dvc exp show --json` output (DVC 3: a list of commits); "
            "save it with `dvc exp show --json > FILE` and pass --from FILE"
        )
    found: list[dict] = []

    def visit(entry: dict, is_experiment: bool) -> None:
        data = entry.get("data") or {}
        metrics = ((data.get("metrics") or {}).get(metrics_path) or {}).get("data")
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        if metrics:
            rest = json.loads(json.dumps(params))
            seed = (rest.get("train") or {}).pop("seed", None)
            found.append(
                {
                    "name": entry.get("name") or data.get("rev") or entry.get("rev"),
                    "seed": seed,
                    "metrics": metrics,
                    "params": rest,
                    "experiment": is_experiment,
                }
            )
        for exp in entry.get("experiments") or []:
            for rev_entry in exp.get("revs") or []:
                visit(rev_entry, True)

    for entry in exp_show:
        visit(entry, False)
    if found:
        first = found[0]
        for run in found[1:]:
            if run["params"] != first["params"]:
                key = _first_difference(first["params"], run["params"])
                raise ConfigError(
                    f"runs {first['name']} and {run['name']} differ in {key}, not only in train.seed; "
                    "summarise runs of one configuration (remove the others with `dvc exp remove`)"
                )
    by_seed: dict[Any, dict] = {}
    for run in found:
        kept = by_seed.get(run["seed"])
        if kept is None or (run["experiment"] and not kept["experiment"]):
            if kept is not None:
                log.info("train.seed %s: using experiment %s, not %s", run["seed"], run["name"], kept["name"])
            by_seed[run["seed"]] = run
        else:
            log.info("train.seed %s: %s already counted, %s skipped", run["seed"], kept["name"], run["name"])
    return [{k: r[k] for k in ("name", "seed", "metrics")} for r in by_seed.values()]


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "params"


def summarize_seeds(runs: Sequence[dict]) -> dict[str, Any]:
    """Mean +- std over runs of every per-variant compare figure.

    Args:
        runs: ``[{"name", "seed", "metrics"}]`` (:func:`experiments_from_dvc`).

    Returns:
        ``{"runs": [{"name", "seed"}], "figures": {key: {"mean", "std", "n", "values"}}}``;
        a run that did not reach a target contributes no value for that key.

    Raises:
        ConfigError: no runs with compare metrics.
    """
    if not runs:
        raise ConfigError(
            "no run with outputs/compare/metrics.json found; run `dvc repro` or queue seeds with "
            "`dvc exp run --queue -S train.seed=N` and `dvc exp run --run-all` first"
        )
    keys = sorted(
        {k for r in runs for k, v in r["metrics"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    )
    figures = {}
    for key in keys:
        values = [
            float(r["metrics"][key])
            for r in runs
            if isinstance(r["metrics"].get(key), (int, float)) and math.isfinite(float(r["metrics"][key]))
        ]
        figures[key] = {
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values),
            "values": values,
        }
    return {"runs": [{"name": r["name"], "seed": r["seed"]} for r in runs], "figures": figures}


def seeds_markdown(summary: dict[str, Any], variants: Sequence[str]) -> str:
    """Per variant: mean +- std (n runs) of iterations to target, energy to target and subnet mIoU."""
    cols = (
        ("iterations_to_target", ".1f"),
        ("seconds_to_target", ".1f"),
        ("energy_kwh_to_target", ".3g"),
        ("subnet_miou_mean", ".4f"),
        ("subnet_miou_diff_to_none", "+.4f"),
    )
    lines = ["| variant | " + " | ".join(c for c, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for v in variants:
        cells = []
        for col, spec in cols:
            fig = summary["figures"].get(f"{col}_{v}")
            if not fig or fig["mean"] is None:
                cells.append("-")
            else:
                std = "" if fig["std"] is None else f" +- {format(fig['std'], spec.lstrip('+'))}"
                cells.append(f"{format(fig['mean'], spec)}{std} (n={fig['n']})")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    seeds = ", ".join(str(r["seed"]) for r in summary["runs"])
    return "\n".join(lines) + f"\n\n{len(summary['runs'])} runs (train.seed {seeds}).\n"


def compare_seeds(exp_show: list[dict], variants: Sequence[str], out: str | Path = "") -> dict[str, Any]:
    """Summarise the compare figures of several runs (``supersam compare-seeds``).

    Writes ``seeds.json`` and ``seeds.md`` to ``out`` (default ``runs/compare``).
    """
    summary = summarize_seeds(experiments_from_dvc(exp_show))
    out = Path(out or paths.USER_COMPARE_DIR)
    write_json(out / "seeds.json", summary)
    text = seeds_markdown(summary, variants)
    write_text(out / "seeds.md", text)
    log.info("variants over %d runs (%s):\n%s", len(summary["runs"]), out / "seeds.md", text)
    return summary
