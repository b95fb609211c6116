"""Pipeline runs of the paper profile and of the README's other data layouts (issue 25), in temporary copies.

- ``profiles/paper.yaml`` shrunk in counts and input size (128 px), on a random ViT-B checkpoint
  in the official key layout and an SA-1B folder made from tiny COCO: ``dvc repro`` of every
  stage (through the GPU check's own runner), every declared output present, the export a
  standard ``segment_anything`` Sam (~4-5 min on 2 cores, most of it process start-up, ViT-B
  loading and checkpoint writing per stage).
- ``benchmarks/gpu_check.sh --dry --project`` on that finished project: the GPU check's
  measurements on the CPU (~1 min).
- ``pretrain`` switched between pass-through and fine-tuning and back under ``dvc repro pretrain``
  (tiny SAM, ~40 s).
- a Hugging Face ``SamModel`` folder as ``pretrain.init`` passed through, from the command line
  and under ``dvc repro pretrain`` (tiny SAM, ~20 s).
- per data kind the first stages and ``eval`` on real files: COCO (tiny COCO as README documents
  it) and EM TIFF stacks (multi-page TIFFs built from the ISBI slices) (~1 min each).
- the GPU check's exit 2 with one line (a module missing, an unusable ``--project``): not slow.

The projects, checkpoints and data are built by ``benchmarks/gpu_check.py``, which the GPU check
shares, so both run the same profile on the same data. Stage lists and outputs are read from
dvc.yaml / dvc.lock, not listed here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT
from PIL import Image
from test_pipeline import _run, _tiny_params  # the whole-pipeline test's dvc invocation and tiny profile

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402  (benchmarks/ is no package)

slow = pytest.mark.slow
BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")


def _json(path: Path):
    return json.loads(path.read_text())


def _lock(project: Path) -> dict:
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"]


def _cmds(stage: dict) -> list[str]:
    return stage["cmd"] if isinstance(stage["cmd"], list) else [stage["cmd"]]


def _drop_weights(project: Path) -> None:
    """Remove the big files (ViT-B checkpoints, supernets, training states, DVC cache) of a finished project."""
    for path in project.rglob("*"):
        if path.is_file() and path.suffix in (".pt", ".pth"):
            path.unlink()
    shutil.rmtree(project / ".dvc" / "cache", ignore_errors=True)


# ---------------------------------------------------------------- the GPU check's exits without a run


def test_gpu_check_exits_2_with_one_line_when_it_cannot_run(tmp_path, monkeypatch, capsys):
    assert gpu_check.main(["--project", str(tmp_path), "--out", str(tmp_path / "a")]) == 2
    assert "no finished dvc repro" in capsys.readouterr().err
    monkeypatch.setattr(gpu_check, "REQUIRED_MODULES", (*gpu_check.REQUIRED_MODULES, "no_such_module_xyz"))
    assert gpu_check.main(["--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no_such_module_xyz" in err and gpu_check.INSTALL in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing ran, nothing written


# ---------------------------------------------------------------- the paper profile


@pytest.fixture(scope="module")
def paper_project(tmp_path_factory, shared_data):
    """The project copy with the shrunk paper profile (MLflow off: ~2 s of start-up per stage, and
    test_pipeline.py covers tracking under dvc repro) after one `dvc repro` through gpu_check.run_dvc,
    whose per-stage times go to ../repro_stages.json. Big files are removed afterwards."""
    project = tmp_path_factory.mktemp("paper") / "project"
    gpu_check.prepare_paper_project(
        project,
        shared_data / "tiny_coco",
        128,
        gpu_check.CPU_COUNTS,
        gpu_check.CPU_SPLITS,
        extra={"mlflow": {"enabled": False}},
    )
    env = gpu_check.init_dvc(project)
    env["OMP_NUM_THREADS"] = "1"
    stages = gpu_check.run_dvc(project, env, project.parent / "repro.log")
    (project.parent / "repro_stages.json").write_text(json.dumps(stages))
    yield project
    _drop_weights(project)


@slow
def test_paper_params_differ_from_the_profile_only_in_counts(paper_project):
    paper = yaml.safe_load((ROOT / "profiles" / "paper.yaml").read_text())
    params = yaml.safe_load((paper_project / "params.yaml").read_text())
    changed = gpu_check.changed_keys(paper, params)
    assert changed.pop("mlflow.enabled") == (None, False)  # the fixture's only other change
    assert changed["model.img_size"] == (1024, 128)
    assert {key.rsplit(".", 1)[-1] for key in changed} <= gpu_check.COUNT_NAMES, changed
    assert params["model"]["type"] == "vit_b" and params["data"]["kind"] == "sa1b"
    assert params["variants"] == paper["variants"] and params["pretrain"] == {**paper["pretrain"], "val_images": 2}
    assert (paper_project / "dvc.yaml").read_bytes() == (ROOT / "dvc.yaml").read_bytes()  # the stage list as it is
    for split, n in gpu_check.CPU_SPLITS.items():
        folder = paper_project / "data" / "sa1b" / split
        assert len(list(folder.glob("sa_*.jpg"))) == len(list(folder.glob("sa_*.json"))) == n


@slow
def test_every_stage_of_the_paper_profile_writes_its_declared_outputs(paper_project):
    project = paper_project
    listed = subprocess.run(
        [DVC, "stage", "list", "--name-only"], cwd=project, capture_output=True, text=True, check=True
    ).stdout.split()
    lock = _lock(project)
    assert sorted(lock) == sorted(listed)  # every stage of dvc.yaml ran (and was recorded)
    timed = [s["stage"] for s in _json(project.parent / "repro_stages.json")]
    assert sorted(timed) == sorted(listed)  # run_dvc timed each once
    assert all(s["seconds"] > 0 for s in _json(project.parent / "repro_stages.json"))
    for name, stage in lock.items():  # outs, metrics and plots: dvc.lock records them all
        for out in stage.get("outs", []):
            assert (project / out["path"]).exists(), f"{name}: {out['path']}"
    params = yaml.safe_load((project / "params.yaml").read_text())
    out = project / "outputs"
    base = _json(out / "pretrain" / "metrics.json")
    assert base["iterations"] == 0 and base["model_type"] == "vit_b" and base["img_size"] == 128
    assert base["init"] == "data/sam_vit_b_01ec64.pth"
    assert (out / "pretrain" / "checkpoints").is_dir() and not list((out / "pretrain" / "checkpoints").iterdir())
    official = torch.load(project / "data" / "sam_vit_b_01ec64.pth", map_location="cpu", weights_only=True, mmap=True)
    passed = torch.load(out / "pretrain" / "model.pt", map_location="cpu", weights_only=True, mmap=True)
    assert tuple(official["image_encoder.pos_embed"].shape) == (1, 64, 64, 768)  # the official 1024 px layout
    assert tuple(passed["image_encoder.pos_embed"].shape) == (1, 8, 8, 768)  # resized to 128 px on load
    assert set(passed) == set(official)
    for key in ("image_encoder.blocks.3.mlp.lin1.weight", "mask_decoder.iou_token.weight"):
        assert torch.equal(passed[key], official[key])  # passed through unchanged
    trained = {n: s for n, s in lock.items() if any(c.startswith("supersam train ") for c in _cmds(s))}
    assert {f"train@{v}" for v in params["variants"]} <= set(trained)  # and any other train (finetune)
    for name, stage in trained.items():
        metrics = [o["path"] for o in stage["outs"] if o["path"].endswith("metrics.json")]
        assert len(metrics) == 1 and _json(project / metrics[0])["iterations"] == 2, name
    for variant in params["variants"]:
        assert len(_json(out / "search" / variant / "candidates.json")) >= 1
    assert _json(out / "search" / params["export"]["variant"] / "metrics.json")["min_miou"] == 0.8  # the paper's
    evals = re.findall(r"--name (\S+)", " ".join(_cmds(lock["eval"])))
    assert len(evals) >= 3 and len(set(evals)) == len(evals)
    for name in evals:
        assert _json(out / "eval" / name / "metrics.json")["n_images"] == 2, name


def _plain_sam(config: dict):
    """The exported subnet built with segment_anything's own classes only, as its build_sam.py assembles
    vit_b (prompt width 256, decoder MLP 2048, 8 heads, IoU head 256, mask channels 16), with the export's
    depth, per-block MLP widths and global-attention blocks from config.json."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
    from segment_anything.modeling.common import MLPBlock

    assert config["model_type"] == "vit_b"
    enc, size = config["encoder"], config["img_size"]
    encoder = ImageEncoderViT(
        depth=len(config["block_mlp_dims"]),
        embed_dim=enc["embed_dim"],
        img_size=size,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=enc["norm_eps"]),
        num_heads=enc["num_heads"],
        patch_size=enc["patch_size"],
        qkv_bias=enc["qkv_bias"],
        use_rel_pos=enc["use_rel_pos"],
        global_attn_indexes=tuple(config["global_attn_indexes"]),
        window_size=enc["window_size"],
        out_chans=enc["out_chans"],
    )
    for block, width in zip(encoder.blocks, config["block_mlp_dims"]):
        block.mlp = MLPBlock(enc["embed_dim"], width)
    grid = size // enc["patch_size"]
    return Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(size, size), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=config["pixel_mean"],
        pixel_std=config["pixel_std"],
    ).eval()


