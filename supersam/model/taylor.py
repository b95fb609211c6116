"""Disturbed Taylor importance of every encoder MLP hidden unit (SlimSAM, arXiv 2312.05284, Sec. 3.1, Eq. 4).

SlimSAM scores a weight w by the first-order Taylor estimate |w * dL/dw| of the
loss change its removal causes (Eq. 1-3), but without labels: L is the MSE
between the model's image embedding E = f(x) and a *disturbed* copy of it,
E.detach() + eps with Gaussian eps (Eq. 4). Without the noise the loss and its
gradient would be exactly zero; with it the gradient is
dL/dE = -2 eps / M (M = elements of E), so |w * dL/dw| is a random projection
of how much the embedding moves to first order when w is zeroed, which is what
the subsequent distillation has to recover.

Ours (docs/method.md, "Taylor importance and MLP reordering"):

- Per calibration image n (one forward + backward each, fp32, no labels):
  ``L_n = mean((E_n - (E_n.detach() + eps_n))**2)`` with
  ``eps_n = noise_std * z_n``, ``z_n ~ N(0, 1)`` of E_n's shape (1 x D x G x G),
  drawn in image order from one ``torch.Generator`` seeded with ``seed``
  (deterministic and independent of how images are batched).
- Per weight, ``|w * dL_n/dw|`` is accumulated over the images (absolute value
  per image, then summed). SlimSAM's reference code sums the gradients over
  the images before taking |w * g|; with zero-mean noise that sum is a random
  walk around zero, while the per-image absolute value estimates
  E|w * g| = noise_std * sqrt(2/pi) * 2/M * ||dE/dw * w||, the same for any grouping.
- Per hidden unit i of a block's MLP (SlimSAM prunes the coupled structure as
  one group: lin1's row + bias and lin2's column), two scores like Wanda's:
  ``lin1[i] = sum_j |W1[i,j] g1[i,j]| + |b1[i] gb1[i]|`` (lin1 row + its bias) and
  ``lin2[i] = sum_k |W2[k,i] g2[k,i]|`` (lin2 column). :mod:`supersam.model.reorder`
  combines them per unit (mean of ranks, or mean of scores = half the group
  sum, SlimSAM's group importance), like every other variant.

The accumulator is separate from the pass (:class:`TaylorAccumulator`), as the
Wanda hooks are separate from their accumulators (:mod:`supersam.model.activation_stats`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from supersam.runtime.errors import ConfigError


class TaylorAccumulator:
    """Streaming per-unit disturbed Taylor importance of one MLP (``lin1`` hidden x C, ``lin2`` C x hidden).

    Attributes:
        lin1: (hidden,) float64, sum over images of sum_j |W1[i,j] g1[i,j]| + |b1[i] gb1[i]|.
        lin2: (hidden,) float64, sum over images of sum_k |W2[k,i] g2[k,i]|.
        n_images: images accumulated.
    """

    def __init__(self, hidden: int, device: torch.device | str = "cpu") -> None:
        self.lin1 = torch.zeros(hidden, dtype=torch.float64, device=device)
        self.lin2 = torch.zeros(hidden, dtype=torch.float64, device=device)
        self.n_images = 0

    def add(self, mlp: nn.Module, g_w1: torch.Tensor, g_b1: torch.Tensor | None, g_w2: torch.Tensor) -> None:
        """Add one image's |w * dL/dw| given the gradients of ``mlp``'s lin1 weight (hidden x C),
        lin1 bias (hidden,) or None, and lin2 weight (C x hidden)."""
        w1, w2 = mlp.lin1.weight.detach(), mlp.lin2.weight.detach()
        row = (w1.double() * g_w1.double()).abs().sum(dim=1)  # hidden
        if g_b1 is not None and mlp.lin1.bias is not None:
            row = row + (mlp.lin1.bias.detach().double() * g_b1.double()).abs()
        self.lin1 += row
        self.lin2 += (w2.double() * g_w2.double()).abs().sum(dim=0)  # hidden
        self.n_images += 1


def _mlp_params(blocks: nn.ModuleList) -> list[torch.Tensor]:
    """Per block, in order: lin1.weight, lin1.bias (if any), lin2.weight."""
    params = []
    for block in blocks:
        params.append(block.mlp.lin1.weight)
        if block.mlp.lin1.bias is not None:
            params.append(block.mlp.lin1.bias)
        params.append(block.mlp.lin2.weight)
    return params


def disturbed_taylor_importance(
    model: nn.Module,
    images: Sequence[torch.Tensor],
    noise_std: float = 0.01,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[dict[str, torch.Tensor]]:
    """SlimSAM's disturbed Taylor importance (Eq. 4) of every encoder MLP hidden unit.

    One forward + backward per image in the model's own dtype (fp32 for SAM; no
    autocast: bf16 gradients are too coarse). Only gradients of the MLP weights
    are computed (``torch.autograd.grad``), so ``.grad`` of the model is untouched
    and the weights are not changed. Noise: see the module docstring (image n gets
    the n-th float32 N(0, 1) draw of shape 1 x D x G x G from
    ``torch.Generator().manual_seed(seed)`` on the CPU, times ``noise_std``).

    Args:
        model: a Sam (or its image encoder) already on ``device``, in eval mode.
        images: preprocessed 3 x S x S float tensors (SAM-normalised, padded).
        noise_std: standard deviation of the disturbance (SlimSAM's code: 0.01);
            the scores scale linearly with it, the unit order does not depend on it.
        seed: seeds the disturbance.

    Returns:
        per block ``{"taylor_lin1": (hidden,), "taylor_lin2": (hidden,)}`` float64 CPU
        importance summed over the images (see :class:`TaylorAccumulator`).

    Raises:
        ConfigError: no images or a noise_std <= 0.
    """
    if not images:
        raise ConfigError("no calibration images; set calibrate.n_images > 0 and check the data section")
    if not noise_std > 0:
        raise ConfigError(f"calibrate.noise_std must be > 0, got {noise_std}")
    device = torch.device(device)
    encoder = getattr(model, "image_encoder", model)
    blocks = encoder.blocks
    params = _mlp_params(blocks)
    dtype = params[0].dtype
    accs = [TaylorAccumulator(b.mlp.lin1.out_features, device) for b in blocks]
    gen = torch.Generator().manual_seed(int(seed))
    has_bias = [b.mlp.lin1.bias is not None for b in blocks]
    was = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        _accumulate(encoder, images, params, accs, has_bias, noise_std, gen, device, dtype)
    finally:
        for p, flag in zip(params, was):
            p.requires_grad_(flag)
    return [{"taylor_lin1": acc.lin1.cpu(), "taylor_lin2": acc.lin2.cpu()} for acc in accs]


def _accumulate(encoder, images, params, accs, has_bias, noise_std, gen, device, dtype) -> None:
    blocks = encoder.blocks
    with torch.enable_grad():
        for image in images:
            x = image.to(device, dtype)[None]  # 1 x 3 x S x S
            embedding = encoder(x)  # 1 x D x G x G
            noise = torch.randn(embedding.shape, generator=gen, dtype=torch.float32).to(device, embedding.dtype)
            target = embedding.detach() + noise_std * noise
            loss = torch.mean((embedding - target) ** 2)
            grads = iter(torch.autograd.grad(loss, params, allow_unused=False))
            for block, acc, bias in zip(blocks, accs, has_bias):
                g_w1 = next(grads)
                g_b1 = next(grads) if bias else None
                acc.add(block.mlp, g_w1, g_b1, next(grads))
