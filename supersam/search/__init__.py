"""Constrained subnet search over a trained supernet (paper Sec. III "Deployment").

Modules: :mod:`~supersam.search.config` (``SearchConfig``, ``parse_count``),
:mod:`~supersam.search.encoding` (space <-> searched parameters),
:mod:`~supersam.search.objective` (constraints, memoised budgeted state),
:mod:`~supersam.search.opentuner_driver` and :mod:`~supersam.search.random_search`
(techniques), :mod:`~supersam.search.pareto`, :mod:`~supersam.search.report`
(artifacts, figures drawn by the core :mod:`supersam.plots`) and :mod:`~supersam.search.run`
(``search``, the stage function). Exports are imported lazily, so importing
this package does not import OpenTuner or torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SearchConfig": "supersam.search.config",
    "parse_count": "supersam.search.config",
    "Constraints": "supersam.search.objective",
    "SearchState": "supersam.search.objective",
    "SubnetEncoding": "supersam.search.encoding",
    "pareto_front": "supersam.search.pareto",
    "run_search": "supersam.search.run",
    "search": "supersam.search.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'supersam.search' has no attribute {name!r}")
