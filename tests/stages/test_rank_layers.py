"""`supersam rank-layers`: few-shot block importance, greedy curve and prunable-set rules."""

from __future__ import annotations

import json
import sys

import mlflow
import pytest
import torch
import yaml
from torch import nn

from supersam.artifacts.records import LayerRanking
from supersam.data import DataConfig, prepare_split
from supersam.measure.scoring import run_eval
from supersam.model.sam import build_sam_model
from supersam.runtime.errors import ConfigError
from supersam.schema import ModelConfig, TrackingConfig
from supersam.stages.rank_layers import (
    RankLayersConfig,
    _BlockSkipper,
    choose_prunable,
    drop_probabilities,
    greedy_curve,
    rank_layers,
)

OFF = TrackingConfig(enabled=False)
TINY = ModelConfig(type="tiny", img_size=128)


def fake_evaluate(importance: list[float], block_params: int = 100):
    """Additive synthetic measurement: each removed block costs its importance."""

    def evaluate(dropped):
        miou = 0.9 - sum(importance[b] for b in dropped)
        return {"params": 10_000 - block_params * len(dropped), "miou": miou, "miou_oracle": miou + 0.01}

    return evaluate


def test_rules_never_pick_block_0_and_follow_the_curve(tmp_path):
    # block 0 looks *least* important here (e.g. random init): it must still never be chosen
    importance = [-0.05, 0.01, 0.002, 0.2, 0.1, 0.003, 0.004, 0.3, 0.15, 0.005, 0.12, 0.25]
    evaluate = fake_evaluate(importance)
    cfg = RankLayersConfig(out=str(tmp_path / "count"), drop_prob="importance")
    ranking = rank_layers(cfg, TINY, None, OFF, evaluate=evaluate)
    assert ranking.prunable == [1, 2, 5, 6, 9]  # the paper's set, by construction
    assert len(ranking.importance) == 12 and ranking.importance[0] == pytest.approx(-0.05)
    probs = dict(zip(ranking.prunable, ranking.drop_probs))
    assert probs[2] == 0.9 and probs[1] == 0.1 and all(0.1 <= p <= 0.9 for p in probs.values())
    assert probs[5] > probs[6] > probs[9]  # less important -> dropped more often
    curve = ranking.curve
    assert [p["removed"] for p in curve[1:6]] == [2, 5, 6, 9, 1] and len(curve) == 12
    assert all(0 not in p["dropped"] for p in curve)
    # 1 baseline + 12 single removals + steps 2..11 (10 + 9 + ... + 1 candidates)
    assert ranking.n_evaluations == 1 + 12 + 55
    budget = choose_prunable(curve, "budget", 0, 0.1, "miou")
    assert budget == (1, 2, 5, 6, 9)  # adding block 4 (0.1) would cost 0.124 > 0.1
    assert choose_prunable(curve, "budget", 0, 0.13, "miou") == (1, 2, 4, 5, 6, 9)
    assert choose_prunable(curve, "budget", 0, 0.0, "miou") == ()
    assert drop_probabilities(importance, (1, 2), "0.3") == (0.3, 0.3)
    assert drop_probabilities([0.0, 0.1, 0.1], (1, 2), "importance") == (0.5, 0.5)


def interacting_evaluate(table: dict[frozenset, float]):
    """A hand-made importance table: the mIoU of each removed set (non-additive on purpose)."""

    def evaluate(dropped):
        return {"params": 1000 - 10 * len(dropped), "miou": table[frozenset(dropped)], "miou_oracle": 0.0}

    return evaluate


def test_greedy_curve_reevaluates_every_remaining_block_after_each_removal():
    # Alone, block 1 costs least (0.79) and block 3 most (0.70); but once 1 is removed,
    # block 3 becomes harmless (0.78) and 2 costly (0.50): drop-one order would take 2 next.
    table = {
        frozenset(): 0.80,
        frozenset({1}): 0.79,
        frozenset({2}): 0.75,
        frozenset({3}): 0.70,
        frozenset({1, 2}): 0.50,
        frozenset({1, 3}): 0.78,
        frozenset({2, 3}): 0.60,
        frozenset({1, 2, 3}): 0.40,
    }
    evaluate = interacting_evaluate(table)
    curve = greedy_curve(evaluate, [1, 2, 3], evaluate(()))
    assert [p["removed"] for p in curve[1:]] == [1, 3, 2]
    assert [p["miou"] for p in curve] == [0.80, 0.79, 0.78, 0.40]
    assert [[c["block"] for c in p["candidates"]] for p in curve[1:]] == [[1, 2, 3], [2, 3], [2]]
    assert [c["miou"] for c in curve[2]["candidates"]] == [0.50, 0.78]
    for point in curve[1:]:  # each step's choice is the best remaining candidate
        assert point["miou"] == max(c["miou"] for c in point["candidates"])
    # budget: stop before the first step that costs more than the budget
    assert choose_prunable(curve, "budget", 0, 0.05, "miou") == (1, 3)
    # ... even when a later step recovers within the budget (greedy removal has stopped there)
    dip = {
        frozenset(): 0.80,
        frozenset({1}): 0.79,
        frozenset({2}): 0.70,
        frozenset({3}): 0.60,
        frozenset({1, 2}): 0.60,
        frozenset({1, 3}): 0.65,
        frozenset({2, 3}): 0.50,
        frozenset({1, 2, 3}): 0.78,
    }
    dip_curve = greedy_curve(interacting_evaluate(dip), [1, 2, 3], interacting_evaluate(dip)(()))
    assert [p["miou"] for p in dip_curve] == [0.80, 0.79, 0.65, 0.78]
    assert choose_prunable(dip_curve, "budget", 0, 0.05, "miou") == (1,)
    assert choose_prunable(curve, "count", 1, 0.0, "miou") == (1,)
    # ties go to the lower block index
    flat = interacting_evaluate({k: 0.5 for k in table})
    assert [p["removed"] for p in greedy_curve(flat, [3, 1, 2], flat(()))[1:]] == [1, 2, 3]


