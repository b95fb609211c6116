"""dvc.yaml, params.yaml and profiles/paper.yaml agree with the CLI and the config classes."""

from __future__ import annotations

import shlex

import pytest
import typer.main
import yaml

from supersam.bench import BenchConfig
from supersam.build_supernet import SpaceConfig, SupernetConfig
from supersam.calibrate import CalibrateConfig
from supersam.compare import CompareConfig
from supersam.cli.main import app
from supersam.config import ModelConfig, TrackingConfig, build_config
from supersam.data import DataConfig
from supersam.eval import EvalConfig
from supersam.export import ExportConfig
from supersam.pretrain import PretrainConfig
from supersam.rank_layers import RankLayersConfig
from supersam.search.config import SearchConfig
from supersam.train.config import TrainConfig

from conftest import ROOT

SECTIONS = {
    "model": ModelConfig, "data": DataConfig, "mlflow": TrackingConfig, "pretrain": PretrainConfig,
    "rank_layers": RankLayersConfig, "calibrate": CalibrateConfig, "space": SpaceConfig,
    "supernet": SupernetConfig, "train": TrainConfig, "search": SearchConfig,
    "compare": CompareConfig, "export": ExportConfig, "eval": EvalConfig, "bench": BenchConfig,
}
STAGES = ["pretrain", "rank-layers", "calibrate-wanda", "build-supernet", "train", "finetune", "search", "compare",
          "export", "eval"]
# stages that run another stage's command: finetune is `supersam train --set train.mode=finetune`
STAGE_COMMAND = {"finetune": "train"}


def _dvc() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def _commands(stage: dict) -> list[str]:
    body = stage.get("do", stage)
    cmds = body["cmd"]
    return cmds if isinstance(cmds, list) else [cmds]


@pytest.mark.parametrize("params_file", ["params.yaml", "profiles/paper.yaml"])
def test_every_params_section_builds_its_config(params_file):
    params = yaml.safe_load((ROOT / params_file).read_text())
    assert set(params) == set(SECTIONS) | {"variants", "metric"}
    assert params["variants"] == ["none", "magnitude", "wanda", "taylor"] and params["metric"] == "single"
    for section, cls in SECTIONS.items():
        build_config(cls, params[section], section)  # raises on unknown keys / bad types


def test_dvc_stages_are_pretrain_the_seven_commands_finetune_and_compare_in_order():
    stages = _dvc()["stages"]
    assert list(stages) == STAGES
    for name in ("build-supernet", "train", "search"):
        assert stages[name]["foreach"] == "${variants}"
        body = stages[name]["do"]
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in body.get("outs", []) + body.get("metrics", [])]
        assert all("${item}" in out for out in outs), name


def test_dvc_commands_and_flags_exist_in_the_cli():
    cli = typer.main.get_command(app)
    for name, stage in _dvc()["stages"].items():
        for cmd in _commands(stage):
            words = shlex.split(cmd)
            command_name = STAGE_COMMAND.get(name, name)
            assert words[:2] == ["supersam", command_name], cmd
            command = cli.commands[command_name]
            options = {opt for p in command.params for opt in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
            for word in words[2:]:
                if word.startswith("--"):
                    assert word in options, f"{name}: {word} is not an option of supersam {command_name}"


def test_dvc_params_name_existing_keys():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in _dvc()["stages"].items():
        for key in stage.get("do", stage)["params"]:
            node = params
            for part in key.split("."):
                assert part in node, f"stage {name}: params key {key} not in params.yaml"
                node = node[part]
