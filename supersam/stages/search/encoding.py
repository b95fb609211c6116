"""The search's view of a space: keep/drop per prunable block, an MLP dim per block.

Parameters (names sort in block order):
- ``keep_BB`` (bool) for every prunable block BB;
- ``mlp_dim_BB`` (one of the block's widths) for every block with more than one
  allowed width. Block 0 is fixed at the full width (paper Sec. III).

:meth:`SubnetEncoding.decode` canonicalises: the MLP dim of a dropped block is
irrelevant, so configurations that differ only there map to one subnet.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BOOL = "bool"


def _default_subnet(kept: tuple[int, ...], mlp_dims: tuple[int, ...]) -> Any:
    from supersam.model.space import SubnetConfig

    return SubnetConfig(kept_layers=kept, mlp_dims=mlp_dims)


@dataclass(frozen=True)
class SubnetEncoding:
    """Per-block choices of a search space.

    Attributes:
        widths: for each encoder block, the allowed MLP widths when kept
            (block 0: the full width only).
        prunable: blocks that may be dropped (never 0).
        make_subnet: (kept_layers, mlp_dims) -> subnet object (default
            ``supersam.model.space.SubnetConfig``).
    """

    widths: tuple[tuple[int, ...], ...]
    prunable: tuple[int, ...]
    make_subnet: Callable[[tuple[int, ...], tuple[int, ...]], Any] = _default_subnet

    def __post_init__(self) -> None:
        if 0 in self.prunable or len(self.widths[0]) != 1:
            raise ValueError("block 0 can be neither dropped nor sliced")

    @classmethod
    def from_space(
        cls, space: Any, widths: Mapping[int, Sequence[int]] | None = None, make_subnet: Callable | None = None
    ) -> SubnetEncoding:
        """Encoding of a ``SearchSpace`` (every block but 0 takes every MLP dim).

        Args:
            space: ``supersam.model.space.SearchSpace`` (depth, mlp_dim, prunable, mlp_dim_choices).
            widths: optional per-block override of the allowed widths (a
                narrower sub-space, e.g. to search only some blocks' mlp_dim_choices).
        """
        per_block = [(space.mlp_dim,)] + [tuple(space.mlp_dim_choices)] * (space.depth - 1)
        for block, allowed in (widths or {}).items():
            per_block[block] = tuple(sorted(allowed))
        return cls(tuple(per_block), tuple(sorted(space.prunable)), make_subnet or _default_subnet)

    @property
    def depth(self) -> int:
        """Number of encoder blocks."""
        return len(self.widths)

    def parameters(self) -> list[tuple[str, Any]]:
        """(name, ``"bool"`` or tuple of options) for every searched parameter, in name order."""
        params: list[tuple[str, Any]] = [(f"keep_{b:02d}", BOOL) for b in self.prunable]
        params += [(f"mlp_dim_{b:02d}", w) for b, w in enumerate(self.widths) if len(w) > 1]
        return sorted(params)

    def decode(self, values: Mapping[str, Any]) -> Any:
        """Canonical subnet of a parameter assignment (dropped blocks' mlp_dim_choices ignored)."""
        kept, dims = [], []
        for b, allowed in enumerate(self.widths):
            if b in self.prunable and not values[f"keep_{b:02d}"]:
                dims.append(0)
                continue
            kept.append(b)
            dims.append(int(values[f"mlp_dim_{b:02d}"]) if len(allowed) > 1 else allowed[0])
        return self.make_subnet(tuple(kept), tuple(dims))

    def size(self) -> int:
        """Number of distinct subnets (dropped blocks counted once)."""
        return math.prod(len(w) + (b in self.prunable) for b, w in enumerate(self.widths))

    def block_choices(self) -> list[tuple[int, ...]]:
        """Per block the MLP widths it can have, 0 = dropped."""
        return [((0,) if b in self.prunable else ()) + w for b, w in enumerate(self.widths)]

    def all_subnets(self) -> Iterator[Any]:
        """Every distinct subnet (use on small spaces only)."""
        for dims in itertools.product(*self.block_choices()):
            kept = tuple(b for b, d in enumerate(dims) if d)
            yield self.make_subnet(kept, tuple(dims))

    def smallest(self) -> Any:
        """Prunable blocks dropped, every other block at its smallest width."""
        dims = tuple(min(c) for c in self.block_choices())
        return self.make_subnet(tuple(b for b, d in enumerate(dims) if d), dims)

    def largest(self) -> Any:
        """Every block kept at its largest width."""
        dims = tuple(max(w) for w in self.widths)
        return self.make_subnet(tuple(range(self.depth)), dims)

    def random_values(self, rng: random.Random) -> dict[str, Any]:
        """A uniformly random parameter assignment (what OpenTuner's random() draws)."""
        return {
            name: (rng.random() < 0.5) if options == BOOL else rng.choice(options)
            for name, options in self.parameters()
        }
