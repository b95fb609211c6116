"""supersam.data on the real data sets: readers, splits, SAM preprocessing, prompts, bad data."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import tifffile
import torch
from PIL import Image
from pycocotools.coco import COCO
from scipy import ndimage
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from supersam.data import DataConfig, load_split, prepare_sample, prepare_split
from supersam.data.imaging import to_uint8
from supersam.data.prepare import preprocess_image
from supersam.data.types import Sample
from supersam.runtime.errors import DataError


def coco_cfg(shared: Path, **kw) -> DataConfig:
    base = DataConfig(
        kind="coco",
        root=str(shared / "tiny_coco"),
        images="val2017",
        labels="annotations/instances_val2017.json",
        prompt="point",
        min_area=0,
    )
    return replace(base, **kw)


def isbi_cfg(shared: Path, **kw) -> DataConfig:
    return replace(DataConfig(root=str(shared / "isbi2012_em"), label_mode="binary"), **kw)


def dsb_cfg(shared: Path, **kw) -> DataConfig:
    base = DataConfig(
        root=str(shared / "dsb2018_nuclei"), images="img2d.tif", labels="mask2d.tif", label_mode="instance", min_area=0
    )
    return replace(base, **kw)


@pytest.fixture(scope="module")
def coco_val(shared_data):
    return load_split(coco_cfg(shared_data), "all")


def test_tiny_coco_val_objects_match_pycocotools(shared_data, coco_val, caplog):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(shared_data / "tiny_coco/annotations/instances_val2017.json"))
    assert len(coco.getImgIds()) == 50
    per_image = {}
    for img_id in coco.getImgIds():
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[img_id])) if not a["iscrowd"]]
        n = sum(int(coco.annToMask(a).sum() > 0) for a in anns)
        if n:
            per_image[coco.imgs[img_id]["file_name"]] = n
    assert sum(per_image.values()) == 377 and len(per_image) == 48  # 2 val images have no annotation

    samples = list(coco_val)
    assert sorted(coco_val.names) == sorted(per_image)
    assert {s.name: len(s.masks) for s in samples} == per_image
    assert coco_val.object_counts == [per_image[n] for n in coco_val.names]
    for s in samples[:5]:
        assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.image.shape[2] == 3
        assert s.masks.dtype == bool and s.masks.shape[1:] == s.image.shape[:2]
        assert s.masks.sum(axis=(1, 2)).min() > 0

    with caplog.at_level(logging.WARNING):
        load_split(coco_cfg(shared_data), "all")
    assert "skipped 2 images with no objects >= 1 px: 000000058636.jpg, 000000226111.jpg" in caplog.text


def test_coco_min_area_uses_mask_pixels(shared_data):
    ds = load_split(coco_cfg(shared_data, min_area=100), "all")
    areas = np.concatenate([ds[i].masks.sum(axis=(1, 2)) for i in range(len(ds))])
    assert areas.min() >= 100 and len(areas) == 345 == sum(ds.object_counts)


def test_dsb2018_125_nuclei_and_uint16(shared_data):
    raw = tifffile.imread(shared_data / "dsb2018_nuclei/img2d.tif")
    assert raw.dtype == np.uint16
    ds = load_split(dsb_cfg(shared_data), "all")
    assert len(ds) == 1 and ds.object_counts == [125]
    sample = ds[0]
    assert sample.masks.shape == (125, 512, 512)
    assert not (sample.masks.sum(axis=0) > 1).any()  # instances are disjoint
    assert sample.image.dtype == np.uint8 and sample.image.shape == (512, 512, 3)
    assert (sample.image[..., 0] == sample.image[..., 2]).all()
    assert sample.image.min() == 0 and sample.image.max() == 255
    lo, hi = np.percentile(raw, [0.5, 99.5])
    mid = raw[(raw > lo) & (raw < hi)][0]
    assert sample.image[..., 0][raw == mid][0] == round((mid - lo) / (hi - lo) * 255)


def test_to_uint8_robust_rescale():
    data = np.full((100, 100), 1000, np.uint16)
    data[:50] = 3000
    data[0, 0] = 65535  # single hot pixel must not squash the range
    out = to_uint8(data)
    assert out.dtype == np.uint8 and out[60, 0] == 0 and out[10, 0] == 255
    assert (to_uint8(np.full((4, 4), 7, np.uint16)) == 0).all()
    assert (to_uint8(np.array([[True, False]])) == [[255, 0]]).all()


def test_isbi_slices_and_patches(shared_data):
    whole = load_split(isbi_cfg(shared_data, min_area=0), "all")
    assert len(whole) == 30
    label = np.array(Image.open(shared_data / "isbi2012_em/label/0.png"))
    assert whole.object_counts[whole.names.index("0.png")] == ndimage.label(label == 255)[1]

    patches = load_split(isbi_cfg(shared_data, min_area=0, patch=256), "all")
    assert len(patches) == 120
    assert {n.split("@")[1] for n in patches.names} == {"0,0", "0,256", "256,0", "256,256"}
    sample = patches[patches.names.index("0.png@256,256")]
    assert sample.image.shape == (256, 256, 3) and sample.masks.shape[1:] == (256, 256)
    image = np.array(Image.open(shared_data / "isbi2012_em/image/0.png"))
    assert (sample.image[..., 1] == image[256:, 256:]).all()
    assert len(sample.masks) == ndimage.label(label[256:, 256:] == 255)[1]


def test_split_deterministic_and_disjoint(shared_data):
    cfg = isbi_cfg(shared_data, patch=256, val_fraction=0.3, seed=3)
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    assert train.names == load_split(cfg, "train").names
    slices = lambda ds: {n.split("@")[0] for n in ds.names}  # noqa: E731
    assert len(slices(val)) == 9 and len(slices(train)) == 21 and not slices(train) & slices(val)
    assert set(train.names) | set(val.names) == set(load_split(cfg, "all").names)
    assert slices(load_split(replace(cfg, seed=4), "val")) != slices(val)
    capped = load_split(replace(cfg, max_images=10), "train")
    assert len(capped) == 10 and set(capped.names) <= set(train.names)
    assert capped.names == load_split(replace(cfg, max_images=10), "train").names


def test_separate_val_source(shared_data):
    cfg = coco_cfg(
        shared_data,
        images="train2017",
        labels="annotations/instances_train2017.json",
        val_images="val2017",
        val_labels="annotations/instances_val2017.json",
    )
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    assert len(val) == 48 and len(train) == 49 and len(load_split(cfg, "all")) == 97


def test_preprocess_matches_sam_preprocess(shared_data, coco_val):
    image = coco_val[0].image
    x, (h, w) = preprocess_image(image, 128)
    resized = ResizeLongestSide(128).apply_image(image)
    fake_sam = SimpleNamespace(
        pixel_mean=torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1),
        pixel_std=torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1),
        image_encoder=SimpleNamespace(img_size=128),
    )
    expected = Sam.preprocess(fake_sam, torch.as_tensor(resized).permute(2, 0, 1)[None].float())[0]
    assert (h, w) == resized.shape[:2] and max(h, w) == 128 and x.shape == (3, 128, 128)
    torch.testing.assert_close(x, expected)


def test_point_prompts_inside_masks(coco_val):
    sample = coco_val[3]
    H, W = sample.image.shape[:2]
    inp = prepare_sample(sample, 128, "point", 8, 20, np.random.default_rng(0))
    assert inp.original_size == (H, W) and inp.n_objects == 8
    assert inp.point_coords.shape == (8, 1, 2) and (inp.point_labels == 1).all() and inp.boxes is None
    scale = np.array([inp.input_size[1] / W, inp.input_size[0] / H])
    pts = np.rint(inp.point_coords[:, 0].double().numpy() / scale).astype(int)
    masks = inp.gt_masks.numpy()
    assert all(masks[i, y, x] for i, (x, y) in enumerate(pts))
    mapped = ResizeLongestSide(128).apply_coords(pts.astype(float), (H, W))
    np.testing.assert_allclose(inp.point_coords[:, 0].numpy(), mapped, rtol=1e-6)


def test_box_prompts_contain_masks_with_bounded_padding(shared_data):
    sample = load_split(dsb_cfg(shared_data), "all")[0]
    inp = prepare_sample(sample, 256, "box", 64, "0-20", np.random.default_rng(1))
    assert inp.boxes.shape == (64, 4) and inp.point_coords is None
    boxes = inp.boxes.double().numpy() * 2.0  # 512 -> 256
    masks = inp.gt_masks.numpy()
    ys, xs = masks.any(2), masks.any(1)
    tight = np.stack([xs.argmax(1), ys.argmax(1), 511 - xs[:, ::-1].argmax(1), 511 - ys[:, ::-1].argmax(1)], 1)
    pad = np.abs(boxes - tight)
    assert (boxes[:, :2] <= tight[:, :2]).all() and (boxes[:, 2:] >= tight[:, 2:]).all()
    assert pad.max() <= 20 + 1e-6 and pad.max() >= 15 and (pad == 0).any()
    assert boxes.min() >= 0 and boxes.max() <= 511


def test_object_cap_repeats_and_subsets():
    masks = np.zeros((3, 10, 12), bool)
    for i in range(3):
        masks[i, i * 3 : i * 3 + 2, i : i + 4] = True
    few = Sample(np.zeros((10, 12, 3), np.uint8), masks, "few")
    inp = prepare_sample(few, 32, "point", 8, 0, np.random.default_rng(0))
    got = inp.gt_masks.numpy()
    assert got.shape == (8, 10, 12)
    which = [int(np.argmax([(g == m).all() for m in masks])) for g in got]
    assert which[:3] == [0, 1, 2] and set(which[3:]) <= {0, 1, 2}
    assert prepare_sample(few, 32, "point", 8, 0, np.random.default_rng(0), repeat=False).n_objects == 3
    assert prepare_sample(few, 32, "point", 0, 0, np.random.default_rng(0)).n_objects == 3

    many = Sample(few.image, np.repeat(masks, 7, axis=0)[:20], "many")
    sub = prepare_sample(many, 32, "box", 8, 0, np.random.default_rng(0))
    assert sub.n_objects == 8
    again = prepare_sample(many, 32, "box", 8, 0, np.random.default_rng(0))
    assert torch.equal(sub.boxes, again.boxes) and torch.equal(sub.gt_masks, again.gt_masks)


def test_prepare_split_fixed_under_seed(shared_data):
    cfg = isbi_cfg(shared_data, patch=256, max_images=6)
    a = prepare_split(cfg, "val", 64, n_images=4, seed=7)
    b = prepare_split(cfg, "val", 64, n_images=4, seed=7)
    assert len(a) == 4 and [x.name for x in a] == [x.name for x in b]
    assert all(torch.equal(x.boxes, y.boxes) and torch.equal(x.image, y.image) for x, y in zip(a, b))
    assert all(x.n_objects == 8 and x.image.shape == (3, 64, 64) for x in a)
    full = {x.name: x for x in prepare_split(cfg, "val", 64, seed=7)}
    assert all(torch.equal(full[x.name].boxes, x.boxes) for x in a)


def test_lazy_split_prepares_each_input_on_access_and_scores_the_same(shared_data):
    """prepare_split(lazy=True) (eval's whole-split path): the same inputs as the eager list, prepared
    when read and not held (a fresh object per access), names listed without reading an image, and
    run_eval gives bit-identical figures on both."""
    from supersam.measure.scoring import run_eval
    from supersam.model.sam import build_sam_model

    cfg = isbi_cfg(shared_data, patch=256, max_images=6, max_objects=4)
    eager = prepare_split(cfg, "val", 64, n_images=3, seed=7)
    lazy = prepare_split(cfg, "val", 64, n_images=3, seed=7, lazy=True)
    points = prepare_split(cfg, "val", 64, n_images=3, seed=7, lazy=True, prompt="point")
    assert not isinstance(lazy, list) and len(lazy) == 3 and lazy.names == [x.name for x in eager]
    assert lazy[1] is not lazy[1]  # nothing held between accesses
    for x, y in zip(eager, lazy):
        assert torch.equal(x.image, y.image) and torch.equal(x.boxes, y.boxes) and torch.equal(x.gt_masks, y.gt_masks)
    assert [x.name for x in lazy[0:2]] == lazy.names[:2]
    torch.manual_seed(0)
    model = build_sam_model("tiny", 64)
    a = run_eval(model, eager, torch.device("cpu"), per_object=True, batch_size=2, also={"point": list(points)})
    b = run_eval(model, lazy, torch.device("cpu"), per_object=True, batch_size=2, also={"point": points})
    assert a["miou"] == b["miou"] and a["also"]["point"]["miou"] == b["also"]["point"]["miou"]
    assert torch.equal(a["objects"]["iou"], b["objects"]["iou"]) and a["n_images"] == b["n_images"] == 3
    other = prepare_split(cfg, "train", 64, n_images=3, seed=7, lazy=True)  # other images, same count
    assert len(other) == 3 and other.names != lazy.names
    with pytest.raises(ValueError, match="not the same images"):
        run_eval(model, lazy, torch.device("cpu"), also={"other": other})


def test_multipage_tiff_stack(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 4000, size=(4, 40, 60)).astype(np.uint16)
    labels = np.zeros((4, 40, 60), np.uint8)
    for page in range(4):
        for k in range(page + 1):  # page p holds p + 1 separate blobs
            labels[page, 5:15, 2 + 12 * k : 10 + 12 * k] = 255
    tifffile.imwrite(tmp_path / "training.tif", images, photometric="minisblack")
    tifffile.imwrite(tmp_path / "training_groundtruth.tif", labels, photometric="minisblack")
    cfg = DataConfig(
        root=str(tmp_path), images="training.tif", labels="training_groundtruth.tif", label_mode="binary", min_area=50
    )
    ds = load_split(cfg, "all")
    assert ds.names == [f"training.tif:p{p}" for p in range(4)] and ds.object_counts == [1, 2, 3, 4]
    sample = ds[2]
    assert sample.image.shape == (40, 60, 3) and len(sample.masks) == 3
    assert (sample.image[..., 0] == to_uint8(images[2])).all()
    assert (sample.masks.any(0) == (labels[2] > 0)).all()


def test_sa1b_reader(shared_data, tmp_path, caplog):
    image = np.array(Image.open(shared_data / "isbi2012_em/image/3.png"))[:200, :300]
    comp, n = ndimage.label(np.array(Image.open(shared_data / "isbi2012_em/label/3.png"))[:200, :300] == 255)
    masks = np.stack([comp == k for k in range(1, n + 1)])
    big = masks[masks.sum((1, 2)) >= 100]
    rles = mask_utils.encode(np.asfortranarray(np.moveaxis(masks, 0, -1).astype(np.uint8)))
    anns = [
        {"id": i, "segmentation": {"size": r["size"], "counts": r["counts"].decode()}, "area": int(mask_utils.area(r))}
        for i, r in enumerate(rles)
    ]
    Image.fromarray(image).convert("RGB").save(tmp_path / "sa_1.jpg", quality=95)
    (tmp_path / "sa_1.json").write_text(json.dumps({"image": {"file_name": "sa_1.jpg"}, "annotations": anns}))
    Image.fromarray(image).convert("RGB").save(tmp_path / "sa_2.jpg")  # no json: skipped, logged
    with caplog.at_level(logging.WARNING):
        ds = load_split(DataConfig(kind="sa1b", root=str(tmp_path), images="."), "all")
    assert "skipped 1 image without annotation file (<name>.json): sa_2.jpg" in caplog.text
    assert ds.names == ["sa_1.jpg"] and ds.object_counts == [len(big)]
    sample = ds[0]
    assert sample.image.shape == (200, 300, 3) and (sample.masks == big).all()


def test_missing_paths_raise_data_error(shared_data, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=str(missing)):
        load_split(DataConfig(root=str(missing)), "all")
    with pytest.raises(DataError, match=f"{tmp_path}/image"):
        load_split(DataConfig(root=str(tmp_path)), "all")
    with pytest.raises(DataError, match="instances_x.json"):
        load_split(coco_cfg(shared_data, labels="annotations/instances_x.json"), "all")


def test_empty_and_unreadable_images_skipped_and_logged(tmp_path, caplog):
    (tmp_path / "image").mkdir()
    (tmp_path / "label").mkdir()
    for name, blob in (("a", True), ("b", False), ("c", True)):
        Image.fromarray(np.full((32, 32), 128, np.uint8)).save(tmp_path / "image" / f"{name}.png")
        label = np.zeros((32, 32), np.uint8)
        label[4:20, 4:20] = 255 if blob else 0
        Image.fromarray(label).save(tmp_path / "label" / f"{name}.png")
    (tmp_path / "image" / "d.png").write_bytes(b"not a png")
    (tmp_path / "label" / "d.png").write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING):
        ds = load_split(DataConfig(root=str(tmp_path)), "all")
    assert ds.names == ["a.png", "c.png"]
    assert "skipped 1 image with no objects >= 100 px: b.png" in caplog.text
    assert "skipped 1 image that cannot be read: d.png" in caplog.text
    (tmp_path / "label" / "a.png").unlink()
    (tmp_path / "label" / "c.png").unlink()
    with pytest.raises(DataError, match="split 'all'"):
        load_split(DataConfig(root=str(tmp_path)), "all")


def test_coco_missing_image_file_skipped_and_logged(shared_data, tmp_path, caplog):
    src = json.loads((shared_data / "tiny_coco/annotations/instances_val2017.json").read_text())
    first, second = src["images"][:2]
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / first["file_name"]).write_bytes(
        (shared_data / "tiny_coco/val2017" / first["file_name"]).read_bytes()
    )
    anns = [a for a in src["annotations"] if a["image_id"] in (first["id"], second["id"])]
    orphan = dict(anns[0], id=-1, image_id=-5)
    sub = {"images": [first, second], "annotations": anns + [orphan], "categories": src["categories"]}
    (tmp_path / "ann.json").write_text(json.dumps(sub))
    with caplog.at_level(logging.WARNING):
        ds = load_split(DataConfig(kind="coco", root=str(tmp_path), images="img", labels="ann.json", min_area=0), "all")
    assert ds.names == [first["file_name"]]
    assert (
        f"skipped 1 image whose file is missing (annotated but not in the image folder): {second['file_name']}"
        in caplog.text
    )
    assert "ignored 1 annotations whose image_id is not in the JSON's images (ids -1)" in caplog.text


def test_probes_never_repeat_an_object_on_tiny_coco(shared_data, coco_val):
    """Evaluation samples (rank-layers, search, training probes, compare, eval) prompt each object once,
    even under the paper's COCO cap of 8 objects per image (training batches alone repeat)."""
    cfg = coco_cfg(shared_data, images="val2017", max_objects=8)
    inputs = prepare_split(cfg, "all", 64, seed=0)
    counts = dict(zip(coco_val.names, coco_val.object_counts))
    assert len(inputs) == 48 and any(counts[inp.name] < 8 for inp in inputs)
    for inp in inputs:
        assert inp.n_objects == min(counts[inp.name], 8)
        flat = inp.gt_masks.flatten(1)
        assert len({hash(m.numpy().tobytes()) for m in flat}) == inp.n_objects  # no mask twice
    total = sum(inp.n_objects for inp in inputs)
    assert total == sum(min(c, 8) for c in counts.values()) < 377


def _tight(masks: np.ndarray) -> np.ndarray:
    ys, xs = masks.any(2), masks.any(1)
    h, w = masks.shape[1:]
    return np.stack([xs.argmax(1), ys.argmax(1), w - 1 - xs[:, ::-1].argmax(1), h - 1 - ys[:, ::-1].argmax(1)], 1)


def test_box_pad_fixed_random_and_invalid(shared_data):
    from supersam.data.config import parse_box_pad
    from supersam.runtime.errors import ConfigError

    assert parse_box_pad(0) == (0, 0) and parse_box_pad("5") == (5, 5) and parse_box_pad("0-20") == (0, 20)
    for bad in ("-3", "20-0", "a", "1-2-3", "0.5", True):
        with pytest.raises(ConfigError, match=r"^data.box_pad is .*use N \(fixed"):
            parse_box_pad(bad)
    with pytest.raises(ConfigError, match="data.box_pad"):
        DataConfig(box_pad="x").validate()
    sample = load_split(dsb_cfg(shared_data), "all")[0]
    tight = _tight(sample.masks)
    fixed = prepare_sample(sample, 512, "box", 0, "3", np.random.default_rng(1))
    expected = np.clip(tight + [-3, -3, 3, 3], 0, 511)
    np.testing.assert_array_equal(fixed.meta.prompts, expected)  # original pixels, exactly
    np.testing.assert_allclose(fixed.boxes.numpy(), expected, atol=1e-4)  # 512 px model: same frame
    assert (prepare_sample(sample, 512, "box", 0, 0, np.random.default_rng(1)).meta.prompts == tight).all()
    # the old meaning of 0 (random 0..0) and the new fixed 0 draw the same numbers: later draws unchanged
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    prepare_sample(sample, 64, "box", 4, 0, a)
    prepare_sample(sample, 64, "box", 4, (0, 0), b)
    assert a.integers(1 << 30) == b.integers(1 << 30)


def _voc_fixture(root: Path) -> dict:
    """Two RGB images with instance-id labels: 0 background, ids 1..k, 255 void borders (VOC style).

    Returns the instances per image (id -> mask), hand-made.
    """
    (root / "image").mkdir(parents=True)
    (root / "label").mkdir()
    rng = np.random.default_rng(0)
    truth = {}
    for name, boxes in (
        ("a", {1: (10, 30, 10, 40), 2: (10, 30, 40, 70), 7: (50, 70, 15, 35)}),
        ("b", {3: (5, 60, 5, 25)}),
    ):
        label = np.zeros((80, 90), np.uint8)
        masks = {}
        for y0, y1, x0, x1 in boxes.values():
            label[y0 - 2 : y1 + 2, x0 - 2 : x1 + 2] = 255  # void band around every object
        for k, (y0, y1, x0, x1) in boxes.items():
            label[y0:y1, x0:x1] = k
            masks[k] = label == k
        truth[name] = {k: label == k for k in boxes}
        Image.fromarray(rng.integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(root / "image" / f"{name}.jpg")
        Image.fromarray(label).save(root / "label" / f"{name}.png")
    return truth


def test_instance_labels_with_void_border(tmp_path, caplog):
    truth = _voc_fixture(tmp_path)
    cfg = DataConfig(root=str(tmp_path), label_mode="instance", ignore_label=255, min_area=0)
    ds = load_split(cfg, "all")
    assert ds.names == ["a.jpg", "b.jpg"] and ds.object_counts == [3, 1]  # 255 is never an object
    a = ds[0]
    assert a.ids.tolist() == [1, 2, 7] and a.categories.tolist() == [1, 1, 1]
    assert all((m == truth["a"][k]).all() for k, m in zip(a.ids, a.masks))
    # objects 1 and 2 touch (x 30..39 / 40..69 with their void bands overlapping): instance mode keeps them apart
    label = np.array(Image.open(tmp_path / "label" / "a.png"))
    assert (a.ignore == (label == 255)).all() and a.ignore.sum() > 0
    # without the ignore value, 255 is an instance id of its own
    assert load_split(replace(cfg, ignore_label=-1), "all").object_counts == [4, 2]
    # binary mode: void excluded from the foreground, touching 1 and 2 merge, with a warning naming the file
    with caplog.at_level(logging.WARNING):
        binary = load_split(replace(cfg, label_mode="binary"), "all")
    assert binary.object_counts == [2, 1]
    assert (
        "label_mode binary merged touching regions of different label values into one object in 1 image (a.jpg)"
        in caplog.text
        and "--label-mode instance" in caplog.text
    )
    # semantic: each class value's components; the classes are the values
    sem = load_split(replace(cfg, label_mode="semantic"), "all")[0]
    assert sem.categories.tolist() == [1, 2, 7] and len(sem.masks) == 3


def test_semantic_components_of_each_class(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "label").mkdir()
    label = np.zeros((40, 40), np.uint8)
    label[2:10, 2:10] = 5  # class 5, component 1
    label[20:30, 2:10] = 5  # class 5, component 2
    label[2:10, 10:20] = 9  # class 9 touching class 5's first component
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "image" / "s.png")
    Image.fromarray(label).save(tmp_path / "label" / "s.png")
    sample = load_split(DataConfig(root=str(tmp_path), label_mode="semantic", min_area=0), "all")[0]
    assert sample.categories.tolist() == [5, 5, 9] and sample.ids.tolist() == [1, 2, 3]
    assert [int(m.sum()) for m in sample.masks] == [64, 80, 80]
    assert len(load_split(DataConfig(root=str(tmp_path), label_mode="binary", min_area=0), "all")[0].masks) == 2


def test_prepare_uses_the_given_pixel_statistics(coco_val):
    image = coco_val[0].image
    mean, std = (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)
    x, (h, w) = preprocess_image(image, 128, mean, std)
    resized = ResizeLongestSide(128).apply_image(image).astype(np.float32)
    expected = (resized - np.array(mean, np.float32)) / np.array(std, np.float32)
    np.testing.assert_allclose(x[:, :h, :w].permute(1, 2, 0).numpy(), expected, rtol=1e-6)
    assert not torch.equal(x, preprocess_image(image, 128)[0])


def test_tiles_and_objects_carry_their_origin(shared_data):
    cfg = isbi_cfg(shared_data, patch=256, min_area=0, max_objects=0, box_pad=0)
    ds = load_split(cfg, "all")
    i = ds.names.index("3.png@256,0")
    sample = ds[i]
    assert sample.origin == (256, 0) and sample.source == "3.png"
    inp = prepare_sample(sample, 64, "box", 0, 0, np.random.default_rng(0))
    assert inp.meta.origin == (256, 0) and inp.meta.source == "3.png" and inp.meta.image_id == "3.png@256,0"
    assert inp.meta.ids.tolist() == list(range(1, len(sample.masks) + 1))
    assert inp.raw_image is sample.image and inp.ignore is None
    np.testing.assert_array_equal(inp.meta.prompts, _tight(sample.masks))
