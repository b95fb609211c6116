"""The config schema: pydantic validation of params.yaml sections and --set overrides on every command."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest

from supersam.runtime.errors import ConfigError
from supersam.schema import (
    SECTIONS,
    ModelConfig,
    apply_sets,
    build_config,
    metric_key,
    parse_set,
    read_params,
    stage_config,
)
from supersam.stages.search import SearchConfig
from supersam.stages.train import TrainConfig

COMMANDS = (
    "pretrain",
    "rank-layers",
    "calibrate",
    "build-supernet",
    "train",
    "search",
    "export",
    "eval",
    "compare",
)


def test_parse_set_types_values_as_yaml():
    assert parse_set("train.iterations=48") == (("train", "iterations"), 48)
    assert parse_set("train.lr=1.0e-4") == (("train", "lr"), 1e-4)
    assert parse_set("train.lr=1e-4") == (("train", "lr"), "1e-4")  # YAML 1.1; the float field still coerces it
    assert build_config(TrainConfig, {"lr": "1e-4"}, "train").lr == 1e-4
    assert parse_set("eval.prompts=[box, point]") == (("eval", "prompts"), ["box", "point"])
    assert parse_set("train.amp=false") == (("train", "amp"), False)
    assert parse_set("search.min_miou=0.95x") == (("search", "min_miou"), "0.95x")
    assert parse_set("data.root=/my data/x=y") == (("data", "root"), "/my data/x=y")  # first = splits
    assert parse_set("model.checkpoint=") == (("model", "checkpoint"), "")
    assert parse_set("variants=[wanda]") == (("variants",), ["wanda"])
    for bad, message in (
        ("train.iterations", "must look like section.key=value"),
        ("trian.iterations=4", "unknown section 'trian'"),
        ("train=4", "names a whole section"),
        (".x=1", "must look like section.key=value"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_set(bad)


def test_apply_sets_order_and_no_mutation():
    values = {"train": {"iterations": 24, "lr": 3e-5}}
    out = apply_sets(
        values, ["train.iterations=48", "train.iterations=96", "data.root=/d"], {"train.lr": 1e-4, "train.out": None}
    )
    assert out == {"train": {"iterations": 96, "lr": 1e-4}, "data": {"root": "/d"}}
    assert values == {"train": {"iterations": 24, "lr": 3e-5}}  # the input is not changed
    with pytest.raises(ConfigError, match="cannot set train.lr.x: train.lr is not a section"):
        apply_sets(values, ["train.lr.x=1"])


def test_build_config_coerces_and_names_the_key():
    cfg = build_config(
        TrainConfig, {"iterations": "48", "amp": "yes", "target_miou": 0.84, "trainable": ["mask_decoder"]}, "train"
    )
    assert (cfg.iterations, cfg.amp, cfg.target_miou, cfg.trainable) == (48, True, "0.84", ("mask_decoder",))
    assert build_config(SearchConfig, {"max_params": 5e6}, "search").max_params_count == 5_000_000
    cases = [
        (
            {"iterations": 2.5},
            "train.iterations: input should be a valid integer, got a number with a fractional part, got 2.5",
        ),
        ({"amp": "maybe"}, "train.amp: input should be a valid boolean"),
        ({"itrations": 3}, "unknown key train.itrations; known keys: variant, supernet, out, iterations"),
        ({"trainable": "mask_decoder"}, "train.trainable: input should be a valid tuple"),
        ({"mode": "zigzag"}, "train.mode 'zigzag' is unknown"),  # the dataclass's own check
    ]
    for values, message in cases:
        with pytest.raises(ConfigError) as err:
            build_config(TrainConfig, values, "train")
        assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(ConfigError, match="model must be a mapping of keys, got 3"):
        build_config(ModelConfig, 3, "model")


def test_read_params_refuses_an_unknown_section(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("trian:\n  iterations: 4\n")
    with pytest.raises(ConfigError, match=f"unknown section 'trian'; known sections: {', '.join(SECTIONS)}"):
        read_params(path)


def test_every_params_section_is_a_known_section():
    for name in ("params.yaml", "profiles/paper.yaml", "profiles/downstream.yaml"):
        values = read_params(Path(__file__).resolve().parents[1] / name)
        assert set(values) <= set(SECTIONS)


@pytest.mark.parametrize("command", COMMANDS)
def test_set_reaches_every_command(command, tmp_path, monkeypatch, capsys):
    """A misspelt key given with --set fails before any work, naming the key, on every command."""
    from supersam.cli.main import main

    section = {
        "pretrain": "pretrain",
        "rank-layers": "rank_layers",
        "calibrate": "calibrate",
        "build-supernet": "supernet",
        "train": "train",
        "search": "search",
        "export": "export",
        "eval": "eval",
        "compare": "compare",
    }[command]
    (tmp_path / "params.yaml").write_text("mlflow:\n  enabled: false\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["supersam", command, "--set", f"{section}.no_such_key=1"])
    with pytest.raises(SystemExit) as exit_info:
        main(restore_signals=True)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err
    assert re.search(rf"unknown key {section}\.no_such_key; known keys: ", err), err
    monkeypatch.setattr(sys, "argv", ["supersam", command, "--set", "model.img_size=big"])
    with pytest.raises(SystemExit) as exit_info:
        main(restore_signals=True)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err
    if command in ("pretrain", "rank-layers", "calibrate", "build-supernet", "eval"):  # they read `model`
        assert "model.img_size: input should be a valid integer" in err, err
    else:  # a --set the command would ignore is refused, naming what it reads
        assert f"`supersam {command}` does not read the model section (it reads {section}" in err, err


def test_one_metric_setting_reaches_every_section_that_selects(tmp_path):
    from supersam.cli.app import load_params
    from supersam.stages.compare import CompareConfig
    from supersam.stages.rank_layers import RankLayersConfig

    params = tmp_path / "params.yaml"
    params.write_text("metric: oracle\nsearch:\n  budget: 3\n")
    values = load_params("search", params, [])
    assert stage_config(SearchConfig, values, "search").metric == "oracle"
    from supersam.stages.eval import EvalConfig

    for cls, section in (
        (TrainConfig, "train"),
        (RankLayersConfig, "rank_layers"),
        (CompareConfig, "compare"),
        (EvalConfig, "eval"),
    ):
        assert stage_config(cls, values, section).metric == "oracle"
    assert stage_config(SearchConfig, load_params("search", params, ["metric=single"]), "search").metric == "single"
    with pytest.raises(ConfigError, match="`supersam export` does not read the metric section"):
        load_params("export", params, ["metric=single"])
    assert metric_key("single") == "miou" and metric_key("oracle") == "miou_oracle"
    with pytest.raises(ConfigError, match="metric is 'dice'; use single .* or oracle"):
        load_params("search", params, ["metric=dice"])
    params.write_text("metric: single\nrank_layers:\n  metric: oracle\n")
    with pytest.raises(ConfigError, match="rank_layers.metric is set; set the top-level `metric: oracle` instead"):
        load_params("rank-layers", params, [])


def test_config_sections_are_frozen_dataclasses():
    for cls in (ModelConfig, TrainConfig, SearchConfig):
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
