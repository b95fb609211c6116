"""The training run: data position, periodic evaluation, checkpoints, metrics, MLflow.

Paper Sec. III "NAS Training" and Table I. Everything random is a pure
function of (seed, iteration) (:mod:`supersam.runtime.sampling`), so ``resume``
continues exactly where an uninterrupted run would be.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from supersam.artifacts import paths
from supersam.data import DataConfig, load_split, prepare_sample
from supersam.data.augment import augment_sample
from supersam.model.checkpoint import load_supernet, save_supernet
from supersam.model.sam import pixel_stats
from supersam.runtime import resume as ckpt
from supersam.runtime.io import file_digest
from supersam.runtime.outdir import check_writable, claim_out
from supersam.runtime.sampling import batch_indices, data_position, prompt_rng, shard
from supersam.runtime.tracking import start_run
from supersam.schema import TrackingConfig
from supersam.stages.train.config import INPUT_FIELDS, MEASUREMENT_FIELDS, TRAJECTORY_FIELDS, TrainConfig
from supersam.stages.train.distributed import DistContext, barrier, broadcast_params, check_batch
from supersam.stages.train.energy import EnergyMeter
from supersam.stages.train.optim import build_optimizer, build_scheduler, set_trainable
from supersam.stages.train.probe import ValidationProbe, empty_target, resolve_target, update_target
from supersam.stages.train.report import TrainProgress, write_outputs
from supersam.stages.train.sandwich import StepResult, load_base_teacher, train_step

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`supersam.stages.train.train` did (rank 0 holds metrics and history).

    Attributes:
        metrics: the metrics.json content (empty on other ranks or when stopped early).
        history: per evaluation: iteration, miou_min/max/random, loss, seconds, energy_kwh
            (training only: validation and probes excluded).
        probes: per target probe: iteration, miou_min (the smallest subnet, ``target_every``).
        losses: per iteration (whole run, incl. before a resume): iteration (1-based),
            loss (mean over subnets), loss_max/min/random, lr, and with ``distill_from: base``
            loss_distill (the weighted embedding + mask-logit MSE part of loss).
        subnets: per iteration run by this process: the sampled subnet dicts.
        stopped: True when ``stop_after`` ended the run before ``iterations``.
    """

    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    probes: list[dict] = field(default_factory=list)
    losses: list[dict] = field(default_factory=list)
    subnets: list[list[dict]] = field(default_factory=list)
    stopped: bool = False


