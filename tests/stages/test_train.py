"""Sandwich training on the tiny SAM with real nuclei data (dsb2018, box prompts, 128 px)."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml

from supersam.artifacts.records import SupernetMeta
from supersam.data import DataConfig, load_split, prepare_sample
from supersam.measure.losses import SamLossWeights
from supersam.model.checkpoint import load_supernet, save_supernet
from supersam.model.elastic import SuperSam
from supersam.model.sam import build_sam_model
from supersam.model.space import SearchSpace
from supersam.runtime import resume as ckpt
from supersam.runtime.errors import CheckpointError, ConfigError
from supersam.runtime.sampling import batch_indices, lr_factor
from supersam.schema import TrackingConfig
from supersam.stages.train import TrainConfig, train
from supersam.stages.train import energy as energy_mod
from supersam.stages.train.distributed import DistContext
from supersam.stages.train.energy import EnergyMeter
from supersam.stages.train.optim import build_optimizer, build_scheduler, set_trainable
from supersam.stages.train.probe import empty_target, update_target
from supersam.stages.train.sandwich import _optimizer_step, batch_loss, draw_subnets, frozen_prompts, train_step

ITERS = 20


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_cfg(shared_data) -> DataConfig:
    """dsb2018 nuclei cut into 16 tiles of 128 px: 8 train, 8 val; box prompts, 4 objects."""
    return DataConfig(
        kind="image_label",
        root=str(shared_data / "dsb2018_nuclei"),
        images="img2d.tif",
        labels="mask2d.tif",
        label_mode="instance",
        patch=128,
        min_area=20,
        max_objects=4,
        prompt="box",
        box_pad=5,
    )


@pytest.fixture(scope="module")
def supernet_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("supernet") / "supernet.pt"
    supernet = SuperSam(build_sam_model("tiny", 128), SearchSpace.for_arch("tiny"))
    save_supernet(path, supernet, SupernetMeta("tiny", 128, False, "none"))
    return path


@pytest.fixture(scope="module")
def base_cfg(supernet_path, tmp_path_factory) -> TrainConfig:
    return TrainConfig(
        supernet=str(supernet_path),
        out=str(tmp_path_factory.mktemp("run") / "out"),
        iterations=ITERS,
        batch_size=2,
        lr=1e-2,
        eval_every=10,
        val_images=2,
        save_every=10,
        target_miou=1.0,
        device="cpu",
        seed=3,
    )


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> TrackingConfig:
    return TrackingConfig(tracking_uri=f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db")


@pytest.fixture(scope="module")
def main_run(base_cfg, data_cfg, tracking):
    return train(base_cfg, data_cfg, tracking, show_progress=False)


def _mlflow_run(tracking, run_filter):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking.tracking_uri)
    exp = client.get_experiment_by_name(tracking.experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=run_filter)
    assert len(runs) == 1
    return client, runs[0]


def test_loss_decreases_and_artifacts(main_run, base_cfg, tracking, supernet_path):
    losses = [e["loss"] for e in main_run.losses]
    assert len(losses) == ITERS and all(0 < v < 1 for v in losses)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.02
    out = base_cfg.out
    metrics = json.loads(open(f"{out}/metrics.json").read())
    for key in (
        "miou_min",
        "miou_max",
        "miou_random",
        "iterations",
        "iterations_to_target",
        "seconds",
        "energy_kwh",
        "co2_kg",
        "energy_method",
        "pretrained",
        "params_min",
        "params_max",
    ):
        assert key in metrics
    assert metrics["iterations"] == ITERS and metrics["iterations_to_target"] is None
    assert metrics["energy_kwh"] > 0 and metrics["energy_method"] in ("nvml", "rapl", "estimate")
    assert metrics["co2_kg"] == pytest.approx(metrics["energy_kwh"] * 0.437)
    assert metrics["pretrained"] is False and metrics["params_min"] < metrics["params_max"]
    # trivial baselines on the probe's validation objects, and the collapse flag of the smallest subnet
    assert 0 < metrics["baseline_all_foreground"] < metrics["baseline_box_fill"] <= 1
    assert isinstance(metrics["collapsed"], bool)
    history = json.loads(open(f"{out}/history.json").read())
    assert [h["iteration"] for h in history] == [0, 10, 20]
    # target_every=1: the smallest subnet is probed at every iteration; validation reuses the probe
    probes = json.loads(open(f"{out}/probes.json").read())
    assert [p["iteration"] for p in probes] == list(range(ITERS + 1))
    assert [p["miou_min"] for p in probes if p["iteration"] % 10 == 0] == [h["miou_min"] for h in history]
    assert metrics["metric"] == "single" and metrics["target_every"] == 1 and metrics["val_objects"] > 0
    # Table I time/energy exclude the validation and the probes; the totals include them
    assert 0 < metrics["seconds"] < metrics["seconds_total"] and 0 < metrics["energy_kwh"] < metrics["energy_kwh_total"]
    assert history[-1]["seconds"] == pytest.approx(metrics["seconds"], abs=0.5)
    assert history[0]["loss"] is None and history[1]["loss"] == pytest.approx(np.mean(losses[:10]))
    assert history[-1]["miou_min"] == metrics["miou_min"]
    trained = load_supernet(f"{out}/supernet.pt")
    meta = trained.meta
    original = load_supernet(supernet_path)
    assert meta.variant == "none" and meta.provenance["train"]["iterations"] == ITERS
    key = "sam.image_encoder.blocks.3.mlp.lin1.weight"
    assert not torch.equal(trained.state_dict()[key], original.state_dict()[key])
    key = "sam.prompt_encoder.point_embeddings.0.weight"
    assert torch.equal(trained.state_dict()[key], original.state_dict()[key])
    client, run = _mlflow_run(tracking, "tags.target_reached = 'false'")
    assert run.data.tags["stage"] == "train" and run.data.tags["variant"] == "none"
    assert run.data.tags["pretrained"] == "false" and run.data.tags["energy_method"] == metrics["energy_method"]
    assert run.data.metrics["energy_kwh"] == pytest.approx(metrics["energy_kwh"])
    assert run.data.params["train.lr"] == "0.01"
    steps = client.get_metric_history(run.info.run_id, "miou_min")
    assert sorted({m.step for m in steps}) == [0, 10, 20]
    assert len(client.get_metric_history(run.info.run_id, "loss")) == ITERS


def test_training_batches_use_the_training_prompts_and_object_cap(base_cfg, data_cfg):
    from supersam.stages.train.distributed import DistContext
    from supersam.stages.train.loop import Trainer

    cfg = dataclasses.replace(base_cfg, max_objects=3)
    data = dataclasses.replace(data_cfg, prompt="box", train_prompt="mixed", box_pad=0, box_jitter=2)
    from supersam.runtime.tracking import Run

    trainer = Trainer(cfg, data, DistContext())
    trainer.prepare(Run(None))  # data, probe and target are read inside the (here disabled) MLflow run
    kinds = set()
    for iteration in range(8):
        for inp in trainer.local_batch(iteration):
            assert inp.n_objects == 3  # train.max_objects, not data.max_objects (4)
            kinds.add("box" if inp.boxes is not None else "point")
    assert kinds == {"box", "point"}  # data.train_prompt: mixed
    # the probe keeps the evaluation prompt (data.prompt: box) and every object once
    assert all(inp.boxes is not None for inp in trainer.probe.evaluator.inputs)


def test_learning_rate_follows_schedule(main_run, base_cfg):
    lrs = [e["lr"] for e in main_run.losses]
    expected = [base_cfg.lr * (1 - 0.99 * i / (ITERS - 1)) for i in range(ITERS)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lr_factor(0, 100, 0.01) == 1.0 and lr_factor(99, 100, 0.01) == pytest.approx(0.01)


def test_same_seed_same_losses_and_time_to_target(main_run, base_cfg, data_cfg, tracking, tmp_path):
    # a target first reached between two validation points (every 10): a record of the
    # per-iteration probe at an iteration off the validation grid
    probes = main_run.probes
    records = [p for i, p in enumerate(probes) if all(q["miou_min"] < p["miou_min"] for q in probes[:i])]
    expected = next(p for p in records if p["iteration"] % 10)
    target = expected["miou_min"]
    cfg = dataclasses.replace(base_cfg, out=str(tmp_path / "again"), target_miou=target)
    again = train(cfg, data_cfg, tracking, show_progress=False)
    assert [e["loss"] for e in again.losses] == pytest.approx([e["loss"] for e in main_run.losses], abs=1e-6)
    assert again.subnets == main_run.subnets
    m = again.metrics
    assert again.probes == probes  # the target does not change training
    assert m["iterations_to_target"] == expected["iteration"] and m["iterations_to_target"] % 10
    assert 0 < m["seconds_to_target"] <= m["seconds"] and 0 < m["energy_kwh_to_target"] <= m["energy_kwh"]
    _, run = _mlflow_run(tracking, "tags.target_reached = 'true'")
    assert run.data.metrics["iterations_to_target"] == expected["iteration"]
    assert run.data.metrics["co2_kg"] == pytest.approx(m["co2_kg"]) and "energy_method" in run.data.tags


def test_resume_reproduces_uninterrupted_run(main_run, base_cfg, data_cfg, tmp_path):
    cfg = dataclasses.replace(base_cfg, out=str(tmp_path / "resumed"), save_every=0)
    off = TrackingConfig(enabled=False)
    first = train(cfg, data_cfg, off, stop_after=7, show_progress=False)
    assert first.stopped and len(first.losses) == 7 and not (tmp_path / "resumed" / "metrics.json").exists()
    state = ckpt.load_training_state(ckpt.checkpoint_path(cfg.out))
    assert state["iteration"] == 7 and state["data_position"] == {
        "epoch": 1,
        "offset": 6,
        "dataset_len": 8,
        "batch_size": 2,
    }
    with pytest.raises(CheckpointError, match="train.lr"):
        train(dataclasses.replace(cfg, lr=1e-4), data_cfg, off, resume=True, show_progress=False)
    with pytest.raises(CheckpointError, match="data.box_pad"):
        train(cfg, dataclasses.replace(data_cfg, box_pad=9), off, resume=True, show_progress=False)
    # what the probes measure may not change either: probes.json would mix two metrics
    with pytest.raises(CheckpointError, match="train.metric was 'single', now 'oracle'"):
        train(dataclasses.replace(cfg, metric="oracle"), data_cfg, off, resume=True, show_progress=False)
    with pytest.raises(CheckpointError, match="train.target_every"):
        train(dataclasses.replace(cfg, target_every=2), data_cfg, off, resume=True, show_progress=False)
    second = train(cfg, data_cfg, off, resume=True, show_progress=False)
    assert [e["loss"] for e in second.losses] == pytest.approx([e["loss"] for e in main_run.losses], abs=1e-6)
    assert second.subnets == main_run.subnets[7:]
    assert second.metrics["miou_min"] == pytest.approx(main_run.metrics["miou_min"], abs=1e-6)
    assert [h["iteration"] for h in second.history] == [0, 10, 20]
    assert second.probes == main_run.probes  # the probes before the stop were carried over


def _setup(supernet_path, data_cfg, **overrides):
    supernet = load_supernet(supernet_path)
    cfg = TrainConfig(supernet=str(supernet_path), lr=1e-3, device="cpu", **overrides)
    params = set_trainable(supernet, cfg.trainable)
    opt = build_optimizer(params, cfg)
    ds = load_split(data_cfg, "train")
    inputs = [prepare_sample(ds[i], 128, "box", 4, 5, np.random.default_rng(i)) for i in range(2)]
    return supernet, cfg, params, opt, build_scheduler(opt, cfg), inputs


def test_one_step_updates_exactly_the_touched_weights(supernet_path, data_cfg):
    supernet, cfg, params, opt, sched, inputs = _setup(supernet_path, data_cfg)
    probe = copy.deepcopy(supernet)  # same sandwich without a step, to read the gradients
    _, subnets = draw_subnets(probe.space, cfg.seed, 0, cfg.n_random)
    prompts = frozen_prompts(probe.sam, inputs)
    for s in subnets:
        probe.set_active_subnet(s)
        batch_loss(probe.sam, inputs, prompts, 2, torch.device("cpu"), False)[0].backward()
    grads = {n: p.grad for n, p in probe.named_parameters()}
    before = {n: p.detach().clone() for n, p in supernet.named_parameters()}
    train_step(supernet, opt, sched, params, inputs, 2, 0, cfg, DistContext())
    n_changed = 0
    for name, p in supernet.named_parameters():
        g = grads[name]
        if name.startswith("sam.prompt_encoder"):
            assert g is None and torch.equal(p, before[name]) and not p.requires_grad, name
        elif g is None:
            assert torch.equal(p, before[name]), f"{name} has no gradient but changed"
        elif g.abs().sum() > 0:
            moved = p != before[name]
            assert moved[g.abs() > 1e-6].all(), f"{name} touched but not updated"  # Adam: ~lr steps
            n_changed += 1
    assert n_changed > 50
    assert grads["sam.mask_decoder.iou_prediction_head.layers.0.weight"] is None  # unused by the Dice loss


def test_untouched_mlp_rows_and_dropped_blocks_stay(supernet_path, data_cfg):
    """Min + random subnet (no max): lin1 rows beyond every MLP dim used and dropped blocks keep
    their values (rows only see AdamW's decoupled decay, exactly p * (1 - lr * wd))."""
    supernet, cfg, params, opt, sched, inputs = _setup(supernet_path, data_cfg, weight_decay=0.01)
    _, subnets = draw_subnets(supernet.space, 0, 0, 1)
    used = subnets[1:]  # min and random
    before = {n: p.detach().clone() for n, p in supernet.named_parameters()}
    prompts = frozen_prompts(supernet.sam, inputs)
    for s in used:
        supernet.set_active_subnet(s)
        batch_loss(supernet.sam, inputs, prompts, 2, torch.device("cpu"), False)[0].backward()
    _optimizer_step(opt, params, DistContext(), 0.0)
    decay = 1 - cfg.lr * cfg.weight_decay
    checked_rows = checked_blocks = 0
    for b in range(12):
        widest = max(s.mlp_dims[b] for s in used)
        name = f"sam.image_encoder.blocks.{b}.mlp.lin1.weight"
        new, old = dict(supernet.named_parameters())[name], before[name]
        if widest == 0:
            assert torch.equal(new, old)
            checked_blocks += 1
        else:
            assert not torch.equal(new[:widest], old[:widest] * decay)
            if widest < new.shape[0]:
                assert torch.allclose(new[widest:], old[widest:] * decay, rtol=1e-6, atol=0)
                checked_rows += 1
    assert checked_rows >= 5 and checked_blocks >= 1


def test_sequential_mode_and_distillation(supernet_path, data_cfg):
    supernet, cfg, params, opt, sched, inputs = _setup(
        supernet_path,
        data_cfg,
        mode="sequential",
        amp=True,
        distill_from="max",
        distill_weight=0.5,
        n_random=2,
        grad_clip=0.01,
    )
    result = train_step(supernet, opt, sched, params, inputs, 2, 0, cfg, DistContext())
    assert result.kinds == ["max", "min", "random", "random"]
    assert all(0 < v < 1 for v in result.losses) and result.grad_norm > 0.01  # norm before clipping
    assert opt.state[params[0]]["step"].item() == 4  # one AdamW step per subnet
    assert sched.last_epoch == 1 and set(result.loss_by_kind()) == {"loss_max", "loss_min", "loss_random"}


def test_finetune_mode_steps_the_max_subnet_alone(supernet_path, data_cfg):
    """train.mode finetune (the plain fine-tuning baseline): one subnet, the max, one AdamW step; every
    encoder block and every MLP unit is trained, as fine-tuning the base model would."""
    supernet, cfg, params, opt, sched, inputs = _setup(supernet_path, data_cfg, mode="finetune")
    assert draw_subnets(supernet.space, cfg.seed, 5, cfg.n_random, "finetune") == (
        ["max"],
        [supernet.space.max_subnet()],
    )
    before = {n: p.detach().clone() for n, p in supernet.named_parameters()}
    result = train_step(supernet, opt, sched, params, inputs, 2, 0, cfg, DistContext())
    assert result.kinds == ["max"] and len(result.losses) == 1 and 0 < result.losses[0] < 1
    assert opt.state[params[0]]["step"].item() == 1
    for b in range(12):
        name = f"sam.image_encoder.blocks.{b}.mlp.lin1.weight"
        moved = dict(supernet.named_parameters())[name] != before[name]
        assert moved.any(dim=1).all(), f"block {b}: an MLP unit of the max subnet was not trained"


def test_focal_dice_loss_adds_the_weighted_focal_term(supernet_path, data_cfg):
    """train.loss focal_dice: Dice + focal_weight x the unweighted sigmoid focal loss of the single mask,
    checked against torchvision's focal loss computed by hand on the same logits."""
    from torchvision.ops import sigmoid_focal_loss

    supernet, cfg, params, opt, sched, inputs = _setup(supernet_path, data_cfg)
    prompts = frozen_prompts(supernet.sam, inputs)
    with torch.no_grad():
        dice, logits = batch_loss(supernet.sam, inputs, prompts, 2, torch.device("cpu"), False)
        both, _ = batch_loss(supernet.sam, inputs, prompts, 2, torch.device("cpu"), False, focal_weight=20.0)
    focal = (
        sum(
            sigmoid_focal_loss(lg, inp.gt_masks.float(), alpha=-1, gamma=2, reduction="none").mean(dim=(1, 2)).mean()
            for lg, inp in zip(logits, inputs)
        )
        / 2
    )
    assert float(focal) > 1e-4
    torch.testing.assert_close(both, dice + 20.0 * focal, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="train.loss 'bce' is unknown"):
        TrainConfig(loss="bce")


def test_sam_loss_trains_every_decoder_output_and_the_iou_head(supernet_path, data_cfg):
    """train.loss sam: SAM's loss on the decoder's four S/4 outputs, recomputed here by hand from
    torchvision's focal loss and Dice (Eq. 2) on the same low-res logits: channel 0 always, the
    lowest-loss of channels 1..3 per object, the IoU head's MSE. Unlike Dice on the single mask,
    it reaches the IoU head and the multimask hypernetworks."""
    from torchvision.ops import sigmoid_focal_loss

    from supersam.measure.inference import decode_low_res, encode_images
    from supersam.measure.losses import low_res_targets

    supernet, cfg, params, opt, sched, inputs = _setup(supernet_path, data_cfg)
    sam = supernet.sam
    prompts = frozen_prompts(sam, inputs)
    weights = SamLossWeights(20.0, 1.0, 1.0, focal_alpha=-1.0)
    with torch.no_grad():
        loss, logits = batch_loss(sam, inputs, prompts, 2, torch.device("cpu"), False, sam_weights=weights)
        expected = 0.0
        embeddings = encode_images(sam, inputs)
        for j, inp in enumerate(inputs):
            low, iou_pred = decode_low_res(sam, embeddings[j : j + 1], prompts[j])  # N x 4 x 32 x 32
            gt = low_res_targets(inp.gt_masks, inp.input_size, 128)[:, None].expand_as(low)
            focal = sigmoid_focal_loss(low, gt, alpha=-1, gamma=2, reduction="none").mean(dim=(2, 3))
            prob = torch.sigmoid(low)
            dice = 1 - (2 * (prob * gt).sum((2, 3)) + 1) / (prob.sum((2, 3)) + gt.sum((2, 3)) + 1)
            mask = 20 * focal + dice  # N x 4
            inter = ((low > 0) & (gt > 0.5)).sum((2, 3)).float()
            union = ((low > 0) | (gt > 0.5)).sum((2, 3)).float()
            iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
            per_image = mask[:, 0].mean() + mask[:, 1:].min(1).values.mean() + ((iou_pred - iou) ** 2).mean()
            expected += float(per_image) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    assert logits[0].shape == inputs[0].gt_masks.shape  # full-size single-mask logits kept by default

    def trained_parts(loss_name):
        net, c, ps, o, sc, inp = _setup(supernet_path, data_cfg, loss=loss_name, weight_decay=0.0)
        before = {n: t.detach().clone() for n, t in net.named_parameters()}
        train_step(net, o, sc, ps, inp, 2, 0, c, DistContext())
        moved = {n for n, t in net.named_parameters() if not torch.equal(t, before[n])}
        parts = ("iou_prediction_head", "output_hypernetworks_mlps.2")
        return {part for part in parts if any(part in n for n in moved)}

    assert trained_parts("dice") == set()
    assert trained_parts("sam") == {"iou_prediction_head", "output_hypernetworks_mlps.2"}


def test_warmup_then_linear_decay():
    """train.warmup: (i + 1) / warmup for the first warmup iterations, then the paper's linear decay
    from 1 to min_lr_ratio at the last; warmup 0 is the paper's schedule unchanged."""
    assert [lr_factor(i, 100, 0.1, warmup=4) for i in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(99, 100, 0.1, warmup=4) == pytest.approx(0.1)
    assert lr_factor(52, 100, 0.1, warmup=4) == pytest.approx(1 - 0.9 * 48 / 95)
    assert [lr_factor(i, 50, 0.01, warmup=0) for i in range(50)] == [1.0 - (1.0 - 0.01) * (i / 49) for i in range(50)]
    with pytest.raises(ConfigError, match="train.warmup must be >= 0"):
        TrainConfig(warmup=-1)
    with pytest.raises(ConfigError, match=r"train.warmup \(10\) must be below train.iterations \(10\)"):
        TrainConfig(warmup=10, iterations=10)


def test_checkpoints_from_before_warmup_and_augment_still_resume(tmp_path):
    """A training checkpoint written before train.warmup / train.augment existed had neither: it
    resumes under the settings it was trained with (0, false) and is refused under others."""
    from supersam.stages.train.config import TRAJECTORY_FIELDS

    current = TrainConfig().to_dict()
    old = {k: v for k, v in current.items() if k not in ("warmup", "augment")}
    ckpt.check_resumable(old, current, TRAJECTORY_FIELDS, tmp_path / "last.pt")
    for name, value in (("warmup", 5), ("augment", True)):
        changed = {**current, name: value}
        with pytest.raises(CheckpointError, match=f"train.{name} was"):
            ckpt.check_resumable(old, changed, TRAJECTORY_FIELDS, tmp_path / "last.pt")


def test_sam_loss_with_in_place_distillation_and_bf16(supernet_path, data_cfg):
    """loss sam + distill_from max + amp: the max subnet's full-size single-mask logits become the
    teacher (float32), every subnet's loss is finite, and the step changes the weights."""
    settings = {"loss": "sam", "distill_from": "max", "amp": True}
    supernet, cfg, params, opt, sched, inputs = _setup(supernet_path, data_cfg, **settings)
    prompts = frozen_prompts(supernet.sam, inputs)
    supernet.set_active_subnet(supernet.space.max_subnet())
    weights = SamLossWeights(20.0, 1.0, 1.0, focal_alpha=-1.0)
    _, logits = batch_loss(supernet.sam, inputs, prompts, 2, torch.device("cpu"), True, sam_weights=weights)
    assert [t.dtype for t in logits] == [torch.float32] * 2
    assert [t.shape for t in logits] == [inp.gt_masks.shape for inp in inputs]
    before = {n: t.detach().clone() for n, t in supernet.named_parameters()}
    result = train_step(supernet, opt, sched, params, inputs, 2, 0, cfg, DistContext())
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))
    assert any(not torch.equal(t, before[n]) for n, t in supernet.named_parameters())


