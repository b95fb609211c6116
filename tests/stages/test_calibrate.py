"""Wanda calibration: streamed norms equal norms of captured activations; the stats artifact."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import coco_images
from torch import nn
from typer.testing import CliRunner

from supersam.model.activation_stats import CalibrationStats, collect_mlp_sq_norms, record_mlp_inputs, weights_digest
from supersam.model.sam import build_sam_from_config as build_model
from supersam.model.sam import build_sam_model
from supersam.runtime.errors import CheckpointError, ConfigError
from supersam.schema import ModelConfig


def captured_sq_norms(sam: nn.Module, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Reference: keep every MLP input, then sum x^2 over tokens in float64."""
    kept: list[dict[str, list[torch.Tensor]]] = [{"lin1": [], "lin2": []} for _ in sam.image_encoder.blocks]
    handles = []
    for i, block in enumerate(sam.image_encoder.blocks):
        for name in ("lin1", "lin2"):
            handles.append(
                getattr(block.mlp, name).register_forward_hook(
                    lambda m, args, out, i=i, name=name: kept[i][name].append(args[0].detach().clone())
                )
            )
    with torch.no_grad():
        sam.image_encoder(torch.stack(images))
    for h in handles:
        h.remove()
    return [
        {k: torch.cat([x.reshape(-1, x.shape[-1]) for x in v]).double().square().sum(0) for k, v in b.items()}
        for b in kept
    ]


def test_streamed_norms_equal_captured_activation_norms(shared_data):
    sam = build_sam_model("tiny")
    images = coco_images(shared_data, "train", sam.image_encoder.img_size, 3)
    blocks, n_tokens = collect_mlp_sq_norms(sam, images, batch_size=2)  # batches of 2 + 1
    assert n_tokens == 3 * 8 * 8
    reference = captured_sq_norms(sam, images)
    assert len(blocks) == 12
    for got, want in zip(blocks, reference):
        assert got["lin1"].shape == (64,) and got["lin2"].shape == (256,)
        assert got["lin1"].dtype == torch.float64
        torch.testing.assert_close(got["lin1"], want["lin1"], rtol=1e-5, atol=0)
        torch.testing.assert_close(got["lin2"], want["lin2"], rtol=1e-5, atol=0)
    one_by_one, _ = collect_mlp_sq_norms(sam, images, batch_size=1)
    torch.testing.assert_close(one_by_one[7]["lin2"], blocks[7]["lin2"], rtol=1e-5, atol=0)
    bf16, _ = collect_mlp_sq_norms(sam, images, batch_size=3, amp=True)
    torch.testing.assert_close(bf16[7]["lin2"], blocks[7]["lin2"], rtol=0.1, atol=0)


def test_hooks_are_removed_even_on_error(shared_data):
    sam = build_sam_model("tiny")
    lin1 = sam.image_encoder.blocks[3].mlp.lin1
    with pytest.raises(RuntimeError):
        with record_mlp_inputs(sam) as accs:
            assert len(lin1._forward_hooks) == 1 and len(accs) == 12
            sam.image_encoder(torch.zeros(1, 3, 64, 64))  # wrong size -> pos_embed mismatch
    assert all(
        len(b.mlp.lin1._forward_hooks) == 0 and len(b.mlp.lin2._forward_hooks) == 0 for b in sam.image_encoder.blocks
    )
    collect_mlp_sq_norms(sam, coco_images(shared_data, "train", sam.image_encoder.img_size, 1))
    assert len(lin1._forward_hooks) == 0
    with pytest.raises(ConfigError, match="no calibration images"):
        collect_mlp_sq_norms(sam, [])


def test_build_model_random_init_is_reproducible():
    a = build_model(ModelConfig("tiny", 128, ""))
    torch.manual_seed(123)
    b = build_model(ModelConfig("tiny", 128, ""))
    after_build = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(after_build, torch.rand(1))  # global RNG untouched
    assert weights_digest(a.model) == weights_digest(b.model)
    assert weights_digest(build_model(ModelConfig("tiny", 64, "")).model) != weights_digest(a.model)