@slow
def test_paper_export_is_a_standard_segment_anything_sam(paper_project):
    from segment_anything import SamPredictor
    from segment_anything.modeling import Sam

    import supersam

    folder = paper_project / "outputs" / "export" / "model"
    config = _json(folder / "config.json")
    plain = _plain_sam(config)
    plain.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True), strict=True)
    loaded = supersam.load_model(folder)
    assert type(loaded) is Sam and type(plain) is Sam
    assert {type(m).__module__.split(".")[0] for m in loaded.modules()} <= {"segment_anything", "torch"}
    assert len(loaded.image_encoder.blocks) == len(config["subnet"]["kept_layers"])
    test_dir = paper_project / "data" / "sa1b" / "test"
    jpg = sorted(test_dir.glob("*.jpg"))[0]
    point = np.array(_json(jpg.with_suffix(".json"))["annotations"][0]["point_coords"])
    image = np.asarray(Image.open(jpg).convert("RGB"))
    results = []
    for model in (plain, loaded):
        predictor = SamPredictor(model)
        predictor.set_image(image)
        results.append(predictor.predict(point_coords=point, point_labels=np.array([1]), multimask_output=True))
    (masks, scores, low_res), (_, scores_loaded, low_res_loaded) = results
    assert masks.shape == (3, *image.shape[:2]) and masks.dtype == bool and np.isfinite(scores).all()
    assert low_res.shape == (3, 32, 32)  # 128 px input: S/4
    np.testing.assert_allclose(low_res, low_res_loaded, atol=1e-5)
    np.testing.assert_allclose(scores, scores_loaded, atol=1e-6)


