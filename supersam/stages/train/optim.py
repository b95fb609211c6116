"""Trainable parts, AdamW and the linear LambdaLR decay (paper Sec. IV: lr 1e-5 -> 1%), optionally warmed up."""

from __future__ import annotations

import functools

import torch

from supersam.runtime.sampling import lr_factor
from supersam.stages.train.config import TRAINABLE_PARTS, TrainConfig


def set_trainable(supernet: torch.nn.Module, trainable: tuple[str, ...]) -> list[torch.nn.Parameter]:
    """Freeze everything but the listed SAM parts; return the trainable params in a fixed order.

    Args:
        supernet: a ``SuperSam`` (parts are ``supernet.sam.<part>``).
        trainable: subset of ``image_encoder``, ``prompt_encoder``, ``mask_decoder``.
    """
    for p in supernet.parameters():
        p.requires_grad_(False)
    params = []
    for part in TRAINABLE_PARTS:
        if part in trainable:
            for p in getattr(supernet.sam, part).parameters():
                p.requires_grad_(True)
                params.append(p)
    return params


def build_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``params`` at ``cfg.lr`` with ``cfg.weight_decay`` (decoupled)."""
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR: iteration i (0-based) uses ``lr * lr_factor(i)``: a linear warm-up over
    ``cfg.warmup`` iterations, then linear from 1 to ``min_lr_ratio``."""
    fn = functools.partial(lr_factor, iterations=cfg.iterations, min_ratio=cfg.min_lr_ratio, warmup=cfg.warmup)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
