"""Hugging Face ``transformers`` ``SamModel`` checkpoints <-> the ``segment_anything`` key layout.

A ``SamModel`` checkpoint (``model.safetensors`` or ``pytorch_model.bin``) holds the
same tensors with the same shapes as an official ``sam_vit_*.pth`` file, under other
names (transformers' SAM conversion renames keys only). The renames, one rule each
(``N`` = any index; applied in this order, every rule once; undone in reverse order):

    .normN. / .norm_final_attn.            <-> .layer_normN. / .layer_norm_final_attn.
    image_encoder.                         <-> vision_encoder.
    vision_encoder.blocks.N.               <-> vision_encoder.layers.N.
    vision_encoder.patch_embed.proj.       <-> vision_encoder.patch_embed.projection.
    vision_encoder.neck.0/1/2/3.           <-> vision_encoder.neck.conv1/layer_norm1/conv2/layer_norm2.
    prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
                                           <-> prompt_encoder.shared_embedding.positional_embedding
    prompt_encoder.point_embeddings.N.     <-> prompt_encoder.point_embed.N.
    prompt_encoder.mask_downscaling.0/1/3/4/6.
                                           <-> prompt_encoder.mask_embed.conv1/layer_norm1/conv2/layer_norm2/conv3.
    mask_decoder.output_upscaling.0/1/3.   <-> mask_decoder.upscale_conv1/upscale_layer_norm/upscale_conv2.
    <mlp head>.layers.0/1/2.               <-> <mlp head>.proj_in/layers.0/proj_out.
        (mlp heads: mask_decoder.output_hypernetworks_mlps.N, mask_decoder.iou_prediction_head)

Attention (``attn.qkv``, ``attn.proj``, ``attn.rel_pos_h``/``rel_pos_w``), MLPs
(``mlp.lin1``/``lin2``), ``pos_embed``, the decoder's attention projections and tokens
keep their names. ``SamModel`` also stores the prompt encoder's positional matrix a second
time as ``shared_image_embedding.positional_embedding`` (tied); reading keeps one copy.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from supersam.runtime.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

HF_PREFIX = "vision_encoder."
TIED_KEY = "shared_image_embedding.positional_embedding"
PE_KEY = "prompt_encoder.shared_embedding.positional_embedding"

_HEAD = r"(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))"
# (segment_anything regex, HF replacement, HF regex, segment_anything replacement)
# The norm rule comes first, so that undoing it (last) never sees the neck's or mask_embed's layer_norm.
_RULES: list[tuple[str, str, str, str]] = [
    (r"\.norm(\d+|_final_attn)\.", r".layer_norm\1.", r"\.layer_norm(\d+|_final_attn)\.", r".norm\1."),
    (r"^image_encoder\.", "vision_encoder.", r"^vision_encoder\.", "image_encoder."),
    (
        r"^vision_encoder\.blocks\.(\d+)\.",
        r"vision_encoder.layers.\1.",
        r"^vision_encoder\.layers\.(\d+)\.",
        r"vision_encoder.blocks.\1.",
    ),
    (r"\.patch_embed\.proj\.", ".patch_embed.projection.", r"\.patch_embed\.projection\.", ".patch_embed.proj."),
    *[
        (rf"\.neck\.{i}\.", f".neck.{hf}.", rf"\.neck\.{hf}\.", f".neck.{i}.")
        for i, hf in enumerate(("conv1", "layer_norm1", "conv2", "layer_norm2"))
    ],
    (
        r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
        PE_KEY,
        rf"^{re.escape(PE_KEY)}$",
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    ),
    (
        r"^prompt_encoder\.point_embeddings\.(\d+)\.",
        r"prompt_encoder.point_embed.\1.",
        r"^prompt_encoder\.point_embed\.(\d+)\.",
        r"prompt_encoder.point_embeddings.\1.",
    ),
    *[
        (
            rf"^prompt_encoder\.mask_downscaling\.{i}\.",
            f"prompt_encoder.mask_embed.{hf}.",
            rf"^prompt_encoder\.mask_embed\.{hf}\.",
            f"prompt_encoder.mask_downscaling.{i}.",
        )
        for i, hf in ((0, "conv1"), (1, "layer_norm1"), (3, "conv2"), (4, "layer_norm2"), (6, "conv3"))
    ],
    *[
        (
            rf"^mask_decoder\.output_upscaling\.{i}\.",
            f"mask_decoder.{hf}.",
            rf"^mask_decoder\.{hf}\.",
            f"mask_decoder.output_upscaling.{i}.",
        )
        for i, hf in ((0, "upscale_conv1"), (1, "upscale_layer_norm"), (3, "upscale_conv2"))
    ],
    (rf"^{_HEAD}\.layers\.0\.", r"\1.proj_in.", rf"^{_HEAD}\.proj_in\.", r"\1.layers.0."),
    (rf"^{_HEAD}\.layers\.1\.", r"\1.layers.0.", rf"^{_HEAD}\.layers\.0\.", r"\1.layers.1."),
    (rf"^{_HEAD}\.layers\.2\.", r"\1.proj_out.", rf"^{_HEAD}\.proj_out\.", r"\1.layers.2."),
]


def sam_to_hf_key(key: str) -> str:
    """The ``SamModel`` name of segment_anything state-dict key ``key``."""
    for sam_re, hf_sub, _, _ in _RULES:
        key = re.sub(sam_re, hf_sub, key, count=1)
    return key


def hf_to_sam_key(key: str) -> str:
    """The segment_anything name of ``SamModel`` state-dict key ``key`` (inverse of :func:`sam_to_hf_key`).

    Rules run in reverse order, so each undoes its forward counterpart after every later one is undone.
    """
    for _, _, hf_re, sam_sub in reversed(_RULES):
        key = re.sub(hf_re, sam_sub, key, count=1)
    return key


def is_hf_state(state: dict[str, Any]) -> bool:
    """Whether ``state`` uses ``SamModel`` key names (its image encoder is ``vision_encoder.``)."""
    return any(k.startswith(HF_PREFIX) for k in state)


def sam_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A segment_anything state dict in ``SamModel`` names (tensors shared, the tied PE key added).

    Raises:
        CheckpointError: two keys would get one name.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = sam_to_hf_key(key)
        if new in out:
            raise CheckpointError(f"keys map to the same Hugging Face name {new}")
        out[new] = value
    if PE_KEY in out:
        out[TIED_KEY] = out[PE_KEY]
    return out


def hf_to_sam(state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A ``SamModel`` state dict in segment_anything names (tensors shared; the tied PE copy dropped).

    Raises:
        CheckpointError: the tied positional matrices differ, or two keys would get one name.
    """
    state = dict(state)
    tied = state.pop(TIED_KEY, None)
    if tied is not None:
        if PE_KEY not in state:
            state[PE_KEY] = tied
        elif not torch.equal(state[PE_KEY], tied):
            raise CheckpointError(
                f"{source}: {TIED_KEY} differs from {PE_KEY}; the Hugging Face checkpoint is inconsistent"
            )
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = hf_to_sam_key(key)
        if new in out:
            raise CheckpointError(f"{source}: Hugging Face keys map to the same segment_anything name {new}")
        out[new] = value
    return out


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file (CPU).

    Raises:
        CheckpointError: missing file, unreadable file, or the ``safetensors`` package missing.
    """
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(
            f"{path} is a safetensors file but the safetensors package is missing; pip install safetensors"
        ) from None
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; point --checkpoint at an existing file")
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(
            f"checkpoint {path} is not a readable safetensors file ({type(exc).__name__}); re-download it"
        ) from None


def hf_file(path: Path) -> Path:
    """The weights file of a Hugging Face model folder (``model.safetensors`` or ``pytorch_model.bin``).

    Raises:
        CheckpointError: the folder holds neither.
    """
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return path / name
    raise CheckpointError(
        f"{path} is a folder without model.safetensors or pytorch_model.bin (nor a supersam "
        "export's model.pt); point at a SAM checkpoint file, a Hugging Face SamModel folder "
        "or an export folder"
    )


def hf_config(sam: nn.Module) -> dict[str, Any]:
    """A transformers ``SamConfig``-style config.json of ``sam`` (uniform encoder MLP width only).

    Raises:
        ConfigError: the encoder's blocks have different MLP widths (``SamModel`` has one ``mlp_dim``).
    """
    enc = sam.image_encoder
    widths = sorted({blk.mlp.lin1.out_features for blk in enc.blocks})
    if len(widths) != 1:
        raise ConfigError(
            f"export --format hf needs one MLP width in every encoder block (transformers' SamModel "
            f"has a single mlp_dim); this subnet has {widths}; export it with --format pt or onnx, "
            "or find one with search --hf-compatible"
        )
    blk = enc.blocks[0]
    dec = sam.mask_decoder
    return {
        "architectures": ["SamModel"],
        "model_type": "sam",
        "vision_config": {
            "hidden_size": enc.patch_embed.proj.out_channels,
            "num_hidden_layers": len(enc.blocks),
            "num_attention_heads": blk.attn.num_heads,
            "mlp_dim": widths[0],
            "image_size": enc.img_size,
            "patch_size": enc.patch_embed.proj.kernel_size[0],
            "output_channels": enc.neck[0].out_channels,
            "window_size": max(b.window_size for b in enc.blocks),
            "global_attn_indexes": [i for i, b in enumerate(enc.blocks) if b.window_size == 0],
            "qkv_bias": blk.attn.qkv.bias is not None,
            "use_abs_pos": enc.pos_embed is not None,
            "use_rel_pos": blk.attn.use_rel_pos,
            "layer_norm_eps": blk.norm1.eps,
            # SamModel's shared positional embedding (2 x num_pos_feats) is built from the vision config
            "num_pos_feats": sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.shape[1],
        },
        "prompt_encoder_config": {
            "hidden_size": sam.prompt_encoder.embed_dim,
            "image_size": enc.img_size,
            "patch_size": enc.patch_embed.proj.kernel_size[0],
            "mask_input_channels": sam.prompt_encoder.mask_downscaling[3].out_channels,
            "num_point_embeddings": sam.prompt_encoder.num_point_embeddings,
            "layer_norm_eps": sam.prompt_encoder.mask_downscaling[1].eps,
        },
        "mask_decoder_config": {
            # segment_anything's two-way transformer norms use nn.LayerNorm's 1e-5, transformers' default is 1e-6
            "layer_norm_eps": dec.transformer.layers[0].norm1.eps,
            "hidden_size": dec.transformer_dim,
            "num_hidden_layers": len(dec.transformer.layers),
            "num_attention_heads": dec.transformer.num_heads,
            "mlp_dim": dec.transformer.layers[0].mlp.lin1.out_features,
            "iou_head_depth": len(dec.iou_prediction_head.layers),
            "iou_head_hidden_dim": dec.iou_prediction_head.layers[0].out_features,
            "num_multimask_outputs": dec.num_multimask_outputs,
        },
    }


def hf_preprocessor_config(sam: nn.Module) -> dict[str, Any]:
    """The ``preprocessor_config.json`` that lets ``SamProcessor.from_pretrained`` prepare inputs for ``sam``.

    Mirrors segment_anything's ``SamPredictor`` preprocessing: resize the longest side to the
    encoder's input size S (bilinear), normalise with ``sam``'s pixel mean/std (given in 0-255
    units, written as fractions of 255 after a 1/255 rescale), pad bottom-right to S x S; masks
    are S/4 x S/4 (the low-res mask size).
    """
    size = sam.image_encoder.img_size
    return {
        "image_processor_type": "SamImageProcessor",
        "processor_class": "SamProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"longest_edge": size},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [round(float(v) / 255, 8) for v in sam.pixel_mean.flatten()],
        "image_std": [round(float(v) / 255, 8) for v in sam.pixel_std.flatten()],
        "do_pad": True,
        "pad_size": {"height": size, "width": size},
        "mask_size": {"longest_edge": size // 4},
        "mask_pad_size": {"height": size // 4, "width": size // 4},
    }


def save_hf(sam: nn.Module, out_dir: str | Path) -> Path:
    """Write ``model.safetensors`` (``SamModel`` keys), a ``SamConfig`` ``config.json`` and the
    ``SamProcessor``'s ``preprocessor_config.json`` into ``out_dir``.

    The folder loads with ``transformers.SamModel.from_pretrained`` and
    ``SamProcessor.from_pretrained`` (checked against transformers itself in the tests).

    Each file is written atomically with the usual artifact mode (0666 minus the umask).

    Raises:
        ConfigError: blocks of different MLP widths (see :func:`hf_config`) or safetensors missing.
    """
    from supersam.runtime.io import _atomic, write_json

    config = hf_config(sam)
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise ConfigError("export --format hf needs the safetensors package: pip install safetensors") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in sam_to_hf(sam.state_dict()).items()}
    # safetensors creates its file 0600: written as every artifact is (temporary sibling, umask mode, rename)
    _atomic(out / "model.safetensors", lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    write_json(out / "config.json", config)
    write_json(out / "preprocessor_config.json", hf_preprocessor_config(sam))
    log.debug("wrote %d tensors in transformers SamModel layout to %s", len(state), out)
    return out