@slow
def test_gpu_check_dry_run_measures_the_finished_paper_project(paper_project, tmp_path):
    """`bash benchmarks/gpu_check.sh --dry --project DIR` on the CPU: the GPU check's measurements on the
    project the fixture's `dvc repro` finished (no second pipeline); what needs CUDA says `skipped: no CUDA`."""
    out = tmp_path / "summary"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            "bash",
            str(ROOT / "benchmarks" / "gpu_check.sh"),
            "--dry",
            "--project",
            str(paper_project),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "skipped: no CUDA" in proc.stdout
    summary = _json(out / "gpu_check.json")
    assert summary["format"] == gpu_check.SUMMARY_FORMAT and summary["ok"] is True and not summary["errors"]
    assert (summary["mode"], summary["device"], summary["img_size"], summary["model_type"]) == (
        "dry",
        "cpu",
        128,
        "vit_b",
    )
    steps = summary["steps"]
    assert steps["pipeline"] == {"reused": str(paper_project)}
    changed = steps["params_changed"]
    assert changed.pop("mlflow.enabled") == [None, False]
    assert {k.rsplit(".", 1)[-1] for k in changed} <= gpu_check.COUNT_NAMES
    lock = _lock(paper_project)
    assert set(steps["pipeline_train"]) == {
        n for n, s in lock.items() if any(c.startswith("supersam train ") for c in _cmds(s))
    }
    assert all(fig["iterations"] == 2 and fig["s_per_iteration"] > 0 for fig in steps["pipeline_train"].values())
    train = steps["train"]
    assert train["iterations"] == 2 and train["s_per_iteration"] > 0 and train["s_per_iteration_steady"] > 0
    assert train["peak_memory"] == "skipped: no CUDA"
    for model in ("base", "export"):
        latency = steps["encoder_latency"][model]
        assert latency["img_size"] == 128 and latency["fp32"]["median_ms"] > 0 and latency["bf16"]["median_ms"] > 0
        assert steps["bench"][model]["format"] == "supersam-bench/1" and steps["bench"][model]["img_size"] == 128
    parity = steps["parity"]
    assert parity["ok"] and parity["device"] == "cpu" and parity["tolerance"] == 1e-3
    assert max(parity["max_abs_diff_mask_logits"], parity["max_abs_diff_low_res_logits"]) <= parity["tolerance"]
    assert any(line.endswith("skipped: no CUDA") for line in summary["skipped"])
    assert "Elastic vs export parity" in (out / "gpu_check.md").read_text()
    assert _lock(paper_project) == lock and (paper_project / "outputs" / "export" / "model").is_dir()  # left as it was


