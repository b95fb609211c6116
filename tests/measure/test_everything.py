"""Everything mode: `predict --everything`, `eval --everything` recall, `bench --everything` cost (issue 28)."""

from __future__ import annotations

import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import yaml
from conftest import ROOT, run_cli
from PIL import Image
from segment_anything import SamAutomaticMaskGenerator

import supersam
from supersam.measure.everything import (
    EverythingConfig,
    best_ious,
    component_masks,
    generate,
    otsu_threshold,
    recall,
)
from supersam.runtime.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def test_best_ious_and_recall_on_a_hand_computed_example():
    gt = np.zeros((3, 4, 4), bool)
    gt[0, :2, :2] = True  # 4 px, top-left
    gt[1, 2:, :] = True  # 8 px, bottom half
    gt[2, 0, 3] = True  # 1 px, never proposed
    a = np.zeros((4, 4), bool)
    a[:2, :3] = True  # 6 px: IoU with gt0 = 4/6
    b = np.zeros((4, 4), bool)
    b[3, :] = True  # 4 px: IoU with gt1 = 4/8
    best = best_ious(gt, [{"segmentation": _rle(a)}, {"segmentation": _rle(b)}])
    assert best == pytest.approx([4 / 6, 4 / 8, 0.0])
    assert recall(best) == pytest.approx({"recall_50": 2 / 3, "recall_75": 0.0, "mean_best_iou": (4 / 6 + 0.5) / 3})
    ignore = np.zeros((4, 4), bool)
    ignore[:2, 2] = True  # void column of a: gt0 vs a becomes 4/4
    assert best_ious(gt, [{"segmentation": _rle(a)}], ignore)[0] == pytest.approx(1.0)
    assert best_ious(gt, []).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(DataError, match="no ground-truth objects"):
        recall(np.zeros(0))


def test_otsu_components_split_a_two_level_image_into_its_regions():
    image = np.full((20, 30, 3), 40, np.uint8)
    image[2:8, 2:8] = 200  # two bright squares on a dark background
    image[10:18, 15:28] = 220
    assert 40 <= otsu_threshold(image[..., 0]) < 200
    masks = component_masks(image)
    areas = sorted(m["area"] for m in masks)
    assert areas == [36, 104, 20 * 30 - 36 - 104]  # the squares, and the background around them
    gt = np.stack([np.zeros((20, 30), bool)] * 2)
    gt[0, 2:8, 2:8] = True
    gt[1, 10:18, 15:28] = True
    assert best_ious(gt, masks).tolist() == [1.0, 1.0]


def test_settings_refuse_a_bad_grid_and_an_image_smaller_than_the_grid():
    for bad in (0, -3, 129, 2.5, True):
        with pytest.raises(ConfigError, match="--points-per-side must be a whole number in 1..128"):
            EverythingConfig(points_per_side=bad).validate()
    with pytest.raises(ConfigError, match="pred_iou_thresh"):
        EverythingConfig(pred_iou_thresh=1.5).validate()
    with pytest.raises(DataError, match="smaller than the 32 x 32 point grid; use --points-per-side 20 or less"):
        EverythingConfig().check_image((20, 50))
    assert EverythingConfig(points_per_side=32).n_batches == 16 and EverythingConfig(points_per_side=9).n_batches == 2


@pytest.fixture(scope="module")
def em_image(shared_data, tmp_path_factory):
    """A real ISBI EM section, cut to 160 x 200 px (gray PNG)."""
    path = tmp_path_factory.mktemp("em") / "section.png"
    pixels = np.array(Image.open(shared_data / "isbi2012_em" / "image" / "25.png"))[:160, :200]
    Image.fromarray(pixels).save(path)
    return path


