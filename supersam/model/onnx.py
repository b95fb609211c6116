"""ONNX export of a standard ``segment_anything`` Sam (an exported subnet or a base model).

Two graphs, as SAM is deployed (one encoder run per image, many cheap prompt runs):

- ``encoder.onnx``: ``image`` 1 x 3 x S x S (normalised with the model's pixel
  mean/std, longest side resized to S and zero-padded: ``supersam.data.prepare.preprocess_image``)
  -> ``image_embeddings`` 1 x D x S/16 x S/16.
- ``decoder.onnx``: prompt encoder + mask decoder. ``image_embeddings`` 1 x D x G x G,
  ``point_coords`` N x K x 2 (x, y in input-frame px, float), ``point_labels`` N x K
  (float: 1 foreground point, 0 background point, 2 / 3 top-left / bottom-right box
  corner, -1 padding) -> ``low_res_masks`` N x 4 x S/4 x S/4 (logits; channel 0 is
  SAM's single-mask output, 1..3 its multimask outputs) and ``iou_predictions`` N x 4.
  N (objects) and K (prompt points) are dynamic. Threshold the logits at 0 after
  upsampling to S, cropping the padding and resizing to the original image
  (``Sam.postprocess_masks``).

``onnx.json`` beside them records the opset, the torch/onnx versions, input size,
pixel statistics and the tensor names and shapes above.
"""

from __future__ import annotations

import copy
import inspect
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from supersam.runtime.errors import ConfigError
from supersam.runtime.io import write_json

log = logging.getLogger(__name__)

OPSET = 17
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
META_FILE = "onnx.json"


class PromptMaskDecoder(nn.Module):
    """SAM's prompt encoder + mask decoder on labelled points, traceable for ONNX.

    Computes exactly what ``PromptEncoder.forward(points=..., boxes=...)`` followed by
    ``MaskDecoder.predict_masks`` computes (a box is two points labelled 2 and 3; no mask
    prompt), without Python branches on the prompts.
    """

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder

    def forward(
        self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """1 x D x G x G, N x K x 2, N x K -> logits N x 4 x S/4 x S/4, IoU N x 4."""
        pe = self.prompt_encoder
        sparse = pe.pe_layer.forward_with_coords(point_coords + 0.5, pe.input_image_size)  # N x K x D
        labels = point_labels.unsqueeze(-1)
        padding = (labels == -1).to(sparse.dtype)
        sparse = sparse * (1 - padding) + padding * pe.not_a_point_embed.weight
        for i, embed in enumerate(pe.point_embeddings):
            sparse = sparse + (labels == i).to(sparse.dtype) * embed.weight
        n = point_coords.shape[0]
        grid = pe.image_embedding_size
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, grid[0], grid[1])
        return self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )


def box_prompt(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes N x 4 (x0, y0, x1, y1, input px) as the decoder's ``point_coords`` N x 2 x 2 and ``point_labels`` N x 2."""
    coords = boxes.reshape(-1, 2, 2).float()
    labels = torch.tensor([2.0, 3.0], device=coords.device).expand(coords.shape[0], 2).contiguous()
    return coords, labels


def export_onnx(sam: nn.Module, out_dir: str | Path, opset: int = OPSET) -> Path:
    """Write ``encoder.onnx``, ``decoder.onnx`` and ``onnx.json`` of ``sam`` (CPU, float32) into ``out_dir``.

    Returns:
        ``out_dir``.

    Raises:
        ConfigError: the ``onnx`` package is missing (install the project's dependencies).
    """
    try:
        import onnx
    except ImportError:
        raise ConfigError(
            "export --format onnx needs the onnx package: pip install -e . (or pip install onnx)"
        ) from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sam = copy.deepcopy(sam).to("cpu").float().eval()  # the caller's model stays on its device and dtype
    # torch >= 2.5 takes `dynamo` (default True from 2.9); the graphs here are traced (TorchScript exporter)
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    size = sam.image_encoder.img_size
    image = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        embedding = sam.image_encoder(image)
    coords, labels = box_prompt(torch.tensor([[size / 4, size / 4, 3 * size / 4, 3 * size / 4]]))
    with torch.no_grad(), warnings.catch_warnings():
        # tracing SAM's Python shape arithmetic (window padding, rel-pos sizes) prints ~20 multi-line TracerWarnings;
        # the encoder's input size is fixed, and tests/test_onnx.py checks both graphs against PyTorch
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            sam.image_encoder,
            (image,),
            str(out / ENCODER_FILE),
            opset_version=opset,
            input_names=["image"],
            output_names=["image_embeddings"],
            **legacy,
        )
        torch.onnx.export(
            PromptMaskDecoder(sam),
            (embedding, coords, labels),
            str(out / DECODER_FILE),
            opset_version=opset,
            input_names=["image_embeddings", "point_coords", "point_labels"],
            output_names=["low_res_masks", "iou_predictions"],
            **legacy,
            dynamic_axes={
                "point_coords": {0: "n", 1: "k"},
                "point_labels": {0: "n", 1: "k"},
                "low_res_masks": {0: "n"},
                "iou_predictions": {0: "n"},
            },
        )
    for name in (ENCODER_FILE, DECODER_FILE):
        onnx.checker.check_model(str(out / name))
    grid, dim = embedding.shape[-1], embedding.shape[1]
    meta: dict[str, Any] = {
        "opset": opset,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "img_size": size,
        "pixel_mean": sam.pixel_mean.flatten().tolist(),
        "pixel_std": sam.pixel_std.flatten().tolist(),
        "encoder": {
            "file": ENCODER_FILE,
            "inputs": {"image": [1, 3, size, size]},
            "outputs": {"image_embeddings": [1, dim, grid, grid]},
        },
        "decoder": {
            "file": DECODER_FILE,
            "inputs": {
                "image_embeddings": [1, dim, grid, grid],
                "point_coords": ["n", "k", 2],
                "point_labels": ["n", "k"],
            },
            "outputs": {"low_res_masks": ["n", 4, size // 4, size // 4], "iou_predictions": ["n", 4]},
            "point_labels": {
                "1": "foreground point",
                "0": "background point",
                "2": "box top-left",
                "3": "box bottom-right",
                "-1": "padding",
            },
        },
    }
    write_json(out / META_FILE, meta)
    log.debug("wrote %s and %s (opset %d) to %s", ENCODER_FILE, DECODER_FILE, opset, out)
    return out
