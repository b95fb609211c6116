"""`export --format onnx`: onnxruntime runs the exported encoder (dynamic batch) and Meta's decoder graph
on real images as SamPredictor does (embeddings and IoUs within 1e-3, masks equal on >= 99.9% of pixels)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort  # a declared dependency: missing, the test fails rather than skips
import pytest
import torch
from PIL import Image
from segment_anything import SamPredictor

from supersam.artifacts.records import SupernetMeta
from supersam.data.prepare import preprocess_image
from supersam.model.checkpoint import load_model, save_supernet
from supersam.model.elastic import SuperSam
from supersam.model.onnx import box_prompt, decoder_inputs, point_prompt
from supersam.model.sam import build_sam_model
from supersam.model.space import SearchSpace, SubnetConfig
from supersam.runtime.errors import ConfigError
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
    """Real images of two data sets (COCO photos, EM slices): (array, SAM-preprocessed image)."""
    files = sorted((shared_data / "tiny_coco" / "val2017").glob("*.jpg"))[:2]
    files += sorted((shared_data / "isbi2012_em" / "image").glob("*"))[:1]
    for f in files:
        array = np.asarray(Image.open(f).convert("RGB"))
        yield array, preprocess_image(array, img_size)[0]


def test_official_decoder_and_batched_encoder_match_sam_predictor(exported, shared_data):
    """decoder.onnx is Meta's graph (SamOnnxModel's inputs and outputs): on onnxruntime, channel 0 of its
    masks is SamPredictor's single mask and channels 1-3 its multimask masks, for box and point prompts,
    on the embeddings of the encoder run on three images in one batch."""
    meta = json.loads((exported / "onnx" / "onnx.json").read_text())
    assert meta["opset"] == 17 and meta["img_size"] == 128
    assert meta["encoder"]["outputs"]["image_embeddings"] == ["batch", 32, 8, 8]
    assert sorted(p.name for p in (exported / "onnx").iterdir()) == ["decoder.onnx", "encoder.onnx", "onnx.json"]
    model = load_model(exported)  # the PyTorch export in the same folder
    predictor = SamPredictor(model)
    encoder = ort.InferenceSession(str(exported / "onnx" / "encoder.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(exported / "onnx" / "decoder.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in decoder.get_inputs()] == list(OFFICIAL_INPUTS)
    assert [o.name for o in decoder.get_outputs()] == ["masks", "iou_predictions", "low_res_masks"]
    images = list(_real_images(shared_data, 128))
    embeddings = encoder.run(None, {"image": np.stack([image.numpy() for _, image in images])})[0]
    assert embeddings.shape == (3, 32, 8, 8)
    agree = total = 0
    for k, (array, _) in enumerate(images):
        predictor.set_image(array)
        assert np.abs(embeddings[k] - predictor.features[0].numpy()).max() <= 1e-3
        h, w = array.shape[:2]
        box = np.array([0.1 * w, 0.15 * h, 0.6 * w, 0.7 * h])
        points, labels = np.array([[0.4 * w, 0.4 * h], [0.8 * w, 0.2 * h]]), np.array([1, 0])
        for prompt in ({"box": box}, {"point_coords": points, "point_labels": labels}):
            if "box" in prompt:
                coords, lbl = box_prompt(torch.from_numpy(predictor.transform.apply_boxes(box, (h, w))))
            else:
                coords, lbl = point_prompt(
                    torch.from_numpy(predictor.transform.apply_coords(points, (h, w))), torch.from_numpy(labels)
                )
            feeds = {k2: v.numpy() for k2, v in decoder_inputs(model, coords, lbl, (h, w)).items()}
            masks, iou, low = decoder.run(None, {"image_embeddings": embeddings[k : k + 1], **feeds})
            assert masks.shape == (1, 4, h, w) and iou.shape == (1, 4) and low.shape == (1, 4, 32, 32)
            single, single_iou, _ = predictor.predict(**prompt, multimask_output=False)
            multi, multi_iou, _ = predictor.predict(**prompt, multimask_output=True)
            assert np.abs(iou[0] - np.concatenate([single_iou, multi_iou])).max() <= 1e-3
            reference = np.concatenate([single, multi])  # 4 x H x W bool
            agree += int(((masks[0] > 0) == reference).sum())
            total += reference.size
    assert agree / total >= 0.999, agree / total


OFFICIAL_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_graphs_run_and_agree_with_fp32(exported, tmp_path, shared_data, precision):
    """--precision fp16 adds encoder.fp16.onnx (the decoder stays fp32), int8 adds encoder.int8.onnx and
    decoder.int8.onnx, with the same float32 inputs and outputs: smaller weights whose masks agree with the
    fp32 graphs' on real images, and masks of the requested size above fp16's exact-integer range."""
    root = exported.parent
    out = export(
        ExportConfig(
            supernet=str(root / "supernet.pt"),
            subnet=json.dumps(MIXED.to_dict()),
            out=str(tmp_path / precision),
            format="onnx",
            precision=precision,
        )
    )
    meta = json.loads((out / "onnx" / "onnx.json").read_text())
    assert sorted(meta["precisions"]) == sorted(["fp32", precision])
    files = meta["precisions"][precision]
    assert files["encoder"]["file"] == f"encoder.{precision}.onnx"
    assert files["encoder"]["bytes"] < meta["precisions"]["fp32"]["encoder"]["bytes"]
    if precision == "fp16":
        assert files["decoder"]["file"] == "decoder.onnx"  # orig_im_size arithmetic stays float32
    for part in ("encoder", "decoder") if precision == "int8" else ("encoder",):
        # the weights: half the bytes in fp16, about a quarter in int8
        reference = _weight_bytes(out / "onnx" / f"{part}.onnx")
        reduced = _weight_bytes(out / "onnx" / files[part]["file"])
        assert set(reference) == {"FLOAT"}
        if precision == "fp16":
            assert reduced == {"FLOAT16": reference["FLOAT"] // 2}
        else:
            assert reduced["INT8"] > 0 and sum(reduced.values()) <= 0.35 * reference["FLOAT"], reduced

    def sessions(p):
        names = meta["precisions"][p]
        return [
            ort.InferenceSession(str(out / "onnx" / names[part]["file"]), providers=["CPUExecutionProvider"])
            for part in ("encoder", "decoder")
        ]

    model = load_model(out)
    (enc32, dec32), (enc, dec) = sessions("fp32"), sessions(precision)
    agree = total = 0
    for array, image in _real_images(shared_data, 128):
        h, w = array.shape[:2]
        coords, labels = box_prompt(torch.tensor([0.1 * 128, 0.15 * 128, 0.6 * 128, 0.7 * 128]))
        feeds = {k: v.numpy() for k, v in decoder_inputs(model, coords, labels, (h, w)).items()}
        ref = dec32.run(None, {"image_embeddings": enc32.run(None, {"image": image[None].numpy()})[0], **feeds})[0]
        emb = enc.run(None, {"image": image[None].numpy()})[0]
        assert emb.dtype == np.float32
        masks = dec.run(None, {"image_embeddings": emb, **feeds})[0]
        agree += int(((masks > 0) == (ref > 0)).sum())
        total += ref.size
    assert agree / total >= 0.98, agree / total
    big = {k: v.numpy() for k, v in decoder_inputs(model, coords, labels, (2049, 3001)).items()}
    assert dec.run(None, {"image_embeddings": emb, **big})[0].shape == (1, 4, 2049, 3001)


def test_reduced_precision_needs_the_onnx_format(exported, tmp_path):
    with pytest.raises(ConfigError, match="--precision int8 applies to ONNX graphs; add --format onnx"):
        export(
            ExportConfig(
                supernet=str(exported.parent / "supernet.pt"), subnet="{}", out=str(tmp_path / "x"), precision="int8"
            )
        )
    with pytest.raises(ConfigError, match="export.precision is 'int4'"):
        export(ExportConfig(supernet="s", subnet="{}", out=str(tmp_path / "x"), format="onnx", precision="int4"))


def _weight_bytes(path) -> dict[str, int]:
    """Bytes of a graph's initializers by ONNX data type name."""
    import onnx

    out: dict[str, int] = {}
    for init in onnx.load(str(path)).graph.initializer:
        name = onnx.TensorProto.DataType.Name(init.data_type)
        out[name] = out.get(name, 0) + onnx.numpy_helper.to_array(init).nbytes
    return out


