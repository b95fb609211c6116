"""Constrained subnet search over a trained supernet (paper Sec. III "Deployment").

Modules: :mod:`~supersam.stages.search.config` (``SearchConfig``, ``parse_count``),
:mod:`~supersam.stages.search.encoding` (space <-> searched parameters),
:mod:`~supersam.stages.search.objective` (constraints, memoised budgeted state),
:mod:`~supersam.stages.search.opentuner_driver` and :mod:`~supersam.stages.search.random_search`
(techniques), :mod:`~supersam.stages.search.pareto`, :mod:`~supersam.stages.search.report`
(artifacts, figures drawn by the core :mod:`supersam.runtime.plots`) and :mod:`~supersam.stages.search.run`
(``search``, the stage function). Exports are imported lazily, so importing
this package does not import OpenTuner or torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SearchConfig": "supersam.stages.search.config",
    "parse_count": "supersam.stages.search.config",
    "Constraints": "supersam.stages.search.objective",
    "SearchState": "supersam.stages.search.objective",
    "SubnetEncoding": "supersam.stages.search.encoding",
    "pareto_front": "supersam.stages.search.pareto",
    "run_search": "supersam.stages.search.run",
    "search": "supersam.stages.search.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'supersam.stages.search' has no attribute {name!r}")
