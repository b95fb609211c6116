"""Few-shot layer importance and the prunable set (paper Sec. III, Fig. 3; docs/method.md, "Layer importance").

Each encoder block's importance is the mIoU drop when it alone is removed
(skipped: its input goes straight to the next block) from the full model, on a
fixed few-shot sample (paper: 100 images). A true greedy curve then removes
blocks one at a time: at every step each remaining block is tried (removed on
top of the blocks already removed) and the least harmful one is dropped, so a
curve of n blocks costs n(n+1)/2 evaluations; every candidate is recorded. The
prunable set is read off the curve by a rule; block 0 is measured but never
selected.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from supersam.artifacts import paths
from supersam.artifacts.records import LayerRanking
from supersam.model.sam import get_arch
from supersam.model.space import SubnetConfig, subnet_params
from supersam.runtime.errors import ConfigError
from supersam.runtime.io import write_json
from supersam.runtime.plots import plot_curve, plot_importance
from supersam.runtime.tracking import start_run
from supersam.schema import ModelConfig, TrackingConfig, metric_key

log = logging.getLogger(__name__)

RULES = ("count", "budget")
PROB_RANGE = (0.1, 0.9)

DropEvaluate = Callable[[tuple[int, ...]], dict[str, float]]


@dataclass(frozen=True)
class RankLayersConfig:
    """params.yaml ``rank_layers`` section.

    Attributes:
        n_images: few-shot images evaluated per measurement (paper: 100).
        split: data split the images come from (``val``; ``test`` is refused).
        rule: ``count`` (the first ``n_prunable`` blocks the greedy curve removes)
            or ``budget`` (greedy removal until the next step would cost more than
            ``max_miou_drop`` against the full model).
        n_prunable: size of the prunable set for ``rule: count`` (paper: 5).
        max_miou_drop: allowed metric drop (absolute, 0..1) for ``rule: budget``.
        drop_prob: theta_i of every prunable block, a number in [0, 1]
            (reference code: 0.5), or ``importance`` (less important -> more
            often dropped, linearly mapped to [0.1, 0.9]).
        metric: ``single`` or ``oracle`` (:data:`supersam.schema.METRICS`), set by
            params.yaml's top-level ``metric``: the mIoU ranking, curve and rule use.
        out: output folder (ranking.json, importance.json/.png, curve.json/.png).
        device, amp, batch_size: evaluation device, bf16 autocast, images per forward.
        seed: seeds the image sample and its prompts.
    """

    n_images: int = 100
    split: str = "val"
    rule: str = "count"
    n_prunable: int = 5
    max_miou_drop: float = 0.1
    drop_prob: str = "0.5"
    metric: str = "single"
    out: str = str(paths.RANK_LAYERS_DIR)
    device: str = "auto"
    amp: bool = False
    batch_size: int = 1
    seed: int = 0

    def validate(self, depth: int) -> None:
        """Raises ConfigError naming the offending ``rank_layers.<key>``."""
        from supersam.data.config import check_selection_split

        check_selection_split(self.split, "rank_layers.split")
        if self.rule not in RULES:
            raise ConfigError(f"rank_layers.rule is {self.rule!r}; use one of {', '.join(RULES)}")
        metric_key(self.metric, "metric")
        if not 0 <= self.n_prunable <= depth - 1:
            raise ConfigError(
                f"rank_layers.n_prunable is {self.n_prunable}; use 0..{depth - 1} (block 0 is never prunable)"
            )
        if not 0.0 <= self.max_miou_drop <= 1.0:
            raise ConfigError(f"rank_layers.max_miou_drop is {self.max_miou_drop}; use a value in [0, 1]")
        if self.n_images < 0 or self.batch_size < 1:
            raise ConfigError("rank_layers.n_images must be >= 0 and rank_layers.batch_size >= 1")
        parse_drop_prob(self.drop_prob)


def parse_drop_prob(value: str | float) -> float | None:
    """``importance`` -> None; a probability -> float.

    Raises:
        ConfigError: neither a number in [0, 1] nor ``importance``.
    """
    if str(value).strip().lower() == "importance":
        return None
    try:
        prob = float(value)
    except ValueError:
        prob = -1.0
    if not 0.0 <= prob <= 1.0:
        raise ConfigError(f"rank_layers.drop_prob is {value!r}; use a probability in [0, 1] or 'importance'")
    return prob


def block_importance(evaluate: DropEvaluate, depth: int, key: str = "miou") -> tuple[dict, list[dict]]:
    """Baseline and every block's single-removal result (blocks 0..depth-1).

    Args:
        evaluate: dropped blocks -> {"params", "miou", "miou_oracle"}.
        key: the result key importance is measured in (``miou`` or ``miou_oracle``).

    Returns:
        (baseline result, per block result with ``block`` and ``importance`` = baseline - key).
    """
    base = evaluate(())
    single = []
    for block in range(depth):
        res = dict(evaluate((block,)))
        res.update(block=block, importance=base[key] - res[key])
        single.append(res)
        log.info("block %2d removed: %s %.4f (drop %+.4f)", block, key, res[key], res["importance"])
    return base, single


def greedy_curve(
    evaluate: DropEvaluate,
    blocks: Sequence[int],
    base: dict,
    key: str = "miou",
    first_step: dict[int, dict] | None = None,
) -> list[dict]:
    """True greedy removal (paper Fig. 3): each step drops the least harmful remaining block.

    At step k every block of ``blocks`` not yet removed is evaluated with the k-1
    blocks removed so far plus itself; the one with the highest ``key`` (ties:
    the lower block index) is removed. n blocks cost n(n+1)/2 evaluations
    (step 1 reuses ``first_step``, the single-removal results, when given).

    Args:
        evaluate: dropped blocks (sorted tuple) -> {"params", "miou", "miou_oracle"}.
        blocks: the candidate blocks (1..depth-1: block 0 is never removed).
        base: the full model's result (step 0).
        key: result key the choice maximises (``miou`` or ``miou_oracle``).
        first_step: block -> result of removing it alone, to avoid measuring twice.

    Returns:
        steps ``{"step", "removed", "dropped" (in removal order), "params", "miou",
        "miou_oracle", "candidates": [{"block", "params", "miou", "miou_oracle"}]}``,
        step 0 the full model (no candidates); the chosen point is the best candidate.
    """
    remaining, dropped = list(blocks), []
    curve = [{"step": 0, "removed": None, "dropped": [], **_point(base), "candidates": []}]
    while remaining:
        candidates = []
        for block in remaining:
            if not dropped and first_step is not None and block in first_step:
                res = first_step[block]
            else:
                res = evaluate(tuple(sorted([*dropped, block])))
            candidates.append({"block": block, **_point(res)})
        best = max(candidates, key=lambda c: (c[key], -c["block"]))
        dropped.append(best["block"])
        remaining.remove(best["block"])
        curve.append(
            {
                "step": len(dropped),
                "removed": best["block"],
                "dropped": list(dropped),
                **{k: best[k] for k in ("params", "miou", "miou_oracle")},
                "candidates": candidates,
            }
        )
        log.info(
            "greedy step %2d: remove block %2d (%s %.4f; %d candidates)",
            len(dropped),
            best["block"],
            key,
            best[key],
            len(candidates),
        )
    return curve


def _point(res: dict) -> dict:
    return {"params": int(res["params"]), "miou": float(res["miou"]), "miou_oracle": float(res["miou_oracle"])}


def choose_prunable(
    curve: Sequence[dict], rule: str, n_prunable: int, max_drop: float, key: str = "miou"
) -> tuple[int, ...]:
    """The prunable set read off the greedy curve (never block 0).

    ``count``: the first ``n_prunable`` blocks removed. ``budget``: greedy removal
    stops before the first step whose ``key`` is more than ``max_drop`` below the
    full model's (a later step that happens to recover is not taken: the greedy
    procedure has stopped there).
    """
    if rule == "count":
        k = min(n_prunable, len(curve) - 1)
    else:
        base = curve[0][key]
        k = 0
        while k + 1 < len(curve) and base - curve[k + 1][key] <= max_drop + 1e-12:
            k += 1
    return tuple(sorted(curve[k]["dropped"]))


def drop_probabilities(importance: Sequence[float], prunable: Sequence[int], spec: str | float) -> tuple[float, ...]:
    """theta_i per prunable block: a constant, or by importance (least important -> 0.9, most -> 0.1, linear)."""
    const = parse_drop_prob(spec)
    if const is not None:
        return tuple(const for _ in prunable)
    values = [importance[b] for b in prunable]
    if not values:
        return ()
    lo, hi = min(values), max(values)
    if hi - lo <= 1e-12:
        return tuple(0.5 for _ in prunable)
    a, b = PROB_RANGE
    return tuple(round(min(b, max(a, b - (b - a) * (v - lo) / (hi - lo))), 4) for v in values)


class _BlockSkipper:
    """Supernet-shaped wrapper for :class:`SubnetEvaluator` that may skip any block, block 0 included."""

    def __init__(self, sam: Any, model_type: str) -> None:
        from supersam.model.elastic import ElasticImageEncoderViT

        arch = get_arch(model_type)
        sam.image_encoder = ElasticImageEncoderViT(sam.image_encoder)
        self.sam, self.model_type, self.depth, self.mlp_dim = sam, model_type, arch.depth, arch.mlp_dim
        self.active_subnet = self.subnet(())

    def subnet(self, dropped: Sequence[int]) -> SubnetConfig:
        """The full-width subnet without the blocks ``dropped``."""
        return SubnetConfig.from_mlp_dims([0 if b in dropped else self.mlp_dim for b in range(self.depth)])

    def params(self, cfg: SubnetConfig) -> int:
        """Parameters of all of SAM without the dropped blocks, at the model's input size."""
        return subnet_params(self.model_type, self.sam.image_encoder.img_size, cfg)

    def set_active_subnet(self, cfg: SubnetConfig) -> SubnetConfig:
        """Run ``cfg`` (not validated against any SearchSpace, so block 0 may be skipped)."""
        self.sam.image_encoder.set_active(cfg)
        self.active_subnet = cfg
        return cfg


