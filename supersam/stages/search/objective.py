"""The constrained search objective and the memoised, budgeted evaluation loop state.

Paper Sec. III "Deployment": find subnets under resource constraints such as
params <= 60e6 and mIoU >= 0.8. Every search technique proposes subnets to one
:class:`SearchState`, which evaluates each distinct subnet once (a memo cache
keyed by the canonical subnet), scores it (lower is better) and keeps the
evaluation and time budgets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

PENALTY = 10.0  # weight of the constraint violation in the score

EvaluateFn = Callable[[Any], dict[str, float]]


@dataclass(frozen=True)
class Constraints:
    """What a subnet must meet and what is optimised.

    Attributes:
        max_params: largest allowed parameter count (all of SAM).
        min_miou: smallest allowed mIoU (0..1) of ``metric``.
        objective: ``min-params``, ``max-miou``, ``min-macs`` or ``min-latency``.
        metric: ``miou`` or ``miou_oracle``.
        max_macs: largest allowed MACs (one image + one prompt); 0 = none.
        max_latency_ms: largest allowed predicted encoder latency (ms); 0 = none.
        max_macs / max_latency_ms of a candidate that carries no such figure are not checked.
    """

    max_params: int
    min_miou: float = 0.0
    objective: str = "min-params"
    metric: str = "miou"
    max_macs: int = 0
    max_latency_ms: float = 0.0

    def _excess(self, macs: float | None, latency_ms: float | None) -> float:
        out = 0.0
        if self.max_macs and macs is not None:
            out += max(0.0, macs / self.max_macs - 1.0)
        if self.max_latency_ms and latency_ms is not None:
            out += max(0.0, latency_ms / self.max_latency_ms - 1.0)
        return out

    def violation(self, params: int, miou: float, macs: float | None = None, latency_ms: float | None = None) -> float:
        """Relative parameter (MACs, latency) excess plus relative mIoU deficit (all scale-free); 0 when feasible."""
        deficit = max(0.0, self.min_miou - miou) / self.min_miou if self.min_miou > 0 else 0.0
        return max(0.0, params / self.max_params - 1.0) + deficit + self._excess(macs, latency_ms)

    def feasible(self, params: int, miou: float, macs: float | None = None, latency_ms: float | None = None) -> bool:
        """Every constraint met."""
        return params <= self.max_params and miou >= self.min_miou and self._excess(macs, latency_ms) == 0.0

    def score(self, params: int, miou: float, macs: float | None = None, latency_ms: float | None = None) -> float:
        """Scalar to minimise (>= 0); every feasible subnet scores below every infeasible one.

        ``min-params``: params / max_params (in (0, 1]) when feasible; ``max-miou``: 1 - mIoU;
        ``min-macs``: macs / max_macs; ``min-latency``: latency / max_latency_ms (each
        divided by the candidate's own figure scale when that constraint is off, and
        needs the figure). Infeasible: 1 + that term + PENALTY * violation.
        """
        if self.objective == "min-macs" and macs is not None:
            term = macs / (self.max_macs or macs * 2)
        elif self.objective == "min-latency" and latency_ms is not None:
            term = latency_ms / (self.max_latency_ms or latency_ms * 2)
        elif self.objective == "max-miou":
            term = 1.0 - miou
        else:
            term = params / self.max_params
        if self.feasible(params, miou, macs, latency_ms):
            return term
        return 1.0 + max(term, 0.0) + PENALTY * self.violation(params, miou, macs, latency_ms)

    def to_dict(self) -> dict[str, Any]:
        """For metrics.json and MLflow params."""
        return {
            "max_params": self.max_params,
            "min_miou": self.min_miou,
            "objective": self.objective,
            "metric": self.metric,
            "max_macs": self.max_macs,
            "max_latency_ms": self.max_latency_ms,
        }


@dataclass
class Candidate:
    """One evaluated subnet.

    Attributes:
        index: evaluation order (0-based, distinct subnets only).
        subnet: the canonical subnet (a ``SubnetConfig`` or any hashable key).
        params: parameters of all of SAM.
        miou, miou_oracle: on the fixed validation sample.
        feasible: both constraints met.
        score: objective value (lower is better).
        seconds: evaluation wall time.
        macs: MACs of one image + one prompt (None when not computed).
        latency_ms: predicted encoder latency, ms (None without a latency table).
    """

    index: int
    subnet: Hashable
    params: int
    miou: float
    miou_oracle: float
    feasible: bool
    score: float
    seconds: float = 0.0
    macs: int | None = None
    latency_ms: float | None = None

    def value(self, metric: str) -> float:
        """The mIoU named ``metric``."""
        return self.miou_oracle if metric == "miou_oracle" else self.miou

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``subnet`` via its ``to_dict`` when it has one)."""
        subnet = self.subnet.to_dict() if hasattr(self.subnet, "to_dict") else self.subnet
        return {
            "index": self.index,
            "subnet": subnet,
            "params": int(self.params),
            "miou": float(self.miou),
            "miou_oracle": float(self.miou_oracle),
            "feasible": bool(self.feasible),
            "score": float(self.score),
            "seconds": round(float(self.seconds), 4),
            "macs": self.macs,
            "latency_ms": None if self.latency_ms is None else round(float(self.latency_ms), 4),
        }


