"""`supersam eval` end to end on real data (dsb2018 nuclei, box prompts, tiny SAM)."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch
from typer.testing import CliRunner

from supersam.cli.main import app
from supersam.measure.baselines import collapse_check

KINDS = ("box", "point")


def _empty_params(tmp_path, text: str = "{}\n"):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return str(path)


def _check_kind_metrics(metrics: dict, kinds) -> None:
    """The per-prompt-kind keys: mIoUs and fractions in [0, 1], baselines, collapse flag consistent."""
    shaped = {"box": "box_fill", "point": "disk"}
    for kind in kinds:
        for key in (
            "miou",
            "miou_oracle",
            "fg_fraction",
            "baseline_all_foreground",
            "baseline_untrained",
            f"baseline_{shaped[kind]}",
        ):
            assert 0.0 <= metrics[f"{key}_{kind}"] <= 1.0, key
        trivial = {name: metrics[f"baseline_{name}_{kind}"] for name in ("all_foreground", shaped[kind])}
        expected, _ = collapse_check(metrics[f"miou_{kind}"], metrics[f"fg_fraction_{kind}"], trivial)
        assert metrics[f"collapsed_{kind}"] is expected
    assert {kind for kind in KINDS if f"miou_{kind}" in metrics} == set(kinds)  # exactly the asked kinds


@pytest.mark.slow
def test_eval_dsb2018_box_prompts_writes_metrics_overlays_and_mlflow(tmp_path, shared_data):
    out = tmp_path / "eval"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [
        "eval",
        "--params",
        _empty_params(tmp_path),
        "--set",
        "model.type=tiny",
        "--set",
        "model.img_size=128",
        "--set",
        "data.kind=image_label",
        "--data-root",
        str(shared_data / "dsb2018_nuclei"),
        "--set",
        "data.images=img2d.tif",
        "--set",
        "data.labels=mask2d.tif",
        "--set",
        "data.label_mode=instance",
        "--set",
        "data.min_area=0",
        "--set",
        "data.max_objects=0",
        "--split",
        "all",
        "--set",
        "eval.prompt=box",
        "--out",
        str(out),
        "--set",
        "eval.overlays=1",
        "--set",
        f"mlflow.tracking_uri={uri}",
        "--set",
        "eval.device=cpu",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 1 and metrics["n_objects"] == 125  # every nucleus once
    assert 0.0 <= metrics["miou"] <= 1.0 and 0.0 <= metrics["miou_oracle"] <= 1.0
    # both prompt kinds on the same objects; the headline is the eval.prompt kind
    assert metrics["prompt"] == "box" and metrics["prompts"] == ["box", "point"] and metrics["split"] == "all"
    _check_kind_metrics(metrics, KINDS)
    assert metrics["miou_box"] == metrics["miou"] and metrics["miou_oracle_box"] == metrics["miou_oracle"]
    assert metrics["metric"] == "single" and metrics["headline_miou"] == metrics["miou"]  # params.yaml `metric`
    assert "baseline_disk_box" not in metrics and "baseline_box_fill_point" not in metrics
    assert metrics["baseline_all_foreground_box"] == metrics["baseline_all_foreground_point"]  # same objects
    assert metrics["baseline_box_fill_box"] > metrics["baseline_all_foreground_box"]  # small nuclei
    # a plain SAM without checkpoint is itself the untrained model (model.seed 0): its own baseline
    for kind in KINDS:
        assert metrics[f"baseline_untrained_{kind}"] == pytest.approx(metrics[f"miou_{kind}"], abs=1e-12)
    assert metrics["params"] == 712_931 and metrics["encoder_params"] == 671_936
    assert metrics["img_size"] == 128 and metrics["pretrained"] is False
    for key in ("seconds", "images_per_second"):
        assert metrics[key] > 0
    overlays = list((out / "overlays").glob("*.png"))
    assert len(overlays) == 1 and overlays[0].read_bytes()[:4] == b"\x89PNG"

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("supersam")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["stage"] == "eval" and run.data.tags["pretrained"] == "false"
    assert abs(run.data.metrics["miou"] - metrics["miou"]) < 1e-12
    assert run.data.metrics["n_objects"] == 125
    for key in (
        "miou_point",
        "fg_fraction_box",
        "baseline_box_fill_box",
        "baseline_disk_point",
        "baseline_untrained_point",
        "baseline_all_foreground_box",
    ):
        assert run.data.metrics[key] == pytest.approx(metrics[key], abs=1e-12), key
    assert run.data.metrics["collapsed_box"] == float(metrics["collapsed_box"])
    assert run.data.params["split"] == "all" and run.data.params["prompts"] == "box,point"


@pytest.mark.slow
def test_eval_is_deterministic_for_the_same_seed(tmp_path, shared_data):
    # split test (here the held-out 20 % of the EM slices; --data-root alone would mean all); only point prompts
    params = _empty_params(tmp_path, "data:\n  test_fraction: 0.2\n")
    base = [
        "eval",
        "--params",
        params,
        "--set",
        "model.type=tiny",
        "--split",
        "test",
        "--set",
        "data.kind=image_label",
        "--data-root",
        str(shared_data / "isbi2012_em"),
        "--set",
        "data.images=image",
        "--set",
        "data.labels=label",
        "--set",
        "data.label_mode=binary",
        "--set",
        "eval.n_images=2",
        "--set",
        "eval.prompt=point",
        "--set",
        "eval.prompts=[point]",
        "--set",
        "eval.overlays=0",
        "--set",
        f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db",
        "--set",
        "eval.device=cpu",
    ]
    runs = []
    for name in ("a", "b"):
        result = CliRunner().invoke(app, base + ["--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        runs.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    assert runs[0]["miou"] == runs[1]["miou"] and runs[0]["n_objects"] == runs[1]["n_objects"] > 0
    assert runs[0] == {**runs[1], **{k: runs[0][k] for k in ("seconds", "images_per_second", "encoder_seconds")}}
    assert runs[0]["split"] == "test" and runs[0]["prompts"] == ["point"]
    _check_kind_metrics(runs[0], ("point",))


def test_run_eval_with_other_prompts_matches_separate_runs(shared_data):
    """``also`` decodes other prompt sets from the same embeddings: same numbers as their own run."""
    from supersam.data import DataConfig, prepare_split
    from supersam.measure.scoring import run_eval
    from supersam.model.sam import build_sam

    data = DataConfig(root=str(shared_data / "isbi2012_em"), max_objects=4, point="center")
    model = build_sam("tiny", 128, None, seed=0).model
    boxes, points = (prepare_split(data, "val", 128, n_images=2, prompt=kind) for kind in KINDS)
    cpu = torch.device("cpu")
    joint = run_eval(model, boxes, cpu, batch_size=2, also={"point": points})
    alone = {"box": run_eval(model, boxes, cpu), "point": run_eval(model, points, cpu)}
    for key in ("miou", "miou_oracle", "fg_fraction", "n_objects"):
        assert joint[key] == pytest.approx(alone["box"][key], abs=1e-6)
        assert joint["also"]["point"][key] == pytest.approx(alone["point"][key], abs=1e-6)
    assert "also" not in alone["box"] and 0.0 <= joint["fg_fraction"] <= 1.0
    with pytest.raises(ValueError, match="same images"):
        run_eval(model, boxes, cpu, also={"point": points[:1]})


def test_eval_rejects_conflicting_or_bad_options(tmp_path):
    import pytest

    from supersam.runtime.errors import ConfigError
    from supersam.stages.eval import EvalConfig

    for bad, message in (
        (EvalConfig(subnet='{"kept_layers": [0]}'), "--subnet needs --supernet"),
        (EvalConfig(model="m", supernet="s"), "not both"),
        (EvalConfig(batch_size=0), "batch_size must be >= 1"),
        (EvalConfig(split="bogus"), "eval.split"),
        (EvalConfig(prompts=("box", "circle")), "eval.prompts"),
        (EvalConfig(prompts=()), "eval.prompts"),
        (EvalConfig(prompt="circle"), "eval.prompt"),
    ):
        with pytest.raises(ConfigError, match=message):
            bad.validate()
    EvalConfig().validate()
    assert EvalConfig().split == "test" and EvalConfig().prompts == ("box", "point")
    result = CliRunner().invoke(app, ["eval", "--params", _empty_params(tmp_path), "--set", "eval.batch_size=0"])
    assert result.exit_code != 0 and isinstance(result.exception, ConfigError)
    result = CliRunner().invoke(app, ["eval", "--params", _empty_params(tmp_path), "--set", "eval.prompts=[box,oval]"])
    assert result.exit_code != 0 and isinstance(result.exception, ConfigError)
    result = CliRunner().invoke(app, ["eval", "--params", _empty_params(tmp_path), "--set", "eval.prompts=box"])
    assert result.exit_code != 0 and "eval.prompts: input should be a valid tuple" in str(result.exception)


# -- a user's own data (issue 13) ------------------------------------------------------------------


def _user_eval(tmp_path, model_dir, data_root, *extra):
    """`supersam eval --model M --data-root D ... --out OUT` in-process, MLflow off; returns (OUT, metrics)."""
    out = tmp_path / "out"
    args = [
        "eval",
        "--params",
        _empty_params(tmp_path),
        "--model",
        str(model_dir),
        "--data-root",
        str(data_root),
        "--set",
        "mlflow.enabled=false",
        "--set",
        "eval.device=cpu",
        "--out",
        str(out),
        *extra,
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "metrics.json").read_text())


def _rows(out):
    import csv

    with open(out / "objects.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_eval_voc_style_folder_every_instance_once_and_reproducible(tmp_path, shared_data, tiny_export):
    """The issue's done-when on real tiny-COCO images turned into VOC-style instance labels (255 void bands)."""
    import numpy as np
    import pycocotools.mask as mask_utils
    from conftest import make_voc_folder
    from PIL import Image
    from segment_anything import SamPredictor

    import supersam

    data = tmp_path / "voc"
    truth = make_voc_folder(shared_data, data, n_images=2)
    out, metrics = _user_eval(
        tmp_path,
        tiny_export,
        data,
        "--label-mode",
        "instance",
        "--ignore-label",
        "255",
        "--max-objects",
        "0",
        "--patch",
        "0",
        "--box-pad",
        "0",
        "--split",
        "all",
    )
    assert metrics["split"] == "all" and metrics["n_images"] == 2
    assert metrics["n_objects"] == sum(len(t["ids"]) for t in truth.values())
    assert (
        metrics["data"]["patch"] == 0 and metrics["data"]["box_pad"] == "0" and metrics["data"]["ignore_label"] == 255
    )
    assert metrics["pixel_mean"] == [100.0, 110.0, 120.0]  # the model's config, not SAM's
    rows = _rows(out)
    for kind in ("box", "point"):
        got = sorted((r["image"], int(r["object_id"])) for r in rows if r["prompt"] == kind)
        assert got == sorted((f"{stem}.jpg", i) for stem, t in truth.items() for i in t["ids"])  # each once, no 255
        ious = [float(r["iou"]) for r in rows if r["prompt"] == kind]
        assert np.mean(ious) == pytest.approx(metrics[f"miou_{kind}"], abs=1e-12)
    assert metrics["miou"] == metrics["miou_box"] and metrics["prompt"] == "box"

    predictor = SamPredictor(supersam.load_model(tiny_export))
    results = {k: json.loads((out / "predictions" / f"{k}.json").read_text()) for k in ("box", "point")}
    for stem, t in truth.items():
        image = np.array(Image.open(data / "image" / f"{stem}.jpg").convert("RGB"))
        void = t["label"] == 255
        predictor.set_image(image)
        mine = [r for r in rows if r["image"] == f"{stem}.jpg"]
        for r in mine:
            gt = t["label"] == int(r["object_id"])
            assert int(r["area"]) == gt.sum()
            if r["prompt"] == "box":
                box = np.array([float(r[k]) for k in ("box_x0", "box_y0", "box_x1", "box_y1")])
                ys, xs = np.nonzero(gt)
                assert box.tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]  # tight box, original pixels
                masks, scores, _ = predictor.predict(box=box, multimask_output=False)
            else:
                point = np.array([[float(r["point_x"]), float(r["point_y"])]])
                assert gt[int(point[0, 1]), int(point[0, 0])]
                masks, scores, _ = predictor.predict(
                    point_coords=point, point_labels=np.array([1]), multimask_output=False
                )
            pred = masks[0] & ~void
            union = (pred | gt).sum()
            assert float(r["iou"]) == pytest.approx((pred & gt).sum() / union if union else 1.0, abs=1e-6)
            assert float(r["predicted_iou"]) == pytest.approx(float(scores[0]), abs=1e-4)
        # COCO results: RLE masks of the same predictions, in CSV order
        for kind in ("box", "point"):
            entries = [e for e in results[kind] if e["file_name"] == f"{stem}.jpg"]
            assert [e["object_id"] for e in entries] == [int(r["object_id"]) for r in mine if r["prompt"] == kind]
            first = mask_utils.decode(
                {**entries[0]["segmentation"], "counts": entries[0]["segmentation"]["counts"].encode()}
            )
            assert first.shape == t["label"].shape
        overlay = Image.open(out / "overlays" / f"{stem}.png")
        assert overlay.size == (2 * image.shape[1], image.shape[0])  # GT | prediction, each at the image's size


