"""Hugging Face `SamModel` checkpoints: the key map on the exact vit_b layout, loading .safetensors /
.bin / model folders through --checkpoint, and `export --format hf`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from supersam.artifacts.records import SupernetMeta
from supersam.model.checkpoint import load_model, save_supernet
from supersam.model.elastic import SuperSam
from supersam.model.hf import TIED_KEY, hf_to_sam, is_hf_state, sam_to_hf
from supersam.model.sam import build_sam, build_sam_model
from supersam.model.space import SearchSpace, SubnetConfig
from supersam.runtime.errors import CheckpointError, ConfigError
from supersam.stages.export import ExportConfig, export

pytestmark = pytest.mark.usefixtures("one_thread")


def hf_vit_b_layout() -> dict[str, tuple[int, ...]]:
    """transformers' SamModel state-dict keys and shapes for vit_b at 1024 px, written from its
    documented layout (SamVisionEncoder / SamPromptEncoder / SamMaskDecoder module names), not from our map."""
    C, D, L = 768, 256, 12
    keys: dict[str, tuple[int, ...]] = {
        "vision_encoder.patch_embed.projection.weight": (C, 3, 16, 16),
        "vision_encoder.patch_embed.projection.bias": (C,),
        "vision_encoder.pos_embed": (1, 64, 64, C),
        "vision_encoder.neck.conv1.weight": (D, C, 1, 1),
        "vision_encoder.neck.layer_norm1.weight": (D,),
        "vision_encoder.neck.layer_norm1.bias": (D,),
        "vision_encoder.neck.conv2.weight": (D, D, 3, 3),
        "vision_encoder.neck.layer_norm2.weight": (D,),
        "vision_encoder.neck.layer_norm2.bias": (D,),
        "shared_image_embedding.positional_embedding": (2, 128),
        "prompt_encoder.shared_embedding.positional_embedding": (2, 128),
        "prompt_encoder.mask_embed.conv1.weight": (4, 1, 2, 2),
        "prompt_encoder.mask_embed.conv1.bias": (4,),
        "prompt_encoder.mask_embed.layer_norm1.weight": (4,),
        "prompt_encoder.mask_embed.layer_norm1.bias": (4,),
        "prompt_encoder.mask_embed.conv2.weight": (16, 4, 2, 2),
        "prompt_encoder.mask_embed.conv2.bias": (16,),
        "prompt_encoder.mask_embed.layer_norm2.weight": (16,),
        "prompt_encoder.mask_embed.layer_norm2.bias": (16,),
        "prompt_encoder.mask_embed.conv3.weight": (D, 16, 1, 1),
        "prompt_encoder.mask_embed.conv3.bias": (D,),
        "prompt_encoder.no_mask_embed.weight": (1, D),
        "prompt_encoder.not_a_point_embed.weight": (1, D),
        **{f"prompt_encoder.point_embed.{i}.weight": (1, D) for i in range(4)},
        "mask_decoder.iou_token.weight": (1, D),
        "mask_decoder.mask_tokens.weight": (4, D),
        "mask_decoder.upscale_conv1.weight": (D, 64, 2, 2),
        "mask_decoder.upscale_conv1.bias": (64,),
        "mask_decoder.upscale_layer_norm.weight": (64,),
        "mask_decoder.upscale_layer_norm.bias": (64,),
        "mask_decoder.upscale_conv2.weight": (64, 32, 2, 2),
        "mask_decoder.upscale_conv2.bias": (32,),
        "mask_decoder.iou_prediction_head.proj_in.weight": (D, D),
        "mask_decoder.iou_prediction_head.proj_in.bias": (D,),
        "mask_decoder.iou_prediction_head.layers.0.weight": (D, D),
        "mask_decoder.iou_prediction_head.layers.0.bias": (D,),
        "mask_decoder.iou_prediction_head.proj_out.weight": (4, D),
        "mask_decoder.iou_prediction_head.proj_out.bias": (4,),
        "mask_decoder.transformer.layer_norm_final_attn.weight": (D,),
        "mask_decoder.transformer.layer_norm_final_attn.bias": (D,),
    }
    for i in range(L):
        p = f"vision_encoder.layers.{i}."
        side = 127 if i in (2, 5, 8, 11) else 27  # 2*64-1 global, 2*14-1 windowed
        keys.update(
            {
                p + "layer_norm1.weight": (C,),
                p + "layer_norm1.bias": (C,),
                p + "attn.qkv.weight": (3 * C, C),
                p + "attn.qkv.bias": (3 * C,),
                p + "attn.proj.weight": (C, C),
                p + "attn.proj.bias": (C,),
                p + "attn.rel_pos_h": (side, 64),
                p + "attn.rel_pos_w": (side, 64),
                p + "layer_norm2.weight": (C,),
                p + "layer_norm2.bias": (C,),
                p + "mlp.lin1.weight": (4 * C, C),
                p + "mlp.lin1.bias": (4 * C,),
                p + "mlp.lin2.weight": (C, 4 * C),
                p + "mlp.lin2.bias": (C,),
            }
        )
    for i in range(4):
        h = f"mask_decoder.output_hypernetworks_mlps.{i}."
        keys.update(
            {
                h + "proj_in.weight": (D, D),
                h + "proj_in.bias": (D,),
                h + "layers.0.weight": (D, D),
                h + "layers.0.bias": (D,),
                h + "proj_out.weight": (32, D),
                h + "proj_out.bias": (32,),
            }
        )

    def attn(prefix, inner):
        return (
            {prefix + f"{n}_proj.weight": (inner, D) for n in "qkv"}
            | {prefix + f"{n}_proj.bias": (inner,) for n in "qkv"}
            | {prefix + "out_proj.weight": (D, inner), prefix + "out_proj.bias": (D,)}
        )

    for i in range(2):
        t = f"mask_decoder.transformer.layers.{i}."
        keys.update(
            attn(t + "self_attn.", D)
            | attn(t + "cross_attn_token_to_image.", D // 2)
            | attn(t + "cross_attn_image_to_token.", D // 2)
        )
        keys.update({t + f"layer_norm{n}.{w}": (D,) for n in range(1, 5) for w in ("weight", "bias")})
        keys.update(
            {
                t + "mlp.lin1.weight": (2048, D),
                t + "mlp.lin1.bias": (2048,),
                t + "mlp.lin2.weight": (D, 2048),
                t + "mlp.lin2.bias": (D,),
            }
        )
    keys.update(attn("mask_decoder.transformer.final_attn_token_to_image.", D // 2))
    return keys


@pytest.fixture(scope="module")
def vit_b_state() -> dict[str, torch.Tensor]:
    """segment_anything's vit_b state dict (1024 px) with random values."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_sam_model("vit_b").state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=gen) for k, s in shapes.items()}