class Trainer:
    """State of one training run on one rank; :meth:`run` drives it."""

    def __init__(self, cfg: TrainConfig, data_cfg: DataConfig, ctx: DistContext) -> None:
        self.cfg, self.data_cfg, self.ctx = cfg, data_cfg, ctx
        check_batch(ctx, cfg.batch_size)
        self.supernet = load_supernet(cfg.supernet_path, device=ctx.device)
        self.supernet_digest = file_digest(cfg.supernet_path)  # content identity checked on resume
        self.meta = self.supernet.meta
        self.out = cfg.out_dir_for(self.meta.variant)
        if ctx.is_main:  # before any work, not at the first checkpoint
            claim_out(self.out, "train --out")
            check_writable(self.out, "train --out")
        self.model_type, self.img_size = self.meta.model_type, self.meta.img_size
        if not self.meta.pretrained and ctx.is_main:
            log.warning(
                "%s was built from a randomly initialised SAM (pretrained=false): "
                "the mIoU figures are not comparable to the paper's",
                cfg.supernet_path,
            )
        self.params = set_trainable(self.supernet, cfg.trainable)
        broadcast_params(self.supernet, ctx)
        # distill_from: base: the frozen base model (model.checkpoint, recorded in the supernet)
        self.base_model = (
            load_base_teacher(self.meta, str(cfg.supernet_path), ctx.device) if cfg.distill_from == "base" else None
        )
        self.optimizer = build_optimizer(self.params, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.dataset = None
        self.probe = None
        self.target_miou = None
        self.iteration = 0
        self.result = TrainResult()
        self.target = empty_target()
        self.offset_seconds = self.offset_kwh = 0.0  # training only, before a resume
        self.offset_eval_seconds = self.offset_eval_kwh = 0.0  # validation + probes, before a resume
        self._eval_seconds = self._eval_kwh = 0.0  # validation + probes, this process
        self.meter = EnergyMeter(
            ctx.device, cfg.country_iso_code, cfg.emission_factor, cfg.cpu_tdp_watts, output_dir=self.out
        )

    def prepare(self, run) -> None:
        """Read the data, build the validation probe, resolve the target (inside the MLflow run)."""
        cfg, data_cfg = self.cfg, self.data_cfg
        self.dataset = load_split(data_cfg, "train")
        if self.ctx.is_main:
            self.probe = ValidationProbe(self.supernet, data_cfg, self.img_size, cfg, self.ctx.device)
            run.log_dataset(data_cfg.root, "train", len(self.dataset), sum(self.dataset.object_counts), data_cfg.kind)
            run.log_dataset(data_cfg.root, "val", self.probe.n_images, self.probe.n_objects, data_cfg.kind)
        # the absolute target mIoU (a relative train.target_miou: against the base model, on the probe's sample)
        self.target_miou = resolve_target(cfg, self.meta, self.probe, str(cfg.supernet_path))

    # -- time and energy (paper Table I: training only) ----------------------------
    def _meter_kwh(self) -> float:
        return self.meter.kwh() if self.ctx.is_main else 0.0

    def seconds(self) -> float:
        """Wall seconds of training so far, validation and target probes excluded."""
        return self.offset_seconds + time.perf_counter() - self._t0 - self._eval_seconds

    def kwh(self) -> float:
        """Energy (kWh) of training so far, validation and target probes excluded."""
        return self.offset_kwh + self._meter_kwh() - self._eval_kwh

    def eval_seconds(self) -> float:
        return self.offset_eval_seconds + self._eval_seconds

    def eval_kwh(self) -> float:
        return self.offset_eval_kwh + self._eval_kwh

    def _sync(self) -> None:
        if self.ctx.device.type == "cuda":  # queued kernels belong to the span that launched them
            torch.cuda.synchronize(self.ctx.device)

    @contextmanager
    def excluded(self):
        """Count the time and energy of the enclosed work (validation, probes, checkpoint
        writes) apart from training (paper Table I counts training only)."""
        self._sync()
        t0, e0 = time.perf_counter(), self._meter_kwh()
        try:
            yield
        finally:
            self._sync()
            self._eval_seconds += time.perf_counter() - t0
            self._eval_kwh += self._meter_kwh() - e0

    # -- data --------------------------------------------------------------------
    def local_batch(self, iteration: int) -> list:
        """This rank's prepared inputs for 0-based ``iteration``: augmentation (``train.augment``)
        and prompts are drawn from (seed, iteration, slot), so every rank and a resumed run agree."""
        cfg, d = self.cfg, self.data_cfg
        indices = batch_indices(cfg.seed, iteration, cfg.batch_size, len(self.dataset))
        mine = shard(list(enumerate(indices)), self.ctx.rank, self.ctx.world_size)
        inputs = []
        for slot, i in mine:
            rng = prompt_rng(cfg.seed, iteration, slot)
            sample = augment_sample(self.dataset[i], rng) if cfg.augment else self.dataset[i]
            inputs.append(
                prepare_sample(
                    sample,
                    self.img_size,
                    d.training_prompt,
                    cfg.max_objects or d.max_objects,
                    d.box_pad_range,
                    rng,
                    box_jitter=d.box_jitter,
                    **pixel_stats(self.supernet.sam),
                ).to(self.ctx.device)
            )
        return inputs

    # -- checkpoints -------------------------------------------------------------
    def progress_state(self) -> dict:
        return {
            "losses": self.result.losses,
            "history": self.result.history,
            "probes": self.result.probes,
            "target": self.target,
            "seconds": self.seconds(),
            "energy_kwh": self.kwh(),
            "eval_seconds": self.eval_seconds(),
            "eval_kwh": self.eval_kwh(),
        }

    def identity(self) -> dict:
        """Train settings plus ``data.*`` settings: what a resumed run must share."""
        return {
            **self.cfg.to_dict(),
            "supernet_digest": self.supernet_digest,
            **{f"data.{k}": v for k, v in vars(self.data_cfg).items()},
        }

    def resume_fields(self) -> tuple[str, ...]:
        """The identity keys a checkpoint must match to be resumed."""
        return (
            TRAJECTORY_FIELDS
            + INPUT_FIELDS
            + MEASUREMENT_FIELDS
            + tuple(k for k in self.identity() if k.startswith("data."))
        )

    def resumable(self) -> bool:
        """``--auto-resume``: :func:`supersam.runtime.resume.auto_resumable` for this run."""
        return ckpt.auto_resumable(
            self.out, self.identity(), self.resume_fields(), len(self.dataset), self.cfg.iterations
        )

    def save_checkpoint(self) -> None:
        if not self.ctx.is_main:
            return
        ckpt.save_training_state(
            ckpt.checkpoint_path(self.out),
            self.supernet,
            self.optimizer,
            self.scheduler,
            self.iteration,
            data_position(self.iteration, self.cfg.batch_size, len(self.dataset)),
            self.identity(),
            self.progress_state(),
        )

    def resume(self) -> None:
        """Load ``out/checkpoints/last.pt`` into this run (every rank reads it).

        Raises:
            CheckpointError: missing/unreadable file, changed settings or data set size.
        """
        path = ckpt.checkpoint_path(self.out)
        identity = self.identity()
        state = ckpt.restore_training_state(
            path, identity, self.resume_fields(), self.supernet, self.optimizer, self.scheduler, len(self.dataset)
        )
        self.iteration = int(state["iteration"])
        progress = state["progress"]
        self.result.losses, self.result.history = list(progress["losses"]), list(progress["history"])
        self.result.probes = list(progress.get("probes", []))
        self.target = dict(progress["target"])
        self.offset_seconds, self.offset_kwh = float(progress["seconds"]), float(progress["energy_kwh"])
        self.offset_eval_seconds = float(progress.get("eval_seconds", 0.0))
        self.offset_eval_kwh = float(progress.get("eval_kwh", 0.0))
        log.info("resumed from %s at iteration %d", path, self.iteration)

    # -- evaluation and logging --------------------------------------------------
    def evaluate(self, run, bar: TrainProgress, validate: bool = True) -> None:
        """Rank 0: validation (min/max/random subnets) and/or the target probe (min subnet only).

        ``validate`` False probes only the smallest subnet (``train.target_every``).
        Either way its mIoU updates the Table I milestone; the time and energy
        spent here are excluded from the training figures.
        """
        if self.ctx.is_main:
            with self.excluded():
                scores = self.probe() if validate else self.probe(("min",))
            seconds, kwh = self.seconds(), self.kwh()
            self.result.probes.append({"iteration": self.iteration, "miou_min": scores["miou_min"]})
            if update_target(self.target, scores["miou_min"], self.target_miou.value, self.iteration, seconds, kwh):
                log.info("smallest subnet reached mIoU %.3f at iteration %d", self.target_miou.value, self.iteration)
            if validate:
                since = [e["loss"] for e in self.result.losses if e["iteration"] > self._last_eval_iteration()]
                entry = {
                    "iteration": self.iteration,
                    **scores,
                    "loss": sum(since) / len(since) if since else None,
                    "seconds": seconds,
                    "energy_kwh": kwh,
                }
                self.result.history.append(entry)
                run.log_metrics(scores, step=self.iteration)
                bar.show_miou(scores)
            else:
                run.log_metrics({"miou_min_probe": scores["miou_min"]}, step=self.iteration)
        barrier(self.ctx)

    def _last_eval_iteration(self) -> int:
        return self.result.history[-1]["iteration"] if self.result.history else -1

    def record(self, step: StepResult, run) -> None:
        entry = {"iteration": self.iteration, "loss": step.loss, **step.loss_by_kind(), "lr": step.lr}
        if step.distill_loss is not None:  # distill_from: base: the weighted embedding + mask-logit MSE part
            entry["loss_distill"] = step.distill_loss
        self.result.losses.append(entry)
        self.result.subnets.append([s.to_dict() for s in step.subnets])
        if self.ctx.is_main and self.iteration % self.cfg.log_every == 0:
            run.log_metrics({k: v for k, v in entry.items() if k != "iteration"}, step=self.iteration)

    def due(self, every: int) -> bool:
        return every > 0 and self.iteration % every == 0

    # -- the run -----------------------------------------------------------------
    def run(
        self, resume: bool | str, stop_after: int | None, tracking: TrackingConfig, show_progress: bool
    ) -> TrainResult:
        """Train from iteration 0 (or the checkpoint) to ``cfg.iterations`` or ``stop_after``.

        ``resume``: True continues from the checkpoint (refusing a mismatch),
        ``"auto"`` continues only from a matching unfinished one (the DVC stage).

        The MLflow run opens first, so its duration covers reading the data, the
        probe, the base-model target and the training itself.
        """
        cfg, main = self.cfg, self.ctx.is_main
        stage = "finetune" if cfg.mode == "finetune" else "train"  # finetune: the plain fine-tuning baseline
        run_ctx = start_run(
            tracking if main else TrackingConfig(enabled=False),
            stage,
            self.meta.variant,
            params=self.mlflow_params(),
            tags={
                "pretrained": self.meta.pretrained,
                "energy_method": self.meter.method,
                "supernet_in": str(cfg.supernet_path),
            },
        )
        with run_ctx as run:
            self.prepare(run)
            if resume is True or (resume == "auto" and self.resumable()):
                self.resume()
            run.set_tags({"resumed_from": self.iteration})
            if main:
                self.meter.start()  # before the clock: codecarbon's start-up is not training time
            self._t0 = time.perf_counter()
            end = cfg.iterations if stop_after is None else min(cfg.iterations, stop_after)
            try:
                with TrainProgress(cfg.iterations, self.iteration, main and show_progress) as bar:
                    if not self.result.history:
                        self.evaluate(run, bar)
                    while self.iteration < end:
                        self.step(run, bar, end)
                    self.result.stopped = self.iteration < cfg.iterations
                    if main and not self.result.stopped:
                        self.finish(run)
            finally:
                self.meter.stop()
        barrier(self.ctx)
        return self.result

    def step(self, run, bar: TrainProgress, end: int) -> None:
        """One iteration, then the evaluation and checkpoint when due."""
        cfg = self.cfg
        step = train_step(
            self.supernet,
            self.optimizer,
            self.scheduler,
            self.params,
            self.local_batch(self.iteration),
            cfg.batch_size,
            self.iteration,
            cfg,
            self.ctx,
            self.base_model,
        )
        self.iteration += 1
        self.record(step, run)
        bar.advance(step.loss)
        if self.due(cfg.eval_every) or self.iteration == cfg.iterations:
            self.evaluate(run, bar)
        elif self.due(cfg.target_every):
            self.evaluate(run, bar, validate=False)
        if self.due(cfg.save_every) or self.iteration == end:
            with self.excluded():
                self.save_checkpoint()

    def mlflow_params(self) -> dict:
        params = {f"train.{k}": v for k, v in self.cfg.to_dict().items()}
        params.update({f"data.{k}": v for k, v in vars(self.data_cfg).items()})
        params.update(model_type=self.model_type, img_size=self.img_size, world_size=self.ctx.world_size)
        return params

    def finish(self, run) -> None:
        """Rank 0: write supernet.pt, metrics.json, history.json; log final metrics and tags."""
        last = self.result.history[-1]
        kwh, seconds = self.kwh(), self.seconds()
        kwh_total, seconds_total = kwh + self.eval_kwh(), seconds + self.eval_seconds()
        collapsed, reason = self.probe.collapse_check(last["miou_min"], "min")
        if collapsed:
            log.warning("the smallest subnet looks collapsed: %s", reason)
        metrics = {
            **{k: last[k] for k in ("miou_min", "miou_max", "miou_random")},
            **self.probe.baseline_metrics(),
            "collapsed": collapsed,
            "iterations": self.iteration,
            **self.target,
            **self.target_miou.report("target_miou", base_key=None),
            "metric": self.cfg.metric,
            "target_every": self.cfg.target_every,
            "val_images": self.probe.n_images,
            "val_objects": self.probe.n_objects,
            # Table I: training only; validation and target probes are counted apart
            "seconds": seconds,
            "energy_kwh": kwh,
            "co2_kg": self.meter.co2_kg(kwh),
            "seconds_total": seconds_total,
            "energy_kwh_total": kwh_total,
            "co2_kg_total": self.meter.co2_kg(kwh_total),
            "co2_kg_to_target": (
                None
                if self.target["energy_kwh_to_target"] is None
                else self.meter.co2_kg(self.target["energy_kwh_to_target"])
            ),
            "energy_method": self.meter.method,
            "energy_detail": self.meter.detail,
            "pretrained": self.meta.pretrained,
            **self.probe.params(),
            "final_loss": self.result.losses[-1]["loss"] if self.result.losses else None,
            "images_per_second": self.iteration * self.cfg.batch_size / seconds if seconds > 0 else None,
            "world_size": self.ctx.world_size,
        }
        self.supernet.meta = self.meta.with_provenance(
            "train",
            {
                "iterations": self.iteration,
                "seed": self.cfg.seed,
                "mode": self.cfg.mode,
                "source": str(self.cfg.supernet_path),
            },
        )
        save_supernet(self.out / paths.SUPERNET_FILE, self.supernet)
        artifacts = write_outputs(
            self.out, metrics, self.result.history, self.result.probes, title=f"{self.model_type} {self.meta.variant}"
        )
        # docs/contracts.md's common names: `miou`/`params` of the smallest subnet (paper Table I's subject)
        run.log_metrics(
            {**metrics, "miou": metrics["miou_min"], "params": metrics.get("params_min")}, step=self.iteration
        )
        run.set_tags(
            {
                "energy_method": metrics["energy_method"],
                "energy_detail": metrics["energy_detail"],
                "target_reached": str(metrics["iterations_to_target"] is not None).lower(),
                "supernet_out": str(self.out / paths.SUPERNET_FILE),
            }
        )
        for name in artifacts:
            run.log_artifact(str(self.out / name))
        self.result.metrics = metrics
        log.info(
            "trained %d iterations in %.1f s (%.3g kWh, %s): mIoU min %.3f max %.3f (trivial baselines: %s) -> %s",
            self.iteration,
            seconds,
            kwh,
            metrics["energy_method"],
            metrics["miou_min"],
            metrics["miou_max"],
            self.probe.describe_baselines(),
            self.out / paths.SUPERNET_FILE,
        )
