"""`supersam predict`: an exported model on one image with box / point prompts (tiny SAM, real image)."""

from __future__ import annotations

import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from conftest import CUSTOM_PIXEL_MEAN, CUSTOM_PIXEL_STD, run_cli
from PIL import Image
from segment_anything import SamPredictor

import supersam

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def image_file(shared_data, tmp_path_factory):
    """A real tiny-COCO val image (RGB JPEG, 640 x 480 or so)."""
    src = sorted((shared_data / "tiny_coco" / "val2017").glob("*.jpg"))[0]
    path = tmp_path_factory.mktemp("img") / "photo.jpg"
    path.write_bytes(src.read_bytes())
    return path


def test_predict_boxes_write_masks_at_image_size_with_the_models_pixel_stats(
    tiny_export, image_file, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "pred"
    code, err = run_cli(
        [
            "predict",
            str(tiny_export),
            str(image_file),
            "--box",
            "10,20,200,180",
            "--box",
            "150.5,100,400,300",
            "--rle",
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    report = json.loads((out / "prediction.json").read_text())
    image = np.array(Image.open(image_file).convert("RGB"))
    h, w = image.shape[:2]
    assert report["size"] == [h, w] and [o["mask"] for o in report["objects"]] == ["mask_00.png", "mask_01.png"]
    assert report["pixel_mean"] == pytest.approx(CUSTOM_PIXEL_MEAN) and report["pixel_std"] == pytest.approx(
        CUSTOM_PIXEL_STD
    )
    model = supersam.load_model(tiny_export)
    assert model.pixel_mean.flatten().tolist() == CUSTOM_PIXEL_MEAN  # SamPredictor normalises with these
    reference = SamPredictor(model)
    reference.set_image(image)
    rles = json.loads((out / "masks_rle.json").read_text())
    for obj, box, rle in zip(report["objects"], ([10, 20, 200, 180], [150.5, 100, 400, 300]), rles):
        mask = np.array(Image.open(out / obj["mask"])) > 0
        assert mask.shape == (h, w)
        masks, scores, _ = reference.predict(box=np.array(box, float), multimask_output=False)
        assert (mask == masks[0]).all() and obj["predicted_iou"] == pytest.approx(float(scores[0]), abs=1e-6)
        assert obj["area"] == int(mask.sum()) and obj["box"] == box
        assert (mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool) == mask).all()
    assert Image.open(out / "overlay.png").size == (w, h)
    # the default SAM statistics would give another prediction: the model's own are used
    from supersam.model.checkpoint import set_pixel_stats
    from supersam.model.sam import PIXEL_MEAN, PIXEL_STD

    set_pixel_stats(model, list(PIXEL_MEAN), list(PIXEL_STD))
    other = SamPredictor(model)
    other.set_image(image)
    _, default_scores, _ = other.predict(box=np.array([10, 20, 200, 180], float), multimask_output=False)
    assert abs(float(default_scores[0]) - report["objects"][0]["predicted_iou"]) > 1e-4


def test_predict_points_make_one_object(tiny_export, image_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pts"
    code, err = run_cli(
        [
            "predict",
            str(tiny_export),
            str(image_file),
            "--point",
            "100,120",
            "--point",
            "300,50,0",
            "--multimask",
            "--no-overlay",
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    report = json.loads((out / "prediction.json").read_text())
    assert len(report["objects"]) == 1 and report["objects"][0]["mask"] == "mask.png"
    assert report["objects"][0]["points"] == [[100.0, 120.0, 1], [300.0, 50.0, 0]]
    assert not (out / "overlay.png").exists() and not (out / "masks_rle.json").exists()
    reference = SamPredictor(supersam.load_model(tiny_export))
    reference.set_image(np.array(Image.open(image_file).convert("RGB")))
    masks, scores, _ = reference.predict(
        point_coords=np.array([[100.0, 120.0], [300.0, 50.0]]), point_labels=np.array([1, 0]), multimask_output=True
    )
    best = int(np.argmax(scores))
    assert (np.array(Image.open(out / "mask.png")) > 0).tolist() == masks[best].tolist()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--box", "1,2,3"], "error: --box '1,2,3' must be x0,y0,x1,y1"),
        (["--box", "0,0,9000,20"], "lies outside the"),
        (["--box", "50,50,10,10"], "x0 <= x1"),
        (["--point", "10,10,2"], "the label is 1 (foreground) or 0 (background)"),
        (["--point", "-5,10"], "lies outside the"),
        ([], "give at least one prompt"),
        (["--box", "0,0,10,10", "--box", "0,0,20,20", "--point", "5,5"], "at most one --box"),
    ],
)
def test_predict_bad_prompts_are_one_line_errors(tiny_export, image_file, tmp_path, monkeypatch, capsys, args, message):
    code, err = run_cli(
        ["predict", str(tiny_export), str(image_file), *args, "--out", str(tmp_path / "x")], monkeypatch, capsys
    )
    assert code == 1 and message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "x").exists()


def test_predict_missing_image_or_model(tiny_export, image_file, tmp_path, monkeypatch, capsys):
    code, err = run_cli(
        ["predict", str(tiny_export), str(tmp_path / "none.png"), "--point", "1,1"], monkeypatch, capsys
    )
    assert code == 1 and "none.png not found" in err and "Traceback" not in err
    code, err = run_cli(["predict", str(tmp_path), str(image_file), "--point", "1,1"], monkeypatch, capsys)
    assert code == 1 and "not an exported supersam model" in err
