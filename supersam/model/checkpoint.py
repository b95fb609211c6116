"""Loading and saving models: supernet checkpoints and exported subnets (one loader, ``io.load_torch``).

``supernet.pt`` (a dict readable with ``torch.load(weights_only=True)``)::

    {"format": "supersam-supernet/2",
     "meta": SupernetMeta.to_dict(),                # architecture, img_size, variant, provenance
     "space": SearchSpace.to_dict(),
     "state_dict": {official SAM keys -> tensors},   # also loadable as a SAM checkpoint
     "pixel_mean": [3 floats], "pixel_std": [3 floats]}

Because the weights sit under ``state_dict`` in the official key layout,
``supersam.model.sam.build_sam(checkpoint="supernet.pt")`` loads its max subnet as a plain SAM.

An export folder holds ``model.pt`` (the standalone Sam's state dict) and
``config.json`` (:class:`supersam.artifacts.records.ExportManifest`); :func:`load_model`
returns a standard ``segment_anything.modeling.Sam`` from it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from segment_anything.modeling import Sam
from torch import nn

from supersam.artifacts import paths
from supersam.artifacts.records import ExportManifest, SupernetMeta
from supersam.model.elastic import EncoderSpec, SuperSam, build_encoder
from supersam.model.sam import (
    PIXEL_MEAN,
    PIXEL_STD,
    LoadedSam,
    build_sam,
    build_sam_model,
    read_state_dict,
    set_pixel_stats,
    state_digest,
)
from supersam.model.space import SearchSpace
from supersam.runtime.errors import CheckpointError, ConfigError, SupersamError
from supersam.runtime.io import load_torch, read_json, torch_save

log = logging.getLogger(__name__)

FORMAT = "supersam-supernet/2"


def save_supernet(path: str | Path, supernet: SuperSam, meta: SupernetMeta | None = None) -> Path:
    """Write ``supernet`` (weights, search space, its :class:`SupernetMeta`) to ``path`` atomically.

    Args:
        meta: when given, becomes ``supernet.meta`` first.

    Raises:
        ConfigError: the supernet carries no :class:`SupernetMeta`.
    """
    if meta is not None:
        supernet.meta = meta
    meta = supernet.meta
    if meta is None:
        raise ConfigError("the supernet has no metadata; build it with SuperSam(sam, space, meta=SupernetMeta(...))")
    payload = {
        "format": FORMAT,
        "meta": meta.to_dict(),
        "space": supernet.space.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in supernet.sam.state_dict().items()},
        "pixel_mean": supernet.sam.pixel_mean.flatten().tolist(),
        "pixel_std": supernet.sam.pixel_std.flatten().tolist(),
    }
    torch_save(payload, path)
    log.info("saved supernet (%s, %d px, variant %s) to %s", meta.model_type, meta.img_size, meta.variant, path)
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


def load_supernet(path: str | Path, device: str | torch.device = "cpu") -> SuperSam:
    """Read a checkpoint written by :func:`save_supernet`.

    The model is built on the meta device and the stored tensors assigned, so
    loading costs no random initialisation.

    Returns:
        the supernet on ``device`` with the max subnet active; ``.meta`` is its
        :class:`SupernetMeta`, ``.space`` its search space.

    Raises:
        CheckpointError: missing or corrupt file, not a supernet checkpoint, or
            weights that do not match the recorded model type / image size / space.
    """
    path = Path(path)
    fix = "re-create it with supersam build-supernet"
    obj = load_torch(path, "supernet checkpoint", "run supersam build-supernet or train first, or fix the path", fix)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else None
        raise CheckpointError(
            f"{path} is not a supersam supernet checkpoint of format {FORMAT!r} (found {found!r}); "
            "pass a supernet.pt written by this version's supersam build-supernet or train"
        )
    if not isinstance(obj.get("state_dict"), dict) or not isinstance(obj.get("space"), dict):
        raise CheckpointError(f"supernet checkpoint {path} lacks its weights or search space; {fix}")
    meta = SupernetMeta.from_dict(obj.get("meta"), f"supernet checkpoint {path}")
    try:
        space = SearchSpace.from_dict(obj["space"])
        with torch.device("meta"):
            sam = build_sam_model(meta.model_type, meta.img_size)
    except SupersamError as exc:
        raise CheckpointError(f"supernet checkpoint {path} has an invalid space or meta: {exc}") from None
    assign_state(sam, obj["state_dict"], f"supernet checkpoint {path}")
    set_pixel_stats(sam, obj.get("pixel_mean", list(PIXEL_MEAN)), obj.get("pixel_std", list(PIXEL_STD)))
    try:
        supernet = SuperSam(sam, space, meta)
    except ConfigError as exc:
        raise CheckpointError(f"supernet checkpoint {path}: {exc}") from None
    log.debug("loaded supernet %s (%s, %d px, variant %s)", path, meta.model_type, meta.img_size, meta.variant)
    return supernet.to(torch.device(device))


def read_export_manifest(path: str | Path) -> ExportManifest:
    """``config.json`` of an export folder.

    Raises:
        CheckpointError: not an export folder or an invalid config.
    """
    path = Path(path)
    config = path / paths.EXPORT_CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; run supersam export first or fix the path")
    if not config.is_file():
        raise CheckpointError(f"{path} is not an exported supersam model (no config.json); run supersam export first")
    try:
        data = read_json(config, "export config")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    return ExportManifest.from_dict(data, f"{config}")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Sam:
    """Load an export folder as a standard ``segment_anything.modeling.Sam`` (eval mode).

    Raises:
        CheckpointError: not an export folder, or weights that do not match its config.
    """
    path = Path(path)
    manifest = read_export_manifest(path)
    state = read_state_dict(path / paths.EXPORT_WEIGHTS_FILE)
    try:
        with torch.device("meta"):
            sam = build_sam_model(manifest.model_type, manifest.img_size)
        sam.image_encoder = build_encoder(
            EncoderSpec.from_dict(manifest.encoder), manifest.block_mlp_dims, manifest.global_attn_indexes
        )
    except (SupersamError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}/config.json is invalid ({exc}); re-run supersam export") from None
    assign_state(sam, state, f"exported model {path}")
    set_pixel_stats(sam, manifest.pixel_mean, manifest.pixel_std)
    return sam.to(torch.device(device)).eval()


def load_base_model(meta: SupernetMeta, source: str) -> LoadedSam:
    """The base SAM a supernet was built from (``meta.checkpoint``), on the CPU.

    Used as the teacher of ``train.distill_from: base`` and for relative mIoU thresholds.

    Args:
        meta: the supernet's metadata (``model_type``, ``img_size``, ``checkpoint``, ``base_digest``).
        source: the supernet's path, for messages.

    Raises:
        CheckpointError: the checkpoint is missing or unreadable, or its weights are no
            longer those the supernet was built from (``meta.base_digest``).
    """
    loaded = build_sam(meta.model_type, meta.img_size, meta.checkpoint)
    if meta.base_digest and state_digest(loaded.model) != meta.base_digest:
        raise CheckpointError(
            f"the base model {meta.checkpoint} has other weights than when {source} was built "
            "from it; restore that base model, or rebuild the supernet from this one (dvc repro)"
        )
    return loaded
