"""`supersam compare`: Table I with ratios to `none`, Fig. 4 (same subnets in every variant), Fig. 5, seeds."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_cli

from supersam.artifacts.records import TABLE1_TO_TARGET, SearchFrontier, SupernetMeta, Table1Row
from supersam.model.checkpoint import save_supernet
from supersam.model.elastic import SuperSam
from supersam.model.sam import build_sam_model
from supersam.model.space import SearchSpace
from supersam.runtime.errors import ConfigError, DataError
from supersam.runtime.plots import plot_frontiers
from supersam.stages.compare import (
    CompareConfig,
    check_comparable,
    sample_subnets,
    summarize,
    table1,
    table1_markdown,
)
from supersam.tools.compare_seeds import experiments_from_dvc, seeds_markdown, summarize_seeds

ROW = {
    "iterations": 24,
    "target_miou": 0.7,
    "target_miou_setting": "0.98x",
    "target_every": 1,
    "energy_method": "estimate",
    "miou_min": 0.69,
    "metric": "single",
}


def _typed(rows: dict[str, dict]) -> dict[str, Table1Row]:
    return {v: Table1Row(**row) for v, row in rows.items()}


def test_table1_ratios_to_none_and_markdown():
    rows = {
        "none": {
            **ROW,
            "iterations_to_target": 8,
            "seconds_to_target": 20.0,
            "energy_kwh_to_target": 4e-4,
            "co2_kg_to_target": 1.748e-4,
        },
        "wanda": {
            **ROW,
            "iterations_to_target": 2,
            "seconds_to_target": 5.0,
            "energy_kwh_to_target": 1e-4,
            "co2_kg_to_target": 0.437e-4,
        },
        "magnitude": {
            **ROW,
            "iterations_to_target": None,
            "seconds_to_target": None,
            "energy_kwh_to_target": None,
            "co2_kg_to_target": None,
        },
    }
    table = table1(_typed(rows))
    assert table["reference"] == "none"
    assert table["variants"]["wanda"]["ratio_to_none"] == pytest.approx(
        {
            "iterations_to_target": 0.25,
            "seconds_to_target": 0.25,
            "energy_kwh_to_target": 0.25,
            "co2_kg_to_target": 0.25,
        }
    )
    assert table["variants"]["none"]["ratio_to_none"]["iterations_to_target"] == 1.0
    assert set(table["variants"]["magnitude"]["ratio_to_none"].values()) == {None}
    text = table1_markdown(table)
    assert "| wanda | 2 | 5.0 | 0.0001 | 4.37e-05 | 0.25 / 0.25 / 0.25 | 0.7000 (0.98x) | 0.6900 | estimate |" in text
    assert "| magnitude | not reached in 24 | - |" in text and "probed every 1 iteration(s)" in text
    assert (
        table1(_typed({"wanda": rows["wanda"]}))["variants"]["wanda"]["ratio_to_none"]["iterations_to_target"] is None
    )
    # `none` met the target before training: no ratio, and the table says why instead of "-"
    rows["none"].update(iterations_to_target=0, seconds_to_target=0.0, energy_kwh_to_target=0.0)
    assert "| wanda | 2 | 5.0 | 0.0001 | 4.37e-05 | n/a (none: 0) / n/a (none: 0) / n/a (none: 0) |" in table1_markdown(
        table1(_typed(rows))
    )


def test_paired_summary_against_none():
    summary = summarize({"none": [0.5, 0.6, 0.7], "wanda": [0.55, 0.6, 0.72]})
    assert summary["none"] == pytest.approx({"mean": 0.6, "median": 0.6, "std": 0.1, "min": 0.5, "max": 0.7, "n": 3})
    assert summary["wanda"]["mean_diff_to_none"] == pytest.approx((0.05 + 0.0 + 0.02) / 3)
    assert summary["wanda"]["wins_over_none"] == 2 and "wins_over_none" not in summary["none"]


def _exp_show(seed_metrics: dict[int, dict], lr: dict[int, float] | None = None) -> list[dict]:
    """`dvc exp show --json` as DVC 3 writes it: the workspace, the commit and its experiments."""

    def entry(rev, name, seed, metrics):
        train = {"seed": seed, "lr": (lr or {}).get(seed, 3e-5)}
        return {
            "rev": rev,
            "name": name,
            "data": {
                "rev": rev,
                "params": {"params.yaml": {"data": {"train": train, "variants": ["none", "wanda"]}}},
                "metrics": {"outputs/compare/metrics.json": {"data": metrics}},
            },
        }

    (s0, m0), *rest = seed_metrics.items()
    workspace = {**entry("workspace", None, s0, m0), "experiments": None}
    commit = {
        **entry("abc123", "main", s0, m0),
        "experiments": [{"name": f"exp-{s}", "revs": [entry(f"rev{s}", f"exp-{s}", s, m)]} for s, m in rest],
    }
    return [workspace, commit]  # the commit's figures equal the workspace's: counted once


def test_seed_summary_from_dvc_experiments():
    metrics = {
        0: {"iterations_to_target_wanda": 4, "subnet_miou_mean_wanda": 0.70, "iterations_to_target_none": None},
        1: {"iterations_to_target_wanda": 6, "subnet_miou_mean_wanda": 0.72, "iterations_to_target_none": 9},
        2: {"iterations_to_target_wanda": 8, "subnet_miou_mean_wanda": 0.74, "iterations_to_target_none": 11},
    }
    runs = experiments_from_dvc(_exp_show(metrics))
    assert [r["seed"] for r in runs] == [0, 1, 2]
    summary = summarize_seeds(runs)
    wanda = summary["figures"]["iterations_to_target_wanda"]
    assert wanda["mean"] == 6 and wanda["std"] == pytest.approx(2.0) and wanda["n"] == 3
    none = summary["figures"]["iterations_to_target_none"]
    assert none["values"] == [9, 11] and none["n"] == 2  # a run that missed the target adds no value
    assert summary["figures"]["subnet_miou_mean_wanda"]["std"] == pytest.approx(statistics.stdev([0.70, 0.72, 0.74]))
    text = seeds_markdown(summary, ["none", "wanda"])
    assert "| wanda | 6.0 +- 2.0 (n=3) | - | - | 0.7200 +- 0.0200 (n=3) | - |" in text
    assert "3 runs (train.seed 0, 1, 2)" in text
    with pytest.raises(Exception, match="no run with outputs/compare/metrics.json"):
        summarize_seeds([])
    # an experiment of the workspace's seed (re-run: other timings) replaces the workspace run
    rerun = _exp_show({0: metrics[0], 1: metrics[1], 2: metrics[2]})
    rerun[1]["experiments"].append(
        {
            "name": "exp-0",
            "revs": [
                {
                    "rev": "rev0",
                    "name": "exp-0",
                    "data": {
                        **rerun[0]["data"],
                        "rev": "rev0",
                        "metrics": {
                            "outputs/compare/metrics.json": {"data": {**metrics[0], "seconds_to_target_wanda": 9.9}}
                        },
                    },
                }
            ],
        }
    )
    runs = experiments_from_dvc(rerun)
    assert [(r["name"], r["seed"]) for r in runs] == [("exp-0", 0), ("exp-1", 1), ("exp-2", 2)]
    # runs that differ in more than the seed are not averaged
    with pytest.raises(ConfigError, match="differ in train.lr, not only in train.seed"):
        experiments_from_dvc(_exp_show(metrics, lr={2: 1e-4}))
    with pytest.raises(ConfigError, match="not `dvc exp show --json` output"):
        experiments_from_dvc({"workspace": {}})


def test_sampled_subnets_are_distinct_and_seeded():
    space = SearchSpace.for_arch("tiny", mlp_dim_choices=(64, 128, 256))
    a, b = sample_subnets(space, 20, 0), sample_subnets(space, 20, 0)
    assert a == b and len({json.dumps(s.to_dict()) for s in a}) == 20
    assert sample_subnets(space, 20, 1) != a
    for s in a:
        space.validate(s)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """outputs/ of a pipeline with two variants of one tiny supernet (identical weights)."""
    root = tmp_path_factory.mktemp("project")
    space = SearchSpace.for_arch("tiny", mlp_dim_choices=(64, 128, 256))
    for variant, its in (("none", 6), ("wanda", 3), ("magnitude", 6)):
        # `magnitude` here is a copy of none's weights (variants must be registered names; the test needs a twin)
        torch.manual_seed({"none": 0, "wanda": 1, "magnitude": 0}[variant])
        supernet = SuperSam(build_sam_model("tiny"), space)
        save_supernet(
            root / f"outputs/train/{variant}/supernet.pt", supernet, SupernetMeta("tiny", 128, False, variant)
        )
        (root / f"outputs/train/{variant}/table1.json").write_text(
            json.dumps(
                {
                    **ROW,
                    "iterations_to_target": its,
                    "seconds_to_target": 2.0 * its,
                    "energy_kwh_to_target": 1e-5 * its,
                    "co2_kg_to_target": 0.437e-5 * its,
                }
            )
        )
        (root / f"outputs/search/{variant}").mkdir(parents=True)
        (root / f"outputs/search/{variant}/metrics.json").write_text(json.dumps({"metric": "single"}))
        (root / f"outputs/search/{variant}/pareto.json").write_text(
            json.dumps(
                [
                    {"params": 400_000, "miou": 0.1, "miou_oracle": 0.2},
                    {"params": 600_000, "miou": 0.2, "miou_oracle": 0.3},
                ]
            )
        )
    return root


def test_compare_cli_writes_table1_fig4_fig5(project, shared_data, monkeypatch, capsys):
    monkeypatch.chdir(project)
    params = {
        "variants": ["none", "wanda", "magnitude"],
        "data": {"root": str(shared_data / "isbi2012_em"), "patch": 256},
        "compare": {"n_subnets": 4, "n_images": 1, "device": "cpu"},
        "mlflow": {"enabled": False},
    }
    Path("params.yaml").write_text(yaml.safe_dump(params))
    code, err = run_cli(["compare"], monkeypatch, capsys)
    assert code == 0, err
    out = project / "outputs/compare"
    table = json.loads((out / "table1.json").read_text())
    assert table["variants"]["wanda"]["ratio_to_none"]["iterations_to_target"] == pytest.approx(0.5)
    subnets = json.loads((out / "subnets.json").read_text())
    assert set(subnets) >= {"subnets", "miou", "params"} and len(subnets["subnets"]) == 4
    assert set(subnets["miou"]) == {"none", "wanda", "magnitude"} and len(subnets["params"]) == 4
    # each variant's own supernet: other weights, other mIoUs; the same weights, the same mIoUs
    assert subnets["miou"]["none"] == subnets["miou"]["magnitude"] != subnets["miou"]["wanda"]
    assert subnets["summary"]["magnitude"]["mean_diff_to_none"] == 0 and subnets["n_objects"] > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iterations_to_target_wanda"] == 3 and metrics["n_subnets"] == 4
    assert "| wanda | 3 |" in (out / "table1.md").read_text()
    for name in ("fig4.png", "fig5.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    # runs under another metric are not compared
    code, err = run_cli(["compare", "--set", "metric=oracle", "--out", "o"], monkeypatch, capsys)
    assert code == 1 and "outputs/train/none was trained with metric 'single', compare runs with 'oracle'" in err
    # a variant that was never trained: one line naming the missing file, nothing written
    Path("params.yaml").write_text(yaml.safe_dump({**params, "variants": ["none", "taylor"]}))
    code, err = run_cli(["compare", "--out", "elsewhere"], monkeypatch, capsys)
    assert code == 1 and "outputs/train/taylor/table1.json is missing" in err and "Traceback" not in err
    assert not Path("elsewhere").exists()


def test_table1_row_round_trips_and_refuses_foreign_keys(tmp_path):
    metrics = {**ROW, "iterations_to_target": 3, "seconds_to_target": 6.0, "miou_max": 0.9, "history": [1, 2]}
    row = Table1Row.from_metrics(metrics)
    assert row.iterations_to_target == 3 and row.target_miou == 0.7 and not hasattr(row, "miou_max")
    path = row.save(tmp_path / "table1.json")
    assert Table1Row.load(path) == row
    assert list(json.loads(path.read_text()))[:4] == list(TABLE1_TO_TARGET)  # the paper's columns first
    path.write_text(json.dumps({**row.to_dict(), "iterations_to_targte": 3}))
    with pytest.raises(DataError, match="'iterations_to_targte', which is not a Table I field"):
        Table1Row.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match="is not a JSON object"):
        Table1Row.load(path)


def _search(folder: Path, pareto_x: str | None, points: list[dict]) -> SearchFrontier:
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {"metric": "single"} | ({"pareto_x": pareto_x} if pareto_x else {})
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "pareto.json").write_text(json.dumps(points))
    return SearchFrontier.load(folder)


def test_fig5_is_drawn_on_the_axis_the_searches_built_their_frontiers_on(tmp_path):
    """A frontier built on latency is not one on params: compare draws Fig. 5 on search.pareto_x,
    refuses variants searched on different axes, and reads older searches (no pareto_x) as params."""
    point = {"params": 400_000, "macs": 2_000_000, "latency_ms": 3.5, "miou": 0.1}
    cfg = CompareConfig()
    rows = {"none": Table1Row(**ROW), "wanda": Table1Row(**ROW)}
    old = _search(tmp_path / "old", None, [point])
    assert old.pareto_x == "params" and old.points == [point]
    lat = {v: _search(tmp_path / v, "latency", [point]) for v in rows}
    assert check_comparable(cfg, rows, lat) == "latency"
    mixed = {"none": lat["none"], "wanda": _search(tmp_path / "m", "macs", [point])}
    with pytest.raises(ConfigError, match="Pareto frontiers are on different axes"):
        check_comparable(cfg, rows, mixed)
    with pytest.raises(DataError, match="pareto_x 'flops'"):
        _search(tmp_path / "bad", "flops", [point])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = []
    real_step = matplotlib.axes.Axes.step

    def spy(self, xs, ys, *args, **kwargs):
        drawn.append((list(xs), self.get_xlabel()))
        return real_step(self, xs, ys, *args, **kwargs)

    matplotlib.axes.Axes.step = spy
    try:
        plot_frontiers(tmp_path / "fig5.png", {v: s.points for v, s in lat.items()}, "miou", x="latency")
        plot_frontiers(tmp_path / "fig5m.png", {"none": [point]}, "miou", x="macs")
    finally:
        matplotlib.axes.Axes.step = real_step
        plt.close("all")
    assert [xs for xs, _ in drawn] == [[3.5], [3.5], [0.002]]  # ms, ms, GMACs: never params
    assert (tmp_path / "fig5.png").read_bytes()[:4] == b"\x89PNG"
