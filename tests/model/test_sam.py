"""SAM building and official-checkpoint loading at any input size."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from supersam.model.sam import build_sam, build_sam_model, count_params, read_state_dict
from supersam.runtime.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def vit_b_ckpt(tmp_path_factory):
    """An official-layout vit_b checkpoint written from segment_anything's own builder."""
    from segment_anything import sam_model_registry

    torch.manual_seed(1)
    sam = sam_model_registry["vit_b"]()
    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_b_test.pth"
    state = sam.state_dict()
    torch.save(state, path)
    return path, state


def _shared_storage_state(model_type: str) -> dict[str, torch.Tensor]:
    """A state dict with the exact keys and shapes of ``model_type`` whose tensors share
    one storage, so the file stays a few MB even for vit_l."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_sam_model(model_type).state_dict().items()}
    flat = torch.randn(max(s.numel() for s in shapes.values()))
    return {k: flat[: s.numel()].view(s) for k, s in shapes.items()}


def test_vit_b_counts_match_the_paper_model():
    model = build_sam_model("vit_b", 1024)
    assert count_params(model) == 93_735_472
    assert count_params(model.image_encoder) == 89_670_912


def test_official_checkpoint_loads_at_1024_exactly(vit_b_ckpt):
    path, state = vit_b_ckpt
    loaded = build_sam("vit_b", 1024, path)
    assert loaded.pretrained and loaded.img_size == 1024
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_official_checkpoint_loads_at_256_with_resized_positions(vit_b_ckpt):
    path, state = vit_b_ckpt
    loaded = build_sam("vit_b", 256, path)
    sd = loaded.model.state_dict()
    assert sd["image_encoder.pos_embed"].shape == (1, 16, 16, 768)
    expected = F.interpolate(
        state["image_encoder.pos_embed"].permute(0, 3, 1, 2), size=(16, 16), mode="bicubic", align_corners=False
    ).permute(0, 2, 3, 1)
    assert torch.allclose(sd["image_encoder.pos_embed"], expected)
    # global block 2: relative positions over the 16x16 grid; windowed block 0 keeps 2*14-1
    assert sd["image_encoder.blocks.2.attn.rel_pos_h"].shape == (31, 64)
    assert torch.equal(sd["image_encoder.blocks.0.attn.rel_pos_h"], state["image_encoder.blocks.0.attn.rel_pos_h"])
    assert torch.equal(sd["mask_decoder.iou_token.weight"], state["mask_decoder.iou_token.weight"])
    assert loaded.model.prompt_encoder.image_embedding_size == (16, 16)
    with torch.inference_mode():
        emb = loaded.model.image_encoder(torch.zeros(1, 3, 256, 256))
    assert emb.shape == (1, 256, 16, 16)


def test_vit_l_checkpoint_for_vit_b_is_rejected_with_its_name(tmp_path):
    path = tmp_path / "sam_vit_l.pth"
    torch.save(_shared_storage_state("vit_l"), path)
    with pytest.raises(CheckpointError) as err:
        build_sam("vit_b", 256, path)
    message = str(err.value)
    assert str(path) in message and "vit_b" in message and "vit_l checkpoint" in message
    assert "\n" not in message


def test_truncated_and_non_checkpoint_files_are_rejected(tmp_path, vit_b_ckpt):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(vit_b_ckpt[0].read_bytes()[:100_000])
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    for path in (truncated, text, tmp_path / "missing.pth"):
        with pytest.raises(CheckpointError, match=str(path)):
            read_state_dict(path)


def test_no_checkpoint_means_random_init_and_one_warning(caplog):
    with caplog.at_level("WARNING"):
        loaded = build_sam("tiny")
    assert loaded.pretrained is False and loaded.describe()["pretrained"] is False
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "RANDOM" in warnings[0].getMessage()


def test_bad_image_size_and_model_type():
    with pytest.raises(ConfigError, match="multiple of 16"):
        build_sam_model("tiny", 100)
    with pytest.raises(ConfigError, match="unknown model type 'vit_x'"):
        build_sam_model("vit_x")


@pytest.mark.slow
def test_cli_wrong_checkpoint_is_one_line_and_exit_1(tmp_path):
    path = tmp_path / "sam_vit_l.pth"
    torch.save(_shared_storage_state("vit_l"), path)
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "supersam.cli.main",
            "eval",
            "--set",
            "model.type=vit_b",
            "--set",
            "model.img_size=256",
            "--checkpoint",
            str(path),
            "--params",
            str(params),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and "vit_l checkpoint" in proc.stderr