def test_predict_everything_writes_the_generators_masks_overlay_and_time(
    tiny_export, em_image, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "ev"
    code, err = run_cli(
        [
            "predict",
            str(tiny_export),
            str(em_image),
            "--everything",
            "--points-per-side",
            "8",
            "--pred-iou-thresh",
            "0",
            "--stability-thresh",
            "0",
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
    records = json.loads((out / "masks.json").read_text())
    assert report["n_masks"] == len(records) > 0 and report["n_points"] == 64 and report["n_batches"] == 1
    assert report["size"] == [160, 200] and 0 < report["encoder_seconds"] < report["seconds"]
    # the same masks as segment_anything's generator with the same settings, on the same RGB image
    model = supersam.load_model(tiny_export)
    image = np.array(Image.open(em_image).convert("RGB"))
    reference = SamAutomaticMaskGenerator(
        model, points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, output_mode="coco_rle"
    ).generate(image)
    assert [r["segmentation"] for r in records] == [r["segmentation"] for r in reference]
    assert [r["area"] for r in records] == [r["area"] for r in reference]
    decoded = mask_utils.decode(
        [{"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()} for r in records]
    )
    assert decoded.shape == (160, 200, len(records))
    assert Image.open(out / "overlay.png").size == (200, 160)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--points-per-side", "0"], "--points-per-side must be a whole number in 1..128"),
        (["--points-per-side", "161"], "--points-per-side must be a whole number in 1..128"),
        (["--points-per-side", "128"], "smaller than the 128 x 128 point grid; use --points-per-side 64 or less"),
        (["--box", "1,1,20,20"], "--everything prompts the whole image with a point grid; leave out --box and --point"),
    ],
)
def test_predict_everything_bad_input_is_one_line(tiny_export, tmp_path, monkeypatch, capsys, args, message):
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((64, 90), np.uint8)).save(small)
    code, err = run_cli(
        ["predict", str(tiny_export), str(small), "--everything", *args, "--out", str(tmp_path / "o")],
        monkeypatch,
        capsys,
    )
    assert code == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_generate_times_the_encoder_once(tiny_export, em_image):
    model = supersam.load_model(tiny_export)
    image = np.array(Image.open(em_image).convert("RGB"))
    calls = []
    hook = model.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    result = generate(model, image, EverythingConfig(points_per_side=10, pred_iou_thresh=0, stability_score_thresh=0))
    hook.remove()
    assert len(calls) == 1 and result.n_batches == 2 and 0 < result.encoder_seconds < result.seconds
    assert result.decoder_seconds == pytest.approx(result.seconds - result.encoder_seconds)


@pytest.mark.slow
def test_eval_everything_reports_recall_beside_baselines_on_real_data(
    tiny_export, shared_data, tmp_path, monkeypatch, capsys
):
    values = yaml.safe_load((ROOT / "params.yaml").read_text())  # the default profile's splits (test: sections 20-29)
    values["data"].update(root=str(shared_data / "isbi2012_em"), patch=128, max_objects=6)
    values["eval"].update(n_images=2, overlays=0, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    values["mlflow"]["enabled"] = False
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(values))
    code, err = run_cli(
        [
            "eval",
            "--params",
            str(params),
            "--model",
            str(tiny_export),
            "--everything",
            "--points-per-side",
            "8",
            "--out",
            str(tmp_path / "ev"),
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["everything_points_per_side"] == 8 and metrics["everything_masks_per_image"] > 0
    for key in (
        "everything",
        "baseline_all_foreground_everything",
        "baseline_components_everything",
        "baseline_untrained_everything",
    ):
        r50, r75 = metrics[f"{key}_recall_50"], metrics[f"{key}_recall_75"]
        assert 0.0 <= r75 <= r50 <= 1.0, key
    # recall is counted over the evaluated objects: the components baseline, recomputed here, agrees
    from supersam.data import DataConfig, prepare_split
    from supersam.schema import stage_config

    inputs = prepare_split(
        stage_config(DataConfig, values, "data"), "test", 128, n_images=2, seed=0, repeat=False, prompt="box"
    )
    best = np.concatenate([best_ious(i.gt_masks.numpy(), component_masks(i.raw_image)) for i in inputs])
    assert metrics["baseline_components_everything_recall_50"] == pytest.approx(float((best >= 0.5).mean()))
    assert metrics["n_objects"] == len(best)


def test_bench_everything_predicts_the_generation_from_one_batch(tiny_export, tmp_path, monkeypatch, capsys):
    code, err = run_cli(
        [
            "bench",
            str(tiny_export),
            "--everything",
            "--points-per-side",
            "16",
            "--repeats",
            "3",
            "--warmup",
            "1",
            "--out",
            str(tmp_path / "b.json"),
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["everything_n_points"] == 256 and result["everything_n_batches"] == 4
    assert result["everything_predicted_ms"] == pytest.approx(
        result["everything_encoder_ms"] + 4 * result["everything_batch_ms"], abs=0.01
    )
    assert abs(result["everything_prediction_error"]) < 0.5  # one batch's cost x 4 against the real generation