def _measure(cfg: RankLayersConfig, model: ModelConfig, data: Any) -> tuple[dict, DropEvaluate]:
    """Build SAM and the few-shot evaluator; returns (provenance, evaluate)."""
    from supersam.data import prepare_split
    from supersam.measure.scoring import SubnetEvaluator
    from supersam.model.sam import build_sam_from_config, pixel_stats
    from supersam.runtime.device import resolve_device

    arch = get_arch(model.type)
    device = resolve_device(cfg.device)
    loaded = build_sam_from_config(model)
    if not loaded.pretrained:
        log.warning("rank-layers runs on a randomly initialised SAM (no checkpoint): the ranking is not meaningful")
    inputs = prepare_split(
        data, cfg.split, loaded.img_size, n_images=cfg.n_images, seed=cfg.seed, **pixel_stats(loaded.model)
    )
    skipper = _BlockSkipper(loaded.model.to(device), model.type)
    evaluator = SubnetEvaluator(skipper, inputs, device, cfg.amp, cfg.batch_size)
    log.info(
        "ranking %d blocks of %s at %d px on %d images (%s)",
        arch.depth,
        model.type,
        loaded.img_size,
        len(inputs),
        device,
    )
    info = {
        "pretrained": loaded.pretrained,
        "n_images": len(inputs),
        "img_size": loaded.img_size,
        "n_objects": sum(inp.n_objects for inp in inputs),
    }
    return info, lambda dropped: evaluator.evaluate(skipper.subnet(dropped))


