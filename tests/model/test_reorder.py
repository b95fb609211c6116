"""MLP reordering criteria: hand-computed Wanda scores, rank/score combination, function preservation."""

from __future__ import annotations

import pytest
import torch
from conftest import coco_images
from segment_anything.modeling.common import MLPBlock
from torch import nn

from supersam.model.activation_stats import CalibrationStats, SquaredNormAccumulator, collect_mlp_sq_norms
from supersam.model.reorder import (
    VARIANTS,
    UnitScores,
    combine_scores,
    magnitude_scores,
    permute_mlp_,
    ranks,
    register_variant,
    reorder_sam,
    unit_order,
    wanda_scores,
)
from supersam.model.sam import build_sam_model
from supersam.model.taylor import disturbed_taylor_importance
from supersam.runtime.errors import ConfigError


def stats_for(
    sam: nn.Module, images: list[torch.Tensor], model_type: str = "tiny", taylor: bool = False
) -> CalibrationStats:
    blocks, n_tokens = collect_mlp_sq_norms(sam, images, batch_size=2)
    if not taylor:
        return CalibrationStats(
            "wanda", model_type, sam.image_encoder.img_size, False, "", "-", len(images), n_tokens, blocks
        )
    importance = disturbed_taylor_importance(sam, images, noise_std=0.01, seed=0)
    blocks = [{**b, **t} for b, t in zip(blocks, importance)]
    return CalibrationStats(
        ("wanda", "taylor"), model_type, sam.image_encoder.img_size, False, "", "-", len(images), n_tokens, blocks
    )


def one_block_model(mlp: nn.Module) -> nn.Module:
    """An encoder-shaped holder (``.blocks[0].mlp``) around one MLP."""
    holder = nn.Module()
    holder.blocks = nn.ModuleList([nn.Module()])
    holder.blocks[0].mlp = mlp
    return holder


def hand_mlp() -> MLPBlock:
    """C = 2 inputs, 3 hidden units, known weights."""
    mlp = MLPBlock(embedding_dim=2, mlp_dim=3)
    with torch.no_grad():
        mlp.lin1.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 1.0], [-3.0, 0.0]]))  # 3 x 2
        mlp.lin1.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
        mlp.lin2.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [-1.0, 0.5, -2.0]]))  # 2 x 3
    return mlp


def test_wanda_scores_by_hand():
    mlp = hand_mlp()
    acc = SquaredNormAccumulator(2)
    acc.add(torch.tensor([[3.0, 0.0], [4.0, 1.0]]))  # ||X_0|| = 5, ||X_1|| = 1
    assert acc.sum_sq.tolist() == [25.0, 1.0] and acc.n_tokens == 2
    block_stats = {"lin1": acc.sum_sq, "lin2": torch.tensor([4.0, 9.0, 2.25], dtype=torch.float64)}  # ||H|| = 2, 3, 1.5
    scores = wanda_scores(mlp, block_stats)
    # lin1 row i: sum_j |W1[i,j]| ||X_j||: 1*5 + 2*1, 0.5*5 + 1*1, 3*5 + 0*1
    assert scores.lin1.tolist() == [7.0, 3.5, 15.0]
    # lin2 column i: ||H_i|| * sum_k |W2[k,i]|: 2*(1+1), 3*(0+0.5), 1.5*(2+2)
    assert scores.lin2.tolist() == [4.0, 1.5, 6.0]
    mag = magnitude_scores(mlp, None)
    assert mag.lin1.tolist() == [3.0, 1.5, 3.0] and mag.lin2.tolist() == [2.0, 0.5, 4.0]

    stats = CalibrationStats("wanda", "hand", 0, False, "", "-", 1, 2, [block_stats])
    w1, b1, w2 = mlp.lin1.weight.clone(), mlp.lin1.bias.clone(), mlp.lin2.weight.clone()
    orders = reorder_sam(one_block_model(mlp), "wanda", stats, combine="rank")
    assert orders[0].tolist() == [2, 0, 1]  # ranks lin1 (1, 0, 2) + lin2 (1, 0, 2)
    assert torch.equal(mlp.lin1.weight, w1[[2, 0, 1]]) and torch.equal(mlp.lin1.bias, b1[[2, 0, 1]])
    assert torch.equal(mlp.lin2.weight, w2[:, [2, 0, 1]])
    permuted_stats = {"lin1": block_stats["lin1"], "lin2": block_stats["lin2"][[2, 0, 1]]}
    assert wanda_scores(mlp, permuted_stats).lin1.tolist() == [15.0, 7.0, 3.5]  # descending rows


def test_ranks_average_ties_and_combinations_differ():
    assert ranks(torch.tensor([1.0, 3.0, 1.0, 2.0])).tolist() == [0.5, 3.0, 0.5, 2.0]
    scores = UnitScores(torch.tensor([10.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 2.0]))
    assert combine_scores(scores, "rank").tolist() == [1.0, 0.5, 1.5]
    assert combine_scores(scores, "score").tolist() == [5.0, 0.5, 1.5]
    assert unit_order(combine_scores(scores, "rank")).tolist() == [2, 0, 1]
    assert unit_order(combine_scores(scores, "score")).tolist() == [0, 2, 1]
    assert unit_order(torch.tensor([1.0, 2.0, 1.0, 2.0])).tolist() == [1, 3, 0, 2]  # stable
    with pytest.raises(ConfigError, match="unknown score combination 'mean'"):
        combine_scores(scores, "mean")


