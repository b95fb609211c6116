"""An exported ONNX model on onnxruntime, shaped like ``segment_anything``'s Sam for evaluation.

:class:`OnnxSam` runs the graphs of ``supersam export --format onnx [--precision P]``
(:mod:`supersam.model.onnx`) behind the attributes :mod:`supersam.measure.inference` uses
(``image_encoder``, ``prompt_encoder``, ``mask_decoder``, ``postprocess_masks``,
``pixel_mean``/``pixel_std``), so ``supersam eval --runtime onnxruntime`` scores the deployed
graphs on the same objects, prompts and metrics as the PyTorch model:

- ``image_encoder(images)``: B x 3 x S x S -> B x D x S/16 x S/16 through ``encoder[.P].onnx``;
- ``prompt_encoder(points=, boxes=, masks=None)`` only packs the prompts as Meta's decoder
  graph takes them (a box: two corners labelled 2 and 3; points without a box: one padding
  point labelled -1 appended), returned as the "sparse" part (N x K x 2 coordinates and
  N x K labels) with no dense part;
- ``mask_decoder.predict_masks(...)`` runs ``decoder[.P].onnx`` once per object and returns
  its ``low_res_masks`` N x 4 x S/4 x S/4 and ``iou_predictions`` N x 4 (channel 0 the
  single mask), which ``postprocess_masks`` (Sam's) brings to the image size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import Sam
from torch import nn

from supersam.artifacts import paths
from supersam.model.onnx import META_FILE, PRECISIONS
from supersam.runtime.errors import ConfigError

RUNTIMES = ("torch", "onnxruntime")


def providers_for(device: torch.device) -> list[str]:
    """onnxruntime execution providers for ``device`` (CUDA first on a CUDA device).

    Raises:
        ConfigError: a CUDA device but onnxruntime has no CUDAExecutionProvider.
    """
    import onnxruntime as ort

    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ConfigError(
            "eval --runtime onnxruntime on CUDA needs onnxruntime's CUDAExecutionProvider, which this "
            f"onnxruntime lacks (it has {', '.join(ort.get_available_providers())}); install onnxruntime-gpu "
            "or run on the CPU with --set eval.device=cpu"
        )
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


class _Encoder(nn.Module):
    def __init__(self, session, img_size: int) -> None:
        super().__init__()
        self.session, self.img_size = session, img_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"image": images.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(out).to(images.device)


class _Prompts(nn.Module):
    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.input_image_size = (img_size, img_size)

    def get_dense_pe(self) -> None:
        return None

    def forward(self, points=None, boxes=None, masks=None):
        if masks is not None:
            raise ConfigError("eval --runtime onnxruntime takes point and box prompts, not mask prompts")
        parts_xy, parts_label = [], []
        if points is not None:
            coords, labels = points  # N x K x 2, N x K
            parts_xy.append(coords.float())
            parts_label.append(labels.float())
            if boxes is None:  # SAM pads points without a box with one "not a point"
                n = coords.shape[0]
                parts_xy.append(torch.zeros(n, 1, 2, device=coords.device))
                parts_label.append(-torch.ones(n, 1, device=coords.device))
        if boxes is not None:
            corners = boxes.reshape(-1, 2, 2).float()
            parts_xy.append(corners)
            parts_label.append(torch.tensor([2.0, 3.0], device=corners.device).expand(corners.shape[0], 2))
        return (torch.cat(parts_xy, 1), torch.cat(parts_label, 1)), None


class _Decoder(nn.Module):
    def __init__(self, session, img_size: int, grid: int) -> None:
        super().__init__()
        self.session, self.img_size, self.grid = session, img_size, grid

    def predict_masks(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings):
        coords, labels = sparse_prompt_embeddings
        emb = image_embeddings.detach().float().cpu().numpy()
        fixed = {
            "image_embeddings": emb,
            "mask_input": np.zeros((1, 1, 4 * self.grid, 4 * self.grid), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array([self.img_size, self.img_size], np.float32),
        }
        lows, ious = [], []
        for c, lbl in zip(coords.cpu().numpy(), labels.cpu().numpy()):
            _, iou, low = self.session.run(None, {**fixed, "point_coords": c[None], "point_labels": lbl[None]})
            lows.append(low[0])
            ious.append(iou[0])
        device = image_embeddings.device
        return torch.from_numpy(np.stack(lows)).to(device), torch.from_numpy(np.stack(ious)).to(device)


class OnnxSam(nn.Module):
    """The ONNX graphs of an export folder on onnxruntime, used where a Sam is (module docstring).

    Args:
        export_dir: an export folder holding ``onnx/`` (``supersam export --format onnx``).
        precision: ``fp32``, ``fp16`` or ``int8``: which graphs of ``onnx/onnx.json`` run.
        device: CPU, or CUDA through onnxruntime's CUDAExecutionProvider.

    Raises:
        ConfigError: no ``onnx/`` in ``export_dir``, the precision was not exported, or the
            device's provider is missing (each one line naming the fix).
    """

    def __init__(self, export_dir: str | Path, precision: str = "fp32", device: torch.device | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        folder = Path(export_dir) / paths.EXPORT_ONNX_DIR
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise ConfigError(
                f"{export_dir} holds no ONNX graphs ({meta_path} is missing); export them with "
                f"supersam export --format onnx{'' if precision == 'fp32' else f' --precision {precision}'}"
            )
        if precision not in PRECISIONS:
            raise ConfigError(f"eval --precision {precision!r} is unknown; use one of {', '.join(PRECISIONS)}")
        try:
            meta = json.loads(meta_path.read_text())
            img_size, mean, std = int(meta["img_size"]), meta["pixel_mean"], meta["pixel_std"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{meta_path} is not a readable onnx.json ({type(exc).__name__}: {exc}); export it again with "
                "supersam export --format onnx"
            ) from None
        if "precisions" not in meta:
            raise ConfigError(
                f"{export_dir} was exported before per-precision graphs; export it again with "
                f"supersam export --format onnx{'' if precision == 'fp32' else f' --precision {precision}'}"
            )
        files = meta["precisions"].get(precision)
        if files is None:
            have = ", ".join(sorted(meta.get("precisions", {"fp32": None})))
            raise ConfigError(
                f"{export_dir} has no {precision} ONNX graphs (it has {have}); export them with "
                f"supersam export --format onnx --precision {precision}"
            )
        providers = providers_for(device or torch.device("cpu"))
        self.img_size = img_size
        grid = self.img_size // 16
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no constant-folding notes on stderr
        try:
            encoder, decoder = (
                ort.InferenceSession(str(folder / files[part]["file"]), options, providers=providers)
                for part in ("encoder", "decoder")
            )
        except Exception as exc:  # onnxruntime's NoSuchFile / InvalidProtobuf / Fail are not one class
            raise ConfigError(
                f"onnxruntime cannot load the {precision} graphs of {folder} ({type(exc).__name__}); "
                f"export them again with supersam export --format onnx --precision {precision}"
            ) from None
        self.image_encoder = _Encoder(encoder, self.img_size)
        self.prompt_encoder = _Prompts(self.img_size)
        self.mask_decoder = _Decoder(decoder, self.img_size, grid)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(std).view(-1, 1, 1), False)
        self.mask_threshold = 0.0
        self.precision = precision

    # N x C x S/4 x S/4 logits -> N x C x H x W: the library's own (it reads image_encoder.img_size)
    postprocess_masks = Sam.postprocess_masks
