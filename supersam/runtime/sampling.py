"""Everything random in training as a pure function of (seed, iteration).

Subnet draws, batch order and prompt noise are derived from
``numpy.random.SeedSequence([seed, stream, ...])``, never from global RNG state,
so a run resumed at iteration k draws exactly what an uninterrupted run draws,
and every DDP rank draws the same subnets.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

STREAM_SUBNETS = 1
STREAM_DATA = 2
STREAM_PROMPTS = 3
STREAM_EVAL = 4


def derived_seed(*entropy: int) -> int:
    """A 63-bit seed from integer entropy (stable across processes and Python versions)."""
    state = np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def subnet_generator(seed: int, iteration: int) -> torch.Generator:
    """CPU ``torch.Generator`` for the subnets of 0-based ``iteration``."""
    return torch.Generator().manual_seed(derived_seed(seed, STREAM_SUBNETS, iteration))


def eval_generator(seed: int) -> torch.Generator:
    """CPU generator for the fixed random evaluation subnet (drawn once per run)."""
    return torch.Generator().manual_seed(derived_seed(seed, STREAM_EVAL))


def prompt_rng(seed: int, iteration: int, slot: int) -> np.random.Generator:
    """numpy generator for the prompt noise of batch ``slot`` at ``iteration``."""
    return np.random.default_rng(derived_seed(seed, STREAM_PROMPTS, iteration, slot))


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, n: int) -> tuple[int, ...]:
    """Order of the ``n`` training images in ``epoch`` (a permutation of range(n))."""
    gen = torch.Generator().manual_seed(derived_seed(seed, STREAM_DATA, epoch))
    return tuple(torch.randperm(n, generator=gen).tolist())


def data_position(iteration: int, batch_size: int, n: int) -> dict[str, int]:
    """Where 0-based ``iteration`` starts in the epoch stream: epoch and offset (images)."""
    start = iteration * batch_size
    return {"epoch": start // n, "offset": start % n, "dataset_len": n, "batch_size": batch_size}


def batch_indices(seed: int, iteration: int, batch_size: int, n: int) -> list[int]:
    """Dataset indices of the global batch of 0-based ``iteration``.

    Batches walk through per-epoch permutations without gaps; a batch that
    crosses an epoch boundary takes the tail of one permutation and the head
    of the next.
    """
    out = []
    for pos in range(iteration * batch_size, (iteration + 1) * batch_size):
        epoch, offset = divmod(pos, n)
        out.append(epoch_permutation(seed, epoch, n)[offset])
    return out


def shard(items: list, rank: int, world_size: int) -> list:
    """This rank's part of a global batch (strided, so shards differ by <= 1 item)."""
    return items[rank::world_size]


def lr_factor(iteration: int, iterations: int, min_ratio: float, warmup: int = 0) -> float:
    """LambdaLR factor for 0-based ``iteration``: 1 at the first (after the warm-up), ``min_ratio`` at the last.

    Linear decay (paper: "lambda learning rate decay until the learning rate
    shrinks to 1% of its original value"). With ``warmup`` > 0 the first
    ``warmup`` iterations ramp linearly up to 1 ((i + 1) / warmup) and the decay
    runs from 1 at iteration ``warmup`` to ``min_ratio`` at the last.
    """
    if warmup > 0 and iteration < warmup:
        return (max(iteration, 0) + 1) / warmup
    if iterations - warmup <= 1:
        return 1.0
    t = min(max(iteration - warmup, 0), iterations - warmup - 1) / (iterations - warmup - 1)
    return 1.0 - (1.0 - min_ratio) * t
