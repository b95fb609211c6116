"""`supersam eval` end to end on real data (dsb2018 nuclei, box prompts, tiny SAM)."""

from __future__ import annotations

import json

import mlflow
from typer.testing import CliRunner

from supersam.cli.main import app


def _empty_params(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("{}\n")
    return str(path)


def test_eval_dsb2018_box_prompts_writes_metrics_overlays_and_mlflow(tmp_path, shared_data):
    out = tmp_path / "eval"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [
        "eval", "--params", _empty_params(tmp_path), "--model-type", "tiny", "--img-size", "128",
        "--data-kind", "image_label", "--data-root", str(shared_data / "dsb2018_nuclei"),
        "--images", "img2d.tif", "--labels", "mask2d.tif", "--label-mode", "instance",
        "--min-area", "0", "--max-objects", "0", "--split", "all", "--prompt", "box",
        "--out", str(out), "--overlays", "1", "--tracking-uri", uri, "--device", "cpu",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 1 and metrics["n_objects"] == 125  # every nucleus once
    assert 0.0 <= metrics["miou"] <= 1.0 and 0.0 <= metrics["miou_oracle"] <= 1.0
    assert metrics["miou_oracle"] >= metrics["miou"] - 1e-9 or metrics["miou_oracle"] >= 0
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


def test_eval_is_deterministic_for_the_same_seed(tmp_path, shared_data):
    base = [
        "eval", "--params", _empty_params(tmp_path), "--model-type", "tiny",
        "--data-kind", "image_label", "--data-root", str(shared_data / "isbi2012_em"),
        "--images", "image", "--labels", "label", "--label-mode", "binary", "--n-images", "2",
        "--prompt", "point", "--overlays", "0", "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--device", "cpu",
    ]
    runs = []
    for name in ("a", "b"):
        assert CliRunner().invoke(app, base + ["--out", str(tmp_path / name)]).exit_code == 0
        runs.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    assert runs[0]["miou"] == runs[1]["miou"] and runs[0]["n_objects"] == runs[1]["n_objects"] > 0


def test_eval_rejects_conflicting_or_bad_options(tmp_path):
    import pytest

    from supersam.errors import ConfigError
    from supersam.eval import EvalConfig

    for bad, message in (
        (EvalConfig(subnet='{"kept_layers": [0]}'), "--subnet needs --supernet"),
        (EvalConfig(model="m", supernet="s"), "not both"),
        (EvalConfig(batch_size=0), "batch_size must be >= 1"),
        (EvalConfig(split="test"), "eval.split"),
    ):
        with pytest.raises(ConfigError, match=message):
            bad.validate()
    result = CliRunner().invoke(app, ["eval", "--params", _empty_params(tmp_path), "--batch-size", "0"])
    assert result.exit_code != 0 and isinstance(result.exception, ConfigError)
