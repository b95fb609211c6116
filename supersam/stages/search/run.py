"""``supersam search``: constrained subnet search on a trained supernet (paper Sec. III "Deployment";
docs/method.md, "Constrained search")."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from supersam.measure.thresholds import base_checkpoint, resolve_threshold
from supersam.runtime.errors import ConfigError
from supersam.runtime.io import file_digest
from supersam.runtime.outdir import check_user_out, prepare_out, releases_claims
from supersam.schema import TrackingConfig, metric_key
from supersam.stages.search.config import SearchConfig
from supersam.stages.search.encoding import SubnetEncoding
from supersam.stages.search.journal import SearchJournal
from supersam.stages.search.objective import Constraints, SearchState
from supersam.stages.search.report import SEARCH_FILES, baseline_report, log_outcome, summarise, write_artifacts

log = logging.getLogger(__name__)


def run_search(
    encoding: SubnetEncoding,
    evaluate: Callable[[Any], dict[str, float]],
    constraints: Constraints,
    technique: str = "opentuner",
    budget: int = 200,
    time_limit: float = 0.0,
    seed: int = 0,
    workdir: str | Path | None = None,
) -> SearchState:
    """Search ``encoding``'s space for the best subnet under ``constraints``.

    Args:
        encoding: searched parameters -> canonical subnets.
        evaluate: subnet -> {"params", "miou", "miou_oracle"} (e.g. ``SubnetEvaluator.evaluate``).
        constraints: max params, min mIoU, objective and metric.
        technique: ``opentuner`` or ``random``.
        budget: distinct evaluations (0 = unlimited); time_limit: seconds (0 = unlimited).
        seed: makes the search reproducible.
        workdir: OpenTuner's database and log folder (required for ``opentuner``).

    Returns:
        the finished :class:`SearchState` (candidates in evaluation order, best()).
    """
    state = SearchState(evaluate, constraints, budget, time_limit, space_size=encoding.size())
    if technique == "opentuner":
        from supersam.stages.search.opentuner_driver import run_opentuner

        if workdir is None:
            raise ValueError("the opentuner technique needs a workdir for its database and log")
        run_opentuner(encoding, state, seed, workdir)
    elif technique == "random":
        from supersam.stages.search.random_search import run_random

        run_random(encoding, state, seed)
    else:
        raise ConfigError(f"unknown search technique {technique!r}; use opentuner or random")
    return state


def check_reachable(encoding: SubnetEncoding, params_of: Callable[[Any], int], max_params: int) -> int:
    """Parameters of the smallest subnet of the space.

    Raises:
        ConfigError: ``max_params`` is below it (one line stating the smallest achievable size).
    """
    smallest = params_of(encoding.smallest())
    if smallest > max_params:
        raise ConfigError(
            f"--max-params {max_params:,} is below the smallest subnet of this space "
            f"({smallest:,} params = {smallest / 1e6:.2f}M); raise --max-params to at least {smallest:,}"
        )
    return smallest


def _space(cfg: SearchConfig, supernet: Any) -> Any:
    """The searched space: ``cfg.space`` if given (must fit inside the supernet's), else the supernet's;
    with ``cfg.hf_compatible`` only its full-width subnets (blocks kept or dropped, no MLP slicing)."""
    from supersam.model.space import SearchSpace

    space, outer = (SearchSpace.load(cfg.space), supernet.space) if cfg.space else (supernet.space, supernet.space)
    if (
        (space.depth, space.mlp_dim) != (outer.depth, outer.mlp_dim)
        or not set(space.prunable) <= set(outer.prunable)
        or not set(space.mlp_dim_choices) <= set(outer.mlp_dim_choices)
    ):
        raise ConfigError(
            f"search space {cfg.space} is not a sub-space of the supernet's {outer.to_dict()}; "
            "use the supernet's search_space.json or a narrower one"
        )
    if cfg.hf_compatible:
        # transformers' SamVisionConfig has one mlp_dim for every block, and block 0 keeps the full width
        # (paper Sec. III), so a subnet SamModel can hold drops blocks but slices none
        space = replace(space, mlp_dim_choices=(space.mlp_dim,))
    return space


@releases_claims
def search(
    cfg: SearchConfig, data: Any, tracking: TrackingConfig, resume: bool | str = False, force: bool = False
) -> dict[str, Any]:
    """Find the smallest (or most accurate) subnet meeting ``--max-params``, ``--min-miou`` and,
    when set, ``--max-macs`` and ``--max-latency-ms`` (predicted from the device's latency table,
    :mod:`supersam.measure.latency`; the chosen subnet is then measured: ``best_latency_ms_measured``
    and ``latency_rel_error`` in metrics.json).

    Loads the supernet (``cfg.supernet_path``), evaluates subnets on a fixed
    validation sample (``data``, split ``cfg.split``, ``cfg.n_images`` images,
    prompts fixed by ``data.seed``) with :class:`supersam.measure.scoring.SubnetEvaluator`,
    searches with OpenTuner or random search, and writes best_subnet.json,
    candidates.json, pareto.json/.png and metrics.json into ``cfg.out_dir``
    plus an MLflow run (stage=search). The sample's trivial baselines
    (``baseline_all_foreground``, ``baseline_box_fill`` / ``baseline_disk``) and
    the chosen subnet's ``best_fg_fraction`` and ``collapsed``
    (:func:`supersam.measure.baselines.collapse_check`) go into metrics.json, MLflow and the log.

    Every evaluated subnet is appended to ``candidates.partial.jsonl`` as it is
    evaluated (:mod:`supersam.stages.search.journal`); ``resume`` continues an
    interrupted search from it, with the result of an uninterrupted one.

    Args:
        resume: True continues the interrupted search in the output folder (its
            journal; another search's is refused), ``"auto"`` only when it is this
            search's (the DVC stage), else starts afresh.
        force: write into an output folder that holds other files.

    Returns:
        the metrics.json dict (``feasible`` False when no subnet met the constraints, or when the chosen
        subnet's measured latency exceeds ``--max-latency-ms`` beyond the latency table's tolerance:
        ``latency_within_bound`` False).

    Raises:
        ConfigError: bad params, constraints no subnet of the space can meet
            in size (stating the smallest achievable size), an output folder that
            holds other files (without ``force``) or is not writable, or a journal
            of another search (with ``resume``).
        CheckpointError / DataError: unreadable supernet or data.
    """
    from supersam.model.checkpoint import load_supernet
    from supersam.runtime.device import resolve_device
    from supersam.runtime.tracking import start_run

    cfg.validate()
    device = resolve_device(cfg.device)
    supernet = load_supernet(cfg.supernet_path, device)
    meta = supernet.meta
    prepare_out(
        check_user_out(cfg.out_dir(meta.variant), "search --out"), SEARCH_FILES, "search --out", force
    )  # claimed before any work
    pretrained = meta.pretrained
    variant = meta.variant  # the supernet's own reordering variant
    encoding = SubnetEncoding.from_space(_space(cfg, supernet))
    smallest = check_reachable(encoding, supernet.params, cfg.max_params_count)
    base_checkpoint(cfg.min_miou_threshold, meta, "search.min_miou", str(cfg.supernet_path))  # refuse early
    latency = _latency_table(cfg, supernet, encoding)  # may measure for minutes: after every refusal
    if not pretrained:
        log.warning("the supernet comes from a randomly initialised SAM (pretrained=false): mIoUs are not meaningful")
    params = {
        **{f"search.{k}": v for k, v in asdict(cfg).items()},
        "max_params": cfg.max_params_count,
        "space_size": encoding.size(),
    }
    with start_run(tracking, "search", variant, params=params, tags={"pretrained": pretrained}) as run:
        metrics, state, collapse, written = _search(
            cfg, data, supernet, encoding, smallest, device, run, resume, latency
        )
        run.log_metrics(
            {
                "params": metrics["best_params"],
                "miou": metrics["best_miou"],
                "miou_oracle": metrics["best_miou_oracle"],
                "feasible": metrics["feasible"],
                "n_evaluations": state.n_evaluations,
                "seconds": metrics["seconds"],
                "evaluations_to_first_feasible": metrics["evaluations_to_first_feasible"],
                **{
                    k: metrics[k]
                    for k in ("best_macs", "best_latency_ms_predicted", "best_latency_ms_measured", "latency_rel_error")
                    if metrics.get(k) is not None
                },
                **{k: v for k, v in collapse.items() if v is not None},
            }
        )
        for path in written:
            run.log_artifact(str(path))
    return metrics


def _latency_table(cfg: SearchConfig, supernet: Any, encoding: SubnetEncoding) -> Any:
    """The device's latency table when the search needs one (else None); refuses an unreachable MACs or latency bound.

    Raises:
        ConfigError: ``--max-macs`` / ``--max-latency-ms`` below the smallest subnet's (stating it).
    """
    smallest = encoding.smallest()
    if cfg.max_macs_count and supernet.macs(smallest) > cfg.max_macs_count:
        macs = supernet.macs(smallest)
        raise ConfigError(
            f"--max-macs {cfg.max_macs_count:,} is below the smallest subnet of this space "
            f"({macs:,} MACs = {macs / 1e9:.3f}G); raise --max-macs to at least {macs:,}"
        )
    if not cfg.uses_latency:
        return None
    from supersam.measure.latency import load_or_measure

    table, path = load_or_measure(
        supernet, cfg.latency_table or None, cfg.latency_warmup, cfg.latency_repeats, cfg.latency_rounds
    )
    low = table.predict_ms(smallest)
    if cfg.max_latency_ms and low > cfg.max_latency_ms:
        raise ConfigError(
            f"--max-latency-ms {cfg.max_latency_ms:g} is below the predicted latency of the smallest "
            f"subnet of this space on this device ({low:.2f} ms, table {path}); raise it to at least {low:.2f}"
        )
    table.path = str(path)
    return table


def _measured_latency(cfg: SearchConfig, supernet: Any, best: Any, table: Any) -> dict[str, Any]:
    """metrics.json entries: the chosen subnet's encoder latency measured directly next to the table's prediction.

    With ``--max-latency-ms``, ``latency_within_bound`` says whether the measured latency (ms) is within
    the bound plus the table's tolerance (``table.tolerance``, 10%). A subnet the search found feasible
    by its predicted latency that exceeds the bound by more than that is reported as the search reports
    any infeasible result: ``feasible`` False in the returned entries (they override :func:`summarise`'s)
    and one warning naming predicted and measured latency and the fix; ``search.strict`` then exits 1.
    """
    if table is None or best is None:
        return {}
    from supersam.measure.latency import measure_subnet_ms

    measured = measure_subnet_ms(supernet, best.subnet, cfg.latency_warmup, cfg.latency_repeats, cfg.latency_rounds)
    predicted = best.latency_ms
    ms = measured["measured_ms"]
    error = (predicted - ms) / ms
    log.info(
        "chosen subnet encoder latency: predicted %.2f ms, measured %.2f ms (median %.2f, p90 %.2f; "
        "relative error %+.1f%%) on %s, %d threads",
        predicted,
        ms,
        measured["median_ms"],
        measured["p90_ms"],
        100 * error,
        table.device_name,
        table.threads,
    )
    tolerance = table.tolerance
    bound = cfg.max_latency_ms
    within = ms <= bound * (1 + tolerance) if bound else None
    out: dict[str, Any] = {}
    fix = f"delete the latency table {table.path} and search again on an idle machine to measure it afresh"
    if within is False and best.feasible:
        out["feasible"] = False
        log.warning(
            "the chosen subnet's measured encoder latency %.2f ms exceeds --max-latency-ms %g by more than "
            "the latency table's %.0f%% tolerance (predicted %.2f ms, error %+.1f%%): the table does not fit "
            "this machine or it was busy; the result is reported infeasible (feasible false, "
            "latency_within_bound false); %s",
            ms,
            bound,
            100 * tolerance,
            predicted,
            100 * error,
            fix,
        )
    elif abs(error) > tolerance:
        log.warning(
            "the chosen subnet's predicted encoder latency %.2f ms is off its measured %.2f ms by %+.1f%%, "
            "beyond the latency table's %.0f%% tolerance; if this persists, %s",
            predicted,
            ms,
            100 * error,
            100 * tolerance,
            fix,
        )
    elif bound and ms > bound and best.feasible:
        log.warning(
            "the chosen subnet's measured latency %.2f ms exceeds --max-latency-ms %g within the latency "
            "table's %.0f%% tolerance (predicted %.2f ms); the machine may be loaded: re-run, or lower the bound",
            ms,
            bound,
            100 * tolerance,
            predicted,
        )
    return {
        **out,
        "latency_within_bound": within,
        "latency_tolerance": tolerance,
        "best_latency_ms_measured": ms,
        "best_latency_median_ms": measured["median_ms"],
        "best_latency_p90_ms": measured["p90_ms"],
        "latency_rel_error": round(error, 4),
        "latency_table": table.path,
        "latency_device_key": table.key,
        "latency_threads": table.threads,
        "latency_device": table.device_name,
        "decoder_latency_ms": table.decoder_ms,
    }


def _identity(cfg: SearchConfig, data: Any, supernet_path: Path, encoding: SubnetEncoding) -> dict[str, Any]:
    """What a resumed search must share with the interrupted one (not the budget or time limit)."""
    keep = (
        "max_params",
        "min_miou",
        "objective",
        "metric",
        "technique",
        "seed",
        "split",
        "n_images",
        "batch_size",
        "amp",
        "max_macs",
        "max_latency_ms",
    )
    return {
        "supernet_digest": file_digest(supernet_path),
        "space": repr(encoding.parameters()),
        "search": {k: str(getattr(cfg, k)) for k in keep},
        "data": {k: str(v) for k, v in vars(data).items()},
    }


def _search(
    cfg: SearchConfig,
    data: Any,
    supernet: Any,
    encoding: SubnetEncoding,
    smallest: int,
    device: Any,
    run: Any,
    resume: bool | str,
    latency: Any = None,
) -> tuple[dict[str, Any], SearchState, dict[str, Any], list]:
    """Prepare the validation sample, resolve the threshold, search (journaled) and write the artifacts."""
    from supersam.data import prepare_split
    from supersam.measure.baselines import describe as describe_baselines
    from supersam.measure.baselines import trivial_baselines
    from supersam.measure.scoring import SubnetEvaluator
    from supersam.model.sam import pixel_stats

    meta = supernet.meta
    model_type, img_size, pretrained, variant = meta.model_type, meta.img_size, meta.pretrained, meta.variant
    inputs = prepare_split(data, cfg.split, img_size, n_images=cfg.n_images, **pixel_stats(supernet.sam))
    run.log_dataset(data.root, cfg.split, len(inputs), sum(inp.n_objects for inp in inputs), data.kind)
    evaluator = SubnetEvaluator(supernet, inputs, device, cfg.amp, cfg.batch_size)
    baselines = trivial_baselines(inputs)
    log.info(
        "validation sample: %d objects; trivial baselines %s",
        sum(inp.n_objects for inp in inputs),
        describe_baselines(baselines),
    )
    fg_fractions: dict[Any, float] = {}
    journal = SearchJournal(cfg.out_dir(variant), _identity(cfg, data, cfg.supernet_path, encoding), resume)

    def evaluate(subnet: Any) -> dict[str, float]:
        result = journal.lookup(subnet)  # replayed on --resume
        if result is None:
            t0 = time.perf_counter()
            result = {k: (v if isinstance(v, int) else float(v)) for k, v in evaluator.evaluate(subnet).items()}
            result["seconds"] = time.perf_counter() - t0
            journal.append(subnet, result)
        fg_fractions[subnet] = result["fg_fraction"]  # for the chosen subnet's collapse check
        # costs are derived, not journaled: MACs of one image + one prompt, predicted encoder latency
        return {
            **result,
            "macs": supernet.macs(subnet),
            "latency_ms": latency.predict_ms(subnet) if latency is not None else None,
        }

    key = metric_key(cfg.metric)
    min_miou = resolve_threshold(
        cfg.min_miou,
        meta,
        evaluator.inputs,
        device,
        what="search.min_miou",
        source=str(cfg.supernet_path),
        metric=key,
        amp=cfg.amp,
        batch_size=cfg.batch_size,
    )  # a relative one: against the base model, same sample
    constraints = Constraints(
        cfg.max_params_count, min_miou.value, cfg.objective, key, cfg.max_macs_count, cfg.max_latency_ms
    )
    out = cfg.out_dir(variant)
    log.info(
        "searching %s subnets (%s, %d px) with %s: params <= %s, %s >= %s, %s, budget %s%s, %d images",
        f"{encoding.size():,}",
        model_type,
        img_size,
        cfg.technique,
        f"{constraints.max_params:,}",
        key,
        min_miou.describe(),
        cfg.objective,
        cfg.budget or "unlimited",
        f", {cfg.time_limit:g} s" if cfg.time_limit else "",
        len(inputs),
    )
    if constraints.max_macs or constraints.max_latency_ms:
        log.info(
            "cost constraints: MACs <= %s, predicted encoder latency <= %s",
            f"{constraints.max_macs:,}" if constraints.max_macs else "any",
            f"{constraints.max_latency_ms:g} ms ({latency.key})" if constraints.max_latency_ms else "any",
        )
    finished = False
    try:
        state = run_search(encoding, evaluate, constraints, cfg.technique, cfg.budget, cfg.time_limit, cfg.seed, out)
        finished = True
    finally:
        journal.close(finished)
    log_outcome(state)
    collapse = baseline_report(state, baselines, fg_fractions)
    extra = {
        "pretrained": pretrained,
        "technique": cfg.technique,
        "seed": cfg.seed,
        "budget": cfg.budget,
        "time_limit": cfg.time_limit,
        "space_size": encoding.size(),
        "smallest_params": smallest,
        "largest_params": supernet.params(encoding.largest()),
        "model_type": model_type,
        "img_size": img_size,
        "n_images": len(inputs),
        "variant": variant,
        "supernet": str(cfg.supernet_path),
        **collapse,
        **min_miou.report("min_miou"),
        "metric": cfg.metric,
        "n_objects": sum(inp.n_objects for inp in inputs),
        "hf_compatible": cfg.hf_compatible,
        # params are counted for the model `export` writes: all of SAM at this input size
        "params_input_size": img_size,
    }
    extra.update(_measured_latency(cfg, supernet, state.best(), latency))
    metrics = summarise(state, extra)
    written = write_artifacts(out, state, metrics, f"{model_type} {variant}: {cfg.technique} search", cfg.pareto_x)
    run.log_params({**min_miou.report("min_miou"), "n_images_used": len(inputs)})
    return metrics, state, collapse, written