def test_eval_hand_made_void_fixture_counts_and_ignores_void(tmp_path, tiny_export):
    """Hand-computed: two rectangles (20 x 30, 20 x 40 px) in 2 px void bands. A box padded by 2 px covers
    exactly object + void, so its box-fill IoU is 1 with the void ignored, and w h / ((w + 4)(h + 4))
    when the void counts as background (no --ignore-label, where 255 is also an instance of its own)."""
    import numpy as np
    from PIL import Image

    data = tmp_path / "rects"
    (data / "image").mkdir(parents=True)
    (data / "label").mkdir()
    label = np.zeros((64, 96), np.uint8)
    rects = {3: (8, 28, 8, 38), 9: (36, 56, 50, 90)}  # id: y0, y1, x0, x1 (end exclusive); 20x30 and 20x40
    for k, (y0, y1, x0, x1) in rects.items():
        label[y0 - 2 : y1 + 2, x0 - 2 : x1 + 2] = 255
        label[y0:y1, x0:x1] = k
    Image.fromarray(np.full((64, 96, 3), 90, np.uint8)).save(data / "image" / "r.png")
    Image.fromarray(label).save(data / "label" / "r.png")
    _, ignored = _user_eval(
        tmp_path,
        tiny_export,
        data,
        "--label-mode",
        "instance",
        "--ignore-label",
        "255",
        "--box-pad",
        "2",
        "--set",
        "eval.prompts=[box]",
    )
    assert ignored["n_objects"] == 2 and ignored["baseline_box_fill_box"] == 1.0
    # the same boxes without an ignore value: void counts as background (and 255 is an instance of its own)
    out, counted = _user_eval(
        tmp_path, tiny_export, data, "--label-mode", "instance", "--box-pad", "2", "--set", "eval.prompts=[box]"
    )
    assert counted["n_objects"] == 3
    expected = [600 / (24 * 34), 800 / (24 * 44)]
    areas = {int(r["object_id"]): int(r["area"]) for r in _rows(out)}
    assert areas[3] == 600 and areas[9] == 800 and 255 in areas
    from supersam.data import DataConfig, prepare_split
    from supersam.measure.baselines import baseline_ious

    cfg = DataConfig(root=str(data), label_mode="instance", min_area=0, max_objects=0, box_pad="2")
    fills = baseline_ious(prepare_split(cfg, "all", 128, prompt="box"))["box_fill"].tolist()
    assert fills[:2] == pytest.approx(expected, abs=1e-12)


