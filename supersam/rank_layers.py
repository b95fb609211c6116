"""Few-shot layer importance and the prunable set (paper Sec. III, Fig. 3; docs/method.md, "Layer importance").

Each encoder block's importance is the mIoU drop when it alone is removed
(skipped: its input goes straight to the next block) from the full model, on a
fixed few-shot sample (paper: 100 images). A greedy curve then removes the
least important remaining block one at a time (blocks ordered by that
importance), re-evaluating after each removal. The prunable set is read off
the curve by a rule; block 0 is measured but never selected.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from supersam import paths
from supersam.artifacts import LayerRanking
from supersam.config import ModelConfig, TrackingConfig
from supersam.errors import ConfigError
from supersam.io import write_json
from supersam.sam import get_arch
from supersam.plots import plot_curve, plot_importance
from supersam.space import SubnetConfig, subnet_params
from supersam.tracking import start_run

log = logging.getLogger(__name__)

RULES = ("count", "budget")
METRICS = ("miou", "miou_oracle")
PROB_RANGE = (0.1, 0.9)

DropEvaluate = Callable[[tuple[int, ...]], dict[str, float]]


@dataclass(frozen=True)
class RankLayersConfig:
    """params.yaml ``rank_layers`` section.

    Attributes:
        n_images: few-shot images evaluated per measurement (paper: 100).
        split: data split the images come from (``val``; ``test`` is refused).
        rule: ``count`` (the ``n_prunable`` least important blocks of the greedy
            curve) or ``budget`` (the largest greedy set whose removal costs at
            most ``max_miou_drop``).
        n_prunable: size of the prunable set for ``rule: count`` (paper: 5).
        max_miou_drop: allowed metric drop (absolute, 0..1) for ``rule: budget``.
        drop_prob: theta_i of every prunable block, a number in [0, 1]
            (reference code: 0.5), or ``importance`` (less important -> more
            often dropped, linearly mapped to [0.1, 0.9]).
        metric: ``miou`` (single mask) or ``miou_oracle`` (best of 3) drives ranking and rule.
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
    metric: str = "miou"
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
        if self.metric not in METRICS:
            raise ConfigError(f"rank_layers.metric is {self.metric!r}; use one of {', '.join(METRICS)}")
        if not 0 <= self.n_prunable <= depth - 1:
            raise ConfigError(f"rank_layers.n_prunable is {self.n_prunable}; use 0..{depth - 1} (block 0 is never prunable)")
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


def block_importance(evaluate: DropEvaluate, depth: int, metric: str = "miou") -> tuple[dict, list[dict]]:
    """Baseline and every block's single-removal result (blocks 0..depth-1).

    Args:
        evaluate: dropped blocks -> {"params", "miou", "miou_oracle"}.

    Returns:
        (baseline result, per block result with ``block`` and ``importance`` = baseline - metric).
    """
    base = evaluate(())
    single = []
    for block in range(depth):
        res = dict(evaluate((block,)))
        res.update(block=block, importance=base[metric] - res[metric])
        single.append(res)
        log.info("block %2d removed: %s %.4f (drop %+.4f)", block, metric, res[metric], res["importance"])
    return base, single


def greedy_curve(evaluate: DropEvaluate, importance: Sequence[float], base: dict) -> list[dict]:
    """Remove blocks 1..depth-1 in ascending importance (ties: lower index), re-evaluating each step.

    Returns:
        points ``{"dropped": [...], "params", "miou", "miou_oracle"}``, the first
        the full model; params strictly decrease along the curve.
    """
    order = sorted(range(1, len(importance)), key=lambda b: (importance[b], b))
    curve = [{"dropped": [], **_point(base)}]
    for k in range(1, len(order) + 1):
        dropped = order[:k]
        curve.append({"dropped": list(dropped), **_point(evaluate(tuple(sorted(dropped))))})
    return curve


def _point(res: dict) -> dict:
    return {"params": int(res["params"]), "miou": float(res["miou"]), "miou_oracle": float(res["miou_oracle"])}


