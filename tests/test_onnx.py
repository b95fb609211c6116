"""`export --format onnx`: onnxruntime runs the exported encoder and prompt/mask decoder on real
images as PyTorch does (mask logits within 1e-3, thresholded masks equal on >= 99.9% of pixels)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort  # a declared dependency: missing, the test fails rather than skips
import pytest
import torch
from PIL import Image

from supersam.artifacts.records import SupernetMeta
from supersam.data.prepare import preprocess_image
from supersam.model.checkpoint import load_model, save_supernet
from supersam.model.elastic import SuperSam
from supersam.model.onnx import box_prompt
from supersam.model.sam import build_sam_model
from supersam.model.space import SearchSpace, SubnetConfig
from supersam.stages.export import ExportConfig, export

pytestmark = pytest.mark.usefixtures("one_thread")

MIXED = SubnetConfig.from_mlp_dims([256, 0, 128, 64, 256, 0, 85, 192, 64, 0, 128, 256])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    sam = build_sam_model("tiny", 128)
    with torch.no_grad():  # a non-trivial position embedding (SAM's is zero at init)
        sam.image_encoder.pos_embed.add_(0.05 * torch.randn_like(sam.image_encoder.pos_embed))
    root = tmp_path_factory.mktemp("onnx")
    save_supernet(
        root / "supernet.pt", SuperSam(sam, SearchSpace.for_arch("tiny")), SupernetMeta("tiny", 128, False, "none")
    )
    out = export(
        ExportConfig(
            supernet=str(root / "supernet.pt"),
            subnet=json.dumps(MIXED.to_dict()),
            out=str(root / "model"),
            format="onnx",
        )
    )
    return out


def _real_images(shared_data, img_size):
    """Real images of two data sets (COCO photos, EM slices) through SAM preprocessing."""
    files = sorted((shared_data / "tiny_coco" / "val2017").glob("*.jpg"))[:2]
    files += sorted((shared_data / "isbi2012_em" / "image").glob("*"))[:1]
    for f in files:
        array = np.asarray(Image.open(f).convert("RGB"))
        image, input_size = preprocess_image(array, img_size)
        yield image, input_size, array.shape[:2]


def test_onnxruntime_matches_pytorch_on_real_images(exported, shared_data):
    meta = json.loads((exported / "onnx" / "onnx.json").read_text())
    assert (
        meta["opset"] == 17
        and meta["img_size"] == 128
        and meta["encoder"]["outputs"]["image_embeddings"] == [1, 32, 8, 8]
    )
    assert sorted(p.name for p in (exported / "onnx").iterdir()) == ["decoder.onnx", "encoder.onnx", "onnx.json"]
    model = load_model(exported)  # the PyTorch export in the same folder
    encoder = ort.InferenceSession(str(exported / "onnx" / "encoder.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(exported / "onnx" / "decoder.onnx"), providers=["CPUExecutionProvider"])
    boxes = torch.tensor([[8.0, 10.0, 70.0, 60.0], [30.0, 25.0, 120.0, 110.0], [0.0, 0.0, 127.0, 90.0]])
    agree = total = 0
    worst = 0.0
    for image, input_size, original in _real_images(shared_data, 128):
        emb_ort = encoder.run(None, {"image": image[None].numpy()})[0]
        with torch.no_grad():
            emb = model.image_encoder(image[None])
            sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
            low, iou = model.mask_decoder.predict_masks(emb, model.prompt_encoder.get_dense_pe(), sparse, dense)
            # points too: one foreground and one background point per object
            pts = torch.tensor([[[40.0, 40.0], [100.0, 20.0]]]).expand(3, 2, 2).contiguous()
            lbl = torch.tensor([[1.0, 0.0]]).expand(3, 2).contiguous()
            sp_pts, dn_pts = model.prompt_encoder(points=(pts, lbl), boxes=None, masks=None)
            low_pts, iou_pts = model.mask_decoder.predict_masks(
                emb, model.prompt_encoder.get_dense_pe(), sp_pts, dn_pts
            )
        assert np.abs(emb_ort - emb.numpy()).max() <= 1e-3
        coords, labels = box_prompt(boxes)
        # points are padded with one label -1 point, as SamPredictor/PromptEncoder pad them without a box
        for (c, l), ref, ref_iou in (
            ((coords, labels), low, iou),
            ((torch.cat([pts, torch.zeros(3, 1, 2)], 1), torch.cat([lbl, -torch.ones(3, 1)], 1)), low_pts, iou_pts),
        ):
            # ONNX decoder on onnxruntime's own embedding: the deployed chain end to end
            logits, iou_ort = decoder.run(
                None, {"image_embeddings": emb_ort, "point_coords": c.numpy(), "point_labels": l.numpy()}
            )
            assert logits.shape == tuple(ref.shape) == (3, 4, 32, 32)
            worst = max(worst, float(np.abs(logits - ref.numpy()).max()))
            assert np.abs(iou_ort - ref_iou.numpy()).max() <= 1e-3
            with torch.no_grad():
                full_ort = model.postprocess_masks(torch.from_numpy(logits), input_size, original) > 0
                full_pt = model.postprocess_masks(ref, input_size, original) > 0
            agree += int((full_ort == full_pt).sum())
            total += full_pt.numel()
    assert worst <= 1e-3, worst
    assert agree / total >= 0.999, agree / total
