"""Random-search baseline: uniform draws from the same parameterisation OpenTuner searches."""

from __future__ import annotations

import logging
import random

from supersam.stages.search.encoding import SubnetEncoding
from supersam.stages.search.objective import SearchState

log = logging.getLogger(__name__)

MAX_REPEATS = 1000  # consecutive already-seen draws before giving up (space nearly exhausted)


def run_random(encoding: SubnetEncoding, state: SearchState, seed: int = 0) -> None:
    """Evaluate uniformly random subnets into ``state`` until it is done.

    Each draw flips a fair coin per prunable block and picks an MLP dim uniformly
    per block; already-evaluated subnets are skipped (not counted against the
    budget). Deterministic under ``seed``.
    """
    rng = random.Random(seed)
    repeats = 0
    while not state.done() and repeats < MAX_REPEATS:
        subnet = encoding.decode(encoding.random_values(rng))
        if state.seen(subnet):
            repeats += 1
            continue
        repeats = 0
        state.evaluate(subnet)
    if repeats >= MAX_REPEATS:
        log.info("random search stopped: %d draws in a row hit already-evaluated subnets", repeats)