def _write_outputs(out: Path, ranking: LayerRanking) -> tuple[str, ...]:
    """ranking.json, DVC plot data (importance.json: block/miou_drop, curve.json: params/miou) and PNGs."""
    prunable, model_type, key = ranking.prunable, ranking.model_type, metric_key(ranking.metric)
    ranking.save(out / paths.RANKING.name)
    write_json(
        out / "importance.json",
        [
            {
                "block": s["block"],
                "miou_drop": s["importance"],
                "params": s["params"],
                "miou": s[key],
                "prunable": s["block"] in prunable,
            }
            for s in ranking.single
        ],
    )
    write_json(out / "curve.json", ranking.curve)
    plot_importance(out / "importance.png", ranking.importance, prunable, key, f"{model_type} layer importance")
    plot_curve(out / "curve.png", ranking.curve, len(prunable), key, f"{model_type} greedy layer removal")
    return (paths.RANKING.name, "importance.json", "curve.json", "importance.png", "curve.png")


def rank_layers(
    cfg: RankLayersConfig, model: ModelConfig, data: Any, tracking: TrackingConfig, evaluate: DropEvaluate | None = None
) -> LayerRanking:
    """Rank encoder blocks by few-shot importance and choose the prunable set (paper Sec. III, Fig. 3).

    Args:
        cfg: ``rank_layers`` section.
        model: SAM type, input size (px) and checkpoint.
        data: ``supersam.data.DataConfig`` of the few-shot images.
        tracking: MLflow settings (run tagged stage=rank-layers).
        evaluate: override of the measurement (dropped blocks -> params, miou,
            miou_oracle); by default SAM is built and evaluated on ``data``.

    Returns:
        the :class:`~supersam.artifacts.records.LayerRanking` written to ``ranking.json``.

    Raises:
        ConfigError / CheckpointError / DataError: bad params, checkpoint or data.
    """
    depth = get_arch(model.type).depth
    cfg.validate(depth)
    params = {**{f"rank_layers.{k}": v for k, v in asdict(cfg).items()}, "model_type": model.type}
    with start_run(tracking, "rank-layers", params=params, tags={"pretrained": bool(model.checkpoint)}) as run:
        info = {"pretrained": bool(model.checkpoint), "n_images": cfg.n_images, "img_size": model.img_size}
        if evaluate is None:
            info, evaluate = _measure(cfg, model, data)
            run.log_dataset(data.root, cfg.split, info["n_images"], info["n_objects"], data.kind)
        ranking = _rank(cfg, model, evaluate, depth, info)
        run.log_params(
            {
                "img_size": info["img_size"],
                "n_images_used": info["n_images"],
                "prunable": ranking.prunable,
                "drop_probs": ranking.drop_probs,
            }
        )
        chosen = ranking.curve[len(ranking.prunable)]
        key = metric_key(cfg.metric)
        run.log_metrics(
            {
                "baseline_miou": ranking.baseline_miou,
                "n_prunable": len(ranking.prunable),
                "params": chosen["params"],
                "miou": chosen[key],
                "n_objects": info.get("n_objects", 0),
                "n_evaluations": ranking.n_evaluations,
            }
        )
        out = Path(cfg.out)
        for name in _write_outputs(out, ranking):
            run.log_artifact(str(out / name))
    log.info(
        "prunable blocks %s (theta %s): %d params, %s %.4f vs %.4f full",
        ranking.prunable,
        ranking.drop_probs,
        chosen["params"],
        key,
        chosen[key],
        ranking.baseline_miou,
    )
    return ranking