def test_permute_keeps_parameter_identity():
    mlp = hand_mlp()
    ids = [id(p) for p in mlp.parameters()]
    permute_mlp_(mlp, torch.tensor([1, 2, 0]))
    assert [id(p) for p in mlp.parameters()] == ids
    assert mlp.lin1.bias.tolist() == pytest.approx([0.2, 0.3, 0.1])


@pytest.mark.parametrize(
    "variant,combine",
    [
        ("none", "rank"),
        ("magnitude", "rank"),
        ("wanda", "rank"),
        ("wanda", "score"),
        ("taylor", "rank"),
        ("taylor", "score"),
    ],
)
def test_tiny_reordering_preserves_function(shared_data, variant, combine):
    sam = build_sam_model("tiny")
    images = coco_images(shared_data, "val", sam.image_encoder.img_size, 3)
    stats = stats_for(sam, images, taylor=variant == "taylor")
    batch = torch.stack(images)
    with torch.inference_mode():
        before = sam.image_encoder(batch)
    state = {k: v.clone() for k, v in sam.state_dict().items()}
    orders = reorder_sam(sam, variant, stats, combine)
    with torch.inference_mode():
        after = sam.image_encoder(batch)
    assert len(orders) == 12 and all(o.numel() == 256 for o in orders)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    changed = [k for k, v in sam.state_dict().items() if not torch.equal(v, state[k])]
    if variant == "none":
        assert changed == [] and all(torch.equal(o, torch.arange(256)) for o in orders)
    else:
        assert all(".mlp.lin1." in k or ".mlp.lin2.weight" in k for k in changed) and len(changed) == 36
        # the reordered model's own scores now come out sorted
        for i, block in enumerate(sam.image_encoder.blocks):
            block_stats = {"lin1": stats.blocks[i]["lin1"], "lin2": stats.blocks[i]["lin2"][orders[i]]}
            if variant == "taylor":  # per-unit statistics: they follow their units
                block_stats = {k: stats.blocks[i][k][orders[i]] for k in ("taylor_lin1", "taylor_lin2")}
            combined = combine_scores(VARIANTS[variant].score(block.mlp, block_stats), combine)
            assert torch.all(combined[:-1] >= combined[1:])


def test_vit_b_256_wanda_reordering_preserves_function(shared_data):
    torch.manual_seed(0)
    sam = build_sam_model("vit_b", 256)
    images = coco_images(shared_data, "val", sam.image_encoder.img_size, 2)
    stats = stats_for(sam, images, "vit_b")
    with torch.inference_mode():
        before = sam.image_encoder(images[0][None])
    orders = reorder_sam(sam, "wanda", stats)
    with torch.inference_mode():
        after = sam.image_encoder(images[0][None])
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert all(o.numel() == 3072 for o in orders)
    assert sum(int((o != torch.arange(3072)).sum()) for o in orders) > 0.99 * 12 * 3072


def test_bad_inputs_are_one_line_config_errors(shared_data):
    sam = build_sam_model("tiny")
    with pytest.raises(
        ConfigError, match="unknown reordering variant 'random'; use one of none, magnitude, wanda, taylor"
    ):
        reorder_sam(sam, "random")
    with pytest.raises(ConfigError, match="needs calibration stats"):
        reorder_sam(sam, "wanda", None)
    stats = stats_for(sam, coco_images(shared_data, "val", sam.image_encoder.img_size, 1))
    short = CalibrationStats(**{**stats.__dict__, "blocks": stats.blocks[:5]})
    with pytest.raises(ConfigError, match="stats have 5 blocks, the model 12"):
        reorder_sam(sam, "wanda", short)
    wrong = CalibrationStats(
        **{**stats.__dict__, "blocks": [{"lin1": b["lin1"], "lin2": b["lin2"][:100]} for b in stats.blocks]}
    )
    with pytest.raises(ConfigError, match=r"block 0 do not fit its MLP \(lin2: expected 256 features\)"):
        reorder_sam(sam, "wanda", wrong)
    other_kind = CalibrationStats(**{**stats.__dict__, "criteria": ("taylor",)})
    with pytest.raises(ConfigError, match="needs wanda stats, the calibration stats hold taylor only"):
        reorder_sam(sam, "wanda", other_kind)
    with pytest.raises(
        ConfigError,
        match=r"variant taylor needs taylor stats, the calibration stats hold wanda only; "
        r"rerun `supersam calibrate` with taylor in calibrate.criteria",
    ):
        reorder_sam(sam, "taylor", stats)
    no_taylor_values = CalibrationStats(**{**stats.__dict__, "criteria": ("wanda", "taylor")})
    with pytest.raises(ConfigError, match=r"block 0 do not fit its MLP \(taylor_lin1: expected 256 features\)"):
        reorder_sam(sam, "taylor", no_taylor_values)


def test_registry_accepts_a_new_variant():
    @register_variant("reverse-index")
    def reverse(mlp, block_stats):
        """Test variant: later units first."""
        idx = torch.arange(mlp.lin1.out_features, dtype=torch.float64)
        return UnitScores(idx, idx)

    try:
        mlp = hand_mlp()
        assert reorder_sam(one_block_model(mlp), "reverse-index")[0].tolist() == [2, 1, 0]
        assert VARIANTS["reverse-index"].description == "Test variant: later units first."
    finally:
        VARIANTS.pop("reverse-index")