def choose_prunable(curve: Sequence[dict], rule: str, n_prunable: int, max_drop: float,
                    metric: str = "miou") -> tuple[int, ...]:
    """The prunable set read off the greedy curve (never block 0).

    ``count``: the first ``n_prunable`` blocks removed; ``budget``: the largest
    curve step whose metric is within ``max_drop`` of the full model's.
    """
    if rule == "count":
        k = min(n_prunable, len(curve) - 1)
    else:
        base = curve[0][metric]
        k = max(i for i, p in enumerate(curve) if base - p[metric] <= max_drop + 1e-12)
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
        from supersam.elastic import ElasticImageEncoderViT

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
    from supersam.device import resolve_device
    from supersam.scoring import SubnetEvaluator
    from supersam.sam import build_sam_from_config, pixel_stats

    arch = get_arch(model.type)
    device = resolve_device(cfg.device)
    loaded = build_sam_from_config(model)
    if not loaded.pretrained:
        log.warning("rank-layers runs on a randomly initialised SAM (no checkpoint): the ranking is not meaningful")
    inputs = prepare_split(data, cfg.split, loaded.img_size, n_images=cfg.n_images, seed=cfg.seed,
                           **pixel_stats(loaded.model))
    skipper = _BlockSkipper(loaded.model.to(device), model.type)
    evaluator = SubnetEvaluator(skipper, inputs, device, cfg.amp, cfg.batch_size)
    log.info("ranking %d blocks of %s at %d px on %d images (%s)", arch.depth, model.type, loaded.img_size,
             len(inputs), device)
    info = {"pretrained": loaded.pretrained, "n_images": len(inputs), "img_size": loaded.img_size,
            "n_objects": sum(inp.n_objects for inp in inputs)}
    return info, lambda dropped: evaluator.evaluate(skipper.subnet(dropped))


def _write_outputs(out: Path, ranking: LayerRanking) -> tuple[str, ...]:
    """ranking.json, DVC plot data (importance.json: block/miou_drop, curve.json: params/miou) and PNGs."""
    prunable, model_type, metric = ranking.prunable, ranking.model_type, ranking.metric
    ranking.save(out / paths.RANKING.name)
    write_json(out / "importance.json", [
        {"block": s["block"], "miou_drop": s["importance"], "params": s["params"], "miou": s[metric],
         "prunable": s["block"] in prunable} for s in ranking.single])
    write_json(out / "curve.json", [{"step": k, **p} for k, p in enumerate(ranking.curve)])
    plot_importance(out / "importance.png", ranking.importance, prunable, metric, f"{model_type} layer importance")
    plot_curve(out / "curve.png", ranking.curve, len(prunable), metric, f"{model_type} greedy layer removal")
    return (paths.RANKING.name, "importance.json", "curve.json", "importance.png", "curve.png")


def rank_layers(cfg: RankLayersConfig, model: ModelConfig, data: Any, tracking: TrackingConfig,
                evaluate: DropEvaluate | None = None) -> LayerRanking:
    """Rank encoder blocks by few-shot importance and choose the prunable set (paper Sec. III, Fig. 3).

    Args:
        cfg: ``rank_layers`` section.
        model: SAM type, input size (px) and checkpoint.
        data: ``supersam.data.DataConfig`` of the few-shot images.
        tracking: MLflow settings (run tagged stage=rank-layers).
        evaluate: override of the measurement (dropped blocks -> params, miou,
            miou_oracle); by default SAM is built and evaluated on ``data``.

    Returns:
        the :class:`~supersam.artifacts.LayerRanking` written to ``ranking.json``.

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
        run.log_params({"img_size": info["img_size"], "n_images_used": info["n_images"],
                        "prunable": ranking.prunable, "drop_probs": ranking.drop_probs})
        chosen = ranking.curve[len(ranking.prunable)]
        run.log_metrics({"baseline_miou": ranking.baseline_miou, "n_prunable": len(ranking.prunable),
                         "params": chosen["params"], "miou": chosen[cfg.metric]})
        out = Path(cfg.out)
        for name in _write_outputs(out, ranking):
            run.log_artifact(str(out / name))
    log.info("prunable blocks %s (theta %s): %d params, %s %.4f vs %.4f full", ranking.prunable,
             ranking.drop_probs, chosen["params"], cfg.metric, chosen[cfg.metric], ranking.baseline_miou)
    return ranking


def _rank(cfg: RankLayersConfig, model: ModelConfig, evaluate: DropEvaluate, depth: int, info: dict) -> LayerRanking:
    """Measure importance and the curve, choose the prunable set and theta_i."""
    base, single = block_importance(evaluate, depth, cfg.metric)
    importance = [s["importance"] for s in single]
    curve = greedy_curve(evaluate, importance, base)
    prunable = choose_prunable(curve, cfg.rule, cfg.n_prunable, cfg.max_miou_drop, cfg.metric)
    probs = drop_probabilities(importance, prunable, cfg.drop_prob)
    ranking = LayerRanking(
        model_type=model.type, img_size=info["img_size"], pretrained=info["pretrained"],
        n_images=info["n_images"], metric=cfg.metric, rule=cfg.rule,
        baseline_miou=float(base[cfg.metric]), baseline=_point(base),
        importance=[float(v) for v in importance],
        single=[{"block": s["block"], **_point(s), "importance": float(s["importance"])} for s in single],
        curve=curve, prunable=list(prunable), drop_probs=list(probs),
    )
    return ranking
