"""Build SAM models through ``segment_anything`` at any input size.

``vit_b``/``vit_l``/``vit_h`` follow ``segment_anything.build_sam`` exactly.
``vit_ti`` is the CPU-sized member of the family that the default profile
pretrains as its base model: a ViT-Ti/16 encoder (embed 192, 3 heads, as
DeiT-Tiny) with ViT-B's layout -- 12 blocks, global attention at 2, 5, 8, 11,
windowed elsewhere, MLP ratio 4 -- so block indices, the prunable set and the
paper's search space keep their meaning; prompt encoder and mask decoder at
width 128 (6.5M parameters in all, encoder 5.7M, at 256 px). Its width was
chosen by measurement: from scratch on ISBI EM at 256 px on 2 CPU cores an
embed-64 model plateaus below box fill, embed 192 passes it within ~6 minutes
(docs/base-model.md). ``tiny`` is a SAM-shaped test configuration (same
classes and layout, embed 64, 2 heads) that runs in milliseconds on CPU.

Official checkpoints (``sam_vit_b_01ec64.pth`` key layout) load at any
``img_size`` that is a multiple of 16: the absolute position embedding
(1 x S/16 x S/16 x C) is resized bicubically and the relative position tables of
the global-attention blocks ((2*S/16-1) x head_dim) linearly.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from supersam.runtime.errors import CheckpointError, ConfigError
from supersam.runtime.io import load_torch

log = logging.getLogger(__name__)

PATCH_SIZE = 16
# SAM's input normalisation (segment_anything/build_sam.py), RGB in 0..255
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def pixel_stats(model: nn.Module) -> dict[str, tuple[float, ...]]:
    """The model's own input normalisation: ``{"pixel_mean": (3 floats), "pixel_std": (3 floats)}``.

    Read from Sam's ``pixel_mean``/``pixel_std`` buffers (an export's
    ``config.json`` values once loaded by :func:`supersam.model.checkpoint.load_model`;
    SAM's defaults :data:`PIXEL_MEAN`/:data:`PIXEL_STD` otherwise), as keyword
    arguments for :func:`supersam.data.prepare.prepare_split` and friends. A
    supernet (``.sam``) or a wrapper without buffers gives SAM's defaults.
    """
    sam = getattr(model, "sam", model)
    mean, std = getattr(sam, "pixel_mean", None), getattr(sam, "pixel_std", None)
    if mean is None or std is None:
        return {"pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD}
    return {
        "pixel_mean": tuple(float(v) for v in mean.flatten().tolist()),
        "pixel_std": tuple(float(v) for v in std.flatten().tolist()),
    }


@dataclass(frozen=True)
class SamArch:
    """Architecture numbers of one SAM variant (segment_anything/build_sam.py).

    Attributes:
        embed_dim: ViT token width C (768 for vit_b).
        depth: number of encoder blocks.
        num_heads: attention heads per block.
        global_attn_indexes: blocks with global attention; the others are windowed.
        window_size: attention window of the windowed blocks, in tokens.
        mlp_ratio: MLP hidden width / embed_dim (4 -> 3072 for vit_b).
        prompt_embed_dim: width of the prompt encoder / mask decoder (256).
        decoder_mlp_dim: MLP width of the decoder's two-way transformer.
        decoder_heads: heads of the decoder's two-way transformer.
        iou_head_hidden_dim: hidden width of the IoU prediction head.
        mask_in_chans: channels of the dense (mask) prompt embedding.
        default_img_size: the size the official checkpoints were trained at.
    """

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    default_img_size: int = 1024

    @property
    def mlp_dim(self) -> int:
        """Full MLP hidden width of every block (3072 for vit_b)."""
        return int(self.embed_dim * self.mlp_ratio)


ARCHS: dict[str, SamArch] = {
    "vit_b": SamArch(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31)),
    "vit_ti": SamArch(
        192,
        12,
        3,
        (2, 5, 8, 11),
        window_size=8,
        prompt_embed_dim=128,
        decoder_mlp_dim=512,
        decoder_heads=8,
        iou_head_hidden_dim=128,
        mask_in_chans=16,
        default_img_size=256,
    ),
    "tiny": SamArch(
        64,
        12,
        2,
        (2, 5, 8, 11),
        window_size=4,
        prompt_embed_dim=32,
        decoder_mlp_dim=64,
        decoder_heads=2,
        iou_head_hidden_dim=32,
        mask_in_chans=4,
        default_img_size=128,
    ),
}


def get_arch(model_type: str) -> SamArch:
    """Return the :class:`SamArch` of ``model_type``.

    Raises:
        ConfigError: unknown model type.
    """
    if model_type not in ARCHS:
        raise ConfigError(f"unknown model type {model_type!r}; use one of {', '.join(ARCHS)}")
    return ARCHS[model_type]


MAX_IMG_SIZE = 2048
"""Largest encoder input size in px: twice SAM's 1024. The global-attention blocks hold a
(S/16)^2 x (S/16)^2 matrix per head (vit_b at 2048 px: 12 heads x 16384^2 floats = 12 GiB);
beyond it a plausible typo (65536) ends in an out-of-memory kill instead of an error."""


def check_img_size(img_size: int) -> int:
    """Validate an encoder input size in pixels (a multiple of 16 in 16..MAX_IMG_SIZE).

    Raises:
        ConfigError: not a whole number, not a positive multiple of 16, or above :data:`MAX_IMG_SIZE`.
    """
    if (
        isinstance(img_size, bool)
        or not isinstance(img_size, (numbers.Integral, float))
        or not math.isfinite(img_size)
        or int(img_size) != img_size
        or img_size <= 0
        or img_size % PATCH_SIZE
    ):
        raise ConfigError(f"img_size {img_size} is not a positive multiple of {PATCH_SIZE}; use e.g. 256, 512 or 1024")
    if img_size > MAX_IMG_SIZE:
        raise ConfigError(
            f"img_size {img_size} is above the limit of {MAX_IMG_SIZE} px (MAX_IMG_SIZE: global "
            f"attention's memory grows with img_size^4); use {MAX_IMG_SIZE} or less (SAM uses 1024)"
        )
    return int(img_size)


@dataclass
class LoadedSam:
    """A built SAM plus what was loaded into it.

    Attributes:
        model: the ``segment_anything.modeling.Sam`` (eval mode, on CPU).
        model_type: ``vit_b``, ``vit_l``, ``vit_h``, ``vit_ti`` or ``tiny``.
        img_size: encoder input size in pixels.
        pretrained: True when weights came from a checkpoint, False for random init.
        checkpoint: the checkpoint path, or None.
    """

    model: nn.Module
    model_type: str
    img_size: int
    pretrained: bool
    checkpoint: str | None = None

    def describe(self) -> dict:
        """Fields to put in metrics files and MLflow params/tags."""
        return {
            "model_type": self.model_type,
            "img_size": self.img_size,
            "pretrained": self.pretrained,
            "checkpoint": self.checkpoint or "",
        }


def build_sam_model(model_type: str, img_size: int | None = None) -> nn.Module:
    """Build a randomly initialised ``segment_anything`` Sam of ``model_type``.

    Args:
        model_type: a key of :data:`ARCHS`.
        img_size: encoder input size S in pixels (multiple of 16); default the
            architecture's own (1024; 256 for ``vit_ti``, 128 for ``tiny``). The image embedding is
            (prompt_embed_dim x S/16 x S/16), low-res masks are S/4 x S/4.

    Raises:
        ConfigError: unknown model type or bad image size.
    """
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    arch = get_arch(model_type)
    size = check_img_size(arch.default_img_size if img_size is None else img_size)
    grid = size // PATCH_SIZE
    encoder = ImageEncoderViT(
        depth=arch.depth,
        embed_dim=arch.embed_dim,
        img_size=size,
        mlp_ratio=arch.mlp_ratio,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=arch.num_heads,
        patch_size=PATCH_SIZE,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=arch.global_attn_indexes,
        window_size=arch.window_size,
        out_chans=arch.prompt_embed_dim,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=arch.prompt_embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(size, size),
        mask_in_chans=arch.mask_in_chans,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=2,
            embedding_dim=arch.prompt_embed_dim,
            mlp_dim=arch.decoder_mlp_dim,
            num_heads=arch.decoder_heads,
        ),
        transformer_dim=arch.prompt_embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=arch.iou_head_hidden_dim,
    )
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=decoder,
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    return sam.eval()


def set_pixel_stats(sam: nn.Module, mean: list[float], std: list[float]) -> None:
    """Set Sam's (non-persistent) pixel_mean/pixel_std buffers (3 x 1 x 1, 0-255 pixel units)."""
    sam.pixel_mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    sam.pixel_std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file with ``torch.load(weights_only=True)``.

    Accepts a bare state dict or one wrapped under ``"model"``/``"state_dict"``, and Hugging
    Face ``SamModel`` checkpoints (``.safetensors`` or ``.bin`` file, or a model folder
    holding one), whose keys are mapped to the segment_anything layout
    (:mod:`supersam.model.hf`).

    Raises:
        CheckpointError: file missing, truncated, or not a torch state dict.
    """
    from supersam.model import hf

    path = Path(path)
    if path.is_dir():
        path = hf.hf_file(path)
    if path.suffix == ".safetensors":  # a SamModel's, or segment_anything's layout saved as safetensors
        state = hf.read_safetensors(path)
        return hf.hf_to_sam(state, str(path)) if hf.is_hf_state(state) else state
    obj = load_torch(
        path,
        "checkpoint",
        "run `supersam pretrain` (or `dvc repro`) to train the base model, point model.checkpoint "
        "at an existing file, or leave it empty for random init",
        "re-download it or point to the official sam_vit_*.pth file",
    )
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"checkpoint {path} is not a state dict of tensors; point to an official sam_vit_*.pth file"
        )
    if hf.is_hf_state(obj):
        log.info("%s holds a Hugging Face SamModel state dict; mapping its keys to segment_anything's", path)
        return hf.hf_to_sam(obj, str(path))
    return obj


def _guess_type(state: dict[str, torch.Tensor]) -> str | None:
    weight = state.get("image_encoder.patch_embed.proj.weight")
    if weight is None:
        return None
    for name, arch in ARCHS.items():
        depth = sum(1 for k in state if k.startswith("image_encoder.blocks.") and k.endswith(".norm1.weight"))
        if arch.embed_dim == weight.shape[0] and arch.depth == depth:
            return name
    return None


def resize_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Resize the image-size-dependent tensors of ``state`` to ``model``'s shapes.

    ``image_encoder.pos_embed`` (1 x G x G x C) is resized bicubically to the
    model's grid; ``rel_pos_h``/``rel_pos_w`` ((2G-1) x head_dim) of global blocks
    linearly, as in segment_anything's own ``get_rel_pos`` interpolation.
    Other tensors are returned unchanged.
    """
    target = model.state_dict()
    out = dict(state)
    for key, value in state.items():
        if key not in target or target[key].shape == value.shape:
            continue
        if key == "image_encoder.pos_embed":
            grid = target[key].shape[1:3]
            resized = F.interpolate(
                value.permute(0, 3, 1, 2).float(), size=tuple(grid), mode="bicubic", align_corners=False
            )
            out[key] = resized.permute(0, 2, 3, 1).to(value.dtype)  # 1 x G x G x C
        elif key.endswith(("rel_pos_h", "rel_pos_w")) and value.shape[1] == target[key].shape[1]:
            length = target[key].shape[0]
            resized = F.interpolate(value.T[None].float(), size=length, mode="linear", align_corners=False)
            out[key] = resized[0].T.to(value.dtype)  # (2G-1) x head_dim
    return out


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str, model_type: str) -> None:
    """Load an official-layout state dict into ``model``, resizing size-dependent tensors.

    Raises:
        CheckpointError: missing/unexpected keys or a shape mismatch, naming the
            first offending key and, when recognisable, the model the file is for.
    """
    state = resize_state_dict(state, model)
    target = model.state_dict()
    guess = _guess_type(state)
    hint = f" (it looks like a {guess} checkpoint)" if guess and guess != model_type else ""
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        what = f"missing key {missing[0]}" if missing else f"unexpected key {unexpected[0]}"
        raise CheckpointError(
            f"checkpoint {source} does not match {model_type}: {what} "
            f"({len(missing)} missing, {len(unexpected)} unexpected){hint}; use the checkpoint of the same model type"
        )
    for key, value in target.items():
        if state[key].shape != value.shape:
            raise CheckpointError(
                f"checkpoint {source} does not match {model_type}: {key} has shape "
                f"{tuple(state[key].shape)}, expected {tuple(value.shape)}{hint}; use the checkpoint of the same "
                "model type"
            )
    # assigned, as private copies: the model may live on the meta device (build_sam builds it there)
    model.load_state_dict({k: state[k].to(v.dtype, copy=True).contiguous() for k, v in target.items()}, assign=True)