def test_eval_user_folder_defaults_and_pipeline_settings(tmp_path, shared_data, monkeypatch):
    """--data-root switches to the user-folder defaults; flags and --set override them; without it params rule."""
    import supersam.stages.eval as eval_stage

    seen = {}
    monkeypatch.setattr(
        eval_stage, "evaluate", lambda cfg, model, data, tracking, force=False: seen.update(cfg=cfg, data=data)
    )
    params = _empty_params(
        tmp_path,
        "data:\n  patch: 256\n  max_objects: 8\n  box_pad: 0-20\n  min_area: 100\n"
        "  label_mode: binary\neval:\n  split: test\n",
    )
    runner = CliRunner()
    assert runner.invoke(app, ["eval", "-p", params]).exit_code == 0
    d = seen["data"]
    assert (d.patch, d.max_objects, d.box_pad, d.min_area, seen["cfg"].split) == (256, 8, "0-20", 100, "test")
    assert runner.invoke(app, ["eval", "-p", params, "--data-root", "/my/data"]).exit_code == 0
    d = seen["data"]
    assert (d.root, d.patch, d.max_objects, d.box_pad, d.min_area, d.label_mode, seen["cfg"].split) == (
        "/my/data",
        0,
        0,
        "0",
        0,
        "binary",
        "all",
    )
    result = runner.invoke(
        app,
        [
            "eval",
            "-p",
            params,
            "--data-root",
            "/my/data",
            "--set",
            "data.patch=64",
            "--box-pad",
            "0-20",
            "--max-objects",
            "3",
            "--split",
            "val",
            "--label-mode",
            "semantic",
            "--ignore-label",
            "255",
            "--images",
            "JPEGImages",
            "--labels",
            "SegmentationObject",
        ],
    )
    assert result.exit_code == 0
    d = seen["data"]
    assert (d.patch, d.box_pad, d.max_objects, seen["cfg"].split, d.label_mode, d.ignore_label, d.images, d.labels) == (
        64,
        "0-20",
        3,
        "val",
        "semantic",
        255,
        "JPEGImages",
        "SegmentationObject",
    )


