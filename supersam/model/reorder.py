"""MLP hidden-unit reordering, one registered variant per criterion (paper Sec. III, Eq. 1), function preserving.

Scores are computed from the weights and the calibration statistics (docs/method.md, "Wanda
score and MLP reordering", "Taylor importance"); reordering permutes the weights in place. For each
encoder block, a variant scores the MLP's hidden units twice: once from the rows of ``lin1``
(hidden x C) and once from the columns of ``lin2`` (C x hidden). The two scores are combined per
unit (mean of their ranks, as the paper does, or mean of the raw scores, as the reference code does), the
units are sorted by descending combined score (stable), and lin1's rows +
bias and lin2's columns are permuted together in place. The MLP computes the
same function afterwards; a slice of width d then keeps the d best units.

Every block is reordered, block 0 included: docs/contracts.md keeps block 0 at full
width, where the permutation is harmless (function preserving), and treating
all blocks alike keeps the supernet independent of which blocks may be sliced.

Variants live in :data:`VARIANTS` (``none``, ``magnitude``, ``wanda``, ``taylor``);
add one with :func:`register_variant`. A variant that needs calibration
statistics names the criterion (``stats_kind``, a key of
:data:`supersam.model.activation_stats.CRITERIA`) whose per-block statistics it reads,
as ``taylor`` (SlimSAM's disturbed Taylor importance, arXiv 2312.05284 Eq. 4,
accumulated |w * dL/dw| per unit, :mod:`supersam.model.taylor`) does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from supersam.model.activation_stats import CalibrationStats, criterion_shapes, encoder_blocks
from supersam.runtime.errors import ConfigError

log = logging.getLogger(__name__)

COMBINES = ("rank", "score")


class UnitScores(NamedTuple):
    """Scores of an MLP's hidden units (higher = more important).

    Attributes:
        lin1: (hidden,) score of each row of lin1.weight.
        lin2: (hidden,) score of each column of lin2.weight.
    """

    lin1: torch.Tensor
    lin2: torch.Tensor


ScoreFn = Callable[[nn.Module, Mapping[str, torch.Tensor] | None], UnitScores | None]


@dataclass(frozen=True)
class Variant:
    """A registered reordering variant (the criterion that orders the MLP units).

    Attributes:
        name: registry key (``none``, ``magnitude``, ``wanda``, ...).
        score: ``score(mlp, block_stats) -> UnitScores`` or None for "keep the order".
        stats_kind: the criterion of ``CalibrationStats.criteria`` it needs, or None when weights suffice.
        description: one line for logs and help.
    """

    name: str
    score: ScoreFn
    stats_kind: str | None
    description: str


VARIANTS: dict[str, Variant] = {}


def register_variant(name: str, stats_kind: str | None = None) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator adding ``fn(mlp, block_stats) -> UnitScores | None`` to :data:`VARIANTS`."""

    def decorate(fn: ScoreFn) -> ScoreFn:
        doc = (fn.__doc__ or name).strip().splitlines()[0]
        VARIANTS[name] = Variant(name, fn, stats_kind, doc)
        return fn

    return decorate