def build_sam(
    model_type: str = "vit_b",
    img_size: int | None = None,
    checkpoint: str | Path | None = None,
    seed: int = 0,
) -> LoadedSam:
    """Build SAM ``model_type`` at ``img_size`` pixels, from ``checkpoint`` or random init.

    Without a checkpoint the weights are random, drawn under ``seed`` (so every
    pipeline stage builds the same random SAM); one warning says so and the
    returned ``pretrained`` flag is False (callers put it in every metrics file
    and MLflow run).

    Raises:
        ConfigError: unknown model type or bad image size.
        CheckpointError: unreadable checkpoint or one of another model.
    """
    if not checkpoint:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_sam_model(model_type, img_size)
        log.warning(
            "no SAM checkpoint given: %s runs from RANDOM initialisation (pretrained=false); "
            "numbers measure the pipeline, not SAM's quality",
            model_type,
        )
        return LoadedSam(model, model_type, model.image_encoder.img_size, pretrained=False)
    state = read_state_dict(checkpoint)
    with torch.device("meta"):  # no random initialisation (4 s for vit_b, ~30 s for vit_h): every tensor is loaded
        model = build_sam_model(model_type, img_size)
    load_state_into(model, state, str(checkpoint), model_type)
    set_pixel_stats(model, list(PIXEL_MEAN), list(PIXEL_STD))
    size = model.image_encoder.img_size
    log.info("loaded %s checkpoint %s at %d px", model_type, checkpoint, size)
    return LoadedSam(model, model_type, size, pretrained=True, checkpoint=str(checkpoint))