def test_eval_tiled_real_em_names_overlays_by_tile_origin(tmp_path, shared_data, tiny_export):
    import numpy as np
    from PIL import Image

    out, metrics = _user_eval(
        tmp_path,
        tiny_export,
        shared_data / "isbi2012_em",
        "--patch",
        "256",
        "--set",
        "eval.n_images=1",
        "--set",
        "eval.prompts=[point]",
        "--set",
        "eval.prompt=point",
        "--overlays",
        "1",
    )
    rows = _rows(out)
    (tile,) = {(r["image"], int(r["tile_y0"]), int(r["tile_x0"])) for r in rows}
    assert metrics["data"]["label_mode"] == "binary" and metrics["n_objects"] == len(rows)
    stem = tile[0].removesuffix(".png")
    (overlay,) = (out / "overlays").glob("*.png")
    assert overlay.name == f"{stem}_y{tile[1]:04d}_x{tile[2]:04d}.png" and Image.open(overlay).size == (512, 256)
    assert np.mean([float(r["iou"]) for r in rows]) == pytest.approx(metrics["miou"], abs=1e-12)
    assert all(0 <= float(r["point_x"]) < 256 and 0 <= float(r["point_y"]) < 256 for r in rows)  # tile frame


def test_eval_bad_data_options_are_one_line_errors(tmp_path):
    from supersam.runtime.errors import ConfigError

    for args, message in (
        (["--box-pad", "x"], "data.box_pad is 'x'; use N (fixed"),
        (["--label-mode", "blobs"], "data.label_mode is 'blobs'"),
        (["--ignore-label", "-3"], "data.ignore_label is -3"),
    ):
        result = CliRunner().invoke(
            app,
            [
                "eval",
                "--params",
                _empty_params(tmp_path),
                "--data-root",
                str(tmp_path),
                "--set",
                "mlflow.enabled=false",
                *args,
            ],
        )
        assert result.exit_code != 0 and isinstance(result.exception, ConfigError), result.output
        assert message in str(result.exception)