def _rank(cfg: RankLayersConfig, model: ModelConfig, evaluate: DropEvaluate, depth: int, info: dict) -> LayerRanking:
    """Measure importance and the curve, choose the prunable set and theta_i."""
    key = metric_key(cfg.metric)
    base, single = block_importance(evaluate, depth, key)
    importance = [s["importance"] for s in single]
    curve = greedy_curve(evaluate, range(1, depth), base, key, first_step={s["block"]: s for s in single})
    prunable = choose_prunable(curve, cfg.rule, cfg.n_prunable, cfg.max_miou_drop, key)
    probs = drop_probabilities(importance, prunable, cfg.drop_prob)
    ranking = LayerRanking(
        model_type=model.type,
        img_size=info["img_size"],
        pretrained=info["pretrained"],
        n_images=info["n_images"],
        n_objects=int(info.get("n_objects", 0)),
        metric=cfg.metric,
        rule=cfg.rule,
        baseline_miou=float(base[key]),
        baseline=_point(base),
        importance=[float(v) for v in importance],
        single=[{"block": s["block"], **_point(s), "importance": float(s["importance"])} for s in single],
        curve=curve,
        prunable=list(prunable),
        drop_probs=list(probs),
        n_evaluations=1 + depth + sum(len(p["candidates"]) for p in curve[2:]),
    )
    return ranking
