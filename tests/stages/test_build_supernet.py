"""build-supernet: reordered supernet + search space on disk, refusals of bad input with exit 1."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from supersam.artifacts.records import LayerRanking
from supersam.data import DataConfig, prepare_split
from supersam.model.checkpoint import load_supernet
from supersam.model.reorder import reorder_sam
from supersam.model.sam import build_sam_from_config as build_model
from supersam.runtime.errors import ConfigError
from supersam.schema import ModelConfig, TrackingConfig
from supersam.stages.build_supernet import SpaceConfig, SupernetConfig, build_supernet
from supersam.stages.calibrate import CalibrateConfig, calibrate

ROOT = Path(__file__).resolve().parents[2]
OFF = TrackingConfig(enabled=False)
TINY = ModelConfig("tiny", 128, "")


def em_data(shared_data: Path) -> DataConfig:
    return DataConfig(
        kind="image_label",
        root=str(shared_data / "isbi2012_em"),
        images="image",
        labels="label",
        patch=256,
        max_images=4,
    )


@pytest.fixture(scope="module")
def stats_path(shared_data, tmp_path_factory) -> Path:
    """Wanda stats of the tiny model at 128 px on 3 real EM patches."""
    out = tmp_path_factory.mktemp("calib") / "calibration_stats.pt"
    calibrate(TINY, em_data(shared_data), CalibrateConfig(n_images=3, batch_size=2, out=str(out), device="cpu"), OFF)
    return out


@pytest.mark.parametrize("variant", ["wanda", "taylor"])
def test_calibrated_supernet_is_reordered_and_function_preserving(
    shared_data, stats_path, tmp_path, monkeypatch, variant
):
    monkeypatch.chdir(tmp_path)  # MLflow puts run artifacts under ./mlruns
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    cfg = SupernetConfig(variant=variant, stats=str(stats_path), out=str(tmp_path / "supernet" / variant))
    out = build_supernet(TINY, SpaceConfig(ranking=""), cfg, tracking)
    assert out == tmp_path / "supernet" / variant
    supernet = load_supernet(out / "supernet.pt")
    meta = supernet.meta
    assert (meta.model_type, meta.img_size, meta.pretrained, meta.variant, meta.combine) == (
        "tiny",
        128,
        False,
        variant,
        "rank",
    )
    assert meta.stats_n_images == 3 and meta.stats == str(stats_path)
    space = json.loads((out / "search_space.json").read_text())
    assert space == {
        "depth": 12,
        "mlp_dim": 256,
        "prunable": [1, 2, 5, 6, 9],
        "drop_probs": [0.5] * 5,
        "mlp_dim_choices": [64, 85, 128, 192, 256],
    }

    from supersam.model.activation_stats import CalibrationStats

    original = build_model(TINY).model
    expected = build_model(TINY).model
    orders = reorder_sam(expected, variant, CalibrationStats.load(stats_path), "rank")
    saved = supernet.sam.image_encoder.blocks
    for i, block in enumerate(expected.image_encoder.blocks):
        assert torch.equal(saved[i].mlp.lin1.weight, block.mlp.lin1.weight)
        assert torch.equal(saved[i].mlp.lin2.weight, original.image_encoder.blocks[i].mlp.lin2.weight[:, orders[i]])
    images = torch.stack([inp.image for inp in prepare_split(em_data(shared_data), "val", 128, n_images=2)])
    with torch.inference_mode():
        torch.testing.assert_close(supernet(images), original.image_encoder(images), rtol=1e-5, atol=1e-5)

    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        tags = dict(db.execute("select key, value from tags").fetchall())
        metrics = dict(db.execute("select key, value from metrics").fetchall())
    assert (tags["stage"], tags["variant"], tags["pretrained"]) == ("build-supernet", variant, "false")
    assert metrics["space_size"] == 5**6 * 6**5 and metrics["units_moved_frac"] > 0.9
    assert metrics["params_min"] < metrics["params"]


def test_none_and_magnitude_variants_with_ranking(tmp_path):
    ranking = tmp_path / "ranking.json"
    LayerRanking(
        "tiny", 128, False, 2, 9, "single", "count", 0.5, {}, [0.0] * 12, [], [], [3, 4, 10], [0.2, 0.7, 0.4], 79
    ).save(ranking)
    space_cfg = SpaceConfig(prunable=(1,), drop_probs=(0.9,), mlp_dim_choices=(128, 256), ranking=str(ranking))
    out = build_supernet(TINY, space_cfg, SupernetConfig(variant="none", stats="", out=str(tmp_path / "none")), OFF)
    assert json.loads((out / "search_space.json").read_text()) == {
        "depth": 12,
        "mlp_dim": 256,
        "prunable": [3, 4, 10],
        "drop_probs": [0.2, 0.7, 0.4],
        "mlp_dim_choices": [128, 256],
    }
    supernet = load_supernet(out / "supernet.pt")
    meta = supernet.meta
    reference = build_model(TINY).model.state_dict()
    assert meta.variant == "none" and meta.stats == "" and meta.ranking == str(ranking)
    assert all(torch.equal(v, reference[k]) for k, v in supernet.sam.state_dict().items())

    out = build_supernet(
        TINY,
        SpaceConfig(ranking=""),
        SupernetConfig(variant="magnitude", combine="score", stats="", out=str(tmp_path / "magnitude")),
        OFF,
    )
    assert out.name == "magnitude"
    mlp = load_supernet(out / "supernet.pt").sam.image_encoder.blocks[4].mlp
    combined = (mlp.lin1.weight.abs().double().sum(1) + mlp.lin2.weight.abs().double().sum(0)) / 2
    assert torch.all(combined[:-1] >= combined[1:])

    LayerRanking("vit_b", 1024, True, 2, 9, "single", "count", 0.5, {}, [0.0] * 12, [], [], [1], [0.5], 79).save(
        ranking
    )
    with pytest.raises(ConfigError, match="layer ranking .* is for vit_b, the model is tiny"):
        build_supernet(
            TINY, SpaceConfig(ranking=str(ranking)), SupernetConfig(variant="none", out=str(tmp_path / "x")), OFF
        )


def test_the_supernet_records_its_base_models_weights(tmp_path):
    """``meta.base_digest`` is the state digest of the base model as loaded (before the reordering),
    "" for a random init: what train's teacher and relative thresholds are checked against."""
    from supersam.model.sam import build_sam, state_digest

    torch.manual_seed(3)
    torch.save(build_model(TINY).model.state_dict(), tmp_path / "base.pth")
    based = ModelConfig("tiny", 128, str(tmp_path / "base.pth"))
    out = build_supernet(
        based, SpaceConfig(ranking=""), SupernetConfig(variant="magnitude", out=str(tmp_path / "m")), OFF
    )
    meta = load_supernet(out / "supernet.pt").meta
    assert meta.base_digest == state_digest(build_sam("tiny", 128, str(tmp_path / "base.pth")).model)
    assert meta.base_digest != state_digest(load_supernet(out / "supernet.pt").sam)  # reordered after the digest
    out = build_supernet(TINY, SpaceConfig(ranking=""), SupernetConfig(variant="none", out=str(tmp_path / "r")), OFF)
    assert load_supernet(out / "supernet.pt").meta.base_digest == ""


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """Run the ``supersam`` entry point in-process; returns (exit code, stderr)."""
    from supersam.cli.main import main

    monkeypatch.setattr(sys, "argv", ["supersam", *args])
    with pytest.raises(SystemExit) as exit_info:
        main(restore_signals=True)
    return exit_info.value.code, capsys.readouterr().err


