"""Supernet checkpoints (``supernet.pt``): the shared weights, the search space and provenance.

File layout (a dict readable with ``torch.load(weights_only=True)``)::

    {"format": "supersam-supernet/1",
     "meta": {"model_type", "img_size", "pretrained", "reorder", "space": {...}, ...},
     "state_dict": {official SAM keys -> tensors},   # also loadable as a SAM checkpoint
     "pixel_mean": [3 floats], "pixel_std": [3 floats]}

Because the weights sit under ``state_dict`` in the official key layout,
``supersam.sam.build_sam(checkpoint="supernet.pt")`` loads its max subnet as a plain SAM.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from supersam.elastic import SuperSam
from supersam.errors import CheckpointError, ConfigError, SupersamError
from supersam.io import torch_save
from supersam.sam import PIXEL_MEAN, PIXEL_STD, build_sam_model
from supersam.space import SearchSpace

log = logging.getLogger(__name__)

FORMAT = "supersam-supernet/1"
REQUIRED_META = ("model_type", "img_size", "pretrained", "reorder")


def save_supernet(path: str | Path, supernet: SuperSam, meta: dict[str, Any]) -> Path:
    """Write ``supernet`` (weights, search space) and ``meta`` to ``path`` atomically.

    ``meta`` must hold model_type, img_size, pretrained and reorder; anything else
    JSON-serialisable is kept (non-JSON values are stored as strings).

    Raises:
        ConfigError: a required meta key is missing.
    """
    for key in REQUIRED_META:
        if key not in meta:
            raise ConfigError(f"supernet meta is missing {key!r}; pass {', '.join(REQUIRED_META)}")
    meta = json.loads(json.dumps({**meta, "space": supernet.space.to_dict()}, default=str))
    payload = {
        "format": FORMAT,
        "meta": meta,
        "state_dict": {k: v.detach().cpu() for k, v in supernet.sam.state_dict().items()},
        "pixel_mean": supernet.sam.pixel_mean.flatten().tolist(),
        "pixel_std": supernet.sam.pixel_std.flatten().tolist(),
    }
    torch_save(payload, path)
    log.info("saved supernet (%s, %d px, reorder=%s) to %s", meta["model_type"], meta["img_size"], meta["reorder"], path)
    return Path(path)


def assign_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into a (meta-device) ``model`` by assignment, after checking keys and shapes.

    Raises:
        CheckpointError: a missing/unexpected key or a shape mismatch, naming the first one.
    """
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        what = f"missing key {missing[0]}" if missing else f"unexpected key {unexpected[0]}"
        raise CheckpointError(f"{source} does not match its recorded architecture: {what}; re-create the file")
    for key, value in target.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{source} does not match its recorded architecture: {key} has shape "
                f"{tuple(state[key].shape)}, expected {tuple(value.shape)}; re-create the file"
            )
    model.load_state_dict(state, strict=True, assign=True)


def set_pixel_stats(sam: nn.Module, mean: list[float], std: list[float]) -> None:
    """Set Sam's (non-persistent) pixel_mean/pixel_std buffers (3 x 1 x 1)."""
    sam.pixel_mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    sam.pixel_std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(
            f"supernet checkpoint {path} does not exist; run supersam build-supernet or train first, or fix the path"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # RuntimeError, UnpicklingError, EOFError, ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise CheckpointError(
            f"supernet checkpoint {path} cannot be read ({reason}); re-create it with supersam build-supernet"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a supersam supernet checkpoint (no {FORMAT!r} format tag); "
            "pass a supernet.pt written by supersam build-supernet or train"
        )
    meta, state = obj.get("meta"), obj.get("state_dict")
    if not isinstance(meta, dict) or not isinstance(state, dict) or any(k not in meta for k in (*REQUIRED_META, "space")):
        raise CheckpointError(f"supernet checkpoint {path} lacks its meta or weights; re-create it with supersam build-supernet")
    return obj


def load_supernet(path: str | Path, device: str | torch.device = "cpu") -> tuple[SuperSam, dict[str, Any]]:
    """Read a checkpoint written by :func:`save_supernet` (``torch.load(weights_only=True)``).

    The model is built on the meta device and the stored tensors assigned, so
    loading costs no random initialisation.

    Returns:
        (supernet on ``device`` with the max subnet active, meta dict incl. ``space``).

    Raises:
        CheckpointError: missing or corrupt file, not a supernet checkpoint, or
            weights that do not match the recorded model type / image size / space.
    """
    path = Path(path)
    obj = _read(path)
    meta = obj["meta"]
    try:
        space = SearchSpace.from_dict(meta["space"])
        with torch.device("meta"):
            sam = build_sam_model(meta["model_type"], meta["img_size"])
    except SupersamError as exc:
        raise CheckpointError(f"supernet checkpoint {path} has invalid meta: {exc}") from None
    assign_state(sam, obj["state_dict"], f"supernet checkpoint {path}")
    set_pixel_stats(sam, obj.get("pixel_mean", list(PIXEL_MEAN)), obj.get("pixel_std", list(PIXEL_STD)))
    try:
        supernet = SuperSam(sam, space)
    except ConfigError as exc:
        raise CheckpointError(f"supernet checkpoint {path}: {exc}") from None
    log.debug("loaded supernet %s (%s, %d px, reorder=%s)", path, meta["model_type"], meta["img_size"], meta["reorder"])
    return supernet.to(torch.device(device)), meta