# ---------------------------------------------------------------- pretrain: pass-through and Hugging Face init


def _tiny_project(dest: Path, **pretrain) -> Path:
    """A project copy on the tiny SAM (test_pipeline.py's profile, random init unless ``pretrain`` names
    an ``init``), MLflow off, ``pretrain`` updated; git + DVC."""
    gpu_check.copy_project(dest)
    params = _tiny_params()
    params["pretrain"].update({"init": "", **pretrain})
    params["mlflow"]["enabled"] = False
    gpu_check.write_params(dest, params)
    gpu_check.init_dvc(dest)
    return dest


def _set_pretrain(project: Path, **values) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["pretrain"].update(values)
    gpu_check.write_params(project, params)


def _tiny_sam(seed: int = 3):
    from supersam.model.sam import build_sam_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_sam_model("tiny", 128)


def _assert_same_weights(path: Path, state: dict) -> None:
    written = torch.load(path, map_location="cpu", weights_only=True)
    assert set(written) == set(state)
    assert all(torch.equal(written[k], v) for k, v in state.items())


@slow
def test_pretrain_switches_between_pass_through_and_fine_tuning_under_dvc(tmp_path):
    """dvc.yaml declares the resume folder outputs/pretrain/checkpoints (empty after a pass-through):
    `dvc repro pretrain` works for pretrain.iterations 0, then 1, then 0 again."""
    state = _tiny_sam().state_dict()
    project = _tiny_project(tmp_path / "project", init="data/tiny_sam.pt", iterations=0, eval_every=1, save_every=1)
    (project / "data").mkdir()
    torch.save(state, project / "data" / "tiny_sam.pt")
    ckpts = project / "outputs" / "pretrain" / "checkpoints"
    for iterations in (0, 1, 0):
        _set_pretrain(project, iterations=iterations)
        _run([DVC, "repro", "pretrain"], project)
        assert _json(project / "outputs" / "pretrain" / "metrics.json")["iterations"] == iterations
        assert ckpts.is_dir()
        if iterations:
            assert (ckpts / "last.pt").is_file()
        else:
            _assert_same_weights(project / "outputs" / "pretrain" / "model.pt", state)
        assert "outputs/pretrain/checkpoints" in {o["path"] for o in _lock(project)["pretrain"]["outs"]}
        status = _run([DVC, "status", "pretrain", "--json"], project).stdout
        assert json.loads(status or "{}") == {}


@slow
def test_hugging_face_sammodel_folder_passes_through_pretrain(tmp_path):
    """A transformers SamModel folder (model.safetensors + config.json, written by supersam's own
    writer, no transformers needed) as pretrain.init with pretrain.iterations 0."""
    from safetensors.torch import load_file

    from supersam.model.hf import is_hf_state, save_hf

    sam = _tiny_sam()  # HF mapping is key renaming only: any model type works, vit_b is not needed
    state = sam.state_dict()
    project = _tiny_project(tmp_path / "project")
    hf = save_hf(sam, project / "data" / "hf_sam")
    assert is_hf_state(load_file(str(hf / "model.safetensors"))) and (hf / "config.json").is_file()
    _run(
        [
            str(BIN / "supersam"),
            "pretrain",
            "--set",
            "pretrain.iterations=0",
            "--set",
            "pretrain.init=data/hf_sam",
            "--out",
            "runs/hf_pretrain",
        ],
        project,
    )
    _assert_same_weights(project / "runs" / "hf_pretrain" / "model.pt", state)
    _set_pretrain(project, iterations=0, init="data/hf_sam")
    _run([DVC, "repro", "pretrain"], project)
    _assert_same_weights(project / "outputs" / "pretrain" / "model.pt", state)
    metrics = _json(project / "outputs" / "pretrain" / "metrics.json")
    assert metrics["iterations"] == 0 and metrics["init"] == "data/hf_sam"
    assert "pretrain" in _lock(project)


# ---------------------------------------------------------------- the README's data layouts, stage by stage


