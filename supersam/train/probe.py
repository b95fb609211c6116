"""Periodic validation during training and the time/energy-to-target milestone (paper Table I)."""

from __future__ import annotations

import torch

from supersam.data import DataConfig, prepare_split
from supersam.evaluator import SubnetEvaluator
from supersam.train.config import TrainConfig
from supersam.train.sampling import eval_generator

PROBE_KINDS = ("min", "max", "random")


class ValidationProbe:
    """mIoU of the smallest, the largest and one fixed random subnet on a fixed val sample.

    The sample is ``prepare_split(data, "val", img_size, cfg.val_images, cfg.seed)``;
    the random subnet is drawn once from ``eval_generator(cfg.seed)``. Prompt
    embeddings are cached unless the prompt encoder is being trained.

    Args:
        supernet: the ``SuperSam`` being trained.
        data_cfg: the data section.
        img_size: encoder input size in px.
        cfg: training settings (val_images, seed, amp, trainable).
        device: evaluation device.
        model_type: SAM type for the analytic parameter counts.
    """

    def __init__(self, supernet, data_cfg: DataConfig, img_size: int, cfg: TrainConfig,
                 device: torch.device, model_type: str) -> None:
        inputs = prepare_split(data_cfg, "val", img_size, n_images=cfg.val_images, seed=cfg.seed)
        self.evaluator = SubnetEvaluator(
            supernet, inputs, device, amp=cfg.amp, model_type=model_type,
            cache_prompts="prompt_encoder" not in cfg.trainable,
        )
        space = supernet.space
        self.subnets = {"min": space.min_subnet(), "max": space.max_subnet(),
                        "random": space.sample(eval_generator(cfg.seed))}
        self.n_images = len(inputs)

    def params(self) -> dict[str, int]:
        """``params_min``, ``params_max``, ``params_random``: all-of-SAM parameter counts."""
        return {f"params_{k}": int(self.evaluator.params(s)) for k, s in self.subnets.items()}

    def __call__(self) -> dict[str, float]:
        """``miou_min``, ``miou_max``, ``miou_random`` (single-mask mIoU, in [0, 1])."""
        return {f"miou_{k}": float(self.evaluator.evaluate(s)["miou"]) for k, s in self.subnets.items()}


def update_target(target: dict, miou_min: float, target_miou: float, iteration: int,
                  seconds: float, kwh: float) -> bool:
    """Record the first iteration whose smallest-subnet mIoU reaches ``target_miou``.

    ``target`` holds ``iterations_to_target``, ``seconds_to_target`` (wall s)
    and ``energy_kwh_to_target``, all None until reached. Returns True when
    this call recorded it.
    """
    if target.get("iterations_to_target") is not None or not miou_min >= target_miou:
        return False
    target.update(iterations_to_target=int(iteration), seconds_to_target=float(seconds),
                  energy_kwh_to_target=float(kwh))
    return True


def empty_target() -> dict:
    """The not-yet-reached milestone."""
    return {"iterations_to_target": None, "seconds_to_target": None, "energy_kwh_to_target": None}
