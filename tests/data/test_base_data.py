"""scripts/make_base_data.py: the generalist pretraining data (docs/base-model.md, "A generalist base model").

The folder it writes is read by supersam's own ``image_label`` reader in ``instance`` mode;
procedural scenes are a pure function of (seed, index); real COCO and DSB images keep their
annotated instances.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from supersam.data import DataConfig, load_split

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("make_base_data", ROOT / "scripts" / "make_base_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ids(path: Path) -> np.ndarray:
    packed = np.asarray(Image.open(path)).astype(np.int64)
    return (packed[..., 0] << 16) | (packed[..., 1] << 8) | packed[..., 2]


def test_scenes_are_deterministic_and_round_trip_through_the_reader(gen, tmp_path):
    a_img, a_ids = gen.scene(seed=3, index=7)
    b_img, b_ids = gen.scene(seed=3, index=7)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_ids, b_ids)
    assert not np.array_equal(gen.scene(seed=3, index=8)[0], a_img)
    assert a_img.shape == (256, 256, 3) and a_img.dtype == np.uint8 and a_ids.shape == (256, 256)
    (tmp_path / "image").mkdir()
    (tmp_path / "label").mkdir()
    for i in range(3):
        gen.write_pair(tmp_path, f"scene_{i}", *gen.scene(seed=3, index=i))
    ids = _ids(tmp_path / "label" / "scene_0.png")
    want = gen.scene(seed=3, index=0)[1]
    # the same partition as the generator's ids, renumbered 1..K, background 0
    assert len(np.unique(ids)) == len(np.unique(want)) and np.array_equal(ids == 0, want == 0)
    pairs = np.unique(np.stack([ids.ravel(), want.ravel()]), axis=1)
    assert pairs.shape[1] == len(np.unique(want))  # one generator id per written id
    cfg = DataConfig(
        kind="image_label",
        root=str(tmp_path),
        label_mode="instance",
        patch=0,
        min_area=100,
        max_objects=0,
        split_mode="random",
        val_fraction=0.0,
        test_fraction=0.0,
    )
    dataset = load_split(cfg, "train")
    sample = next(s for s in dataset if s.name.startswith("scene_0"))
    counts = np.bincount(want.ravel())
    assert len(sample.masks) == int((counts[1:] >= 100).sum())  # every object of >= 100 px, once
    assert np.array_equal(sample.image, gen.scene(seed=3, index=0)[0])


def test_coco_images_keep_their_visible_non_crowd_instances(gen, shared_data, tmp_path):
    from pycocotools import mask as mask_utils

    pairs = gen.coco_pairs(shared_data / "tiny_coco")
    name, image, ids = next(pairs)
    assert name.startswith("coco_train2017_") and max(image.shape[:2]) == 256 and image.shape[:2] == ids.shape
    data = json.loads((shared_data / "tiny_coco" / "annotations" / "instances_train2017.json").read_text())
    info = next(i for i in data["images"] if f"coco_train2017_{i['id']}" == name)
    anns = [a for a in data["annotations"] if a["image_id"] == info["id"] and not a["iscrowd"]]
    assert 0 < len(np.unique(ids)) - 1 <= len(anns)
    largest = max(anns, key=lambda a: a["area"])  # painted first, so partly covered; still present
    rle = mask_utils.merge(mask_utils.frPyObjects(largest["segmentation"], info["height"], info["width"]))
    assert mask_utils.decode(rle).any() and (ids == 1).any()
