"""The ``pretrain`` stage: train the SAM-family base model that SuperSAM compresses.

The paper starts from a trained SAM; without the official checkpoint (these
machines have none, and a random SAM scores exactly what predicting
all-foreground scores) the pipeline first trains one on the domain. The
recipe is SAM's own (Kirillov et al. 2023, App. A): all of SAM trained,
20 x focal + Dice on the masks and MSE on the IoU head
(:func:`supersam.measure.losses.sam_loss`), several prompted objects per image, box
jitter and random points, rot90/flip/intensity augmentation, AdamW with a
linear warm-up and cosine decay, gradient clipping. With an official
checkpoint as ``pretrain.init`` it fine-tunes it (domain adaptation), or with
``iterations: 0`` passes it through.

Everything random is a pure function of (seed, iteration, slot), so
``--resume`` continues exactly where an uninterrupted run would be.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from supersam.artifacts import paths
from supersam.data import DataConfig, load_split, prepare_sample, prepare_split
from supersam.data.augment import augment_sample
from supersam.data.config import PROMPTS
from supersam.measure.baselines import kind_metrics, trivial_baselines, untrained_mious
from supersam.measure.inference import decode_low_res, embed_prompts, encode_images
from supersam.measure.losses import SamLossWeights, low_res_targets, low_res_valid, sam_loss
from supersam.measure.scoring import run_eval
from supersam.model.sam import build_sam, count_params, pixel_stats
from supersam.runtime import resume as ckpt
from supersam.runtime.device import autocast, resolve_device
from supersam.runtime.errors import CheckpointError
from supersam.runtime.io import file_digest, torch_save, write_json
from supersam.runtime.outdir import check_writable, claim_out, releases_claims
from supersam.runtime.sampling import batch_indices, data_position, prompt_rng
from supersam.runtime.tracking import start_run
from supersam.schema import ModelConfig, TrackingConfig
from supersam.stages.pretrain.config import TRAJECTORY_FIELDS, PretrainConfig

log = logging.getLogger(__name__)

MODEL_FILE = paths.BASE_MODEL.name


def lr_factor(iteration: int, iterations: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier of 0-based ``iteration``: linear warm-up over ``warmup`` steps, then cosine to ``min_ratio``."""
    if iteration < warmup:
        return (iteration + 1) / warmup
    span = max(iterations - warmup - 1, 1)
    t = min(max(iteration - warmup, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass
class PretrainResult:
    """What :func:`pretrain` produced: the checkpoint path and the metrics.json content."""

    checkpoint: Path
    metrics: dict


class Pretrainer:
    """State of one base-model training run; :meth:`run` drives it.

    Args:
        model_cfg: architecture (``type``, ``img_size``, ``seed``); ``model.checkpoint``
            is ignored here (it names this stage's output for the stages after it).
        data_cfg: the data section; training prompts are ``data.train_prompt``.
        cfg: the recipe.
    """

    def __init__(self, model_cfg: ModelConfig, data_cfg: DataConfig, cfg: PretrainConfig) -> None:
        self.model_cfg, self.data_cfg, self.cfg = model_cfg, data_cfg, cfg
        self.out = Path(cfg.out)
        claim_out(self.out, "pretrain --out")
        check_writable(self.out, "pretrain --out")  # before any work, not at the first checkpoint
        self.device = resolve_device(cfg.device)
        self.init_digest = init_digest(cfg.init)  # content identity of the starting checkpoint, checked on resume
        loaded = build_sam(model_cfg.type, model_cfg.img_size, cfg.init or None, seed=model_cfg.seed)
        self.sam = loaded.model.to(self.device)
        self.img_size = loaded.img_size
        self.params = list(self.sam.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: lr_factor(i, cfg.iterations, cfg.warmup, cfg.min_lr_ratio)
        )
        self.weights = SamLossWeights(cfg.focal_weight, cfg.dice_weight, cfg.iou_weight, cfg.focal_alpha)
        self.dataset = load_split(data_cfg, "train") if cfg.iterations else None
        self.val = {
            kind: prepare_split(
                data_cfg,
                "val",
                self.img_size,
                n_images=cfg.val_images,
                seed=cfg.seed,
                repeat=False,
                prompt=kind,
                **pixel_stats(self.sam),
            )
            for kind in PROMPTS
        }
        self.baselines = {kind: trivial_baselines(inputs) for kind, inputs in self.val.items()}
        self.iteration = 0
        self.losses: list[dict] = []
        self.history: list[dict] = []
        self.offset_seconds = 0.0

    # -- data ------------------------------------------------------------------
    def batch(self, iteration: int) -> list:
        """Prepared, augmented inputs of 0-based ``iteration`` (pure function of seed and iteration)."""
        cfg, d = self.cfg, self.data_cfg
        inputs = []
        for slot, i in enumerate(batch_indices(cfg.seed, iteration, cfg.batch_size, len(self.dataset))):
            rng = prompt_rng(cfg.seed, iteration, slot)
            sample = self.dataset[i]
            if cfg.augment:
                sample = augment_sample(sample, rng)
            inputs.append(
                prepare_sample(
                    sample,
                    self.img_size,
                    d.training_prompt,
                    cfg.max_objects,
                    d.box_pad_range,
                    rng,
                    box_jitter=d.box_jitter,
                    **pixel_stats(self.sam),
                ).to(self.device)
            )
        return inputs

    # -- one step --------------------------------------------------------------
    def step(self) -> dict:
        """One optimizer step on this iteration's batch; returns its loss entry."""
        inputs = self.batch(self.iteration)
        self.sam.train()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.cfg.amp):
            embeddings = encode_images(self.sam, inputs)  # B x D x G x G
        batch_loss, parts = embeddings.new_zeros((), dtype=torch.float32), {"focal": 0.0, "dice": 0.0, "iou_mse": 0.0}
        for j, inp in enumerate(inputs):
            with autocast(self.device, self.cfg.amp):
                low_res, iou_pred = decode_low_res(self.sam, embeddings[j : j + 1], embed_prompts(self.sam, inp))
            target = low_res_targets(inp.gt_masks, inp.input_size, self.img_size)  # N x S/4 x S/4
            valid = low_res_valid(inp.ignore, inp.input_size, self.img_size)  # void pixels do not count
            loss, terms = sam_loss(low_res, iou_pred, target, self.weights, valid)
            batch_loss = batch_loss + loss / len(inputs)
            for k, v in terms.items():
                parts[k] += v / len(inputs)
        batch_loss.backward()
        total = float(batch_loss.detach())
        grad_norm = float("nan")
        if self.cfg.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.iteration += 1
        return {"iteration": self.iteration, "loss": total, **parts, "lr": lr, "grad_norm": grad_norm}

    # -- validation -------------------------------------------------------------
    def validate(self) -> dict[str, dict]:
        """``run_eval`` results per prompt kind on the fixed val sample (images encoded once)."""
        kinds = list(self.val)
        result = run_eval(
            self.sam, self.val[kinds[0]], self.device, self.cfg.amp, also={k: self.val[k] for k in kinds[1:]}
        )
        return {kinds[0]: result, **result.get("also", {})}

    def evaluate(self) -> dict:
        """mIoU (single mask) and predicted foreground fraction per prompt kind on the fixed val sample."""
        entry: dict = {"iteration": self.iteration, "seconds": self.seconds()}
        self.last_results = self.validate()
        for kind, result in self.last_results.items():
            entry[f"miou_{kind}"] = float(result["miou"])
            entry[f"fg_fraction_{kind}"] = float(result["fg_fraction"])
        since = [
            e["loss"] for e in self.losses if e["iteration"] > (self.history[-1]["iteration"] if self.history else 0)
        ]
        entry["loss"] = sum(since) / len(since) if since else None
        self.history.append(entry)
        log.info(
            "pretrain %d/%d: val mIoU %s",
            self.iteration,
            self.cfg.iterations,
            ", ".join(f"{k} {entry[f'miou_{k}']:.3f}" for k in self.val),
        )
        return entry

    def baseline_metrics(self) -> dict:
        """Per prompt kind, on the same validation objects: trivial baselines, the untrained
        model and the collapse flag of the trained model (:func:`supersam.measure.baselines.kind_metrics`).

        The untrained model is iteration 0 of a run from random initialisation; with
        ``init`` it is a randomly initialised model of the same type, evaluated here.
        """
        if self.cfg.init or self.history[0]["iteration"] != 0:
            untrained = untrained_mious(
                self.model_cfg.type, self.img_size, self.model_cfg.seed, self.val, self.device, self.cfg.amp
            )
        else:
            untrained = {kind: self.history[0][f"miou_{kind}"] for kind in self.val}
        out: dict = {}
        for kind, result in self.last_results.items():
            out.update(kind_metrics(kind, result, self.baselines[kind], untrained[kind]))
        return out

    def seconds(self) -> float:
        return self.offset_seconds + time.perf_counter() - self._t0

    # -- checkpoints --------------------------------------------------------------
    def identity(self) -> dict:
        """Settings a resumed run must share: the recipe, the architecture and the data."""
        return {
            **self.cfg.to_dict(),
            "init_digest": self.init_digest,
            **{f"model.{k}": v for k, v in vars(self.model_cfg).items() if k != "checkpoint"},
            **{f"data.{k}": v for k, v in vars(self.data_cfg).items()},
        }

    def resume_fields(self) -> tuple[str, ...]:
        """The identity keys a checkpoint must match to be resumed."""
        return TRAJECTORY_FIELDS + ("init_digest",) + tuple(k for k in self.identity() if "." in k)

    def resumable(self) -> bool:
        """``--auto-resume``: :func:`supersam.runtime.resume.auto_resumable` for this run (never for a pass-through)."""
        return self.dataset is not None and ckpt.auto_resumable(
            self.out, self.identity(), self.resume_fields(), len(self.dataset), self.cfg.iterations, "pretrain"
        )

    def save_state(self) -> None:
        ckpt.save_training_state(
            ckpt.checkpoint_path(self.out),
            self.sam,
            self.optimizer,
            self.scheduler,
            self.iteration,
            data_position(self.iteration, self.cfg.batch_size, len(self.dataset)),
            self.identity(),
            {"losses": self.losses, "history": self.history, "seconds": self.seconds()},
        )

    def resume(self) -> None:
        """Continue from ``out/checkpoints/last.pt``.

        Raises:
            CheckpointError: missing/unreadable file or changed settings.
        """
        path = ckpt.checkpoint_path(self.out)
        state = ckpt.restore_training_state(
            path,
            self.identity(),
            self.resume_fields(),
            self.sam,
            self.optimizer,
            self.scheduler,
            len(self.dataset),
            section="pretrain",
        )
        self.iteration = int(state["iteration"])
        progress = state["progress"]
        self.losses, self.history = list(progress["losses"]), list(progress["history"])
        self.offset_seconds = float(progress["seconds"])
        log.info("resumed pretraining from %s at iteration %d", path, self.iteration)

    # -- the run -----------------------------------------------------------------
    def run(
        self, tracking: TrackingConfig, resume: bool | str = False, stop_after: int | None = None
    ) -> PretrainResult | None:
        """Train to ``cfg.iterations`` (or ``stop_after``), then write the base model and its metrics.

        ``resume``: True continues from the checkpoint (refusing a mismatch),
        ``"auto"`` continues only from a matching unfinished one (the DVC stage).

        Returns:
            the result, or None when ``stop_after`` ended the run early (checkpoint saved).
        """
        cfg = self.cfg
        if resume is True or (resume == "auto" and self.resumable()):
            self.resume()
        self._t0 = time.perf_counter()
        end = cfg.iterations if stop_after is None else min(cfg.iterations, stop_after)
        params = {
            **{f"pretrain.{k}": v for k, v in cfg.to_dict().items()},
            **{f"data.{k}": v for k, v in vars(self.data_cfg).items()},
            "model_type": self.model_cfg.type,
            "img_size": self.img_size,
        }
        with start_run(tracking, "pretrain", "", params, {"pretrained": bool(cfg.init)}) as run:
            if self.dataset is not None:
                run.log_dataset(
                    self.data_cfg.root, "train", len(self.dataset), sum(self.dataset.object_counts), self.data_cfg.kind
                )
            val = next(iter(self.val.values()), [])
            run.log_dataset(self.data_cfg.root, "val", len(val), sum(inp.n_objects for inp in val), self.data_cfg.kind)
            if not self.history:
                run.log_metrics(_numeric(self.evaluate()), step=self.iteration)
            while self.iteration < end:
                entry = self.step()
                self.losses.append(entry)
                if self.iteration % cfg.log_every == 0:
                    run.log_metrics(_numeric(entry), step=self.iteration)
                if (cfg.eval_every and self.iteration % cfg.eval_every == 0) or self.iteration == cfg.iterations:
                    run.log_metrics(_numeric(self.evaluate()), step=self.iteration)
                if (cfg.save_every and self.iteration % cfg.save_every == 0) or self.iteration == end:
                    self.save_state()
            if self.iteration < cfg.iterations:
                log.info("stopped after iteration %d of %d; continue with --resume", self.iteration, cfg.iterations)
                return None
            result = self.finish()
            run.log_metrics(_numeric(result.metrics))
            for name in (paths.METRICS_FILE, paths.HISTORY_FILE, "config.json"):
                run.log_artifact(str(self.out / name))
        return result

    def finish(self) -> PretrainResult:
        """Write model.pt (official SAM key layout), config.json, metrics.json and history.json."""
        last = self.history[-1]
        # the resume folder exists after every run, a pass-through's too (empty): dvc.yaml declares
        # it as a persistent output, so switching between pass-through and training keeps working
        ckpt.checkpoint_path(self.out).parent.mkdir(parents=True, exist_ok=True)
        path = torch_save({k: v.detach().cpu() for k, v in self.sam.state_dict().items()}, self.out / MODEL_FILE)
        seconds = self.seconds()
        metrics = {
            **{k: v for k, v in last.items() if k.startswith(("miou_", "fg_fraction_"))},
            "miou": last[f"miou_{self.data_cfg.prompt}"],
            "prompt": self.data_cfg.prompt,
            **self.baseline_metrics(),
            "iterations": self.iteration,
            "seconds": seconds,
            "images_per_second": self.iteration * self.cfg.batch_size / seconds if seconds > 0 else None,
            "final_loss": self.losses[-1]["loss"] if self.losses else None,
            "params": count_params(self.sam),
            "encoder_params": count_params(self.sam.image_encoder),
            "model_type": self.model_cfg.type,
            "img_size": self.img_size,
            "init": self.cfg.init,
            "val_images": len(next(iter(self.val.values()))),
            "val_objects": sum(inp.n_objects for inp in next(iter(self.val.values()))),
        }
        write_json(
            self.out / "config.json",
            {
                "model_type": self.model_cfg.type,
                "img_size": self.img_size,
                "checkpoint": MODEL_FILE,
                "init": self.cfg.init,
                "iterations": self.iteration,
                "seed": self.cfg.seed,
            },
        )
        write_json(self.out / paths.METRICS_FILE, metrics)
        write_json(self.out / paths.HISTORY_FILE, self.history)
        log.info(
            "base model (%s, %d px, %d params) after %d iterations in %.0f s: val mIoU %s -> %s",
            self.model_cfg.type,
            self.img_size,
            metrics["params"],
            self.iteration,
            seconds,
            ", ".join(f"{k} {last[f'miou_{k}']:.3f}" for k in self.val),
            path,
        )
        return PretrainResult(path, metrics)


def _numeric(entry: dict) -> dict:
    """``entry`` without its step counter (the tracker drops non-numeric values itself)."""
    return {k: v for k, v in entry.items() if k != "iteration"}


def init_digest(init: str) -> str:
    """SHA-256 of the starting checkpoint (its weights file for a Hugging Face folder); "" for random init.

    A checkpoint with a manifest beside it (``models/base_vit_ti.pt`` ->
    ``models/base_vit_ti.json``, written by scripts/base_model_manifest.py) must
    have the SHA-256 the manifest records: a truncated download, a Git LFS pointer
    or a replaced file is refused before any stage builds on it.

    Raises:
        CheckpointError: ``init`` names nothing readable, or bytes other than its manifest records.
    """
    if not init:
        return ""
    path = Path(init)
    if path.is_dir():
        from supersam.model.hf import hf_file

        path = hf_file(path)
    digest = file_digest(path)
    recorded = manifest_digest(path)
    if recorded is not None and recorded != digest:
        raise CheckpointError(
            f"pretrain.init {path} has SHA-256 {digest[:16]}..., but its manifest {path.with_suffix('.json')} "
            f"records {recorded[:16]}...: the file is damaged or was replaced; restore it "
            f"(git checkout -- {path}) or re-create it (bash scripts/make_base_model.sh)"
        )
    return digest


def manifest_digest(path: Path) -> str | None:
    """The SHA-256 that ``path``'s manifest (same name, ``.json``) records for it, or None without one.

    A JSON file beside the checkpoint counts as its manifest only when its ``file`` is the
    checkpoint's name and it holds a ``sha256`` string.
    """
    manifest = path.with_suffix(".json")
    if path.suffix == ".json" or not manifest.is_file():
        return None
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or record.get("file") != path.name or not isinstance(record.get("sha256"), str):
        return None
    return record["sha256"]


@releases_claims
def pretrain(
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    cfg: PretrainConfig,
    tracking: TrackingConfig,
    resume: bool | str = False,
    stop_after: int | None = None,
) -> PretrainResult | None:
    """Train (or pass through) the base model; see :class:`Pretrainer`.

    Raises:
        ConfigError / DataError / CheckpointError: bad settings, data or checkpoint.
    """
    return Pretrainer(model_cfg, data_cfg, cfg).run(tracking, resume, stop_after)
