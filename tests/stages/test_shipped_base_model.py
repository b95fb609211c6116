"""The shipped generalist base model (models/base_vit_ti.pt, docs/base-model.md): its bytes match its
manifest, it loads as the vit_ti SAM the downstream profile passes through, a damaged copy is refused,
it segments unseen scenes of its pretraining distribution better than the trivial baselines, and a
short downstream training run from it on real EM data raises the smallest subnet (docs/downstream.md)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_cli

from supersam.model.sam import build_sam, count_params
from supersam.runtime.errors import CheckpointError
from supersam.stages.pretrain.loop import init_digest

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "base_vit_ti.pt"
MANIFEST = ROOT / "models" / "base_vit_ti.json"
PROFILE = ROOT / "profiles" / "downstream.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


def _make_base_data():
    """scripts/make_base_data.py as a module (its scene generator and writer)."""
    spec = importlib.util.spec_from_file_location("make_base_data", ROOT / "scripts" / "make_base_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_model_matches_its_manifest_and_loads_as_vit_ti():
    manifest = json.loads(MANIFEST.read_text())
    data = MODEL.read_bytes()
    assert len(data) == manifest["bytes"] <= 30 * 2**20  # the size limit for the repository
    assert hashlib.sha256(data).hexdigest() == manifest["sha256"]
    assert init_digest(str(MODEL)) == manifest["sha256"]  # what `pretrain` checks on its pass-through
    loaded = build_sam("vit_ti", 256, str(MODEL))
    assert count_params(loaded.model) == manifest["params"] == 6_498_560
    assert count_params(loaded.model.image_encoder) == manifest["encoder_params"] == 5_738_944
    # the downstream profile passes exactly this file through
    params = yaml.safe_load(PROFILE.read_text())
    assert params["pretrain"]["init"] == "models/base_vit_ti.pt" and params["pretrain"]["iterations"] == 0


def test_a_damaged_copy_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    copy = tmp_path / "models" / MODEL.name
    copy.parent.mkdir()
    shutil.copy(MANIFEST, copy.with_suffix(".json"))
    data = bytearray(MODEL.read_bytes())
    data[-100] ^= 1  # one bit inside the last record: still a loadable zip, other weights
    copy.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="records 93aa120d8ac138c6"):
        init_digest(str(copy))
    monkeypatch.chdir(ROOT)
    code, err = run_cli(
        ["pretrain", "-p", str(PROFILE), "--set", f"pretrain.init={copy}", "--out", str(tmp_path / "pretrain")],
        monkeypatch,
        capsys,
    )
    assert code != 0 and "the file is damaged or was replaced" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "pretrain" / "model.pt").exists()
    # without a manifest nothing is checked: a user's own checkpoint needs none
    copy.with_suffix(".json").unlink()
    assert init_digest(str(copy)) == hashlib.sha256(data).hexdigest()


def test_shipped_model_beats_the_trivial_baselines_on_unseen_scenes(tmp_path, monkeypatch, capsys):
    """24 procedural scenes of seed 1 (the model saw seed 0's 1200), every object once, through
    ``supersam eval``: box and point prompts above box fill and the disk on the same objects."""
    make = _make_base_data()
    data = tmp_path / "scenes"
    for sub in ("image", "label"):
        (data / sub).mkdir(parents=True)
    for index in range(24):
        image, ids = make.scene(1, index)
        make.write_pair(data, f"scene_{index:02d}", image, ids)
    monkeypatch.chdir(ROOT)
    out = tmp_path / "eval"
    args = ["eval", "--checkpoint", str(MODEL), "--data-root", str(data), "--label-mode", "instance"]
    code, err = run_cli(
        [*args, "--split", "all", "--patch", "0", "--overlays", "0", "--out", str(out)], monkeypatch, capsys
    )
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_objects"] >= 150
    assert metrics["miou_box"] >= metrics["baseline_box_fill_box"] + 0.03
    assert metrics["miou_point"] >= metrics["baseline_disk_point"] + 0.05
    assert metrics["miou_box"] > 10 * metrics["baseline_untrained_box"]
    assert np.isfinite(metrics["miou_oracle_point"])


def test_downstream_sandwich_training_on_isbi_raises_the_smallest_subnet(shared_data, tmp_path):
    """The downstream profile's training step, shrunk: a supernet built from the shipped generalist,
    trained on real ISBI EM train sections with the profile's loss and lr, lifts its smallest subnet
    on val patches it never trained on; the target rule resolves to box fill + 0.05."""
    from supersam.artifacts.records import SupernetMeta
    from supersam.data import DataConfig
    from supersam.model.checkpoint import save_supernet
    from supersam.model.elastic import SuperSam
    from supersam.model.space import SearchSpace
    from supersam.schema import TrackingConfig
    from supersam.stages.train import TrainConfig, train

    defaults = yaml.safe_load(PROFILE.read_text())
    data = {k: v for k, v in defaults["data"].items()}
    data["root"] = str(shared_data / "isbi2012_em")
    data_cfg = DataConfig(**data)
    loaded = build_sam("vit_ti", 256, str(MODEL))
    space = SearchSpace.for_arch("vit_ti", mlp_dim_choices=tuple(defaults["space"]["mlp_dim_choices"]))
    meta = SupernetMeta("vit_ti", 256, True, "none", checkpoint=str(MODEL))
    save_supernet(tmp_path / "supernet.pt", SuperSam(loaded.model, space), meta)
    settings = defaults["train"]
    cfg = TrainConfig(
        supernet=str(tmp_path / "supernet.pt"),
        out=str(tmp_path / "train"),
        iterations=16,
        batch_size=2,
        max_objects=16,
        lr=settings["lr"],
        warmup=4,  # the profile has 10 of 100; 16 steps from it raise the smallest subnet by 0.018
        min_lr_ratio=settings["min_lr_ratio"],
        grad_clip=settings["grad_clip"],
        augment=settings["augment"],
        loss=settings["loss"],
        eval_every=0,
        target_every=0,
        val_images=4,
        save_every=0,
        target_miou=settings["target_miou"],
        device="cpu",
        seed=0,
    )
    result = train(cfg, data_cfg, TrackingConfig(enabled=False), show_progress=False)
    before, after = result.history[0], result.history[-1]
    assert before["iteration"] == 0 and after["iteration"] == 16
    assert after["miou_min"] >= before["miou_min"] + 0.01, (before, after)
    metrics = result.metrics
    assert metrics["target_miou_setting"] == "baseline+0.05"
    assert metrics["target_miou"] == pytest.approx(metrics["baseline_box_fill"] + 0.05, abs=1e-12)
