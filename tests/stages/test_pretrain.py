"""`supersam pretrain`: SAM's loss, low-res targets, schedule, splits, prompts, resume, pass-through,
and (slow) that a short real pretraining run beats the trivial all-foreground baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from supersam.data import DataConfig, load_split, prepare_sample, prepare_split
from supersam.data.augment import augment_sample
from supersam.data.prepare import center_points, padded_boxes
from supersam.data.types import Sample
from supersam.measure.baselines import trivial_baselines
from supersam.measure.losses import low_res_targets, sam_loss
from supersam.measure.metrics import per_mask_dice
from supersam.model.sam import build_sam, read_state_dict
from supersam.runtime.errors import CheckpointError, ConfigError
from supersam.schema import ModelConfig, TrackingConfig
from supersam.stages.pretrain import PretrainConfig, pretrain
from supersam.stages.pretrain.loop import lr_factor

pytestmark = pytest.mark.usefixtures("one_thread")
OFF = TrackingConfig(enabled=False)
TINY = ModelConfig(type="tiny", img_size=128, seed=0)


def em_data(shared_data, **kw) -> DataConfig:
    base = dict(
        root=str(shared_data / "isbi2012_em"),
        patch=256,
        max_objects=0,
        prompt="box",
        point="center",
        box_pad=0,
        train_prompt="mixed",
        box_jitter=3,
        val_fraction=0.134,
        test_fraction=0.334,
        split_mode="ordered",
    )
    return DataConfig(**{**base, **kw})


def test_ordered_split_holds_out_the_last_sections(shared_data):
    cfg = em_data(shared_data)
    sections = {}
    for split in ("train", "val", "test"):
        names = load_split(cfg, split).names
        sections[split] = sorted({int(n.split(".")[0]) for n in names})
    assert sections["test"] == list(range(20, 30))
    assert sections["val"] == [16, 17, 18, 19]
    assert sections["train"] == list(range(16))
    assert len(load_split(cfg, "test")) == 40 and sum(load_split(cfg, "test").object_counts) == 1077


def test_split_fractions_are_validated(shared_data):
    with pytest.raises(ConfigError, match="val_fraction \\+ data.test_fraction"):
        load_split(em_data(shared_data, val_fraction=0.6, test_fraction=0.5), "train")
    with pytest.raises(ConfigError, match="data.split_mode"):
        load_split(em_data(shared_data, split_mode="sorted"), "train")


def test_center_point_is_farthest_from_the_boundary():
    masks = np.zeros((2, 9, 9), bool)
    masks[0, 1:8, 1:8] = True  # 7x7 square: centre (4, 4)
    masks[1, 0:3, 0:9] = True  # strip on the top border: the border counts as boundary
    points = center_points(masks)
    assert points[0].tolist() == [4.0, 4.0]
    assert points[1][1] == 1.0


def test_box_jitter_moves_sides_within_range():
    masks = np.zeros((50, 40, 40), bool)
    masks[:, 10:20, 10:30] = True
    boxes = padded_boxes(masks, 0, np.random.default_rng(0), box_jitter=3)
    assert np.all(np.abs(boxes - [10, 10, 29, 19]) <= 3) and np.any(boxes != [10, 10, 29, 19])
    assert np.all(boxes[:, :2] <= boxes[:, 2:])


def test_mixed_prompts_give_boxes_or_points_per_image(shared_data):
    sample = load_split(em_data(shared_data), "train")[0]
    kinds = set()
    for seed in range(12):
        inp = prepare_sample(sample, 128, "mixed", 8, 0, np.random.default_rng(seed), box_jitter=3)
        assert (inp.boxes is None) != (inp.point_coords is None)
        kinds.add("box" if inp.boxes is not None else "point")
    assert kinds == {"box", "point"}


def test_augmentation_moves_image_and_masks_together():
    image = np.zeros((6, 8, 3), np.uint8)
    image[1, 2] = 255
    masks = np.zeros((1, 6, 8), bool)
    masks[0, 1, 2] = True
    for seed in range(8):
        out = augment_sample(Sample(image, masks, "x"), np.random.default_rng(seed), photometric=False)
        assert out.image.shape[:2] == out.masks.shape[1:]
        assert np.array_equal(out.image[..., 0] == 255, out.masks[0])


def test_low_res_targets_area_average_in_the_input_frame():
    gt = torch.zeros(1, 8, 8, dtype=torch.bool)
    gt[0, 0:4, 0:2] = True  # half of the top-left 4x4 cell
    target = low_res_targets(gt, (8, 8), 16)  # padded to 16 x 16 -> 4 x 4
    assert target.shape == (1, 4, 4)
    assert target[0, 0, 0].item() == 0.5 and target.sum().item() == 0.5


def test_sam_loss_terms_on_hand_made_masks():
    target = torch.zeros(1, 4, 4)
    target[0, :2, :2] = 1.0
    perfect = (target * 40 - 20)[:, None].repeat(1, 4, 1, 1)  # +-20 logits, exactly the mask
    iou_right = torch.ones(1, 4)
    loss, terms = sam_loss(perfect, iou_right, target)
    assert terms["iou_mse"] == 0.0 and terms["focal"] < 1e-8 and terms["dice"] < 1e-6
    assert loss.item() < 1e-5
    wrong = -perfect  # exactly the complement
    loss_w, terms_w = sam_loss(wrong, torch.zeros(1, 4), target)
    assert terms_w["iou_mse"] == 0.0 and terms_w["dice"] > 0.9 and loss_w > 1.0
    # dice with eps 1: 1 - (2*0 + 1) / (4 + 12 + 1) for the complement, per mask
    assert per_mask_dice(wrong[:, 0], target).item() == pytest.approx(1 - 1 / 17, abs=1e-6)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    assert lr_factor(0, 100, 10, 0.05) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.05) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0.05) == pytest.approx(1.0)
    assert lr_factor(99, 100, 10, 0.05) == pytest.approx(0.05)
    middle = 10 + (100 - 10 - 1) / 2
    assert lr_factor(int(middle), 100, 10, 0.05) == pytest.approx(
        0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * int(middle - 10) / 89))
    )


def _cfg(tmp_path, **kw) -> PretrainConfig:
    base = dict(
        out=str(tmp_path / "pre"), iterations=4, batch_size=2, max_objects=4, eval_every=2, val_images=1, save_every=2
    )
    return PretrainConfig(**{**base, **kw})


def test_pretrain_writes_a_loadable_base_model_and_resumes_bitwise(shared_data, tmp_path):
    data = em_data(shared_data)
    full = pretrain(TINY, data, _cfg(tmp_path / "a"), OFF)
    assert full.metrics["iterations"] == 4 and full.metrics["model_type"] == "tiny"
    assert {"miou_box", "miou_point", "miou"} <= set(full.metrics)
    loaded = build_sam("tiny", 128, full.checkpoint)
    assert loaded.pretrained
    assert pretrain(TINY, data, _cfg(tmp_path / "b"), OFF, stop_after=2) is None
    resumed = pretrain(TINY, data, _cfg(tmp_path / "b"), OFF, resume=True)
    a, b = read_state_dict(full.checkpoint), read_state_dict(resumed.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CheckpointError, match="pretrain.lr"):
        pretrain(TINY, data, _cfg(tmp_path / "b", lr=1e-3), OFF, resume=True)


def test_auto_resume_continues_only_a_matching_unfinished_run(shared_data, tmp_path, caplog):
    """The DVC stage's ``--auto-resume``: the same base model as an uninterrupted run; a changed
    recipe, a finished run or a different init file at the same path start afresh (``--resume`` refuses)."""
    data = em_data(shared_data)
    full = pretrain(TINY, data, _cfg(tmp_path / "a"), OFF)
    assert pretrain(TINY, data, _cfg(tmp_path / "b"), OFF, stop_after=2) is None
    resumed = pretrain(TINY, data, _cfg(tmp_path / "b"), OFF, resume="auto")
    a, b = read_state_dict(full.checkpoint), read_state_dict(resumed.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a) and resumed.metrics["iterations"] == 4
    caplog.set_level("INFO", logger="supersam.runtime.resume")
    again = pretrain(TINY, data, _cfg(tmp_path / "b"), OFF, resume="auto")  # finished: a fresh run, same result
    assert "finished run" in caplog.text
    assert all(torch.equal(a[k], v) for k, v in read_state_dict(again.checkpoint).items())

    # a changed recipe: --auto-resume starts afresh (the run of the new recipe), --resume refuses
    assert pretrain(TINY, data, _cfg(tmp_path / "d"), OFF, stop_after=2) is None
    caplog.clear()
    other = pretrain(TINY, data, _cfg(tmp_path / "d", lr=2e-3), OFF, resume="auto")
    assert "starting afresh, not resuming" in caplog.text and "pretrain.lr" in caplog.text
    fresh_other = pretrain(TINY, data, _cfg(tmp_path / "e", lr=2e-3), OFF)
    assert all(
        torch.equal(v, read_state_dict(fresh_other.checkpoint)[k]) for k, v in read_state_dict(other.checkpoint).items()
    )

    # a random-init checkpoint written before init_digest existed is still resumable
    from supersam.runtime.resume import checkpoint_path

    assert pretrain(TINY, data, _cfg(tmp_path / "f"), OFF, stop_after=2) is None
    state = torch.load(checkpoint_path(tmp_path / "f" / "pre"), weights_only=True)
    del state["config"]["init_digest"]
    torch.save(state, checkpoint_path(tmp_path / "f" / "pre"))
    old = pretrain(TINY, data, _cfg(tmp_path / "f"), OFF, resume=True)
    assert all(torch.equal(a[k], v) for k, v in read_state_dict(old.checkpoint).items())

    # the init checkpoint is replaced by other weights at the same path
    init = tmp_path / "init.pt"
    init.write_bytes(full.checkpoint.read_bytes())
    assert pretrain(TINY, data, _cfg(tmp_path / "c", init=str(init)), OFF, stop_after=2) is None
    torch.save({k: v + 1 for k, v in a.items()}, init)  # other weights, same path
    with pytest.raises(CheckpointError, match="init_digest"):
        pretrain(TINY, data, _cfg(tmp_path / "c", init=str(init)), OFF, resume=True)
    caplog.clear()
    fresh = pretrain(TINY, data, _cfg(tmp_path / "c", init=str(init)), OFF, resume="auto")
    assert "starting afresh" in caplog.text and "init_digest" in caplog.text
    assert fresh.metrics["iterations"] == 4


def test_zero_iterations_pass_a_checkpoint_through(shared_data, tmp_path):
    data = em_data(shared_data)
    first = pretrain(TINY, data, _cfg(tmp_path / "a", iterations=2), OFF)
    passed = pretrain(TINY, data, _cfg(tmp_path / "b", iterations=0, init=str(first.checkpoint)), OFF)
    a, b = read_state_dict(first.checkpoint), read_state_dict(passed.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a) and passed.metrics["iterations"] == 0
    with pytest.raises(ConfigError, match="pretrain.init is empty"):
        PretrainConfig(iterations=0)


@pytest.mark.slow
def test_short_pretraining_on_real_data_beats_all_foreground(shared_data, tmp_path):
    """~3 min: the tiny SAM, 600 steps on ISBI EM train sections, val mIoU (box prompts) far above all-foreground."""
    data = em_data(shared_data, train_prompt="box")
    cfg = _cfg(
        tmp_path,
        iterations=600,
        batch_size=4,
        max_objects=16,
        eval_every=0,
        val_images=8,
        save_every=0,
        lr=1e-3,
        warmup=20,
    )
    result = pretrain(ModelConfig(type="tiny", img_size=256, seed=0), data, cfg, OFF)
    inputs = prepare_split(data, "val", 256, n_images=8, seed=0, repeat=False, prompt="box")
    baselines = trivial_baselines(inputs)
    assert baselines["all_foreground"] < 0.05
    assert result.metrics["miou_box"] > baselines["all_foreground"] + 0.2