def _em_tiff_stacks(isbi: Path, dest: Path) -> int:
    """The ISBI slices as the EPFL mitochondria files are laid out: one multi-page TIFF of images
    (training.tif) and one of labels (training_groundtruth.tif). Returns the number of pages."""
    import tifffile

    names = sorted((isbi / "image").glob("*.png"), key=lambda p: int(p.stem))
    images = np.stack([np.asarray(Image.open(p)) for p in names])
    labels = np.stack([np.asarray(Image.open(isbi / "label" / p.name)) for p in names])
    dest.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(dest / "training.tif", images, photometric="minisblack")
    tifffile.imwrite(dest / "training_groundtruth.tif", labels, photometric="minisblack")
    return len(names)


def _data_kind_run(project: Path, data: dict) -> dict:
    """The tiny profile with ``data`` updated: `dvc repro train@wanda` (pretrain, rank-layers,
    calibrate, build-supernet and train: the train and val splits) and `supersam eval`
    of the trained supernet (the test split). Returns the eval metrics."""
    gpu_check.copy_project(project)
    params = _tiny_params()
    params["data"].update(data)
    params["pretrain"].update(init="", iterations=2)  # the tiny SAM from random init, 2 steps on this data
    params["train"]["iterations"] = 2
    params["mlflow"]["enabled"] = False
    gpu_check.write_params(project, params)
    gpu_check.init_dvc(project)
    _run([DVC, "repro", "train@wanda"], project)
    assert {"pretrain", "rank-layers", "calibrate", "build-supernet@wanda", "train@wanda"} <= set(_lock(project))
    out = project / "outputs"
    base = _json(out / "pretrain" / "metrics.json")
    assert base["iterations"] == 2 and base["prompt"] == data["prompt"]
    assert base["val_images"] == 2 and base["val_objects"] > 0
    assert len(_json(out / "rank_layers" / "ranking.json")["importance"]) == 12
    assert (out / "calibration" / "calibration_stats.pt").stat().st_size > 0
    train = _json(out / "train" / "wanda" / "metrics.json")
    assert train["iterations"] == 2 and 0.0 <= train["miou_min"] <= 1.0
    _run(
        [
            str(BIN / "supersam"),
            "eval",
            "--supernet",
            "outputs/train/wanda/supernet.pt",
            "--name",
            "kind",
            "--out",
            "runs/eval/kind",
        ],
        project,
    )
    metrics = _json(project / "runs" / "eval" / "kind" / "metrics.json")
    assert metrics["n_images"] == 2 and metrics["n_objects"] > 0 and 0.0 <= metrics["miou"] <= 1.0
    return metrics


@slow
def test_coco_layout_runs_the_first_stages_and_eval(tmp_path, shared_data):
    """README's COCO row on tiny COCO (val from val2017; the held-out test split from train2017 by test_fraction)."""
    coco = shared_data / "tiny_coco"
    metrics = _data_kind_run(
        tmp_path / "project",
        {
            "kind": "coco",
            "root": str(coco),
            "images": "train2017",
            "labels": "annotations/instances_train2017.json",
            "val_images": "val2017",
            "val_labels": "annotations/instances_val2017.json",
            "max_objects": 8,
            "prompt": "point",
            "patch": 0,
        },
    )  # whole images: the default profile's 256 px EM tiles do not apply
    rows = (tmp_path / "project" / "runs" / "eval" / "kind" / "objects.csv").read_text().splitlines()[1:]
    train_names = {p.name for p in (coco / "train2017").glob("*.jpg")}
    assert rows and all(row.split(",")[0] in train_names for row in rows)
    assert metrics["prompt"] == "point"


@slow
def test_em_tiff_stack_layout_runs_the_first_stages_and_eval(tmp_path, shared_data):
    """README's EM TIFF row: training.tif + training_groundtruth.tif, binary labels, 256 px patches, boxes."""
    pages = _em_tiff_stacks(shared_data / "isbi2012_em", tmp_path / "em")
    assert pages == 30
    metrics = _data_kind_run(
        tmp_path / "project",
        {
            "kind": "image_label",
            "root": str(tmp_path / "em"),
            "images": "training.tif",
            "labels": "training_groundtruth.tif",
            "label_mode": "binary",
            "patch": 256,
            "prompt": "box",
        },
    )
    rows = (tmp_path / "project" / "runs" / "eval" / "kind" / "objects.csv").read_text().splitlines()[1:]
    assert rows and all(row.startswith("training.tif:p") for row in rows)  # pages of the stack
    assert metrics["prompt"] == "box"
