"""Search artifacts: best_subnet.json, candidates.json, pareto.json/.png, metrics.json, timing.json, and the log
summary."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

from supersam.artifacts import paths as files
from supersam.measure.baselines import collapse_check, describe
from supersam.runtime.io import write_json
from supersam.runtime.plots import plot_pareto
from supersam.stages.search.objective import Candidate, SearchState
from supersam.stages.search.pareto import pareto_front

log = logging.getLogger(__name__)

# What a search writes into its folder (anything else there is the user's: outdir.prepare_out)
SEARCH_FILES = (
    files.BEST_SUBNET_FILE,
    files.CANDIDATES_FILE,
    files.PARETO_FILE,
    "pareto.png",
    files.METRICS_FILE,
    files.TIMING_FILE,
    "opentuner.log",
    "opentuner.db",
    "candidates.partial.jsonl",
)
# Wall-clock figures of a run: they differ between two runs with the same result, so they go to
# timing.json, not to metrics.json / pareto.json, which `compare` depends on (a re-run search with
# the same result then leaves compare up to date). candidates.json keeps each evaluation's seconds.
TIMING_KEYS = ("seconds", "evaluations_per_minute")


def _without_timing(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in TIMING_KEYS}


def _describe(c: Candidate, metric: str) -> str:
    return f"{c.params / 1e6:.3f}M params, {metric} {c.value(metric):.4f}"


def summarise(state: SearchState, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """metrics.json content: feasible, best_params, best_miou(_oracle), n_evaluations, seconds, constraints, ...

    ``best_*`` describe the best feasible subnet, or the closest candidate when none is feasible.
    """
    best = state.best()
    cons = state.constraints
    seconds = state.seconds
    metrics = {
        "feasible": bool(best is not None and best.feasible),
        "best_params": best.params if best else None,
        "best_miou": best.miou if best else None,
        "best_miou_oracle": best.miou_oracle if best else None,
        "best_subnet": best.subnet.to_dict() if best is not None and hasattr(best.subnet, "to_dict") else None,
        "best_macs": best.macs if best else None,
        "best_latency_ms_predicted": round(best.latency_ms, 4)
        if best is not None and best.latency_ms is not None
        else None,
        "n_evaluations": state.n_evaluations,
        "cache_hits": state.cache_hits,
        "evaluations_to_first_feasible": state.first_feasible(),
        "n_feasible": sum(c.feasible for c in state.candidates),
        "seconds": round(seconds, 3),
        "evaluations_per_minute": round(60.0 * state.n_evaluations / seconds, 2) if seconds > 0 else None,
        "constraints": cons.to_dict(),
    }
    metrics.update(extra or {})
    return metrics


def log_outcome(state: SearchState) -> None:
    """One line for the best feasible subnet, or a warning listing the closest candidates."""
    cons, best = state.constraints, state.best()
    if best is not None and best.feasible:
        log.info(
            "best subnet: %s (%d of %d evaluated subnets feasible)",
            _describe(best, cons.metric),
            sum(c.feasible for c in state.candidates),
            state.n_evaluations,
        )
        return
    closest = "; ".join(_describe(c, cons.metric) for c in state.closest(3)) or "none evaluated"
    log.warning(
        "no subnet met params <= %s and %s >= %.4f in %d evaluations; closest: %s. "
        "Relax the constraints or raise search.budget/search.time_limit (--set)",
        f"{cons.max_params:,}",
        cons.metric,
        cons.min_miou,
        state.n_evaluations,
        closest,
    )


def baseline_report(
    state: SearchState, baselines: Mapping[str, float], fg_fractions: Mapping[Hashable, float]
) -> dict[str, Any]:
    """Trivial baselines of the search's validation sample and the collapse check of the chosen subnet.

    Logs one line with the baselines next to the chosen subnet's mIoU, and a
    warning when that subnet looks collapsed
    (:func:`supersam.measure.baselines.collapse_check`).

    Args:
        state: the finished search; its ``best()`` is the chosen subnet.
        baselines: :func:`supersam.measure.baselines.trivial_baselines` of the sample.
        fg_fractions: subnet -> predicted foreground fraction (0..1, mean over objects).

    Returns:
        metrics.json entries: ``baseline_all_foreground``, ``baseline_box_fill``
        (box prompts) or ``baseline_disk`` (point prompts), ``best_fg_fraction``
        and ``collapsed`` (None when nothing was evaluated).
    """
    out: dict[str, Any] = {f"baseline_{k}": v for k, v in baselines.items()}
    best = state.best()
    if best is None:
        log.info("validation sample trivial baselines: %s", describe(baselines))
        return {**out, "best_fg_fraction": None, "collapsed": None}
    fg = fg_fractions.get(best.subnet, float("nan"))
    metric = state.constraints.metric  # the mIoU the search selected on (params.yaml `metric`)
    collapsed, reason = collapse_check(best.value(metric), fg, baselines)
    log.info("chosen subnet: %s %.2f (%s) on the validation sample", metric, best.value(metric), describe(baselines))
    if collapsed:
        log.warning("the chosen subnet looks collapsed: %s", reason)
    return {**out, "best_fg_fraction": fg, "collapsed": collapsed}


def write_artifacts(
    out: Path, state: SearchState, metrics: dict[str, Any], title: str = "", pareto_x: str = "params"
) -> list[Path]:
    """Write the search artifacts (best_subnet.json holds the best feasible or closest subnet).

    Args:
        pareto_x: cost axis of pareto.json/.png: ``params``, ``macs`` or ``latency``.

    Returns:
        the paths written.
    """
    out.mkdir(parents=True, exist_ok=True)
    cons, best = state.constraints, state.best()
    front = pareto_front(state.candidates, cons.metric, pareto_x)
    x_limit = {"params": cons.max_params, "macs": cons.max_macs, "latency": cons.max_latency_ms}[pareto_x] or None
    paths = []
    if best is not None:
        paths.append(
            write_json(
                out / files.BEST_SUBNET_FILE, best.subnet.to_dict() if hasattr(best.subnet, "to_dict") else best.subnet
            )
        )
    paths.append(write_json(out / files.CANDIDATES_FILE, [c.to_dict() for c in state.candidates]))
    paths.append(write_json(out / files.PARETO_FILE, [_without_timing(c.to_dict()) for c in front]))
    paths.append(
        plot_pareto(
            out / "pareto.png",
            state.candidates,
            front,
            best,
            cons.max_params,
            cons.min_miou,
            cons.metric,
            title,
            x=pareto_x,
            x_limit=x_limit,
        )
    )
    # pareto_x: the axis pareto.json's frontier is built on (compare draws Fig. 5 on it)
    paths.append(write_json(out / files.METRICS_FILE, {**_without_timing(metrics), "pareto_x": pareto_x}))
    paths.append(write_json(out / files.TIMING_FILE, {k: metrics[k] for k in TIMING_KEYS if k in metrics}))
    return paths
