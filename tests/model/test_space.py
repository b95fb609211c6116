"""Search space: defaults, validation, sampling, size, and the analytic params/MACs.

Device-agnostic: everything here runs on the meta device or CPU (no kernels
that differ per device).
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from supersam.model.elastic import SuperSam
from supersam.model.sam import build_sam_model, count_params
from supersam.model.space import SearchSpace, SubnetConfig, subnet_macs, subnet_params
from supersam.runtime.errors import ConfigError

VIT_B = SearchSpace.for_arch("vit_b")
TINY = SearchSpace.for_arch("tiny")
DROP5 = SubnetConfig.from_mlp_dims([3072, 0, 0, 3072, 3072, 0, 0, 3072, 3072, 0, 3072, 3072])
DESIGN_EXAMPLE = {
    "kept_layers": [0, 3, 4, 7, 8, 10, 11],
    "mlp_dims": [3072, 0, 0, 768, 1536, 0, 0, 2304, 768, 0, 3072, 1020],
}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_paper_defaults_and_scaled_mlp_dims():
    assert VIT_B.prunable == (1, 2, 5, 6, 9) and VIT_B.drop_probs == (0.5,) * 5
    assert VIT_B.mlp_dim_choices == (768, 1020, 1536, 2304, 3072)
    assert TINY.mlp_dim_choices == (64, 85, 128, 192, 256)
    assert SearchSpace.for_arch("vit_l").mlp_dim_choices == (1024, 1360, 2048, 3072, 4096)
    custom = SearchSpace.for_arch("tiny", prunable=[9, 1], drop_probs=[0.9, 0.1], mlp_dim_choices=[128, 256])
    assert custom.prunable == (1, 9) and custom.drop_probs == (0.1, 0.9)  # sorted together


def test_known_vit_b_param_counts_at_1024():
    assert subnet_params("vit_b", 1024, VIT_B.max_subnet()) == 93_735_472
    assert subnet_params("vit_b", 1024, DROP5) == 58_253_232
    assert VIT_B.min_subnet() == SubnetConfig.from_mlp_dims([3072, 0, 0, 768, 768, 0, 0, 768, 768, 0, 768, 768])
    assert subnet_params("vit_b", 1024, VIT_B.min_subnet()) == 37_005_744


def _measured_macs(sam: torch.nn.Module, img_size: int) -> int:
    """FlopCounterMode MACs of one image + one point prompt (meta tensors allowed for the encoder/decoder)."""
    device = sam.image_encoder.patch_embed.proj.weight.device
    D, G = sam.prompt_encoder.embed_dim, img_size // 16
    with FlopCounterMode(display=False) as counter:
        emb = sam.image_encoder(torch.zeros(1, 3, img_size, img_size, device=device))
        if device.type == "meta":  # prompt encoder indexing has no meta kernel: 2 coords x 2 x D/2 MACs
            sparse, dense = torch.zeros(1, 2, D, device=device), torch.zeros(1, D, G, G, device=device)
            extra = 2 * D
        else:
            points = (torch.tensor([[[10.0, 20.0]]]), torch.ones(1, 1))
            sparse, dense = sam.prompt_encoder(points=points, boxes=None, masks=None)
            extra = 0
        sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense, False)
    return counter.get_total_flops() // 2 + extra


@pytest.mark.parametrize("model_type,img_size", [("vit_b", 1024), ("vit_b", 256), ("vit_l", 512)])
def test_analytic_counts_match_meta_built_subnets(model_type, img_size):
    with torch.device("meta"):
        supernet = SuperSam(build_sam_model(model_type, img_size), SearchSpace.for_arch(model_type))
    gen = torch.Generator().manual_seed(3)
    cfgs = [supernet.space.max_subnet(), supernet.space.min_subnet(), supernet.space.sample(gen)]
    for cfg in cfgs:
        supernet.set_active_subnet(cfg)
        sub = supernet.get_active_subnet()
        assert count_params(sub) == subnet_params(model_type, img_size, cfg)
        assert _measured_macs(sub, img_size) == subnet_macs(model_type, img_size, cfg)
    if (model_type, img_size) == ("vit_b", 1024):
        assert subnet_macs("vit_b", 1024, cfgs[0]) == 487_851_018_752


@pytest.mark.parametrize("img_size", [128, 144])  # 144: 9x9 grid, mlp_dim_choices of 4 need padding
def test_analytic_macs_match_flop_counter_on_tiny_subnets(img_size):
    with torch.device("meta"):
        supernet = SuperSam(build_sam_model("tiny", img_size), TINY)
    gen = torch.Generator().manual_seed(img_size)
    for kind in ("max", "min", "random", "random", "random", "random"):
        cfg = supernet.sample_active_subnet(kind, gen)
        assert _measured_macs(supernet.get_active_subnet(), img_size) == subnet_macs("tiny", img_size, cfg)
    real = SuperSam(build_sam_model("tiny", img_size), TINY)  # one real run covers the prompt encoder's MACs
    real.set_active_subnet(cfg)
    assert _measured_macs(real.get_active_subnet(), img_size) == subnet_macs("tiny", img_size, cfg)


def test_size_formula_and_brute_force():
    assert VIT_B.size() == 5**6 * 6**5 == 121_500_000
    space = SearchSpace(depth=5, mlp_dim=256, prunable=(1, 3), drop_probs=(0.5, 0.5), mlp_dim_choices=(64, 128, 256))
    valid = 0
    for dims in itertools.product([0, 64, 128, 256], repeat=4):
        try:
            space.validate(SubnetConfig.from_mlp_dims((256, *dims)))
            valid += 1
        except ConfigError:
            pass
    assert valid == space.size() == 3**2 * 4**2


def test_max_min_and_seeded_sampling():
    assert TINY.max_subnet() == SubnetConfig(tuple(range(12)), (256,) * 12)
    assert TINY.min_subnet().kept_layers == (0, 3, 4, 7, 8, 10, 11)

    def draws(seed: int) -> list[SubnetConfig]:
        gen = torch.Generator().manual_seed(seed)
        return [TINY.sample(gen) for _ in range(20)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert len(set(draws(7))) > 15


def test_random_sampling_follows_theta_and_uniform_mlp_dims():
    space = SearchSpace.for_arch("tiny", drop_probs=[0.1, 0.3, 0.5, 0.7, 0.9])
    gen = torch.Generator().manual_seed(0)
    samples = [space.sample(gen) for _ in range(4000)]
    for cfg in samples[:200]:
        space.validate(cfg)
    for block, theta in zip(space.prunable, space.drop_probs):
        rate = sum(cfg.mlp_dims[block] == 0 for cfg in samples) / len(samples)
        assert abs(rate - theta) < 0.03, (block, rate, theta)
    assert all(cfg.mlp_dims[0] == 256 for cfg in samples)
    widths = [cfg.mlp_dims[i] for cfg in samples for i in (3, 4, 7, 8, 10, 11)]  # never dropped
    for w in space.mlp_dim_choices:
        assert abs(widths.count(w) / len(widths) - 0.2) < 0.02


@pytest.mark.parametrize(
    "dims,kept,match",
    [
        ([0, 256, 256, 256, 256, 256, 256, 256, 256, 256, 256, 256], None, "drops block 0"),
        ([128] + [256] * 11, None, r"slices block 0 \(mlp_dims\[0\]=128\)"),
        ([256, 256, 256, 0] + [256] * 8, None, "drops block 3, which is not prunable"),
        ([256, 256, 256, 100] + [256] * 8, None, r"mlp_dims\[3\]=100 is not an allowed MLP dim"),
        ([256] * 11, None, "mlp_dims has 11 entries but the encoder has 12 blocks"),
        ([256] * 12, [0, 1, 2], r"mlp_dims\[3\]=256 but block 3 is not in kept_layers"),
        ([256, 0] + [256] * 10, list(range(12)), r"mlp_dims\[1\]=0 but block 1 is in kept_layers"),
        ([256] * 12, [0, 2, 1] + list(range(3, 12)), "strictly ascending"),
        ([256] * 12, list(range(13)), "kept_layers entry 12 is not a block"),
    ],
)
def test_validation_names_the_offending_entry(dims, kept, match):
    cfg = SubnetConfig(tuple(kept), tuple(dims)) if kept is not None else SubnetConfig.from_mlp_dims(dims)
    with pytest.raises(ConfigError, match=match) as err:
        TINY.validate(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"prunable": [0, 1]}, "block 0 as prunable"),
        ({"prunable": [1, 12]}, "prunable block 12 does not exist"),
        ({"prunable": [1, 1]}, "repeats a block"),
        ({"prunable": [1, 2], "drop_probs": [0.5]}, "one probability per prunable block"),
        ({"drop_probs": 1.5}, "outside \\[0, 1\\]"),
        ({"mlp_dim_choices": [128, 64, 256]}, "strictly ascending"),
        ({"mlp_dim_choices": [64, 128]}, "must end with the full MLP width 256"),
    ],
)
def test_invalid_search_spaces(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SearchSpace.for_arch("tiny", **kwargs)


def test_subnet_config_json_forms(tmp_path):
    cfg = SubnetConfig.from_dict(DESIGN_EXAMPLE)
    VIT_B.validate(cfg)
    assert cfg.to_dict() == DESIGN_EXAMPLE
    path = cfg.save(tmp_path / "best_subnet.json")
    assert SubnetConfig.load(path) == cfg == SubnetConfig.load(json.dumps(DESIGN_EXAMPLE))
    assert SubnetConfig.load({**DESIGN_EXAMPLE, "miou": 0.8}) == cfg  # extra keys ignored
    with pytest.raises(ConfigError, match="inline subnet config is not valid JSON"):
        SubnetConfig.load('{"kept_layers": [0, 1,')
    with pytest.raises(ConfigError, match="is missing 'mlp_dims'"):
        SubnetConfig.load('{"kept_layers": [0]}')
    with pytest.raises(ConfigError, match="does not exist"):
        SubnetConfig.load(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match=r"mlp_dims\[1\] must be a non-negative integer"):
        SubnetConfig.load('{"kept_layers": [0], "mlp_dims": [256, -1]}')
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        SubnetConfig.load(tmp_path / "bad.json")


def test_search_space_round_trip(tmp_path):
    space = SearchSpace.for_arch("vit_b", prunable=[1, 2, 9], drop_probs=[0.2, 0.4, 0.6])
    space.save(tmp_path / "search_space.json")
    assert SearchSpace.load(tmp_path / "search_space.json") == space
    with pytest.raises(ConfigError, match="search space must be a mapping"):
        SearchSpace.from_dict({"depth": 12})


def test_cost_functions_reject_malformed_subnets():
    with pytest.raises(ConfigError, match="11 entries"):
        subnet_params("vit_b", 1024, SubnetConfig.from_mlp_dims([3072] * 11))
    with pytest.raises(ConfigError, match="not a positive multiple of 16"):
        subnet_macs("vit_b", 1000, VIT_B.max_subnet())


def test_subnet_by_kind_is_the_sandwich_rule_s_three():
    space = SearchSpace.for_arch("tiny")
    assert space.subnet("max") == space.max_subnet() and space.subnet("min") == space.min_subnet()
    assert space.subnet("random", torch.Generator().manual_seed(4)) == space.sample(torch.Generator().manual_seed(4))
    with pytest.raises(ConfigError, match="unknown subnet kind 'mid'; use one of max, min, random"):
        space.subnet("mid")
