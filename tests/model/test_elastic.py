"""The elastic supernet: weight sharing, block skipping, MLP slicing, gradients, autocast.

Device-agnostic: every test runs on the ``device`` fixture (CUDA when present,
else CPU). Tiny SAM config on two real images (DSB2018 nuclei with point
prompts at real nuclei, a COCO val image with box prompts from its annotations).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from segment_anything.modeling import ImageEncoderViT, Sam
from segment_anything.utils.transforms import ResizeLongestSide

from supersam.data.prepare import preprocess_image
from supersam.data.types import ModelInput
from supersam.measure.inference import decode_masks, embed_prompts, encode_images, segment
from supersam.measure.metrics import dice_loss
from supersam.model.elastic import ElasticMLP, SuperSam
from supersam.model.sam import build_sam_model, count_params
from supersam.model.space import SearchSpace, SubnetConfig
from supersam.runtime.device import autocast
from supersam.runtime.errors import ConfigError

TINY = SearchSpace.for_arch("tiny")
MIXED = SubnetConfig.from_mlp_dims([256, 0, 128, 64, 256, 0, 85, 192, 64, 0, 128, 256])


pytestmark = pytest.mark.usefixtures("one_thread")


def _to_input(image: np.ndarray, size: int, masks: np.ndarray, points=None, boxes=None, name="") -> ModelInput:
    """SAM preprocessing (longest-side resize, normalise, pad) of an H x W x 3 uint8 image."""
    resize = ResizeLongestSide(size)
    padded, (h, w) = preprocess_image(image, size)  # 3 x S x S
    shape = image.shape[:2]
    coords = None if points is None else torch.as_tensor(resize.apply_coords(points, shape)).float()[:, None, :]
    labels = None if points is None else torch.ones(len(points), 1)
    box = None if boxes is None else torch.as_tensor(resize.apply_boxes(boxes, shape)).float()
    return ModelInput(padded, shape, (h, w), torch.as_tensor(masks), coords, labels, box, name)


def real_inputs(shared_data, size: int) -> list[ModelInput]:
    """Two real images with real prompts: nuclei (3 point prompts), COCO (2 box prompts)."""
    raw = tifffile.imread(shared_data / "dsb2018_nuclei" / "img2d.tif").astype(np.float32)
    nuclei = np.repeat((raw / raw.max() * 255).astype(np.uint8)[..., None], 3, axis=-1)
    labels = tifffile.imread(shared_data / "dsb2018_nuclei" / "mask2d.tif")
    ids = np.unique(labels[labels > 0])[[0, 40, 80]]
    masks = np.stack([labels == i for i in ids])
    points = np.array([[np.nonzero(m)[1].mean(), np.nonzero(m)[0].mean()] for m in masks])  # x, y
    coco_dir = shared_data / "tiny_coco"
    ann = json.loads((coco_dir / "annotations" / "instances_val2017.json").read_text())
    image_info = ann["images"][0]
    coco = np.asarray(Image.open(coco_dir / "val2017" / image_info["file_name"]).convert("RGB"))
    bboxes = [a["bbox"] for a in ann["annotations"] if a["image_id"] == image_info["id"]][:2]
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in bboxes])
    coco_masks = np.zeros((2, *coco.shape[:2]), bool)
    return [
        _to_input(nuclei, size, masks, points=points, name="nuclei"),
        _to_input(coco, size, coco_masks, boxes=boxes, name=image_info["file_name"]),
    ]


def tiny_sam(device: torch.device) -> Sam:
    """Random tiny SAM with non-trivial position tables and norms (so copying them is tested)."""
    sam = build_sam_model("tiny", 128)
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if "pos" in name or "norm" in name:
                p.add_(0.05 * torch.randn_like(p))
    return sam.to(device)


@pytest.fixture(scope="module")
def inputs(shared_data):
    return real_inputs(shared_data, 128)


def _outputs(model, inputs, device):
    moved = [inp.to(device) for inp in inputs]
    with torch.no_grad():
        emb = encode_images(model, moved)
        return emb, [
            decode_masks(model, emb[i : i + 1], embed_prompts(model, inp), inp, True) for i, inp in enumerate(moved)
        ]


def _assert_same(a, b, atol):
    (emb_a, seg_a), (emb_b, seg_b) = a, b
    torch.testing.assert_close(emb_a, emb_b, rtol=0, atol=atol)
    for (logits_a, iou_a), (logits_b, iou_b) in zip(seg_a, seg_b):
        torch.testing.assert_close(logits_a, logits_b, rtol=0, atol=atol)
        torch.testing.assert_close(iou_a, iou_b, rtol=0, atol=atol)


def test_wraps_sam_in_place_without_copies(device):
    sam = tiny_sam(device)
    reference = copy.deepcopy(sam)
    storage = {name: p.data_ptr() for name, p in sam.named_parameters()}
    supernet = SuperSam(sam, TINY)
    assert list(supernet.state_dict()) == [f"sam.{k}" for k in reference.state_dict()]
    assert {name: p.data_ptr() for name, p in supernet.sam.named_parameters()} == storage
    assert count_params(supernet) == count_params(reference) == 712_931
    assert isinstance(supernet.sam.image_encoder, ImageEncoderViT)
    assert all(isinstance(blk.mlp, ElasticMLP) for blk in supernet.sam.image_encoder.blocks)


def test_max_subnet_equals_original_sam(device, inputs):
    sam = tiny_sam(device)
    expected = _outputs(copy.deepcopy(sam), inputs, device)
    supernet = SuperSam(sam, TINY)
    supernet.sample_active_subnet("min")
    supernet.sample_active_subnet("max")
    _assert_same(_outputs(supernet.sam, inputs, device), expected, atol=1e-6)


def test_elastic_matches_exported_for_min_max_and_20_random(device, inputs):
    supernet = SuperSam(tiny_sam(device), TINY)
    gen = torch.Generator().manual_seed(0)
    for kind in ["min", "max"] + ["random"] * 20:
        cfg = supernet.sample_active_subnet(kind, gen)
        sub = supernet.get_active_subnet()
        blocks = sub.image_encoder.blocks
        assert type(sub) is Sam and type(sub.image_encoder) is ImageEncoderViT
        assert [blk.mlp.lin1.out_features for blk in blocks] == [cfg.mlp_dims[i] for i in cfg.kept_layers]
        assert [j for j, blk in enumerate(blocks) if blk.window_size == 0] == [
            j for j, i in enumerate(cfg.kept_layers) if i in (2, 5, 8, 11)
        ]
        _assert_same(_outputs(supernet.sam, inputs, device), _outputs(sub, inputs, device), atol=1e-5)


def test_dropped_blocks_are_not_run(device, inputs):
    supernet = SuperSam(tiny_sam(device), TINY)
    calls = []
    for i, blk in enumerate(supernet.sam.image_encoder.blocks):
        blk.register_forward_hook(lambda *_, i=i: calls.append(i))
    supernet.set_active_subnet(MIXED)
    with torch.no_grad():
        supernet(inputs[0].image[None].to(device))
    assert calls == list(MIXED.kept_layers)


def test_gradients_land_in_shared_weights_only_inside_the_active_mlp_dims(device, inputs):
    supernet = SuperSam(tiny_sam(device), TINY)
    supernet.set_active_subnet(MIXED)
    sub = supernet.get_active_subnet()
    moved = [inp.to(device) for inp in inputs[:1]]
    for model in (supernet.sam, sub):
        model.train()
        logits, _ = segment(model, moved)[0]
        dice_loss(logits[:, 0], moved[0].gt_masks.float()).backward()
    blocks = supernet.sam.image_encoder.blocks
    lin1, lin2 = blocks[3].mlp.lin1, blocks[3].mlp.lin2  # block 3 runs at width 64 of 256
    assert lin1.weight.grad[64:].abs().sum() == 0 and lin1.bias.grad[64:].abs().sum() == 0
    assert lin2.weight.grad[:, 64:].abs().sum() == 0
    assert lin1.weight.grad[:64].abs().sum() > 0 and lin2.weight.grad[:, :64].abs().sum() > 0
    assert all(p.grad is None for p in blocks[1].parameters())  # dropped
    for j, i in enumerate(MIXED.kept_layers):
        d, mine, theirs = MIXED.mlp_dims[i], blocks[i], sub.image_encoder.blocks[j]
        torch.testing.assert_close(mine.mlp.lin1.weight.grad[:d], theirs.mlp.lin1.weight.grad)
        torch.testing.assert_close(mine.mlp.lin2.weight.grad[:, :d], theirs.mlp.lin2.weight.grad)
        torch.testing.assert_close(mine.attn.rel_pos_h.grad, theirs.attn.rel_pos_h.grad)
    torch.testing.assert_close(supernet.sam.image_encoder.pos_embed.grad, sub.image_encoder.pos_embed.grad)


def test_bf16_autocast_forward_and_backward(device, inputs, monkeypatch):
    monkeypatch.setattr("supersam.runtime.device.native_bf16", lambda device: True)  # the bf16 path on any CPU
    supernet = SuperSam(tiny_sam(device), TINY)
    supernet.set_active_subnet(MIXED)
    images = torch.stack([inp.image for inp in inputs]).to(device)
    with torch.no_grad():
        reference = supernet(images)
    dtypes = []
    supernet.sam.image_encoder.blocks[3].mlp.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with autocast(device, True):
        out = supernet(images)
    assert dtypes == [torch.bfloat16] and out.shape == (2, 32, 8, 8)  # sliced MLP ran in bf16
    cos = torch.nn.functional.cosine_similarity(out.float().flatten(), reference.flatten(), dim=0)
    assert cos > 0.99
    out.float().square().mean().backward()
    grad = supernet.sam.image_encoder.blocks[3].mlp.lin1.weight.grad
    assert grad.dtype == torch.float32 and grad[:64].abs().sum() > 0 and grad[64:].abs().sum() == 0


def test_subnet_selection_api(device):
    supernet = SuperSam(tiny_sam(device), TINY)
    assert supernet.active_subnet == TINY.max_subnet()
    assert supernet.sample_active_subnet("min") == TINY.min_subnet() == supernet.active_subnet
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert supernet.sample_active_subnet("random", gen_a) == TINY.sample(gen_b)
    assert supernet.set_active_subnet(MIXED.to_dict()) == MIXED
    with pytest.raises(ConfigError, match="unknown subnet kind 'medium'"):
        supernet.sample_active_subnet("medium")
    bad = SubnetConfig.from_mlp_dims([256, 0, 0, 0] + [256] * 8)
    with pytest.raises(ConfigError, match="drops block 3, which is not prunable"):
        supernet.set_active_subnet(bad)
    assert supernet.active_subnet == MIXED
    assert supernet.sam.image_encoder.active_blocks == MIXED.kept_layers


def test_space_must_fit_the_model(device):
    with pytest.raises(ConfigError, match="block 0 has MLP width 256, the search space expects 3072"):
        SuperSam(tiny_sam(device), SearchSpace.for_arch("vit_b"))


def test_active_subnet_is_an_independent_copy(device):
    supernet = SuperSam(tiny_sam(device), TINY)
    supernet.set_active_subnet(MIXED)
    sub = supernet.get_active_subnet()
    assert sub.pixel_mean.device == device and not sub.training
    before = supernet.sam.image_encoder.blocks[0].mlp.lin1.weight.detach().clone()
    with torch.no_grad():
        for p in sub.parameters():
            p.zero_()
    assert torch.equal(supernet.sam.image_encoder.blocks[0].mlp.lin1.weight, before)
    assert count_params(sub) < count_params(supernet)


def test_autocast_runs_float32_where_bf16_is_emulated(tmp_path, monkeypatch):
    from supersam.runtime import device as dev

    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n\nprocessor\t: 1\nflags\t\t: fpu sse avx2 avx512f\n"
    )
    assert dev.cpu_flags(str(info)) == {"fpu", "sse", "avx2", "avx512f"}
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert dev.cpu_flags.__wrapped__(str(info)) >= {"avx512_bf16"}
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    monkeypatch.setattr(dev, "native_bf16", lambda device: False)
    with dev.autocast(torch.device("cpu"), True):
        assert lin(x).dtype == torch.float32
    monkeypatch.setattr(dev, "native_bf16", lambda device: True)
    with dev.autocast(torch.device("cpu"), True):
        assert lin(x).dtype == torch.bfloat16
    with dev.autocast(torch.device("cpu"), False):
        assert lin(x).dtype == torch.float32
