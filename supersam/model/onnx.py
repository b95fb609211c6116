"""ONNX export of a standard ``segment_anything`` Sam (an exported subnet or a base model).

Two graphs, as SAM is deployed (one encoder run per image, many cheap prompt runs):

- ``encoder.onnx``: ``image`` B x 3 x S x S (normalised with the model's pixel
  mean/std, longest side resized to S and zero-padded: ``supersam.data.prepare.preprocess_image``,
  what ``SamPredictor.set_image`` feeds the encoder) -> ``image_embeddings`` B x D x S/16 x S/16;
  the batch B is dynamic.
- ``decoder.onnx``: Meta's own decoder graph, exported from
  ``segment_anything.utils.onnx.SamOnnxModel`` exactly as segment-anything's
  ``scripts/export_onnx_model.py`` exports it (opset 17, all masks; :class:`OfficialDecoder`
  only keeps its padding crop dynamic for every aspect ratio), so tools built for
  Meta's graph (its web demo, samexporter-style runners) run ours unchanged. Inputs:
  ``image_embeddings`` 1 x D x G x G, ``point_coords`` 1 x K x 2 (x, y in the S-frame,
  ``ResizeLongestSide.apply_coords``), ``point_labels`` 1 x K (1 foreground, 0 background,
  2 / 3 box top-left / bottom-right, -1 padding: add a (0, 0) point labelled -1 when there
  is no box), ``mask_input`` 1 x 1 x 4G x 4G, ``has_mask_input`` 1, ``orig_im_size`` 2
  (H, W as float); K is dynamic. Outputs: ``masks`` 1 x 4 x H x W (logits at the original
  size; threshold 0), ``iou_predictions`` 1 x 4, ``low_res_masks`` 1 x 4 x 4G x 4G.
  Channel 0 is ``SamPredictor.predict(multimask_output=False)``'s mask, channels 1..3
  its ``multimask_output=True`` masks.

``precision`` ``fp16`` or ``int8`` adds graphs beside the float32 pair (the reference), with
the same inputs and outputs (float32 at the graph's edges): ``fp16`` adds ``encoder.fp16.onnx``
(weights and compute in float16 by onnxruntime's converter, ``onnxruntime.transformers.float16``,
``keep_io_types``) and keeps the float32 decoder, whose size arithmetic on ``orig_im_size``
would lose whole pixels in float16 above 2048 px (and whose weights are a few percent of the
model's); ``int8`` adds ``encoder.int8.onnx`` and ``decoder.int8.onnx``, the weights of
MatMul/Gemm/Conv-type nodes to int8 with onnxruntime's dynamic quantization
(``quantize_dynamic``, activations quantized at run time; no calibration data needed).

``onnx.json`` beside them records the opset, the torch/onnx versions, input size,
pixel statistics, the tensor names and shapes above and each precision's files.
"""

from __future__ import annotations

import copy
import inspect
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from segment_anything.utils.onnx import SamOnnxModel
from torch import nn

from supersam.runtime.errors import ConfigError
from supersam.runtime.io import write_json

log = logging.getLogger(__name__)

OPSET = 17
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
META_FILE = "onnx.json"
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
PRECISIONS = ("fp32", "fp16", "int8")


def precision_files(precision: str) -> dict[str, str]:
    """``{"encoder": ..., "decoder": ...}`` file names of one precision (fp32: encoder.onnx, decoder.onnx;
    fp16 keeps the fp32 decoder: module docstring)."""
    suffix = "" if precision == "fp32" else f".{precision}"
    decoder = DECODER_FILE if precision == "fp16" else f"decoder{suffix}.onnx"
    return {"encoder": f"encoder{suffix}.onnx", "decoder": decoder}