def write_params(tmp_path: Path, stats: Path) -> Path:
    params = {
        "model": {"type": "tiny", "img_size": 128},
        "space": {"ranking": ""},
        "supernet": {"variant": "wanda", "stats": str(stats), "out": str(tmp_path / "out" / "wanda")},
        "mlflow": {"enabled": False},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_cli_bad_input_is_one_line_exit_1(stats_path, tmp_path, monkeypatch, capsys):
    params = write_params(tmp_path, stats_path)
    base = ["build-supernet", "--params", str(params)]
    cases = {
        ("--variant", "slimsam"): "unknown reordering variant 'slimsam'; use one of none, magnitude, wanda, taylor",
        ("--set", "supernet.stats=" + str(tmp_path / "nope.pt")): "does not exist; run `supersam calibrate`",
        ("--set", "model.img_size=64"): "are for img_size 128, but the model has 64",
        ("--set", "supernet.combine=median"): "unknown supernet.combine 'median'",
        ("--set", "supernet.combne=rank"): "unknown key supernet.combne; known keys: variant, combine, stats, out",
        ("--set", "supernt.combine=rank"): "unknown section 'supernt'",
        ("--set", "model.img_size=big"): "model.img_size: input should be a valid integer",
        ("--set", "model.img_size"): "must look like section.key=value",
    }
    for flag, message in cases.items():
        code, err = run_cli([*base, *flag], monkeypatch, capsys)
        assert code == 1 and message in err and "Traceback" not in err, (flag, err)
        error_lines = [line for line in err.splitlines() if "error:" in line]
        assert len(error_lines) == 1 and message in error_lines[0]
    assert not (tmp_path / "out").exists()
    code, err = run_cli(
        [*base, "--variant", "magnitude", "--set", f"supernet.out={tmp_path / 'out' / 'magnitude'}"],
        monkeypatch,
        capsys,
    )
    assert code == 0 and (tmp_path / "out" / "magnitude" / "supernet.pt").is_file()


@pytest.mark.slow
def test_installed_entry_point_refuses_other_checkpoint_stats(stats_path, tmp_path):
    params = write_params(tmp_path, stats_path)
    fake = tmp_path / "sam_tiny.pth"
    torch.save(build_model(TINY).model.state_dict(), fake)
    proc = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "supersam"),
            "build-supernet",
            "--params",
            str(params),
            "--set",
            f"model.checkpoint={fake}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    assert "are for checkpoint <random init>, but the model has" in proc.stderr and "Traceback" not in proc.stderr