def test_augmented_batches_are_reproducible_and_keep_masks_on_the_image(base_cfg, data_cfg):
    """train.augment: rot90 / flip / intensity drawn from (seed, iteration, slot), so a resumed run
    sees the same batch; the masks move with the image (mask pixels are as dark as before)."""
    from supersam.runtime.tracking import Run
    from supersam.stages.train.loop import Trainer

    plain = Trainer(dataclasses.replace(base_cfg, max_objects=2), data_cfg, DistContext())
    aug_cfg = dataclasses.replace(base_cfg, max_objects=2, augment=True)
    first, second = Trainer(aug_cfg, data_cfg, DistContext()), Trainer(aug_cfg, data_cfg, DistContext())
    for t in (plain, first, second):
        t.prepare(Run(None))
    changed = 0
    for iteration in range(3):
        a, b, p = first.local_batch(iteration), second.local_batch(iteration), plain.local_batch(iteration)
        for x, y, z in zip(a, b, p):
            assert torch.equal(x.image, y.image) and torch.equal(x.gt_masks, y.gt_masks)
            changed += not torch.equal(x.image, z.image)
            # DSB nuclei are brighter than their background: the augmented masks still cover brighter pixels
            h, w = x.input_size
            img = x.image[:, :h, :w].mean(0)
            fg = torch.nn.functional.interpolate(x.gt_masks[:, None].float(), size=(h, w))[:, 0].amax(0) > 0
            assert img[fg].mean() > img[~fg].mean()
    assert changed >= 5