@dataclass
class SearchState:
    """Memoised evaluation with an evaluation budget and a time limit.

    Args:
        evaluate_fn: subnet -> dict with ``params``, ``miou``, ``miou_oracle`` (and
            ``seconds`` when the result was replayed from a journal).
        constraints: feasibility and score.
        budget: distinct evaluations allowed (0 = unlimited).
        time_limit: seconds allowed (0 = unlimited), counted from construction.
        space_size: number of distinct subnets; the search stops once all are seen.
    """

    evaluate_fn: EvaluateFn
    constraints: Constraints
    budget: int = 0
    time_limit: float = 0.0
    space_size: int | None = None
    candidates: list[Candidate] = field(default_factory=list)
    cache_hits: int = 0
    _memo: dict = field(default_factory=dict)
    _start: float = field(default_factory=time.perf_counter)

    @property
    def n_evaluations(self) -> int:
        """Distinct subnets evaluated so far."""
        return len(self.candidates)

    @property
    def seconds(self) -> float:
        """Seconds since the search started."""
        return time.perf_counter() - self._start

    def done(self) -> bool:
        """Budget, time limit or the whole space used up."""
        if self.budget and self.n_evaluations >= self.budget:
            return True
        if self.time_limit and self.seconds >= self.time_limit:
            return True
        return self.space_size is not None and self.n_evaluations >= self.space_size

    def seen(self, subnet: Hashable) -> bool:
        """Whether ``subnet`` was already evaluated."""
        return subnet in self._memo

    def evaluate(self, subnet: Hashable) -> Candidate:
        """Evaluate ``subnet`` once; later calls return the cached candidate."""
        cached = self._memo.get(subnet)
        if cached is not None:
            self.cache_hits += 1
            return cached
        t0 = time.perf_counter()
        result = self.evaluate_fn(subnet)
        seconds = float(result.get("seconds", time.perf_counter() - t0))  # a replayed result keeps its own
        params = int(result["params"])
        miou = float(result[self.constraints.metric])
        macs = None if result.get("macs") is None else int(result["macs"])
        latency = None if result.get("latency_ms") is None else float(result["latency_ms"])
        cand = Candidate(
            index=len(self.candidates),
            subnet=subnet,
            params=params,
            miou=float(result["miou"]),
            miou_oracle=float(result.get("miou_oracle", result["miou"])),
            feasible=self.constraints.feasible(params, miou, macs, latency),
            score=self.constraints.score(params, miou, macs, latency),
            seconds=seconds,
            macs=macs,
            latency_ms=latency,
        )
        self._memo[subnet] = cand
        self.candidates.append(cand)
        log.debug(
            "candidate %d: params %d, %s %.4f, score %.4f",
            cand.index,
            params,
            self.constraints.metric,
            miou,
            cand.score,
        )
        return cand

    def best(self) -> Candidate | None:
        """Best feasible candidate (lowest score; ties: higher mIoU, fewer params, earlier),
        or the closest one (:meth:`closest`) when none is feasible; None before any evaluation."""
        feasible = [c for c in self.candidates if c.feasible]
        if not feasible:
            return next(iter(self.closest(1)), None)
        metric = self.constraints.metric
        return min(feasible, key=lambda c: (c.score, -c.value(metric), c.params, c.index))

    def first_feasible(self) -> int | None:
        """1-based number of evaluations until the first feasible subnet, or None."""
        return next((c.index + 1 for c in self.candidates if c.feasible), None)

    def closest(self, k: int = 3) -> list[Candidate]:
        """The ``k`` candidates with the smallest constraint violation (ties: lower score)."""
        cons = self.constraints
        return sorted(
            self.candidates,
            key=lambda c: (cons.violation(c.params, c.value(cons.metric), c.macs, c.latency_ms), c.score),
        )[:k]