def test_eval_runs_the_onnx_graphs_on_onnxruntime(exported, tmp_path, shared_data):
    """eval --runtime onnxruntime scores the exported graphs on the same objects as PyTorch: fp32 matches
    the PyTorch export's mIoU within 1e-3, int8 stays close; metrics.json says which ran."""
    from supersam.data import DataConfig
    from supersam.schema import ModelConfig, TrackingConfig
    from supersam.stages.eval import EvalConfig, evaluate

    root = exported.parent
    int8 = export(
        ExportConfig(
            supernet=str(root / "supernet.pt"),
            subnet=json.dumps(MIXED.to_dict()),
            out=str(tmp_path / "int8"),
            format="onnx",
            precision="int8",
        )
    )
    data = DataConfig(root=str(shared_data / "isbi2012_em"), patch=128, max_objects=6, split_mode="ordered")
    results = {}
    for name, model, runtime, precision in (
        ("torch", int8, "torch", "fp32"),
        ("ort_fp32", int8, "onnxruntime", "fp32"),
        ("ort_int8", int8, "onnxruntime", "int8"),
    ):
        cfg = EvalConfig(
            model=str(model),
            split="val",
            n_images=2,
            overlays=0,
            device="cpu",
            runtime=runtime,
            precision=precision,
            out=str(tmp_path / name),
        )
        evaluate(cfg, ModelConfig(type="tiny", img_size=128), data, TrackingConfig(enabled=False))
        results[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    t, f, q = results["torch"], results["ort_fp32"], results["ort_int8"]
    assert (f["runtime"], f["precision"], q["precision"]) == ("onnxruntime", "fp32", "int8")
    assert t["n_objects"] == f["n_objects"] == q["n_objects"] > 0
    for kind in ("box", "point"):
        assert abs(f[f"miou_{kind}"] - t[f"miou_{kind}"]) <= 1e-3
        assert abs(q[f"miou_{kind}"] - t[f"miou_{kind}"]) <= 0.02
        assert (
            f["baseline_box_fill_box" if kind == "box" else "baseline_disk_point"]
            == t["baseline_box_fill_box" if kind == "box" else "baseline_disk_point"]
        )
    assert f["encoder_params"] == t["encoder_params"] and f["params"] == t["params"]


def test_eval_onnx_errors_are_one_line(exported, tmp_path, monkeypatch):
    from supersam.model.onnx_runtime import OnnxSam
    from supersam.stages.eval import EvalConfig

    with pytest.raises(ConfigError, match="has no int8 ONNX graphs \\(it has fp32\\); export them with"):
        OnnxSam(exported, "int8")
    with pytest.raises(ConfigError, match="holds no ONNX graphs"):
        OnnxSam(tmp_path, "fp32")
    with pytest.raises(ConfigError, match="--precision int8 runs exported ONNX graphs; add --runtime onnxruntime"):
        EvalConfig(model=str(exported), precision="int8").validate()
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ConfigError, match="needs onnxruntime's CUDAExecutionProvider.*--set eval.device=cpu"):
        OnnxSam(exported, "fp32", torch.device("cuda"))
    meta = exported / "onnx" / "onnx.json"
    old = json.loads(meta.read_text())
    try:
        meta.write_text(json.dumps({k: v for k, v in old.items() if k != "precisions"}))
        with pytest.raises(ConfigError, match="was exported before per-precision graphs; export it again"):
            OnnxSam(exported, "fp32")
        meta.write_text("{not json")
        with pytest.raises(ConfigError, match="is not a readable onnx.json"):
            OnnxSam(exported, "fp32")
    finally:
        meta.write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="--amp is for PyTorch"):
        EvalConfig(model=str(exported), runtime="onnxruntime", amp=True).validate()