def test_vit_b_maps_to_the_exact_hf_layout_and_back(vit_b_state):
    hf = sam_to_hf(vit_b_state)
    layout = hf_vit_b_layout()
    assert len(layout) == len(vit_b_state) + 1  # + the tied shared_image_embedding copy
    assert set(hf) == set(layout), (sorted(set(hf) - set(layout))[:5], sorted(set(layout) - set(hf))[:5])
    assert all(tuple(hf[k].shape) == shape for k, shape in layout.items())
    assert is_hf_state(hf) and not is_hf_state(vit_b_state)
    back = hf_to_sam({k: v.clone() for k, v in hf.items()})
    assert set(back) == set(vit_b_state)
    assert all(torch.equal(back[k], v) for k, v in vit_b_state.items())  # values preserved, key for key
    assert torch.equal(hf[TIED_KEY], vit_b_state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"])
    only_tied = {k: v for k, v in hf.items() if k != "prompt_encoder.shared_embedding.positional_embedding"}
    assert set(hf_to_sam(only_tied)) == set(vit_b_state)
    hf[TIED_KEY] = hf[TIED_KEY] + 1
    with pytest.raises(CheckpointError, match="differs"):
        hf_to_sam(hf)


def test_hf_safetensors_bin_and_folder_load_as_checkpoint(vit_b_state, tmp_path):
    from safetensors.torch import save_file

    hf = {k: v.contiguous() for k, v in sam_to_hf(vit_b_state).items()}
    hf[TIED_KEY] = hf[TIED_KEY].clone()  # safetensors stores no shared tensors (transformers de-duplicates too)
    (tmp_path / "folder").mkdir()
    save_file(hf, str(tmp_path / "folder" / "model.safetensors"))
    torch.save(hf, tmp_path / "pytorch_model.bin")
    for source in (tmp_path / "folder" / "model.safetensors", tmp_path / "pytorch_model.bin", tmp_path / "folder"):
        loaded = build_sam("vit_b", 1024, source)
        assert loaded.pretrained
        state = loaded.model.state_dict()
        for key in (
            "image_encoder.blocks.11.attn.rel_pos_h",
            "image_encoder.neck.1.weight",
            "prompt_encoder.mask_downscaling.4.bias",
            "mask_decoder.output_hypernetworks_mlps.3.layers.1.weight",
            "mask_decoder.transformer.norm_final_attn.weight",
            "image_encoder.pos_embed",
        ):
            assert torch.equal(state[key], vit_b_state[key]), (source, key)
    small = build_sam("vit_b", 256, tmp_path / "folder").model  # the loader's resizing applies to HF files too
    assert small.image_encoder.pos_embed.shape == (1, 16, 16, 768)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="without model.safetensors"):
        build_sam("vit_b", 256, tmp_path / "empty")
    # a .safetensors file in segment_anything's own layout is read as it is (the HF rules would
    # rename iou_prediction_head.layers.0 onto layers.1)
    save_file({k: v.contiguous() for k, v in vit_b_state.items()}, str(tmp_path / "sam_layout.safetensors"))
    state = build_sam("vit_b", 1024, tmp_path / "sam_layout.safetensors").model.state_dict()
    for key in ("mask_decoder.iou_prediction_head.layers.0.weight", "mask_decoder.iou_prediction_head.layers.1.weight"):
        assert torch.equal(state[key], vit_b_state[key]), key


