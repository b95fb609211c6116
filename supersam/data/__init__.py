"""Data: readers (COCO, SA-1B, image/label PNG/TIFF), splits, SAM preprocessing and prompts.

Public API (imported lazily so ``supersam.data.types`` stays cheap to import;
``prepare`` pulls in segment_anything/torchvision):

- :class:`DataConfig` (params.yaml ``data``)
- :func:`load_split` -> :class:`SegDataset` (lazy ``Sequence[Sample]``)
- :func:`prepare_sample` / :func:`prepare_split` -> :class:`ModelInput` (a lazy :class:`PreparedSplit` on request)
- :class:`Sample`, :class:`ModelInput`
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DataConfig": "supersam.data.config",
    "load_split": "supersam.data.dataset",
    "SegDataset": "supersam.data.dataset",
    "prepare_sample": "supersam.data.prepare",
    "prepare_split": "supersam.data.prepare",
    "PreparedSplit": "supersam.data.prepare",
    "preprocess_image": "supersam.data.prepare",
    "Sample": "supersam.data.types",
    "ModelInput": "supersam.data.types",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'supersam.data' has no attribute {name!r}")
