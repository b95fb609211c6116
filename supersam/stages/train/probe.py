"""Periodic validation during training and the time/energy-to-target milestone (paper Table I;
docs/method.md, "Table I: iterations/energy to target")."""

from __future__ import annotations

import math

import torch

from supersam.artifacts.records import SupernetMeta
from supersam.data import DataConfig, prepare_split
from supersam.measure.baselines import collapse_check, describe, trivial_baselines
from supersam.measure.scoring import SubnetEvaluator
from supersam.measure.thresholds import ResolvedThreshold, base_checkpoint, resolve_threshold
from supersam.model.sam import pixel_stats
from supersam.model.space import SUBNET_KINDS
from supersam.runtime.sampling import eval_generator
from supersam.schema import metric_key
from supersam.stages.train.config import TrainConfig


class ValidationProbe:
    """mIoU of the smallest, the largest and one fixed random subnet on a fixed val sample.

    The sample is ``prepare_split(data, "val", img_size, cfg.val_images, data.seed)``
    (each object once); mIoUs are ``cfg.metric``'s (single or oracle); the random
    subnet is drawn once from ``eval_generator(data.seed)``. Both are fixed by the
    data seed, not ``train.seed``, so runs with other training seeds are measured on
    the same objects and subnets (as search and compare are). Prompt
    embeddings are cached unless the prompt encoder is being trained. The
    trivial baselines (:func:`supersam.measure.baselines.trivial_baselines`) are computed
    once on the same sample (``baselines``); every call keeps each subnet's
    predicted foreground fraction (``fg_fractions``) for :meth:`collapse_check`.

    Args:
        supernet: the ``SuperSam`` being trained.
        data_cfg: the data section.
        img_size: encoder input size in px.
        cfg: training settings (val_images, seed, amp, trainable).
        device: evaluation device.
    """

    def __init__(self, supernet, data_cfg: DataConfig, img_size: int, cfg: TrainConfig, device: torch.device) -> None:
        inputs = prepare_split(
            data_cfg, "val", img_size, n_images=cfg.val_images, seed=data_cfg.seed, **pixel_stats(supernet.sam)
        )
        self.evaluator = SubnetEvaluator(
            supernet,
            inputs,
            device,
            amp=cfg.amp,
            cache_prompts="prompt_encoder" not in cfg.trainable,
        )
        space = supernet.space
        generator = eval_generator(data_cfg.seed)  # the fixed random subnet, the same in every run
        self.subnets = {kind: space.subnet(kind, generator) for kind in SUBNET_KINDS}
        self.key = metric_key(cfg.metric)
        self.n_images = len(inputs)
        self.n_objects = sum(inp.n_objects for inp in inputs)
        self.baselines = trivial_baselines(inputs)
        self.fg_fractions: dict[str, float] = {}

    def params(self) -> dict[str, int]:
        """``params_min``, ``params_max``, ``params_random``: all-of-SAM parameter counts."""
        return {f"params_{k}": int(self.evaluator.params(s)) for k, s in self.subnets.items()}

    def baseline_metrics(self) -> dict[str, float]:
        """``baseline_all_foreground`` and ``baseline_box_fill`` (box) or ``baseline_disk`` (point):
        trivial-baseline mIoUs (in [0, 1]) on the probe's validation sample."""
        return {f"baseline_{k}": v for k, v in self.baselines.items()}

    def describe_baselines(self) -> str:
        """``all-foreground 0.03, box fill 0.60``: the baselines for a log line."""
        return describe(self.baselines)

    def collapse_check(self, miou: float, kind: str = "min") -> tuple[bool, str]:
        """:func:`supersam.measure.baselines.collapse_check` of subnet ``kind`` with mIoU ``miou``.

        Uses the foreground fraction of the latest call (NaN, i.e. only the mIoU
        criterion, when this process has not evaluated yet, e.g. right after a resume).
        """
        return collapse_check(miou, self.fg_fractions.get(kind, math.nan), self.baselines)

    def __call__(self, kinds: tuple[str, ...] = SUBNET_KINDS) -> dict[str, float]:
        """``miou_max``, ``miou_min``, ``miou_random`` (mIoU under ``cfg.metric``, in [0, 1]) of ``kinds``."""
        scores = {}
        for k in kinds:
            result = self.evaluator.evaluate(self.subnets[k])
            scores[f"miou_{k}"] = float(result[self.key])
            self.fg_fractions[k] = float(result["fg_fraction"])
        return scores


def update_target(
    target: dict, miou_min: float, target_miou: float, iteration: int, seconds: float, kwh: float
) -> bool:
    """Record the first iteration whose smallest-subnet mIoU reaches ``target_miou``.

    ``target`` holds ``iterations_to_target``, ``seconds_to_target`` (s of
    training, validation and probes excluded) and ``energy_kwh_to_target``
    (likewise), all None until reached; a target met at iteration 0 (before
    training) costs exactly 0 s and 0 kWh. Returns True when
    this call recorded it.
    """
    if target.get("iterations_to_target") is not None or not miou_min >= target_miou:
        return False
    if iteration == 0:  # met before any training: it cost no training time or energy
        seconds = kwh = 0.0
    target.update(
        iterations_to_target=int(iteration), seconds_to_target=float(seconds), energy_kwh_to_target=float(kwh)
    )
    return True


def empty_target() -> dict:
    """The not-yet-reached milestone."""
    return {"iterations_to_target": None, "seconds_to_target": None, "energy_kwh_to_target": None}


def resolve_target(
    cfg: TrainConfig, meta: SupernetMeta, probe: ValidationProbe | None, source: str = "the supernet"
) -> ResolvedThreshold | None:
    """``cfg.target_miou`` as an absolute mIoU, resolved once at the start of training.

    A relative target (``0.9x``) multiplies the base model's mIoU (``cfg.metric``)
    (``meta.checkpoint``, the SAM the supernet was built from) on the probe's
    own validation sample. Every rank checks that a base model exists; only the
    rank with the probe (rank 0) measures it, the others get None.

    Raises:
        ConfigError: invalid target, or a relative one for a supernet from a random-init SAM.
        CheckpointError: the base checkpoint is missing or unreadable.
    """
    base_checkpoint(cfg.target_threshold, meta, "train.target_miou", source)
    if probe is None:
        return None
    evaluator = probe.evaluator
    return resolve_threshold(
        cfg.target_miou,
        meta,
        evaluator.inputs,
        evaluator.device,
        what="train.target_miou",
        source=source,
        metric=probe.key,
        amp=cfg.amp,
    )
