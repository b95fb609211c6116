"""Run SAM (plain, elastic or exported) on :class:`ModelInput` batches, with autograd.

``segment_anything``'s ``Sam.forward`` runs under ``torch.no_grad``, so training
and evaluation share these functions instead. ``model`` is anything shaped like
``segment_anything.modeling.Sam`` (``image_encoder``, ``prompt_encoder``,
``mask_decoder``, ``postprocess_masks``), which includes a supernet's ``.sam``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from supersam.data.types import ModelInput


def encode_images(model: nn.Module, inputs: Sequence[ModelInput]) -> torch.Tensor:
    """Image embeddings of a batch: B x prompt_embed_dim x S/16 x S/16."""
    images = torch.stack([inp.image for inp in inputs])  # B x 3 x S x S
    return model.image_encoder(images)


def embed_prompts(model: nn.Module, inp: ModelInput) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse (N x K x D) and dense (N x D x S/16 x S/16) prompt embeddings of one input."""
    points = None
    if inp.point_coords is not None:
        points = (inp.point_coords, inp.point_labels)
    return model.prompt_encoder(points=points, boxes=inp.boxes, masks=None)


def decode_masks(
    model: nn.Module,
    embedding: torch.Tensor,
    prompts: tuple[torch.Tensor, torch.Tensor],
    inp: ModelInput,
    multimask: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask logits at the original image size for one image's N prompts.

    Args:
        embedding: 1 x D x G x G image embedding of this image.
        prompts: (sparse, dense) from :func:`embed_prompts`.
        multimask: SAM's three-mask output (True) or its single mask (False).

    Returns:
        logits N x M x H x W (M = 3 or 1; threshold 0 gives the mask) and the
        predicted IoU N x M.
    """
    sparse, dense = prompts
    low_res, iou_pred = model.mask_decoder(
        image_embeddings=embedding,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )  # N x M x S/4 x S/4
    logits = model.postprocess_masks(low_res, inp.input_size, inp.original_size)
    return logits.float(), iou_pred.float()


def decode_low_res(
    model: nn.Module, embedding: torch.Tensor, prompts: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """All four low-resolution mask outputs and their predicted IoUs, with autograd.

    Channel 0 is the ``multimask_output=False`` mask, channels 1..3 the multimask
    outputs (``MaskDecoder.predict_masks``).

    Args:
        embedding: 1 x D x G x G image embedding of one image.
        prompts: (sparse, dense) from :func:`embed_prompts` for its N objects.

    Returns:
        logits N x 4 x S/4 x S/4 (the padded input frame) and predicted IoU N x 4.
    """
    sparse, dense = prompts
    return model.mask_decoder.predict_masks(
        image_embeddings=embedding,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
    )


def decode_all(
    model: nn.Module,
    embedding: torch.Tensor,
    prompts: tuple[torch.Tensor, torch.Tensor],
    inp: ModelInput,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All four of SAM's mask outputs and their predicted IoUs in one decoder pass, at the original size.

    SAM's ``MaskDecoder.forward`` computes four masks and slices them: channel 0
    is the ``multimask_output=False`` mask, channels 1..3 the three multimask
    outputs. Evaluation needs both, so this runs the decoder once.

    Returns:
        logits N x 4 x H x W (float32) and SAM's predicted IoU N x 4 (float32).
    """
    low_res, iou_pred = decode_low_res(model, embedding, prompts)  # N x 4 x S/4 x S/4, N x 4
    return model.postprocess_masks(low_res, inp.input_size, inp.original_size).float(), iou_pred.float()


def segment(
    model: nn.Module, inputs: Sequence[ModelInput], multimask: bool = False
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Full SAM forward for a batch: per input (logits N x M x H x W, iou N x M)."""
    embeddings = encode_images(model, inputs)
    return [
        decode_masks(model, embeddings[i : i + 1], embed_prompts(model, inp), inp, multimask)
        for i, inp in enumerate(inputs)
    ]