def test_stats_artifact_round_trip_and_refusals(shared_data, tmp_path):
    loaded = build_model(ModelConfig("tiny", 128, ""))
    images = coco_images(shared_data, "train", loaded.model.image_encoder.img_size, 2)
    blocks, n_tokens = collect_mlp_sq_norms(loaded.model, images)
    stats = CalibrationStats("wanda", "tiny", 128, False, "", weights_digest(loaded.model), 2, n_tokens, blocks)
    path = stats.save(tmp_path / "stats" / "calibration_stats.pt")
    back = CalibrationStats.load(path)
    assert (back.criteria, back.model_type, back.img_size, back.n_images, back.n_tokens) == (
        ("wanda",),
        "tiny",
        128,
        2,
        128,
    )
    assert torch.load(path, weights_only=True)["format"] == "supersam-activation-stats/2"
    assert torch.equal(back.blocks[11]["lin2"], blocks[11]["lin2"])
    torch.testing.assert_close(back.norms(0, "lin1") ** 2, blocks[0]["lin1"])
    back.check_matches(loaded)  # same config, same weights: accepted

    with pytest.raises(ConfigError, match="are for img_size 128, but the model has 64"):
        back.check_matches(build_model(ModelConfig("tiny", 64, "")))
    other = build_model(ModelConfig("tiny", 128, ""))
    with pytest.raises(ConfigError, match="are for model type vit_b, but the model has tiny"):
        CalibrationStats(**{**back.__dict__, "model_type": "vit_b"}).check_matches(other)
    with pytest.raises(ConfigError, match="are for checkpoint .*sam_tiny.pth, but the model has <random init>"):
        CalibrationStats(**{**back.__dict__, "checkpoint": "sam_tiny.pth"}).check_matches(other)
    with torch.no_grad():
        other.model.image_encoder.blocks[0].mlp.lin1.weight[0, 0] += 1
    with pytest.raises(ConfigError, match="measured on different weights"):
        back.check_matches(other)

    with pytest.raises(CheckpointError, match="does not exist; run `supersam calibrate`"):
        CalibrationStats.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot be read"):
        CalibrationStats.load(tmp_path / "junk.pt")
    # a stats file of format /1 (a `kind` instead of `criteria`) still loads, as wanda statistics
    legacy = {k: v for k, v in torch.load(path, weights_only=True).items() if k not in ("criteria", "settings")}
    torch.save({**legacy, "format": "supersam-activation-stats/1", "kind": "wanda"}, tmp_path / "v1.pt")
    assert CalibrationStats.load(tmp_path / "v1.pt").criteria == ("wanda",)
    torch.save({**legacy, "criteria": ["wanda", "hessian"]}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="damaged calibration stats file .*'hessian' is unknown"):
        CalibrationStats.load(tmp_path / "bad.pt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="is not a calibration stats file"):
        CalibrationStats.load(tmp_path / "other.pt")


def write_params(tmp_path: Path, shared_data: Path, **calibrate) -> Path:
    params = {
        "model": {"type": "tiny", "img_size": 128, "checkpoint": ""},
        "data": {
            "kind": "image_label",
            "root": str(shared_data / "isbi2012_em"),
            "images": "image",
            "labels": "label",
            "patch": 256,
            "max_images": 4,
        },
        "calibrate": {
            "n_images": 3,
            "batch_size": 2,
            "out": str(tmp_path / "calib" / "calibration_stats.pt"),
            **calibrate,
        },
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_calibrate_wanda_cli_writes_stats_and_logs_run(shared_data, tmp_path, monkeypatch):
    from supersam.cli import main  # noqa: F401  (registers the commands)
    from supersam.cli.app import app

    monkeypatch.chdir(tmp_path)  # MLflow puts run artifacts under ./mlruns

    params = write_params(tmp_path, shared_data)
    result = CliRunner().invoke(
        app,
        ["calibrate", "--params", str(params), "--set", "calibrate.n_images=2", "--set", "calibrate.device=cpu"],
    )
    assert result.exit_code == 0, result.output
    stats = CalibrationStats.load(tmp_path / "calib" / "calibration_stats.pt")
    assert (stats.model_type, stats.img_size, stats.n_images, stats.n_tokens, stats.pretrained) == (
        "tiny",
        128,
        2,
        128,
        False,
    )
    assert stats.criteria == ("wanda", "taylor")  # the default: both
    assert stats.settings["taylor_noise_std"] == 0.01 and stats.settings["seed"] == 0
    model = build_model(ModelConfig("tiny", 128, "")).model
    assert stats.weights_digest == weights_digest(model)
    assert all(b["lin2"].shape == (256,) and bool((b["lin2"] > 0).all()) for b in stats.blocks)
    assert all(b["taylor_lin1"].shape == (256,) and bool((b["taylor_lin2"] > 0).all()) for b in stats.blocks)
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        tags = dict(db.execute("select key, value from tags").fetchall())
        metrics = dict(db.execute("select key, value from metrics").fetchall())
    assert tags["stage"] == "calibrate" and tags["pretrained"] == "false"
    assert metrics["n_images"] == 2 and metrics["n_tokens"] == 128
    assert metrics["seconds_wanda"] > 0 and metrics["seconds_taylor"] > 0

    # wanda only: no Taylor statistics, and the taylor variant refuses the file with the fix
    result = CliRunner().invoke(
        app,
        [
            "calibrate",
            "--params",
            str(params),
            "--set",
            "calibrate.n_images=2",
            "--set",
            "calibrate.criteria=[wanda]",
            "--set",
            "calibrate.device=cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    wanda_only = CalibrationStats.load(tmp_path / "calib" / "calibration_stats.pt")
    assert wanda_only.criteria == ("wanda",) and "taylor_lin1" not in wanda_only.blocks[0]
    torch.testing.assert_close(wanda_only.blocks[3]["lin2"], stats.blocks[3]["lin2"], rtol=0, atol=0)
    assert list(tmp_path.glob("mlartifacts/**/artifacts/calibration_stats.pt"))


def test_calibrate_wanda_bad_settings_exit_1(shared_data, tmp_path, monkeypatch, capsys):
    from supersam.cli.main import main

    params = write_params(tmp_path, shared_data, batch_size=0)
    monkeypatch.setattr(sys, "argv", ["supersam", "calibrate", "--params", str(params)])
    with pytest.raises(SystemExit) as exit_info:
        main(restore_signals=True)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert [line for line in err.splitlines() if "error:" in line] == [
        "error: calibrate.batch_size must be >= 1, got 0"
    ]
    assert not (tmp_path / "calib").exists()


@pytest.mark.parametrize(
    "setting,message",
    [
        (
            "calibrate.criteria=[wanda, hessian]",
            "calibrate.criteria entry 'hessian' is unknown; use one or more of wanda, taylor",
        ),
        ("calibrate.criteria=[]", "calibrate.criteria is empty; list one or more of wanda, taylor"),
        ("calibrate.noise_std=0", "calibrate.noise_std must be > 0, got 0.0"),
    ],
)
def test_calibrate_bad_criteria_exit_1(shared_data, tmp_path, monkeypatch, capsys, setting, message):
    from supersam.cli.main import main

    params = write_params(tmp_path, shared_data)
    monkeypatch.setattr(sys, "argv", ["supersam", "calibrate", "--params", str(params), "--set", setting])
    with pytest.raises(SystemExit) as exit_info:
        main(restore_signals=True)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert [line for line in err.splitlines() if "error:" in line] == [f"error: {message}"]
