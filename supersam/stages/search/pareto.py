"""Cost-vs-mIoU Pareto frontier of evaluated subnets (paper Fig. 4; cost = params, MACs or predicted latency)."""

from __future__ import annotations

from collections.abc import Sequence

from supersam.stages.search.objective import Candidate

COST_ATTR = {"params": "params", "macs": "macs", "latency": "latency_ms"}


def cost(candidate: Candidate, x: str = "params") -> float | None:
    """The candidate's cost on axis ``x``: params, macs or latency (predicted ms); None when not computed."""
    return getattr(candidate, COST_ATTR[x])


def pareto_front(candidates: Sequence[Candidate], metric: str = "miou", x: str = "params") -> list[Candidate]:
    """Candidates no other candidate dominates (lower or equal cost and higher or equal mIoU, one strictly).

    Args:
        candidates: evaluated subnets.
        metric: ``miou`` or ``miou_oracle``.
        x: the cost: ``params``, ``macs`` or ``latency`` (candidates without that figure are left out).

    Returns:
        the frontier sorted by ascending cost (then mIoU strictly increasing).
    """
    ordered = sorted(
        (c for c in candidates if cost(c, x) is not None), key=lambda c: (cost(c, x), -c.value(metric), c.index)
    )
    front: list[Candidate] = []
    best = float("-inf")
    for cand in ordered:
        if cand.value(metric) > best:
            front.append(cand)
            best = cand.value(metric)
    return front
