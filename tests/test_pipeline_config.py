"""dvc.yaml, params.yaml and the profiles (paper, downstream) agree with the CLI and the config classes."""

from __future__ import annotations

import json
import shlex

import pytest
import typer.main
import yaml
from conftest import ROOT

from supersam.cli.app import READS
from supersam.cli.main import app
from supersam.cli.schema import section_classes
from supersam.schema import build_config

SECTIONS = section_classes()  # the one map from section to config class
STAGES = [
    "validate",
    "pretrain",
    "rank-layers",
    "calibrate",
    "build-supernet",
    "train",
    "finetune",
    "search",
    "compare",
    "export",
    "eval",
]
# stages that run another stage's command: finetune is `supersam train --set train.mode=finetune`
STAGE_COMMAND = {"finetune": "train"}


def _dvc() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def _commands(stage: dict) -> list[str]:
    body = stage.get("do", stage)
    cmds = body["cmd"]
    return cmds if isinstance(cmds, list) else [cmds]


@pytest.mark.parametrize("params_file", ["params.yaml", "profiles/paper.yaml", "profiles/downstream.yaml"])
def test_every_params_section_builds_its_config(params_file):
    params = yaml.safe_load((ROOT / params_file).read_text())
    assert set(params) == set(SECTIONS) | {"variants", "metric"}
    assert params["variants"] == ["none", "magnitude", "wanda", "taylor"] and params["metric"] == "single"
    for section, cls in SECTIONS.items():
        build_config(cls, params[section], section)  # raises on unknown keys / bad types


def test_dvc_stages_are_validate_pretrain_the_seven_commands_finetune_and_compare_in_order():
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
            if isinstance(key, dict):  # `- params.yaml:`: every key of the file (the validate stage)
                assert list(key) == ["params.yaml"] and name == "validate", (name, key)
                continue
            node = params
            for part in key.split("."):
                assert part in node, f"stage {name}: params key {key} not in params.yaml"
                node = node[part]


def _templated_sections(body: dict) -> set[str]:
    """params sections dvc.yaml itself substitutes into a stage (``${export.variant}`` in eval's commands)."""
    import re

    text = json.dumps({k: body.get(k) for k in ("cmd", "deps", "outs", "metrics", "plots")})
    return {m.split(".")[0] for m in re.findall(r"\$\{([a-z_.]+)\}", text)} - {"item", "variants"}


@pytest.mark.parametrize("stage", [s for s in STAGES if s != "validate"])
def test_dvc_params_are_the_sections_the_command_reads(stage):
    """A stage re-runs when, and only when, a section its command reads changes: dvc.yaml's ``params:``
    are supersam.cli.app.READS of its command, plus the sections dvc.yaml substitutes itself."""
    body = _dvc()["stages"][stage]
    body = body.get("do", body)
    listed = {key.split(".")[0] for key in body["params"]}
    reads = set(READS[STAGE_COMMAND.get(stage, stage)])
    assert listed == reads | (_templated_sections(body) & set(SECTIONS)), stage


def test_compare_keeps_its_outputs_while_it_runs():
    """DVC deletes a stage's outputs before its command runs unless they persist; compare's uncached
    files (Table I, Fig. 4/5, the subnets) are in no cache, so an interrupted compare lost the previous
    comparison for good (measured: a Ctrl-C during `dvc repro -s compare` now leaves all six)."""
    stage = _dvc()["stages"]["compare"]
    entries = [entry for kind in ("outs", "metrics", "plots") for entry in stage.get(kind, [])]
    flags = {}
    for entry in entries:
        assert isinstance(entry, dict), f"compare output {entry} has no flags (persist: true is needed)"
        ((path, entry_flags),) = entry.items()
        flags[path] = entry_flags
    names = ("table1.md", "subnets.json", "table1.json", "fig4.png", "fig5.png", "metrics.json")
    assert set(flags) == {f"outputs/compare/{n}" for n in names}
    assert all(f.get("persist") is True for f in flags.values()), flags
    assert "cache" not in flags["outputs/compare/metrics.json"]  # compare-seeds reads it from DVC's cache


def test_params_build_every_section_with_its_class():
    from supersam.cli.schema import Params
    from supersam.schema import SECTIONS as SCHEMA_SECTIONS
    from supersam.schema import apply_metric, read_params

    built = Params.from_values(apply_metric(read_params(ROOT / "params.yaml")))
    assert set(SECTIONS) | {"variants", "metric"} == set(SCHEMA_SECTIONS)
    for section, cls in SECTIONS.items():
        assert isinstance(getattr(built, section), cls), section
    assert built.variants == ["none", "magnitude", "wanda", "taylor"] and built.train.metric == "single"
    assert set(READS) >= {"pretrain", "rank-layers", "calibrate", "build-supernet", "train", "search", "compare"}
    assert all(set(reads) <= set(SCHEMA_SECTIONS) for reads in READS.values())


def test_validate_checks_every_section_and_writes_a_marker_that_never_changes(tmp_path, monkeypatch, capsys):
    from conftest import run_cli

    monkeypatch.chdir(ROOT)
    for params_file in ("params.yaml", "profiles/paper.yaml", "profiles/downstream.yaml"):
        marker = tmp_path / params_file.replace("/", "_") / "valid.json"
        code, err = run_cli(["validate", "-p", params_file, "--out", str(marker)], monkeypatch, capsys)
        assert code == 0, err
        assert json.loads(marker.read_text()) == {"format": "supersam-params/1"}
    first = marker.read_bytes()
    code, err = run_cli(["validate", "--set", "eval.overlays=2", "--out", str(marker)], monkeypatch, capsys)
    assert code == 0 and marker.read_bytes() == first, err  # a valid change leaves the marker's bytes alone
    refused = {  # a bad value of any section, read by any stage, is refused by the one command
        "search.budget=-1": "search.budget",
        "search.budget=abc": "search.budget",
        "train.lr=0": "train.lr",
        "data.patch=1": "data.patch",
        "eval.split=tset": "eval.split",
        "bench.repeats=0": "bench",
        "compare.no_such_key=1": "compare.no_such_key",
        "model.img_size=65536": "above the limit",
    }
    for item, needle in refused.items():
        code, err = run_cli(
            ["validate", "--set", item, "--out", str(tmp_path / "new" / "valid.json")], monkeypatch, capsys
        )
        assert code == 1 and needle in err and "Traceback" not in err, (item, err)
    assert not (tmp_path / "new" / "valid.json").exists()
    bad = tmp_path / "variants.yaml"
    bad.write_text("variants: [none, wandaa]\n")
    code, err = run_cli(["validate", "-p", str(bad)], monkeypatch, capsys)
    assert code == 1 and "unknown variant 'wandaa'" in err, err