def get_variant(name: str) -> Variant:
    """The reordering variant called ``name``.

    Raises:
        ConfigError: unknown name (lists the known ones).
    """
    if name not in VARIANTS:
        raise ConfigError(f"unknown reordering variant {name!r}; use one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def _weights(mlp: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """|W1| (hidden x C) and |W2| (C x hidden) in float64."""
    return mlp.lin1.weight.detach().double().abs(), mlp.lin2.weight.detach().double().abs()


@register_variant("none")
def no_scores(mlp: nn.Module, block_stats: Mapping[str, torch.Tensor] | None) -> None:
    """Identity: keep the original unit order (paper's "no reordering")."""
    return None


@register_variant("magnitude")
def magnitude_scores(mlp: nn.Module, block_stats: Mapping[str, torch.Tensor] | None) -> UnitScores:
    """Weight magnitude: lin1 row sum_j |W1[i,j]|, lin2 column sum_k |W2[k,i]|."""
    w1, w2 = _weights(mlp)
    return UnitScores(w1.sum(dim=1), w2.sum(dim=0))


@register_variant("wanda", stats_kind="wanda")
def wanda_scores(mlp: nn.Module, block_stats: Mapping[str, torch.Tensor] | None) -> UnitScores:
    """Wanda (Eq. 1): lin1 row sum_j |W1[i,j]| ||X_j||, lin2 column ||H_i|| sum_k |W2[k,i]|.

    ``block_stats["lin1"]`` (C,) and ``["lin2"]`` (hidden,) are squared L2 norms
    of the lin1 input X and lin2 input H over all calibration tokens.
    """
    w1, w2 = _weights(mlp)
    x_norm = block_stats["lin1"].to(w1.device, torch.float64).sqrt()  # C
    h_norm = block_stats["lin2"].to(w2.device, torch.float64).sqrt()  # hidden
    return UnitScores(w1 @ x_norm, h_norm * w2.sum(dim=0))


@register_variant("taylor", stats_kind="taylor")
def taylor_scores(mlp: nn.Module, block_stats: Mapping[str, torch.Tensor] | None) -> UnitScores:
    """Disturbed Taylor (SlimSAM Eq. 4): lin1 row sum_j |W1[i,j] g| + |b1[i] g|, lin2 column sum_k |W2[k,i] g|.

    ``block_stats["taylor_lin1"]`` and ``["taylor_lin2"]`` (hidden,) are the
    per-unit importances accumulated over the calibration images by
    :func:`supersam.model.taylor.disturbed_taylor_importance` (g = dL/dw of the MSE
    between the image embedding and its Gaussian-disturbed copy). They belong to
    the unit order of the calibrated model; the weights are not re-read.
    """
    return UnitScores(block_stats["taylor_lin1"].to(torch.float64), block_stats["taylor_lin2"].to(torch.float64))


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """0-based ascending ranks of ``scores`` (N,), ties get their average rank (float64)."""
    values, order = torch.sort(scores, stable=True)
    _, inverse, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts
    average = first.double() + (counts.double() - 1) / 2
    out = torch.empty(scores.shape, dtype=torch.float64, device=scores.device)
    out[order] = average[inverse]
    return out


def combine_scores(scores: UnitScores, combine: str = "rank") -> torch.Tensor:
    """Per-unit combined score (hidden,), float64, higher = keep first.

    ``rank``: mean of the lin1-row and lin2-column ranks (paper);
    ``score``: mean of the raw scores (reference code).

    Raises:
        ConfigError: unknown ``combine``.
    """
    if combine == "rank":
        return (ranks(scores.lin1) + ranks(scores.lin2)) / 2
    if combine == "score":
        return (scores.lin1.double() + scores.lin2.double()) / 2
    raise ConfigError(f"unknown score combination {combine!r}; use one of {', '.join(COMBINES)}")


def unit_order(combined: torch.Tensor) -> torch.Tensor:
    """Permutation (hidden,) int64 sorting units by descending score; ties keep index order."""
    return torch.sort(combined, descending=True, stable=True).indices


@torch.no_grad()
def permute_mlp_(mlp: nn.Module, order: torch.Tensor) -> None:
    """Permute hidden units in place: lin1 rows + bias and lin2 columns by ``order`` (hidden,).

    Parameters keep their identity (``copy_``), so optimizers/views stay valid.
    """
    order = order.to(mlp.lin1.weight.device)
    mlp.lin1.weight.copy_(mlp.lin1.weight[order])
    if mlp.lin1.bias is not None:
        mlp.lin1.bias.copy_(mlp.lin1.bias[order])
    mlp.lin2.weight.copy_(mlp.lin2.weight[:, order])


def _block_stats(crit: Variant, stats: CalibrationStats | None, index: int, mlp: nn.Module):
    if crit.stats_kind is None:
        return None
    if stats is None:
        raise ConfigError(
            f"variant {crit.name} needs calibration stats; run `supersam calibrate` and set supernet.stats"
        )
    if crit.stats_kind not in stats.criteria:
        raise ConfigError(
            f"variant {crit.name} needs {crit.stats_kind} stats, the calibration stats hold "
            f"{', '.join(stats.criteria)} only; rerun `supersam calibrate` with {crit.stats_kind} "
            "in calibrate.criteria, or point supernet.stats to the right file"
        )
    if index >= len(stats.blocks):
        raise ConfigError(
            f"calibration stats have {len(stats.blocks)} blocks, the model has more; rerun calibrate for this model"
        )
    block = stats.blocks[index]
    for key, size in criterion_shapes(crit.stats_kind, mlp).items():
        if key not in block or block[key].shape != (size,):
            raise ConfigError(
                f"calibration stats of block {index} do not fit its MLP ({key}: expected {size} features); rerun "
                "calibrate for this model"
            )
    return block


def reorder_sam(
    sam: nn.Module, variant: str = "wanda", stats: CalibrationStats | None = None, combine: str = "rank"
) -> list[torch.Tensor]:
    """Reorder the MLP hidden units of every image-encoder block in place (Sec. III).

    Args:
        sam: a ``segment_anything`` Sam (or its image encoder).
        variant: a key of :data:`VARIANTS` (``none``, ``magnitude``, ``wanda``, ``taylor``).
        stats: calibration stats (required by ``wanda`` and ``taylor``, holding that
            criterion); checked per block for shape.
        combine: ``rank`` (paper) or ``score`` (reference code).

    Returns:
        per block the applied permutation (hidden,) int64: new unit k is old unit
        ``order[k]`` (identity for ``none``).

    Raises:
        ConfigError: unknown variant/combination, missing or mismatched stats.
    """
    crit = get_variant(variant)
    if combine not in COMBINES:
        raise ConfigError(f"unknown score combination {combine!r}; use one of {', '.join(COMBINES)}")
    blocks = encoder_blocks(sam)
    if crit.stats_kind is not None and stats is not None and len(stats.blocks) != len(blocks):
        raise ConfigError(
            f"calibration stats have {len(stats.blocks)} blocks, the model {len(blocks)}; rerun calibrate for "
            "this model"
        )
    orders = []
    for index, block in enumerate(blocks):
        scores = crit.score(block.mlp, _block_stats(crit, stats, index, block.mlp))
        if scores is None:
            orders.append(torch.arange(block.mlp.lin1.out_features))
            continue
        order = unit_order(combine_scores(scores, combine))
        permute_mlp_(block.mlp, order)
        orders.append(order.cpu())
    moved = sum(int((o != torch.arange(o.numel())).sum()) for o in orders) / max(1, sum(o.numel() for o in orders))
    log.info("reordered %d MLPs by %s (%s): %.1f%% of hidden units moved", len(blocks), variant, combine, 100 * moved)
    return orders


def check_variants(values: dict[str, Any]) -> list[str]:
    """params.yaml ``variants``: a non-empty list of known reordering variants (the criteria of
    :data:`supersam.model.reorder.VARIANTS`), without repeats.

    Raises:
        ConfigError: not a list of names, an unknown or repeated variant.
    """
    variants = values.get("variants", ["none", "magnitude", "wanda", "taylor"])
    if not isinstance(variants, list) or not variants or not all(isinstance(v, str) for v in variants):
        raise ConfigError(
            f"variants must be a non-empty list of variant names, got {variants!r}; use some of {', '.join(VARIANTS)}"
        )
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"variants: unknown variant {unknown[0]!r}; use some of {', '.join(VARIANTS)}")
    if len(set(variants)) != len(variants):
        raise ConfigError(f"variants lists a variant twice: {variants}")
    return variants
