"""Supernet checkpoints, subnet export to a standard SAM, ``load_model`` and ``supersam export``.

Device-agnostic: models run on the ``device`` fixture (CUDA when present, else
CPU); files are written under ``tmp_path``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything import SamPredictor
from segment_anything.modeling import Sam
from typer.testing import CliRunner

import supersam
from supersam.artifacts.records import SupernetMeta
from supersam.cli.main import app
from supersam.model.checkpoint import load_model, load_supernet, read_export_manifest, save_supernet
from supersam.model.elastic import SuperSam
from supersam.model.sam import build_sam, build_sam_model, count_params
from supersam.model.space import SearchSpace, SubnetConfig, subnet_macs, subnet_params
from supersam.runtime.errors import CheckpointError, ConfigError
from supersam.stages.export import ExportConfig, export, export_subnet

TINY = SearchSpace.for_arch("tiny")
VIT_B = SearchSpace.for_arch("vit_b")
MIXED = SubnetConfig.from_mlp_dims([256, 0, 128, 64, 256, 0, 85, 192, 64, 0, 128, 256])
META = SupernetMeta("tiny", 128, False, "none", provenance={"note": "x"})
SUPERSAM_BIN = Path(sys.executable).parent / "supersam"


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_supernet() -> SuperSam:
    sam = build_sam_model("tiny", 128)
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if "pos" in name:
                p.add_(0.05 * torch.randn_like(p))
    return SuperSam(sam, TINY)


@pytest.fixture(scope="module")
def supernet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("supernet") / "supernet.pt"
    supernet = _tiny_supernet()
    save_supernet(path, supernet, META)
    return path, supernet


@pytest.fixture(scope="module")
def coco_image(shared_data):
    return np.asarray(Image.open(shared_data / "tiny_coco" / "val2017" / "000000397133.jpg").convert("RGB"))


def test_checkpoint_round_trip_and_official_layout(supernet_file, device):
    path, original = supernet_file
    loaded = load_supernet(path, device=device)
    meta = loaded.meta
    assert meta == META and SupernetMeta.from_dict(META.to_dict()) == META
    assert loaded.space == TINY
    assert loaded.active_subnet == TINY.max_subnet()
    expected = original.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value.cpu(), expected[key]), key
    assert torch.equal(loaded.sam.pixel_mean.cpu(), original.sam.pixel_mean)
    plain = build_sam("tiny", 128, checkpoint=path)  # the weights are an official-layout SAM checkpoint
    assert plain.pretrained and torch.equal(plain.model.image_encoder.pos_embed, original.sam.image_encoder.pos_embed)


def test_checkpoint_errors_are_one_line(tmp_path, supernet_file):
    path, supernet = supernet_file
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:5000])
    plain = tmp_path / "plain.pt"
    torch.save(build_sam_model("tiny", 128).state_dict(), plain)
    cases = [
        (tmp_path / "missing.pt", "does not exist"),
        (corrupt, "cannot be read"),
        (truncated, "cannot be read"),
        (plain, "is not a supersam supernet checkpoint"),
    ]
    for bad, match in cases:
        with pytest.raises(CheckpointError, match=match) as err:
            load_supernet(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="the supernet has no metadata"):
        save_supernet(tmp_path / "x.pt", SuperSam(build_sam_model("tiny", 128), TINY))
    stale = tmp_path / "stale.pt"  # a checkpoint of the previous format: refused with the fix
    torch.save({"format": "supersam-supernet/1", "meta": {}, "state_dict": {}}, stale)
    with pytest.raises(CheckpointError, match="found 'supersam-supernet/1'.*build-supernet or train"):
        load_supernet(stale)
    bad_meta = dict(META.to_dict(), format="supersam-supernet-meta/1")
    with pytest.raises(CheckpointError, match="has format 'supersam-supernet-meta/1'"):
        SupernetMeta.from_dict(bad_meta)
    with pytest.raises(CheckpointError, match="lacks 'variant'"):
        SupernetMeta.from_dict({k: v for k, v in META.to_dict().items() if k != "variant"})


def test_export_writes_a_standard_sam(supernet_file, tmp_path, device):
    path, supernet = supernet_file
    out = export_subnet(path, MIXED.to_dict(), tmp_path / "model")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.pt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp dirs left behind
    config = read_export_manifest(out)
    assert config.subnet == MIXED.to_dict() and config.pretrained is False
    assert config.block_mlp_dims == [256, 128, 64, 256, 85, 192, 64, 128, 256]
    assert config.global_attn_indexes == [1, 6, 8]  # kept global blocks 2, 8, 11 at their new positions
    assert config.params == subnet_params("tiny", 128, MIXED)
    assert config.macs == subnet_macs("tiny", 128, MIXED)
    model = supersam.load_model(out, device=device)
    assert type(model) is Sam and count_params(model) == config.params
    supernet.set_active_subnet(MIXED)
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(model.image_encoder(images.to(device)).cpu(), supernet(images), rtol=0, atol=1e-5)


def test_export_replaces_atomically_and_refuses_foreign_dirs(supernet_file, tmp_path):
    path, _ = supernet_file
    out = tmp_path / "model"
    export_subnet(path, MIXED, out)
    export_subnet(path, TINY.min_subnet(), out)
    assert read_export_manifest(out).subnet == TINY.min_subnet().to_dict()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not a supersam export"):
        export_subnet(path, MIXED, foreign)
    with pytest.raises(ConfigError, match="drops block 3, which is not prunable"):
        export_subnet(path, SubnetConfig.from_mlp_dims([256, 0, 0, 0] + [256] * 8), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(CheckpointError, match="is not an exported supersam model"):
        load_model(foreign)


def test_analytic_params_equal_exported_counts_for_50_random_tiny_subnets():
    supernet = _tiny_supernet()
    gen = torch.Generator().manual_seed(11)
    seen = set()
    for _ in range(50):
        cfg = supernet.sample_active_subnet("random", gen)
        seen.add(cfg)
        assert count_params(supernet.get_active_subnet()) == subnet_params("tiny", 128, cfg)
    assert len(seen) == 50


def test_known_vit_b_counts_of_exported_models_at_1024():
    with torch.device("meta"):  # structure only: no memory, no init time
        supernet = SuperSam(build_sam_model("vit_b", 1024), VIT_B)
    drop5 = SubnetConfig.from_mlp_dims([3072, 0, 0, 3072, 3072, 0, 0, 3072, 3072, 0, 3072, 3072])
    for cfg, expected in [(VIT_B.max_subnet(), 93_735_472), (drop5, 58_253_232), (VIT_B.min_subnet(), 37_005_744)]:
        supernet.set_active_subnet(cfg)
        assert count_params(supernet.get_active_subnet()) == expected


def test_vit_b_at_256_counts_and_outputs(device):
    supernet = SuperSam(build_sam_model("vit_b", 256), VIT_B).to(device)
    design = SubnetConfig.from_mlp_dims([3072, 0, 0, 768, 1536, 0, 0, 2304, 768, 0, 3072, 1020])
    for cfg in (VIT_B.min_subnet(), VIT_B.sample(torch.Generator().manual_seed(0)), design):
        supernet.set_active_subnet(cfg)
        sub = supernet.get_active_subnet()
        assert count_params(sub) == subnet_params("vit_b", 256, cfg)
    images = torch.randn(1, 3, 256, 256, device=device)
    with torch.no_grad():
        torch.testing.assert_close(sub.image_encoder(images), supernet(images), rtol=0, atol=1e-5)


def test_sam_predictor_on_exported_model_with_a_point_prompt(supernet_file, tmp_path, coco_image, device):
    path, _ = supernet_file
    out = export_subnet(path, MIXED, tmp_path / "model")
    supernet = load_supernet(path, device=device)
    supernet.set_active_subnet(MIXED)
    point, label = np.array([[300.0, 280.0]]), np.array([1])
    results = []
    for model in (load_model(out, device=device), supernet.sam):
        predictor = SamPredictor(model)
        predictor.set_image(coco_image)
        results.append(predictor.predict(point_coords=point, point_labels=label, multimask_output=True))
    (masks, scores, low_res), (masks_el, scores_el, low_res_el) = results
    assert masks.shape == (3, 427, 640) and masks.dtype == bool and scores.shape == (3,)
    assert low_res.shape == (3, 32, 32)
    np.testing.assert_allclose(low_res, low_res_el, atol=1e-4)
    np.testing.assert_allclose(scores, scores_el, atol=1e-5)
    assert (masks != masks_el).mean() < 1e-3  # identical up to pixels at logit ~ 0


@pytest.mark.slow
def test_cli_bad_subnet_json_is_one_line_exit_1(supernet_file, tmp_path):
    path, _ = supernet_file
    proc = subprocess.run(
        [str(SUPERSAM_BIN), "export", "--supernet", str(path), "--subnet", '{"kept_layers": [0,', "--out", "m"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "inline subnet config is not valid JSON" in lines[0], proc.stderr
    assert not (tmp_path / "m").exists()


def test_cli_reads_params_yaml_and_flags_override(supernet_file, tmp_path):
    path, _ = supernet_file
    params = tmp_path / "params.yaml"
    subnet_file = MIXED.save(tmp_path / "best_subnet.json")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    params.write_text(
        f"export:\n  supernet: {path}\n  subnet: {subnet_file}\n  out: {tmp_path / 'from_params'}\n"
        f"mlflow:\n  tracking_uri: {uri}\n"
    )
    runner = CliRunner()
    result = runner.invoke(app, ["export", "--params", str(params)])
    assert result.exit_code == 0, result.output
    config = read_export_manifest(tmp_path / "from_params")
    assert config.subnet == MIXED.to_dict()
    run = mlflow.MlflowClient(uri).search_runs(
        [mlflow.MlflowClient(uri).get_experiment_by_name("supersam").experiment_id]
    )[0]
    assert run.data.tags["stage"] == "export" and run.data.tags["variant"] == "none"
    assert run.data.metrics["params"] == config.params and run.data.tags["pretrained"] == "false"
    bad = json.dumps({"kept_layers": list(range(1, 12)), "mlp_dims": [0] + [256] * 11})
    result = runner.invoke(app, ["export", "--params", str(params), "--subnet", bad, "--out", str(tmp_path / "x")])
    assert isinstance(result.exception, ConfigError) and "drops block 0" in str(result.exception)


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _export(path: Path, subnet: SubnetConfig, out: Path, fmt: str) -> Path:
    return export(ExportConfig(supernet=str(path), subnet=json.dumps(subnet.to_dict()), out=str(out), format=fmt))


def test_interrupted_format_export_leaves_the_previous_export_untouched(supernet_file, tmp_path, monkeypatch):
    path, _ = supernet_file
    out = tmp_path / "model"
    _export(path, MIXED, out, "onnx")
    before = _files(out)
    assert {"model.pt", "config.json", "onnx/encoder.onnx", "onnx/decoder.onnx", "onnx/onnx.json"} <= set(before)

    def interrupted(sam, out_dir, *args, **kwargs):  # Ctrl-C half-way through the ONNX export
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "encoder.onnx").write_bytes(b"half")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr("supersam.model.onnx.export_onnx", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _export(path, TINY.min_subnet(), out, "onnx")
    assert _files(out) == before  # neither the new weights nor a half onnx/: the previous export, whole
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporaries
    # killed between the two renames of the next export: it is moved aside, `model` is missing
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    aside = tmp_path / f".model.{int(dead.stdout)}.qq1.old"
    aside.mkdir()
    os.replace(out, aside / "model")
    _export(path, MIXED, out, "pt")  # restored first, then the same weights: onnx/ carried over
    assert _files(out) == before and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_formats_add_up_for_the_same_weights_and_are_dropped_for_others(supernet_file, tmp_path, caplog):
    path, _ = supernet_file
    out = tmp_path / "model"
    uniform = TINY.max_subnet()  # --format hf needs one MLP width
    mask = os.umask(0o022)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            _export(path, uniform, out, "onnx")
        assert not [w for w in seen if issubclass(w.category, torch.jit.TracerWarning)]  # no page of tracer noise
        onnx_files = {k: v for k, v in _files(out).items() if k.startswith("onnx/")}
        _export(path, uniform, out, "hf")  # same weights: hf/ is added beside onnx/, which is kept
        both = _files(out)
        assert {k: v for k, v in both.items() if k.startswith("onnx/")} == onnx_files
        assert {"hf/model.safetensors", "hf/config.json"} <= set(both)
        modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
        assert set(modes.values()) == {0o644}, modes  # model.safetensors too (safetensors writes 0600)
        with caplog.at_level(logging.INFO, logger="supersam.stages.export"):
            _export(path, uniform, out, "pt")  # the same subnet again: byte-identical, formats kept
            assert _files(out) == both
            assert "other weights" not in caplog.text
            _export(path, TINY.min_subnet(), out, "pt")  # other weights: their onnx/ and hf/ go, said once
    finally:
        os.umask(mask)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.pt"]
    lines = [r.getMessage() for r in caplog.records if "other weights" in r.getMessage()]
    assert len(lines) == 1 and "onnx/, hf/" in lines[0] and "--format onnx and --format hf" in lines[0], lines
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_failed_format_leaves_the_previous_export_untouched(supernet_file, tmp_path, monkeypatch):
    path, _ = supernet_file
    out = tmp_path / "model"
    export_subnet(path, MIXED, out)
    before = _files(out)
    monkeypatch.setattr(
        "supersam.model.hf.hf_config",
        lambda sam: (_ for _ in ()).throw(
            ConfigError("export --format hf needs the safetensors package; pip install safetensors")
        ),
    )
    with pytest.raises(ConfigError, match="safetensors"):
        _export(path, TINY.max_subnet(), out, "hf")
    assert _files(out) == before and [p.name for p in tmp_path.iterdir()] == ["model"]