def test_export_format_hf_round_trips_and_refuses_mixed_widths(tmp_path):
    torch.manual_seed(0)
    space = SearchSpace.for_arch("tiny")
    save_supernet(
        tmp_path / "supernet.pt",
        SuperSam(build_sam_model("tiny", 128), space),
        SupernetMeta("tiny", 128, False, "none"),
    )
    uniform = SubnetConfig.from_mlp_dims([256, 256, 0, 256, 256, 0, 256, 256, 256, 0, 256, 256])
    out = export(
        ExportConfig(
            supernet=str(tmp_path / "supernet.pt"),
            subnet=json.dumps(uniform.to_dict()),
            out=str(tmp_path / "model"),
            format="hf",
        )
    )
    config = json.loads((out / "hf" / "config.json").read_text())
    assert config["vision_config"]["num_hidden_layers"] == 9 and config["vision_config"]["mlp_dim"] == 256
    assert config["vision_config"]["global_attn_indexes"] == [
        6,
        8,
    ]  # blocks 8 and 11 (kept 0,1,3,4,6,7,8,10,11) at their new positions
    model = load_model(out)
    from supersam.model.sam import read_state_dict

    state = read_state_dict(out / "hf" / "model.safetensors")
    assert set(state) == set(model.state_dict())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    mixed = SubnetConfig.from_mlp_dims([256, 0, 128, 64, 256, 0, 85, 192, 64, 0, 128, 256])
    with pytest.raises(ConfigError, match="one MLP width"):
        export(
            ExportConfig(
                supernet=str(tmp_path / "supernet.pt"),
                subnet=json.dumps(mixed.to_dict()),
                out=str(tmp_path / "mixed"),
                format="hf",
            )
        )
    assert not (tmp_path / "mixed").exists()  # refused before anything is written


def _predict_sam(sam, image, box):
    """segment_anything's SamPredictor: (3 x H x W masks, 3 IoU scores, 3 x S/4 x S/4 low-res logits)."""
    from segment_anything import SamPredictor

    predictor = SamPredictor(sam)
    predictor.set_image(image)
    masks, scores, low = predictor.predict(box=np.asarray(box), multimask_output=True)
    return masks, scores, low


def _predict_hf(model, processor, image, box):
    """transformers' SamModel + SamProcessor on the same image and box: (masks, IoU scores, low-res logits)."""
    inputs = processor(images=image, input_boxes=[[list(box)]], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, multimask_output=True)
    masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])
    return masks[0][0].numpy(), out.iou_scores[0, 0].numpy(), out.pred_masks[0, 0].numpy()


def _image(seed=0, shape=(96, 120, 3)):
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