def state_digest(module: nn.Module) -> str:
    """SHA-1 (hex) of a module's state: every entry's name, shape, dtype and bytes.

    The content identity of loaded weights, whatever file or layout they came from
    (ties calibration stats and supernets to the base model they were made from).
    """
    import hashlib

    digest = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return digest.hexdigest()


def count_params(module: nn.Module) -> int:
    """Number of parameters (elements) of ``module``."""
    return sum(p.numel() for p in module.parameters())


def build_sam_from_config(cfg) -> LoadedSam:
    """:func:`build_sam` from a :class:`supersam.schema.ModelConfig` (params ``model``).

    Every stage builds its model through this, so with no checkpoint all of them
    get the same random weights (``cfg.seed``) and calibration stats stay valid.
    """
    return build_sam(cfg.type, cfg.img_size, cfg.checkpoint or None, seed=cfg.seed)


def checkpoint_img_size(path: str | Path) -> int | None:
    """The input size (px) a SAM checkpoint was trained at: 16 x its ``pos_embed`` grid; None when unknown.

    Reads the file memory-mapped (no full load), so it is cheap even for ``vit_h``.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001  (unreadable here: the loader reports it with its own message)
        return None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    pos = obj.get("image_encoder.pos_embed") if isinstance(obj, dict) else None
    return int(pos.shape[1]) * PATCH_SIZE if isinstance(pos, torch.Tensor) and pos.dim() == 4 else None
