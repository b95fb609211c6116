"""`supersam eval` end to end on real data (dsb2018 nuclei, box prompts, tiny SAM)."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch
from typer.testing import CliRunner

from supersam.baselines import collapse_check
from supersam.cli.main import app

KINDS = ("box", "point")


def _empty_params(tmp_path, text: str = "{}\n"):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return str(path)


def _check_kind_metrics(metrics: dict, kinds) -> None:
    """The per-prompt-kind keys: mIoUs and fractions in [0, 1], baselines, collapse flag consistent."""
    shaped = {"box": "box_fill", "point": "disk"}
    for kind in kinds:
        for key in ("miou", "miou_oracle", "fg_fraction", "baseline_all_foreground", "baseline_untrained",
                    f"baseline_{shaped[kind]}"):
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
        "eval", "--params", _empty_params(tmp_path), "--set", "model.type=tiny", "--set", "model.img_size=128",
        "--set", "data.kind=image_label", "--data-root", str(shared_data / "dsb2018_nuclei"),
        "--set", "data.images=img2d.tif", "--set", "data.labels=mask2d.tif", "--set", "data.label_mode=instance",
        "--set", "data.min_area=0", "--set", "data.max_objects=0", "--split", "all", "--set", "eval.prompt=box",
        "--out", str(out), "--set", "eval.overlays=1", "--set", f"mlflow.tracking_uri={uri}", "--set", "eval.device=cpu",
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
    for key in ("miou_point", "fg_fraction_box", "baseline_box_fill_box", "baseline_disk_point",
                "baseline_untrained_point", "baseline_all_foreground_box"):
        assert run.data.metrics[key] == pytest.approx(metrics[key], abs=1e-12), key
    assert run.data.metrics["collapsed_box"] == float(metrics["collapsed_box"])
    assert run.data.params["split"] == "all" and run.data.params["prompts"] == "box,point"


@pytest.mark.slow
def test_eval_is_deterministic_for_the_same_seed(tmp_path, shared_data):
    # split test (here the held-out 20 % of the EM slices; --data-root alone would mean all); only point prompts
    params = _empty_params(tmp_path, "data:\n  test_fraction: 0.2\n")
    base = [
        "eval", "--params", params, "--set", "model.type=tiny", "--split", "test",
        "--set", "data.kind=image_label", "--data-root", str(shared_data / "isbi2012_em"),
        "--set", "data.images=image", "--set", "data.labels=label", "--set", "data.label_mode=binary",
        "--set", "eval.n_images=2", "--set", "eval.prompt=point", "--set", "eval.prompts=[point]",
        "--set", "eval.overlays=0", "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db", "--set", "eval.device=cpu",
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
    from supersam.scoring import run_eval
    from supersam.sam import build_sam

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

    from supersam.errors import ConfigError
    from supersam.eval import EvalConfig

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
