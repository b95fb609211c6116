"""`supersam search`: parsing, encoding, OpenTuner/random search on a tiny supernet and real EM data."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from conftest import run_cli

from supersam.artifacts.records import SupernetMeta
from supersam.data import DataConfig, prepare_split
from supersam.measure.scoring import SubnetEvaluator
from supersam.model.checkpoint import save_supernet
from supersam.model.elastic import SuperSam
from supersam.model.sam import build_sam_model
from supersam.model.space import SearchSpace, SubnetConfig
from supersam.runtime.errors import ConfigError
from supersam.stages.search import Constraints, SearchState, SubnetEncoding, parse_count, run_search

TINY_MLP_DIMS = (64, 128, 256)


def em_data(shared_data: Path) -> DataConfig:
    return DataConfig(root=str(shared_data / "isbi2012_em"), patch=256, max_objects=4)


@pytest.fixture(scope="module")
def supernet_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    supernet = SuperSam(build_sam_model("tiny"), SearchSpace.for_arch("tiny", mlp_dim_choices=TINY_MLP_DIMS))
    path = tmp_path_factory.mktemp("supernet") / "outputs" / "train" / "wanda" / "supernet.pt"
    save_supernet(path, supernet, SupernetMeta("tiny", 128, False, "wanda"))
    return path


@pytest.fixture(scope="module")
def evaluator(supernet_path, shared_data) -> SubnetEvaluator:
    from supersam.model.checkpoint import load_supernet

    supernet = load_supernet(supernet_path)
    inputs = prepare_split(em_data(shared_data), "val", 128, n_images=2)
    return SubnetEvaluator(supernet, inputs, torch.device("cpu"))


def test_parse_count_accepts_the_documented_forms_and_rejects_others():
    for value in ("60e6", "60000000", "60M", "60m", "6.0e7", 60_000_000, 6e7, " 60 M "):
        assert parse_count(value) == 60_000_000, value
    assert parse_count("1.5G") == 1_500_000_000 and parse_count("500k") == 500_000
    for bad in ("abc", "-5", "0", "60X", "", True):
        with pytest.raises(ConfigError, match="--max-params"):
            parse_count(bad)


def test_encoding_is_canonical_and_matches_the_space():
    space = SearchSpace.for_arch("tiny", prunable=(1, 2), mlp_dim_choices=TINY_MLP_DIMS)
    enc = SubnetEncoding.from_space(space, widths={b: (256,) for b in range(3, 12)})
    names = [n for n, _ in enc.parameters()]
    assert names == ["keep_01", "keep_02", "mlp_dim_01", "mlp_dim_02"]  # block 0 never searched
    a = enc.decode({"keep_01": False, "keep_02": True, "mlp_dim_01": 64, "mlp_dim_02": 128})
    b = enc.decode({"keep_01": False, "keep_02": True, "mlp_dim_01": 256, "mlp_dim_02": 128})
    assert a == b and a.mlp_dims[:3] == (256, 0, 128) and a.kept_layers[:2] == (0, 2)
    subnets = list(enc.all_subnets())
    assert enc.size() == len(set(subnets)) == 16
    for s in subnets:
        space.validate(s)
    assert enc.smallest().mlp_dims[:3] == (256, 0, 0)
    full = SubnetEncoding.from_space(SearchSpace.for_arch("tiny"))
    assert full.size() == SearchSpace.for_arch("tiny").size()


def synthetic(sub) -> dict:
    """A cheap objective over the full tiny space: params grow with widths, mIoU with kept capacity."""
    weight = [0, 1, 3, 5, 1, 2, 4, 6, 3, 1, 2, 5]
    params = 1000 + sum(d for d in sub.mlp_dims)
    miou = sum(w * d for w, d in zip(weight, sub.mlp_dims)) / (256 * sum(weight))
    return {"params": params, "miou": miou, "miou_oracle": miou}


def test_opentuner_is_seeded_memoised_and_leaves_logging_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, formatter = list(root.handlers), logging.Formatter
    enc = SubnetEncoding.from_space(SearchSpace.for_arch("tiny"))
    cons = Constraints(max_params=2500, min_miou=0.6)
    runs = []
    for seed in (3, 3, 4):
        calls = Counter()

        def counted(sub):
            calls[sub] += 1
            return synthetic(sub)

        state = run_search(enc, counted, cons, "opentuner", budget=40, seed=seed, workdir=tmp_path / f"w{seed}")
        assert state.n_evaluations == 40 and max(calls.values()) == 1  # never evaluated twice
        runs.append([c.subnet for c in state.candidates])
        for c in state.candidates:
            assert c.feasible == (c.params <= 2500 and c.miou >= 0.6)
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert list(root.handlers) == handlers and logging.Formatter is formatter
    assert not (tmp_path / "opentuner.log").exists() and not (tmp_path / "opentuner.db").exists()
    # each search has a database of its own, outside the output folder (never shared, never deleted under another)
    assert not (tmp_path / "w3" / "opentuner.db").exists() and (tmp_path / "w3" / "opentuner.log").is_file()


def test_search_finds_the_exhaustive_best_on_real_data(evaluator, tmp_path):
    space = evaluator.supernet.space
    enc = SubnetEncoding.from_space(space, widths={b: (256,) for b in range(1, 12) if b not in (1, 2)})
    enc = SubnetEncoding(enc.widths, (1, 2))  # 2 prunable blocks x 3 mlp_dim_choices: 16 subnets
    cache: dict = {}

    def cached(sub):
        if sub not in cache:
            cache[sub] = evaluator.evaluate(sub)
        return cache[sub]

    everything = [(s, cached(s)) for s in enc.all_subnets()]
    mious = sorted(r["miou"] for _, r in everything)
    assert len(set(mious)) > 8  # subnets really differ
    min_miou = mious[len(mious) // 2]
    good = sorted(r["params"] for _, r in everything if r["miou"] >= min_miou)
    max_params = good[len(good) // 2]
    for objective in ("min-params", "max-miou"):
        cons = Constraints(max_params, min_miou, objective)
        exhaustive = SearchState(cached, cons)
        for s, _ in everything:
            exhaustive.evaluate(s)
        expected = exhaustive.best()
        assert expected.feasible and sum(c.feasible for c in exhaustive.candidates) < 16
        for technique in ("opentuner", "random"):
            state = run_search(enc, cached, cons, technique, budget=0, time_limit=60, seed=0, workdir=tmp_path)
            best = state.best()
            assert state.n_evaluations == 16, technique  # stops when the space is exhausted
            assert best.subnet == expected.subnet, (objective, technique)
            assert best.params <= max_params and best.miou >= min_miou


def write_params(tmp_path: Path, shared_data: Path, mlflow_on: bool = False, **search) -> Path:
    params = {
        "data": {"root": str(shared_data / "isbi2012_em"), "patch": 256, "max_objects": 4},
        "search": {"n_images": 2, "budget": 6, "device": "cpu", **search},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "enabled": mlflow_on},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_cli_defaults_after_pipeline_writes_artifacts_and_mlflow(
    supernet_path, shared_data, tmp_path, monkeypatch, capsys
):
    project = supernet_path.parents[3]
    monkeypatch.chdir(project)
    write_params(project, shared_data, mlflow_on=True)
    code, err = run_cli(["search", "--max-params", "60e6", "--min-miou", "0.0"], monkeypatch, capsys)
    assert code == 0, err
    out = project / "runs" / "search" / "wanda"  # by hand: never into DVC outputs
    metrics = json.loads((out / "metrics.json").read_text())
    candidates = json.loads((out / "candidates.json").read_text())
    pareto = json.loads((out / "pareto.json").read_text())
    best = SubnetConfig.load(out / "best_subnet.json")
    evaluator_space = SearchSpace.for_arch("tiny", mlp_dim_choices=TINY_MLP_DIMS)
    evaluator_space.validate(best)
    assert metrics["feasible"] is True and metrics["n_evaluations"] == len(candidates) == 6
    assert metrics["constraints"] == {
        "max_params": 60_000_000,
        "min_miou": 0.0,
        "objective": "min-params",
        "metric": "miou",
        "max_macs": 0,
        "max_latency_ms": 0.0,
    }
    assert metrics["metric"] == "single" and metrics["params_input_size"] == 128 and metrics["n_objects"] > 0
    # the constraint is checked on exactly the params of the model `export` writes
    from supersam.model.checkpoint import load_model
    from supersam.stages.export import export_subnet

    exported = load_model(export_subnet(supernet_path, best, tmp_path / "export"))
    assert sum(p.numel() for p in exported.parameters()) == metrics["best_params"]
    assert exported.image_encoder.img_size == metrics["params_input_size"]
    assert metrics["pretrained"] is False and "seconds" not in metrics  # wall-clock figures live in timing.json
    timing = json.loads((out / "timing.json").read_text())
    assert timing["seconds"] > 0 and timing["evaluations_per_minute"] > 0
    assert all("seconds" not in p for p in pareto) and all(c["seconds"] > 0 for c in candidates)
    assert metrics["best_params"] == min(c["params"] for c in candidates)
    assert len({json.dumps(c["subnet"]) for c in candidates}) == 6
    assert pareto and all(p["params"] < q["params"] and p["miou"] < q["miou"] for p, q in zip(pareto, pareto[1:]))
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("supersam").experiment_id])[0]
    assert run.data.tags["stage"] == "search" and run.data.tags["variant"] == "wanda"
    assert run.data.tags["pretrained"] == "false" and run.data.params["max_params"] == "60000000"
    assert run.data.metrics["params"] == metrics["best_params"]


def test_cli_infeasible_strict_impossible_and_reproducible(supernet_path, shared_data, tmp_path, monkeypatch, capsys):
    params = str(write_params(tmp_path, shared_data, supernet=str(supernet_path), budget=3))
    base = ["search", "--params", params, "--min-miou", "0.99", "--max-params", "0.5M"]
    code, err = run_cli([*base[:3], "--max-params", "100k", "--out", str(tmp_path / "c")], monkeypatch, capsys)
    assert code == 1 and "below the smallest subnet of this space (311,139 params" in err
    assert "Traceback" not in err and not (tmp_path / "c").exists()
    runs = []
    for name in ("a", "b"):  # infeasible: exit 0, feasible false, same seed -> same candidates
        code, err = run_cli([*base, "--set", "search.seed=7", "--out", str(tmp_path / name)], monkeypatch, capsys)
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        cands = json.loads((tmp_path / name / "candidates.json").read_text())
        assert code == 0 and metrics["feasible"] is False and "closest" in err
        assert all(not c["feasible"] and (c["miou"] < 0.99 or c["params"] > 500_000) for c in cands)
        runs.append([(c["subnet"], c["params"], c["miou"]) for c in cands])
    assert runs[0] == runs[1] and len(runs[0]) == 3
    code, err = run_cli([*base, "--set", "search.strict=true", "--out", str(tmp_path / "d")], monkeypatch, capsys)
    assert code == 1 and "search.strict" in err and (tmp_path / "d" / "metrics.json").is_file()


def test_evaluator_gives_identical_miou_on_repeated_calls(evaluator):
    space = evaluator.supernet.space
    first = evaluator.evaluate(space.max_subnet())
    evaluator.evaluate(space.min_subnet())
    again = evaluator.evaluate(space.max_subnet())
    assert first["miou"] == again["miou"] and first["miou_oracle"] == again["miou_oracle"]
    assert first["params"] == 712_931 and evaluator.supernet.active_subnet == space.max_subnet()


def test_cli_hf_compatible_search_finds_only_subnets_transformers_can_hold(
    supernet_path, shared_data, tmp_path, monkeypatch, capsys
):
    """--hf-compatible: every candidate keeps full-width MLPs (blocks only dropped), the space is the 2^5
    keep/drop choices, and the best subnet exports with --format hf."""
    params = str(write_params(tmp_path, shared_data, supernet=str(supernet_path), budget=6))
    code, err = run_cli(
        [
            "search",
            "--params",
            params,
            "--min-miou",
            "0.0",
            "--max-params",
            "60e6",
            "--hf-compatible",
            "--out",
            str(tmp_path / "hf"),
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "hf" / "metrics.json").read_text())
    candidates = json.loads((tmp_path / "hf" / "candidates.json").read_text())
    assert metrics["hf_compatible"] is True and metrics["space_size"] == 2**5 and len(candidates) == 6
    for cand in candidates:
        sub = SubnetConfig.from_dict(cand["subnet"])
        assert {sub.mlp_dims[b] for b in sub.kept_layers} == {256}, cand["subnet"]
    from supersam.stages.export import ExportConfig, export

    best = tmp_path / "hf" / "best_subnet.json"
    out = export(ExportConfig(supernet=str(supernet_path), subnet=str(best), out=str(tmp_path / "model"), format="hf"))
    assert json.loads((out / "hf" / "config.json").read_text())["vision_config"]["mlp_dim"] == 256
    # the unrestricted space's smallest subnet (311,139 params) is below the restricted one's
    code, err = run_cli(
        [
            "search",
            "--params",
            params,
            "--min-miou",
            "0.0",
            "--max-params",
            "400k",
            "--hf-compatible",
            "--out",
            str(tmp_path / "small"),
        ],
        monkeypatch,
        capsys,
    )
    assert code == 1 and "below the smallest subnet of this space" in err and "Traceback" not in err