def test_sampling_is_a_pure_function_of_seed_and_iteration():
    epochs = [sorted(batch_indices(7, it, 3, 6) + batch_indices(7, it + 1, 3, 6)) for it in (0, 2)]
    assert epochs == [list(range(6))] * 2  # every epoch is a permutation
    assert batch_indices(7, 5, 4, 6) == batch_indices(7, 5, 4, 6) != batch_indices(8, 5, 4, 6)
    space = SearchSpace.for_arch("tiny")
    assert draw_subnets(space, 1, 9, 2) == draw_subnets(space, 1, 9, 2)
    assert draw_subnets(space, 1, 9, 2) != draw_subnets(space, 1, 10, 2)


def test_interrupted_checkpoint_write_keeps_last_good(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    path = tmp_path / "last.pt"
    ckpt.save_training_state(path, model, opt, sched, 5, {"epoch": 0}, {"seed": 0}, {"losses": []})

    def broken_save(obj, f, *a, **k):
        open(f, "wb").write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_training_state(path, model, opt, sched, 6, {"epoch": 0}, {"seed": 0}, {"losses": []})
    assert ckpt.load_training_state(path)["iteration"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    state = ckpt.rng_states()
    a = torch.rand(3)
    ckpt.restore_rng_states(state)
    assert torch.equal(torch.rand(3), a)


def test_energy_meter_codecarbon_and_fallback(monkeypatch):
    meter = EnergyMeter(torch.device("cpu"), emission_factor=0.5).start()
    # codecarbon reads RAPL where its energy files are readable, else its CPU model: we report what it chose
    from codecarbon.core.cpu import is_rapl_available

    assert meter.method == ("rapl" if is_rapl_available() else "estimate") and meter.detail.startswith("codecarbon ")
    assert "CPU(" in meter.detail
    assert meter.stop() >= 0 and meter.co2_kg(2.0) == 1.0

    class Cpu:
        def __init__(self, mode):
            self._mode = mode

    assert energy_mod.codecarbon_method([Cpu("intel_rapl")]) == "rapl"
    assert energy_mod.codecarbon_method([Cpu("cpu_load"), object()]) == "estimate"

    def unusable(*a, **k):
        raise RuntimeError("no codecarbon here")

    monkeypatch.setattr(energy_mod, "_CodecarbonSource", unusable)
    meter = EnergyMeter(torch.device("cpu"), cpu_tdp_watts=3.6e6).start()
    assert meter.method == "estimate" and "cpu_tdp_x_time" in meter.detail and "no codecarbon" in meter.detail
    assert 0 < meter.stop() < 1.0  # 3.6 MW x < 1 s


def test_target_and_config_errors():
    target = empty_target()
    assert not update_target(target, 0.5, 0.6, 10, 1.0, 0.1)
    assert update_target(target, 0.7, 0.6, 20, 2.0, 0.2)
    assert not update_target(target, 0.9, 0.6, 30, 3.0, 0.3)
    assert target == {"iterations_to_target": 20, "seconds_to_target": 2.0, "energy_kwh_to_target": 0.2}
    before = empty_target()
    assert update_target(before, 0.7, 0.6, 0, 0.003, 1e-9)  # the probe before training: nothing spent yet
    assert before == {"iterations_to_target": 0, "seconds_to_target": 0.0, "energy_kwh_to_target": 0.0}
    with pytest.raises(ConfigError, match="train.trainable"):
        TrainConfig(trainable=("image_encoder", "neck"))
    with pytest.raises(ConfigError, match="train.mode"):
        TrainConfig(mode="zigzag")
    with pytest.raises(ConfigError, match="^train.distill_from 'teacher' is unknown; use one of base, max, none$"):
        TrainConfig(distill_from="teacher")
    with pytest.raises(ConfigError, match="^train.distill_embed_weight must be >= 0, got -1.0$"):
        TrainConfig(distill_from="base", distill_embed_weight=-1.0)
    with pytest.raises(ConfigError, match="both 0; set one > 0 or use distill_from: none"):
        TrainConfig(distill_from="base", distill_embed_weight=0, distill_mask_weight=0)


@pytest.fixture(scope="module")
def based_supernet_path(tmp_path_factory):
    """A supernet whose meta records a base checkpoint (a tiny SAM saved in the official .pth layout)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("based")
    sam = build_sam_model("tiny", 128)
    torch.save(sam.state_dict(), root / "base.pth")
    save_supernet(
        root / "supernet.pt",
        SuperSam(sam, SearchSpace.for_arch("tiny")),
        SupernetMeta("tiny", 128, True, "none", checkpoint=str(root / "base.pth")),
    )
    return root / "supernet.pt"


def test_distill_from_base_adds_embedding_and_mask_mse(based_supernet_path, data_cfg):
    from supersam.stages.train.sandwich import base_targets, load_base_teacher

    supernet, cfg, params, opt, sched, inputs = _setup(
        based_supernet_path, data_cfg, distill_from="base", distill_embed_weight=2.0, distill_mask_weight=0.5
    )
    base = load_base_teacher(supernet.meta, "the supernet", torch.device("cpu"))
    assert not any(p.requires_grad for p in base.parameters()) and not base.training
    # the loss of one subnet is Dice + 2 x embedding MSE + 0.5 x logit MSE, recomputed here by hand
    min_subnet = supernet.space.min_subnet()
    supernet.set_active_subnet(min_subnet)
    targets = base_targets(base, inputs, torch.device("cpu"), False, 2.0, 0.5)
    plain, _ = batch_loss(supernet.sam, inputs, None, 2, torch.device("cpu"), False)
    parts = {}
    with_base, logits = batch_loss(supernet.sam, inputs, None, 2, torch.device("cpu"), False, base=targets, parts=parts)
    with torch.no_grad():
        from supersam.measure.inference import encode_images

        emb = encode_images(supernet.sam, inputs)
        base_emb = encode_images(base, inputs)
    by_hand = (
        sum(
            2.0 * float(((emb[j] - base_emb[j]) ** 2).mean())
            + 0.5 * float(((logits[j].detach() - targets.logits[j]) ** 2).mean())
            for j in range(2)
        )
        / 2
    )
    assert parts["distill"] == pytest.approx(by_hand, rel=1e-5) and parts["distill"] > 0
    assert float(with_base.detach()) == pytest.approx(float(plain.detach()) + by_hand, rel=1e-5)

    result = train_step(supernet, opt, sched, params, inputs, 2, 0, cfg, DistContext(), base)
    assert result.kinds[0] == "max" and len(result.distill_losses) == 3
    # the max subnet is the base model before the first step: nothing to distil
    assert result.distill_losses[0] == pytest.approx(0.0, abs=1e-9) and result.distill_losses[1] > 0
    assert result.distill_loss == pytest.approx(sum(result.distill_losses) / 3)
    with pytest.raises(ValueError, match="no base model"):
        train_step(supernet, opt, sched, params, inputs, 2, 1, cfg, DistContext())


@pytest.mark.parametrize("source", ["none", "max", "base"])
def test_each_distill_source_trains_and_logs(based_supernet_path, data_cfg, tmp_path, source):
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    cfg = TrainConfig(
        supernet=str(based_supernet_path),
        out=str(tmp_path / "out"),
        iterations=6,
        batch_size=2,
        lr=1e-2,
        eval_every=0,
        val_images=1,
        target_every=0,
        save_every=3,
        target_miou=1.0,
        device="cpu",
        distill_from=source,
        distill_mask_weight=0.01,
    )
    result = train(cfg, data_cfg, tracking, show_progress=False)
    losses = [e["loss"] for e in result.losses]
    assert len(losses) == 6 and all(np.isfinite(losses))
    distill = [e.get("loss_distill") for e in result.losses]
    if source != "base":
        assert distill == [None] * 6
        return
    assert all(d > 0 for d in distill) and all(d < loss for d, loss in zip(distill, losses))
    client, run = _mlflow_run(tracking, "tags.stage = 'train'")
    assert run.data.params["train.distill_from"] == "base"
    logged = [m.value for m in client.get_metric_history(run.info.run_id, "loss_distill")]
    assert logged == pytest.approx(distill)
    # a resumed run must keep its teacher
    with pytest.raises(CheckpointError, match="train.distill_from was 'base', now 'max'"):
        train(
            dataclasses.replace(cfg, distill_from="max"),
            data_cfg,
            TrackingConfig(enabled=False),
            resume=True,
            show_progress=False,
        )


def test_distill_from_base_needs_a_base_checkpoint(supernet_path, data_cfg, tmp_path):
    cfg = TrainConfig(
        supernet=str(supernet_path),
        out=str(tmp_path / "out"),
        iterations=1,
        device="cpu",
        target_miou=1.0,
        distill_from="base",
    )
    with pytest.raises(ConfigError, match="was built from a randomly initialised SAM .*use distill_from: max or none"):
        train(cfg, data_cfg, TrackingConfig(enabled=False), show_progress=False)


def test_a_base_model_replaced_since_the_build_is_refused_as_teacher_and_threshold(data_cfg, tmp_path):
    """The supernet records its base model's weights (``base_digest``): another model of the same shape
    at the same path is refused as the distillation teacher and as the reference of a relative target."""
    from supersam.measure.thresholds import resolve_threshold
    from supersam.model.sam import state_digest

    torch.manual_seed(0)
    sam = build_sam_model("tiny", 128)
    torch.save(sam.state_dict(), tmp_path / "base.pth")
    meta = SupernetMeta("tiny", 128, True, "none", checkpoint=str(tmp_path / "base.pth"), base_digest=state_digest(sam))
    save_supernet(tmp_path / "supernet.pt", SuperSam(sam, SearchSpace.for_arch("tiny")), meta)
    cfg = TrainConfig(
        supernet=str(tmp_path / "supernet.pt"),
        out=str(tmp_path / "out"),
        iterations=1,
        batch_size=2,
        eval_every=0,
        val_images=1,
        target_every=0,
        target_miou=1.0,
        device="cpu",
        distill_from="base",
    )
    torch.manual_seed(1)
    torch.save(build_sam_model("tiny", 128).state_dict(), tmp_path / "base.pth")  # replaced: same shape, other weights
    with pytest.raises(CheckpointError, match="has other weights than when .* was built from it"):
        train(cfg, data_cfg, TrackingConfig(enabled=False), show_progress=False)
    with pytest.raises(CheckpointError, match="has other weights"):
        resolve_threshold("0.95x", meta, [], "cpu", what="train.target_miou")
    assert not (tmp_path / "out").exists()  # refused before any work: no empty folder left behind
    torch.save(sam.state_dict(), tmp_path / "base.pth")  # restored: accepted again
    assert train(cfg, data_cfg, TrackingConfig(enabled=False), show_progress=False).losses


def test_cli_flags_override_params(base_cfg, data_cfg, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from supersam.cli.main import app

    params = {
        "train": {**base_cfg.to_dict(), "out": str(tmp_path / "cli"), "iterations": 50},
        "data": vars(data_cfg),
        "mlflow": {"enabled": False},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--params",
            "params.yaml",
            "--set",
            "train.iterations=2",
            "--set",
            "train.mode=sequential",
            "--set",
            "train.trainable=[mask_decoder]",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert metrics["iterations"] == 2
    result = CliRunner().invoke(app, ["train", "--params", "params.yaml", "--set", "train.mode=zigzag"])
    assert isinstance(result.exception, ConfigError) and "train.mode" in str(result.exception)