def test_a_transformers_sammodel_reads_as_a_base_model_with_the_same_masks(tmp_path):
    """transformers writes the folder (save_pretrained of a random SamModel shaped like our tiny SAM);
    supersam reads it bit-equal and SamPredictor's masks equal transformers' own."""
    from transformers import SamConfig, SamModel

    config = SamConfig(  # the tiny SAM's numbers in transformers' own config fields
        vision_config=dict(
            hidden_size=64,
            num_hidden_layers=12,
            num_attention_heads=2,
            mlp_dim=256,
            image_size=128,
            window_size=4,
            output_channels=32,
            num_pos_feats=16,
            global_attn_indexes=[2, 5, 8, 11],
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=128, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )
    torch.manual_seed(0)
    model = SamModel(config).eval()
    with torch.no_grad():  # transformers initialises much of SAM to ~0; give every weight a spread
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(tmp_path / "hf")
    processor = _processor(128)  # save_pretrained of a model writes no preprocessor config
    loaded = build_sam("tiny", 128, tmp_path / "hf")
    ours, theirs = loaded.model.state_dict(), sam_to_hf_names(model)
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    image, box = _image(), (20, 10, 90, 70)
    masks, scores, low = _predict_sam(loaded.model, image, box)
    hf_masks, hf_scores, hf_low = _predict_hf(model, processor, image, box)
    # the one architectural difference: the decoder's LayerNorm eps (transformers 1e-6, segment_anything 1e-5)
    assert np.abs(low - hf_low).max() < 1e-3 and np.abs(scores - hf_scores).max() < 1e-3
    assert (masks == hf_masks).mean() > 0.999


def _processor(size: int):
    from transformers import SamImageProcessor, SamProcessor

    return SamProcessor(
        image_processor=SamImageProcessor(size={"longest_edge": size}, pad_size={"height": size, "width": size})
    )


def sam_to_hf_names(model) -> dict[str, torch.Tensor]:
    """A transformers SamModel's state dict in segment_anything names (the map under test: hf_to_sam)."""
    return hf_to_sam({k: v for k, v in model.state_dict().items()})


def test_an_hf_export_loads_in_transformers_and_gives_the_export_s_masks(tmp_path):
    """export --format hf of a subnet (3 blocks dropped; block 0 keeps its full MLP, so the others do too) opens with
    SamModel.from_pretrained and
    SamProcessor.from_pretrained, and its masks equal the segment_anything export's through SamPredictor."""
    from transformers import SamModel, SamProcessor

    torch.manual_seed(0)
    sam = build_sam_model("tiny", 128)
    with torch.no_grad():
        for param in sam.parameters():
            param.add_(0.05 * torch.randn_like(param))
    save_supernet(
        tmp_path / "supernet.pt", SuperSam(sam, SearchSpace.for_arch("tiny")), SupernetMeta("tiny", 128, False, "none")
    )
    subnet = SubnetConfig.from_mlp_dims([256, 256, 0, 256, 256, 0, 256, 256, 256, 0, 256, 256])
    out = export(
        ExportConfig(
            supernet=str(tmp_path / "supernet.pt"),
            subnet=json.dumps(subnet.to_dict()),
            out=str(tmp_path / "model"),
            format="hf",
        )
    )
    model = SamModel.from_pretrained(out / "hf").eval()  # raises on any missing or mismatched tensor
    processor = SamProcessor.from_pretrained(out / "hf")
    assert model.config.vision_config.num_hidden_layers == 9 and model.config.vision_config.mlp_dim == 256
    exported = load_model(out)
    for seed, box in ((0, (20, 10, 90, 70)), (1, (0, 0, 119, 95)), (2, (50, 40, 60, 52))):
        image = _image(seed)
        masks, scores, low = _predict_sam(exported, image, box)
        hf_masks, hf_scores, hf_low = _predict_hf(model, processor, image, box)
        assert np.abs(low - hf_low).max() < 1e-4 and np.abs(scores - hf_scores).max() < 1e-5, seed
        assert (masks == hf_masks).all(), seed


def test_bench_measures_a_hugging_face_folder(tmp_path, monkeypatch, capsys):
    from conftest import run_cli
    from safetensors.torch import save_file

    torch.manual_seed(0)
    sam = build_sam_model("tiny", 128)
    (tmp_path / "hf").mkdir()
    save_file(
        {k: v.contiguous().clone() for k, v in sam_to_hf(sam.state_dict()).items()},
        str(tmp_path / "hf" / "model.safetensors"),
    )
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "sam"}')  # every SamModel folder has its config
    code, err = run_cli(
        [
            "bench",
            str(tmp_path / "hf"),
            "--set",
            "model.type=tiny",
            "--set",
            "model.img_size=128",
            "--repeats",
            "2",
            "--warmup",
            "0",
            "--out",
            str(tmp_path / "b.json"),
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["params"] == sum(p.numel() for p in sam.parameters()) and result["source"].startswith("sam:")