def test_bad_params_are_one_line_config_errors(tmp_path):
    evaluate = fake_evaluate([0.0] * 12)
    for cfg, message in (
        (RankLayersConfig(n_prunable=12), "rank_layers.n_prunable is 12; use 0..11"),
        (RankLayersConfig(drop_prob="often"), "rank_layers.drop_prob is 'often'"),
        (RankLayersConfig(rule="all"), "rank_layers.rule is 'all'"),
        (RankLayersConfig(metric="dice"), "metric is 'dice'; use single"),
    ):
        with pytest.raises(ConfigError, match=message):
            rank_layers(cfg, TINY, None, OFF, evaluate=evaluate)


def test_skipping_block_0_equals_a_sam_without_it(shared_data):
    torch.manual_seed(0)
    data = DataConfig(root=str(shared_data / "isbi2012_em"), patch=256, max_objects=4)
    inputs = prepare_split(data, "val", 128, n_images=1)
    plain = build_sam_model("tiny")
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    plain.image_encoder.blocks[0] = nn.Identity()
    expected = run_eval(plain, inputs, torch.device("cpu"))["miou"]
    model = build_sam_model("tiny")
    model.load_state_dict(state)
    skipper = _BlockSkipper(model, "tiny")
    skipper.set_active_subnet(skipper.subnet((0,)))
    assert run_eval(skipper.sam, inputs, torch.device("cpu"))["miou"] == pytest.approx(expected, abs=1e-6)
    assert skipper.params(skipper.active_subnet) == 712_931 - 50_432


def test_cli_ranks_every_block_on_real_data(shared_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "rank"
    params = {
        "model": {"type": "tiny", "img_size": 128},
        "data": {"root": str(shared_data / "isbi2012_em"), "patch": 256, "max_objects": 4},
        "rank_layers": {"n_images": 2, "out": str(out), "device": "cpu", "n_prunable": 4},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    from supersam.cli.main import main

    monkeypatch.setattr(sys, "argv", ["supersam", "rank-layers", "--params", str(tmp_path / "params.yaml")])
    with pytest.raises(SystemExit) as exit_info:
        main(restore_signals=True)
    assert exit_info.value.code == 0, capsys.readouterr().err
    ranking = LayerRanking.load(out / "ranking.json")
    assert len(ranking.importance) == 12 and len(ranking.single) == 12
    assert len(ranking.prunable) == 4 and 0 not in ranking.prunable and ranking.drop_probs == [0.5] * 4
    assert ranking.n_images == 2 and ranking.pretrained is False and ranking.model_type == "tiny"
    curve = ranking.curve
    params = [p["params"] for p in curve]
    assert params[0] == 712_931 and all(a > b for a, b in zip(params, params[1:])) and len(curve) == 12
    assert sorted(curve[4]["dropped"]) == ranking.prunable
    for block, single in enumerate(ranking.single):
        assert single["block"] == block
        assert single["importance"] == pytest.approx(ranking.baseline_miou - single["miou"])
        assert 0.0 <= single["miou"] <= 1.0
    importance = json.loads((out / "importance.json").read_text())
    assert [p["block"] for p in importance] == list(range(12))
    assert [p["miou_drop"] for p in importance] == ranking.importance
    steps = json.loads((out / "curve.json").read_text())
    assert [p["params"] for p in steps] == params
    for step in steps[1:]:  # curve.json: every candidate of every greedy step, the chosen one the best
        best = max(step["candidates"], key=lambda c: (c["miou"], -c["block"]))
        assert step["removed"] == best["block"] and step["miou"] == best["miou"]
        assert len(step["candidates"]) == 12 - step["step"]
    for name in ("importance.png", "curve.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("supersam").experiment_id])[0]
    assert run.data.tags["stage"] == "rank-layers" and run.data.tags["pretrained"] == "false"
    assert run.data.metrics["n_prunable"] == 4
