"""The ``compare`` stage: the reordering variants side by side, as the paper measures them.

After every variant's supernet is trained and searched, ``compare`` writes
(``outputs/compare/``; docs/method.md, "Comparing the variants"):

- ``table1.json`` / ``table1.md``: paper Table I, per variant the iterations,
  time, energy and CO2 its smallest subnet needed to reach ``train.target_miou``
  (read from each ``outputs/train/<variant>/table1.json``; training only, the
  validation and target probes excluded) and the ratio of each to ``none``'s.
- ``subnets.json`` / ``fig4.png``: paper Fig. 4, N subnets sampled once
  (seeded) and evaluated in every variant's trained supernet on the same
  validation objects: ``{"subnets": [...], "params": [...], "miou": {variant:
  [...]}, "summary": {variant: mean/median/std/min/max, paired difference and
  wins against none}}``.
- ``fig5.png``: paper Fig. 5, every variant's search Pareto frontier on one plot.
- ``metrics.json``: the figures DVC and ``dvc exp show`` compare across runs.

:mod:`supersam.tools.compare_seeds` turns several such runs (one per ``train.seed``, DVC
experiments) into mean +- std per variant, since one CPU run cannot separate the
variants from noise.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from supersam.artifacts import paths
from supersam.artifacts.records import TABLE1_TO_TARGET, SearchFrontier, Table1Row
from supersam.runtime.errors import ConfigError, DataError
from supersam.runtime.io import write_json, write_text
from supersam.runtime.plots import plot_frontiers, plot_subnet_distributions
from supersam.runtime.tracking import start_run
from supersam.schema import TrackingConfig, metric_key

log = logging.getLogger(__name__)

REFERENCE = "none"  # Table I's ratios are to the variant without reordering


@dataclass(frozen=True)
class CompareConfig:
    """params.yaml ``compare`` section.

    Attributes:
        n_subnets: subnets sampled once and evaluated in every variant (paper Fig. 4: 100).
        seed: seeds the subnet sample (the validation objects are fixed by ``data.seed``).
        split: data split evaluated (``val``; ``test`` is refused: it is held out for eval).
        n_images: validation images (0 = the whole split).
        metric: ``single`` or ``oracle`` (params.yaml's top-level ``metric``).
        out: output folder ("" = ``outputs/compare``).
        batch_size, device, amp: evaluation settings.
    """

    n_subnets: int = 20
    seed: int = 0
    split: str = "val"
    n_images: int = 8
    metric: str = "single"
    out: str = ""
    batch_size: int = 1
    device: str = "auto"
    amp: bool = False

    def validate(self) -> None:
        """Raises ConfigError naming the offending ``compare.<key>``."""
        from supersam.data.config import check_selection_split

        check_selection_split(self.split, "compare.split")
        metric_key(self.metric, "metric")
        if self.n_subnets < 1:
            raise ConfigError(f"compare.n_subnets must be >= 1, got {self.n_subnets}")
        if self.n_images < 0 or self.batch_size < 1:
            raise ConfigError("compare.n_images must be >= 0 and compare.batch_size >= 1")

    @property
    def out_dir(self) -> Path:
        return Path(self.out or paths.COMPARE_DIR)


def _ratio(value: Any, reference: Any) -> float | None:
    """value / reference; None when either is None (a missed target) or the reference is 0."""
    if value is None or reference is None or not reference:
        return None
    return float(value) / float(reference)


def _ratio_text(value: Any, reference: Any, ratio: float | None) -> str:
    if ratio is not None:
        return f"{ratio:.2f}"
    if value is not None and reference is not None and not reference:
        return "n/a (none: 0)"
    return "-"


def table1(rows: dict[str, Table1Row]) -> dict[str, Any]:
    """Paper Table I from each variant's ``table1.json`` row, with ratios to ``none``.

    Args:
        rows: variant -> the train stage's Table I row.

    Returns:
        ``{"variants": {v: {...row, "ratio_to_none": {field: v / none or None}}},
        "reference": "none" or None}``; a ratio is None when either run missed the
        target, ``none`` reached it at 0 (the markdown says ``n/a (none: 0)``) or
        ``none`` was not trained.
    """
    ref = rows[REFERENCE].to_dict() if REFERENCE in rows else None
    out = {}
    for variant, typed in rows.items():
        row = typed.to_dict()
        ratios = {f: _ratio(row.get(f), ref.get(f)) if ref else None for f in TABLE1_TO_TARGET}
        out[variant] = {**row, "ratio_to_none": ratios}
    return {"reference": REFERENCE if ref else None, "variants": out}


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table1_markdown(table: dict[str, Any]) -> str:
    """Table I as a markdown table (one line per variant)."""
    lines = [
        "| variant | iterations to target | time to target (s) | energy to target (kWh) | CO2 to target (kg) "
        "| ratio to none (it / s / kWh) | target mIoU | smallest subnet mIoU at the end | energy method |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, row in table["variants"].items():
        reached = row.get("iterations_to_target") is not None
        its = str(row["iterations_to_target"]) if reached else f"not reached in {row.get('iterations')}"
        r, ref = row["ratio_to_none"], table["variants"].get(REFERENCE, {})
        ratio = " / ".join(_ratio_text(row.get(f), ref.get(f), r[f]) for f in TABLE1_TO_TARGET[:3])
        lines.append(
            f"| {variant} | {its} | {_fmt(row.get('seconds_to_target'), '.1f')} "
            f"| {_fmt(row.get('energy_kwh_to_target'), '.3g')} | {_fmt(row.get('co2_kg_to_target'), '.3g')} "
            f"| {ratio} | {_fmt(row.get('target_miou'), '.4f')} ({row.get('target_miou_setting')}) "
            f"| {_fmt(row.get('miou_min'), '.4f')} | {row.get('energy_method')} |"
        )
    every = {row.get("target_every") for row in table["variants"].values()}
    lines.append("")
    lines.append(
        f"Time and energy count training only (validation and the target probes excluded); the smallest "
        f"subnet was probed every {', '.join(map(str, sorted(e for e in every if e is not None)))} "
        "iteration(s)."
    )
    return "\n".join(lines) + "\n"


def sample_subnets(space: Any, n: int, seed: int) -> list:
    """``n`` distinct subnets drawn with :meth:`SearchSpace.sample` from a seeded generator.

    Raises:
        ConfigError: the space has fewer than ``n`` distinct subnets.
    """
    import torch

    if space.size() < n:
        raise ConfigError(f"compare.n_subnets is {n} but the search space has only {space.size()} subnets; lower it")
    generator = torch.Generator().manual_seed(int(seed))
    seen, subnets = set(), []
    for _ in range(1000 * n):
        subnet = space.sample(generator)
        key = json.dumps(subnet.to_dict(), sort_keys=True)
        if key not in seen:
            seen.add(key)
            subnets.append(subnet)
            if len(subnets) == n:
                return subnets
    raise ConfigError(f"could not draw {n} distinct subnets from the search space; lower compare.n_subnets")


def summarize(miou: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per variant: mean, median, std, min, max; against ``none`` (same subnets, paired):
    mean difference and the number of subnets where the variant is better."""
    ref = miou.get(REFERENCE)
    out = {}
    for variant, values in miou.items():
        row = {
            "mean": statistics.fmean(values),
            "median": statistics.median(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
            "n": len(values),
        }
        if ref is not None and variant != REFERENCE:
            diffs = [a - b for a, b in zip(values, ref)]
            row.update(mean_diff_to_none=statistics.fmean(diffs), wins_over_none=sum(d > 0 for d in diffs))
        out[variant] = row
    return out


def check_comparable(cfg: CompareConfig, rows: dict[str, Table1Row], searches: dict[str, SearchFrontier]) -> str:
    """The variants' runs must have measured the same thing, under ``cfg.metric``.

    Returns:
        the cost axis every search's frontier was built on (``search.pareto_x``), Fig. 5's x-axis.

    Raises:
        ConfigError: a Table I row or a search under another metric, rows with
            different targets or probe resolutions, or frontiers on different axes.
    """
    for variant, row in rows.items():
        if row.metric != cfg.metric:
            raise ConfigError(
                f"outputs/train/{variant} was trained with metric {row.metric!r}, compare runs "
                f"with {cfg.metric!r}; re-run the pipeline (dvc repro) with one `metric`"
            )
    for variant, search in searches.items():
        if search.metric != cfg.metric:
            raise ConfigError(
                f"outputs/search/{variant} searched with metric {search.metric!r}, compare runs "
                f"with {cfg.metric!r}; re-run the pipeline (dvc repro) with one `metric`"
            )
    axes = {v: search.pareto_x for v, search in searches.items()}
    if len(set(axes.values())) > 1:
        raise ConfigError(
            f"the variants' Pareto frontiers are on different axes ({axes}); Fig. 5 draws one axis: "
            "re-run the searches with one search.pareto_x (dvc repro)"
        )
    for key in ("target_miou_setting", "target_every", "iterations"):
        values = {v: getattr(row, key) for v, row in rows.items()}
        if len(set(map(str, values.values()))) > 1:
            raise ConfigError(
                f"the variants were trained with different train.{key.removesuffix('_setting')} "
                f"({values}); Table I compares like with like: re-run `dvc repro`"
            )
    return next(iter(axes.values()), "params")


def _check_spaces(supernets: dict[str, Any]) -> Any:
    spaces = {v: s.space.to_dict() for v, s in supernets.items()}
    first = next(iter(spaces.values()))
    for variant, space in spaces.items():
        if space != first:
            raise ConfigError(
                f"the {variant} supernet has another search space than {next(iter(spaces))}'s; "
                "rebuild the variants from one ranking (dvc repro)"
            )
    return next(iter(supernets.values())).space


def evaluate_subnets(cfg: CompareConfig, variants: Sequence[str], data: Any, run: Any) -> dict[str, Any]:
    """Fig. 4: the same sampled subnets in every variant's trained supernet, on the validation objects."""
    from supersam.data import prepare_split
    from supersam.measure.scoring import SubnetEvaluator
    from supersam.model.checkpoint import load_supernet
    from supersam.model.sam import pixel_stats
    from supersam.runtime.device import resolve_device

    device = resolve_device(cfg.device)
    key = metric_key(cfg.metric)
    supernets = {v: load_supernet(paths.trained_supernet(v), device) for v in variants}
    space = _check_spaces(supernets)
    subnets = sample_subnets(space, cfg.n_subnets, cfg.seed)
    first = next(iter(supernets.values()))
    img_size = first.meta.img_size
    inputs = prepare_split(data, cfg.split, img_size, n_images=cfg.n_images, **pixel_stats(first))
    n_objects = sum(inp.n_objects for inp in inputs)
    run.log_dataset(data.root, cfg.split, len(inputs), n_objects, data.kind)
    miou: dict[str, list[float]] = {}
    params: list[int] = []
    for variant, supernet in supernets.items():
        evaluator = SubnetEvaluator(supernet, inputs, device, cfg.amp, cfg.batch_size)
        results = [evaluator.evaluate(s) for s in subnets]
        miou[variant] = [float(r[key]) for r in results]
        params = [int(r["params"]) for r in results]
        log.info(
            "%s: %d subnets, %s mean %.4f (min %.4f, max %.4f)",
            variant,
            len(subnets),
            key,
            statistics.fmean(miou[variant]),
            min(miou[variant]),
            max(miou[variant]),
        )
    return {
        "metric": cfg.metric,
        "split": cfg.split,
        "n_images": len(inputs),
        "n_objects": n_objects,
        "img_size": img_size,
        "seed": cfg.seed,
        "subnets": [s.to_dict() for s in subnets],
        "params": params,
        "miou": miou,
        "summary": summarize(miou),
    }


def compare(cfg: CompareConfig, variants: Sequence[str], data: Any, tracking: TrackingConfig) -> dict[str, Any]:
    """Compare the reordering variants (paper Table I, Fig. 4 and Fig. 5); ``supersam compare``.

    Args:
        cfg: the ``compare`` section.
        variants: the variants to compare (params.yaml ``variants``); each must have
            been trained (``outputs/train/<v>/``) and searched (``outputs/search/<v>/``).
        data: ``supersam.data.DataConfig`` of the validation objects.
        tracking: MLflow settings (run tagged stage=compare).

    Returns:
        the metrics.json dict.

    Raises:
        ConfigError: bad settings, no variants, or variants with different search spaces.
        DataError: a variant's train or search outputs are missing.
        CheckpointError: an unreadable trained supernet.
    """
    cfg.validate()
    variants = list(dict.fromkeys(variants))
    if not variants:
        raise ConfigError("no variants to compare; list them in params.yaml `variants:`")
    for v in variants:
        for needed in (
            paths.train_table1(v),
            paths.trained_supernet(v),
            paths.search_pareto(v),
            paths.search_dir(v) / paths.METRICS_FILE,
        ):
            if not needed.is_file():
                raise DataError(f"{needed} is missing: run `dvc repro` (or train and search the {v} variant) first")
    out = cfg.out_dir
    key = metric_key(cfg.metric)
    with start_run(
        tracking,
        "compare",
        params={**{f"compare.{k}": v for k, v in asdict(cfg).items()}, "variants": ",".join(variants)},
    ) as run:
        rows = {v: Table1Row.load(paths.train_table1(v)) for v in variants}
        searches = {v: SearchFrontier.load(paths.search_dir(v)) for v in variants}
        pareto_x = check_comparable(cfg, rows, searches)
        table = table1(rows)
        subnets = evaluate_subnets(cfg, variants, data, run)
        metrics = _metrics(table, subnets)
        write_json(out / paths.TABLE1_FILE, table)
        write_text(out / "table1.md", table1_markdown(table))
        write_json(out / "subnets.json", subnets)
        write_json(out / paths.METRICS_FILE, metrics)
        plot_subnet_distributions(
            out / "fig4.png",
            subnets["miou"],
            subnets["params"],
            key,
            f"{len(subnets['params'])} subnets, {subnets['n_objects']} validation objects",
        )
        plot_frontiers(out / "fig5.png", {v: search.points for v, search in searches.items()}, key, x=pareto_x)
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None})
        for name in (paths.TABLE1_FILE, "table1.md", "subnets.json", paths.METRICS_FILE, "fig4.png", "fig5.png"):
            run.log_artifact(str(out / name))
    log.info("Table I (%s):\n%s", out / "table1.md", table1_markdown(table))
    return metrics


def _metrics(table: dict[str, Any], subnets: dict[str, Any]) -> dict[str, Any]:
    """Flat per-variant figures (``<field>_<variant>``) for DVC metrics and MLflow."""
    out: dict[str, Any] = {
        "metric": subnets["metric"],
        "n_subnets": len(subnets["params"]),
        "n_objects": subnets["n_objects"],
    }
    for variant, row in table["variants"].items():
        for field in TABLE1_TO_TARGET:
            out[f"{field}_{variant}"] = row.get(field)
        stats = subnets["summary"][variant]
        out[f"subnet_miou_mean_{variant}"] = stats["mean"]
        out[f"subnet_miou_std_{variant}"] = stats["std"]
        if "mean_diff_to_none" in stats:
            out[f"subnet_miou_diff_to_none_{variant}"] = stats["mean_diff_to_none"]
            out[f"subnet_wins_over_none_{variant}"] = stats["wins_over_none"]
    return out
