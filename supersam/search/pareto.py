"""Params-vs-mIoU Pareto frontier of evaluated subnets (paper Fig. 4)."""

from __future__ import annotations

from collections.abc import Sequence

from supersam.search.objective import Candidate


def pareto_front(candidates: Sequence[Candidate], metric: str = "miou") -> list[Candidate]:
    """Candidates no other candidate dominates (fewer or equal params and higher or equal mIoU, one strictly).

    Args:
        candidates: evaluated subnets.
        metric: ``miou`` or ``miou_oracle``.

    Returns:
        the frontier sorted by ascending params (then mIoU strictly increasing).
    """
    ordered = sorted(candidates, key=lambda c: (c.params, -c.value(metric), c.index))
    front: list[Candidate] = []
    best = float("-inf")
    for cand in ordered:
        if cand.value(metric) > best:
            front.append(cand)
            best = cand.value(metric)
    return front