class _DropQuantAdvice(logging.Filter):
    """Drops onnxruntime.quantization's root-logger advice to run its pre-processing first."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


_QUANT_ADVICE = _DropQuantAdvice()


def convert_precision(source: Path, target: Path, precision: str) -> None:
    """Write ``source`` (a float32 ONNX graph) at ``precision`` (``fp16`` or ``int8``) to ``target``.

    Both converters come with onnxruntime (a dependency of the project).
    """
    import onnx

    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        root = logging.getLogger()
        root.addFilter(_QUANT_ADVICE)  # its advice to pre-process is for static quantization
        try:
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
        finally:
            root.removeFilter(_QUANT_ADVICE)
        return
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the model's values were truncated to float16 range"
        onnx.save(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True), str(target))


class OfficialDecoder(SamOnnxModel):
    """``SamOnnxModel`` (Meta's decoder graph) with a crop that stays dynamic when traced.

    ``SamOnnxModel.mask_postprocessing`` crops the padding with ``int(prepadded_size[i])``:
    under tracing that freezes the crop of the example image's aspect ratio into the graph,
    so every other aspect ratio gets a wrong crop (measured: masks of 640 x 427 and
    480 x 640 photos agree with ``SamPredictor`` on 77-99% of pixels, square images on
    100%). Here the crop is an ``index_select`` over ``arange(prepadded_size)``, which
    exports as ONNX ``Range``; inputs, outputs and everything else are the library's.
    """

    def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        """1 x C x S/4 x S/4 logits -> 1 x C x H x W: upsample to S, crop the padding, resize to ``orig_im_size``."""
        masks = F.interpolate(masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        prepadded = self.resize_longest_image_size(orig_im_size, self.img_size)
        masks = masks.index_select(2, torch.arange(prepadded[0], device=masks.device))
        masks = masks.index_select(3, torch.arange(prepadded[1], device=masks.device))
        size = orig_im_size.to(torch.int64)
        return F.interpolate(masks, size=(size[0], size[1]), mode="bilinear", align_corners=False)


def decoder_inputs(
    sam: nn.Module, coords: torch.Tensor, labels: torch.Tensor, orig_size: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """The official decoder graph's inputs for one object's prompt, no mask prompt.

    Args:
        coords: K x 2 point coordinates (x, y) in the model's S-frame (a box: its two corners).
        labels: K point labels (1, 0, 2, 3, -1 as in the module docstring).
        orig_size: (H, W) of the original image.

    Returns:
        name -> float32 tensor, as ``decoder.onnx`` (and ``SamOnnxModel.forward``) take them.
    """
    grid = sam.prompt_encoder.image_embedding_size
    return {
        "point_coords": coords.reshape(1, -1, 2).float(),
        "point_labels": labels.reshape(1, -1).float(),
        "mask_input": torch.zeros(1, 1, 4 * grid[0], 4 * grid[1]),
        "has_mask_input": torch.zeros(1),
        "orig_im_size": torch.tensor([float(orig_size[0]), float(orig_size[1])]),
    }


def box_prompt(box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One box 4 (x0, y0, x1, y1, S-frame px) as the decoder's points: coords 2 x 2, labels (2, 3)."""
    return box.reshape(2, 2).float(), torch.tensor([2.0, 3.0])


def point_prompt(points: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K points (S-frame px) and labels, padded with (0, 0) labelled -1 as SAM pads points without a box."""
    coords = torch.cat([points.reshape(-1, 2).float(), torch.zeros(1, 2)])
    return coords, torch.cat([labels.reshape(-1).float(), torch.tensor([-1.0])])


def export_onnx(sam: nn.Module, out_dir: str | Path, opset: int = OPSET, precision: str = "fp32") -> Path:
    """Write ``encoder.onnx``, ``decoder.onnx`` and ``onnx.json`` of ``sam`` (CPU, float32) into ``out_dir``,
    plus the ``precision`` pair (``fp16``, ``int8``; module docstring) when it is not ``fp32``.

    Returns:
        ``out_dir``.

    Raises:
        ConfigError: an unknown ``precision``, or the ``onnx`` package is missing.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"export precision {precision!r} is unknown; use one of {', '.join(PRECISIONS)}")
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
    decoder = OfficialDecoder(sam, return_single_mask=False)  # Meta's graph; every mask (channel 0 = single)
    coords, labels = box_prompt(torch.tensor([size / 4, size / 4, 3 * size / 4, 3 * size / 4]))
    feeds = {"image_embeddings": embedding, **decoder_inputs(sam, coords, labels, (size, size))}
    with torch.no_grad(), warnings.catch_warnings():
        # tracing SAM's Python shape arithmetic (window padding, rel-pos sizes) prints ~20 multi-line TracerWarnings;
        # the encoder's input size is fixed, and tests/model/test_onnx.py checks both graphs against SamPredictor
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            sam.image_encoder,
            (image,),
            str(out / ENCODER_FILE),
            opset_version=opset,
            input_names=["image"],
            output_names=["image_embeddings"],
            dynamic_axes={"image": {0: "batch"}, "image_embeddings": {0: "batch"}},
            **legacy,
        )
        torch.onnx.export(
            decoder,
            tuple(feeds.values()),
            str(out / DECODER_FILE),
            opset_version=opset,
            input_names=list(feeds),
            output_names=list(DECODER_OUTPUTS),
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
            do_constant_folding=True,
            **legacy,
        )
    for name in (ENCODER_FILE, DECODER_FILE):
        onnx.checker.check_model(str(out / name))
    files = {"fp32": precision_files("fp32")}
    if precision != "fp32":
        files[precision] = precision_files(precision)
        for part, name in files[precision].items():
            if name != files["fp32"][part]:
                convert_precision(out / files["fp32"][part], out / name, precision)
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
            "inputs": {"image": ["batch", 3, size, size]},
            "outputs": {"image_embeddings": ["batch", dim, grid, grid]},
        },
        "decoder": {
            "file": DECODER_FILE,
            "graph": "segment_anything.utils.onnx.SamOnnxModel (return_single_mask=False), dynamic crop",
            "inputs": {
                "image_embeddings": [1, dim, grid, grid],
                "point_coords": [1, "num_points", 2],
                "point_labels": [1, "num_points"],
                "mask_input": [1, 1, 4 * grid, 4 * grid],
                "has_mask_input": [1],
                "orig_im_size": [2],
            },
            "outputs": {
                "masks": [1, 4, "H", "W"],
                "iou_predictions": [1, 4],
                "low_res_masks": [1, 4, 4 * grid, 4 * grid],
            },
            "mask_channels": {"0": "single mask (multimask_output=False)", "1-3": "multimask outputs"},
            "point_labels": {
                "1": "foreground point",
                "0": "background point",
                "2": "box top-left",
                "3": "box bottom-right",
                "-1": "padding (add one (0, 0) point labelled -1 when there is no box)",
            },
        },
    }
    meta["precisions"] = {
        p: {part: {"file": name, "bytes": (out / name).stat().st_size} for part, name in f.items()}
        for p, f in files.items()
    }
    write_json(out / META_FILE, meta)
    log.debug("wrote %s and %s (opset %d) to %s", ENCODER_FILE, DECODER_FILE, opset, out)
    return out
