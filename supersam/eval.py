"""The ``eval`` stage: mIoU of plain SAM, an exported subnet, or a supernet subnet.

Writes ``metrics.json`` (``miou`` single mask, ``miou_oracle`` best of 3,
counts, params, speed, ``pretrained``), a few overlay PNGs, and an MLflow run
tagged ``stage=eval``. The same objects are evaluated with every prompt kind of
``eval.prompts``, each next to trivial baselines (:mod:`supersam.baselines`) and
an untrained model of the same architecture, so a collapsed model shows.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from supersam import paths
from supersam.baselines import kind_metrics, trivial_baselines, untrained_mious
from supersam.config import ModelConfig, TrackingConfig
from supersam.data import DataConfig, prepare_split
from supersam.data.config import PROMPTS, SPLITS
from supersam.device import resolve_device
from supersam.errors import ConfigError
from supersam.io import write_json
from supersam.overlays import save_overlay
from supersam.sam import build_sam_from_config, count_params
from supersam.scoring import run_eval
from supersam.tracking import start_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """params.yaml ``eval``.

    Attributes:
        model: exported subnet directory (``supersam export``); "" = plain SAM
            from the ``model`` section (or ``supernet`` below).
        supernet: supernet checkpoint to evaluate a subnet of; "" = none.
        subnet: subnet JSON file or inline JSON (with ``supernet``); "" = max subnet.
        split: ``test`` (the held-out split, default), ``train``, ``val`` or ``all``.
        n_images: images evaluated (0 = the whole split).
        prompt: ``point`` or ``box``: the headline ``miou``'s prompt kind; "" =
            the ``data`` section's.
        prompts: prompt kinds the same objects are also evaluated with
            (``miou_<kind>`` etc.); the headline kind is always included.
        out: output folder (metrics.json, overlays/); "" = ``runs/eval/<name>``
            (the pipeline passes ``outputs/eval/<name>``; :mod:`supersam.paths`).
        overlays: number of overlay PNGs to save.
        batch_size: images per encoder forward.
        device: ``auto``, ``cpu``, ``cuda``...
        amp: bf16 autocast.
        seed: seed of the image sample and prompt draw (fixed evaluation sample).
        name: label of this evaluation in MLflow (run name suffix / variant tag).
    """

    model: str = ""
    supernet: str = ""
    subnet: str = ""
    split: str = "test"
    n_images: int = 0
    prompt: str = ""
    prompts: tuple[str, ...] = ("box", "point")
    out: str = ""
    overlays: int = 4
    batch_size: int = 1
    device: str = "auto"
    amp: bool = False
    seed: int = 0
    name: str = ""

    def validate(self) -> None:
        """Check ranges and option combinations.

        Raises:
            ConfigError: naming the offending ``eval.<key>`` and the fix.
        """
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size must be >= 1, got {self.batch_size}")
        if self.overlays < 0 or self.n_images < 0:
            raise ConfigError("eval.overlays and eval.n_images must be >= 0")
        if self.split not in SPLITS:
            raise ConfigError(f"eval.split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.prompt and self.prompt not in PROMPTS:
            raise ConfigError(f"eval.prompt must be one of {', '.join(PROMPTS)} (or empty), got {self.prompt!r}")
        bad = [p for p in self.prompts if p not in PROMPTS]
        if bad or not self.prompts:
            raise ConfigError(f"eval.prompts must be a non-empty list of {', '.join(PROMPTS)}, "
                              f"got {list(self.prompts)!r}")
        if self.model and self.supernet:
            raise ConfigError("give either --model (an exported subnet) or --supernet, not both")
        if self.subnet and not self.supernet:
            raise ConfigError("--subnet needs --supernet (the supernet to cut it from)")


@dataclass
class LoadedForEval:
    """The model to evaluate and what describes it in the metrics."""

    model: torch.nn.Module
    info: dict


def load_for_eval(cfg: EvalConfig, model_cfg: ModelConfig) -> LoadedForEval:
    """Resolve which model ``cfg`` names: exported dir, supernet subnet, or plain SAM.

    Raises:
        ConfigError / CheckpointError: bad paths, subnet or checkpoint.
    """
    if cfg.model:
        from supersam.checkpoint import load_model, read_export_manifest

        model = load_model(cfg.model)
        manifest = read_export_manifest(cfg.model)
        info = {"source": f"export:{cfg.model}", "model_type": manifest.model_type, "variant": manifest.variant,
                "pretrained": manifest.pretrained, "subnet": manifest.subnet, "params": manifest.params}
        return LoadedForEval(model, info)
    if cfg.supernet:
        from supersam.checkpoint import load_supernet
        from supersam.space import SubnetConfig

        supernet = load_supernet(cfg.supernet)
        subnet = SubnetConfig.load(cfg.subnet) if cfg.subnet else supernet.space.max_subnet()
        supernet.set_active_subnet(subnet)
        meta = supernet.meta
        info = {"source": f"supernet:{cfg.supernet}", "model_type": meta.model_type, "variant": meta.variant,
                "pretrained": meta.pretrained, "subnet": subnet.to_dict(), "params": supernet.params(subnet)}
        return LoadedForEval(supernet.sam, info)
    loaded = build_sam_from_config(model_cfg)
    info = {"source": f"sam:{model_cfg.type}", "model_type": model_cfg.type, "pretrained": loaded.pretrained}
    return LoadedForEval(loaded.model, info)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        transient=True,
    )


def prompt_kinds(cfg: EvalConfig, data_cfg: DataConfig) -> list[str]:
    """Prompt kinds to evaluate: the headline kind (``eval.prompt`` or ``data.prompt``) first,
    then the other kinds of ``eval.prompts`` in their order, each once."""
    head = cfg.prompt or data_cfg.prompt
    return [head] + [k for k in dict.fromkeys(cfg.prompts) if k != head]


def evaluate(
    cfg: EvalConfig, model_cfg: ModelConfig, data_cfg: DataConfig, tracking: TrackingConfig
) -> dict:
    """Evaluate a model on a data split with box and point prompts (``supersam eval``).

    The same objects (``prepare_split`` under ``cfg.seed``) are prompted with
    every kind of :func:`prompt_kinds`; the images are encoded once per model.

    Returns:
        the metrics dict also written to ``<out>/metrics.json``: ``miou``
        (single mask), ``miou_oracle`` (best of 3) of the headline prompt kind
        (``prompt``), ``n_images``, ``n_objects``, ``params`` and
        ``encoder_params`` (params), ``img_size`` (px), ``pretrained``,
        ``seconds``, ``images_per_second``, ``split``, ``prompts``, and per
        prompt kind K: ``miou_K``, ``miou_oracle_K``, ``fg_fraction_K`` (share
        of image pixels predicted foreground, mean over objects),
        ``baseline_all_foreground_K``, ``baseline_box_fill_box`` /
        ``baseline_disk_point`` (:mod:`supersam.baselines`),
        ``baseline_untrained_K`` (:func:`untrained_mious`) and ``collapsed_K``;
        all mIoUs in [0, 1].

    Raises:
        ConfigError, CheckpointError, DataError: bad options, model or data.
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    loaded = load_for_eval(cfg, model_cfg)
    tags = {"pretrained": loaded.info["pretrained"], "name": cfg.name or loaded.info["source"]}
    with start_run(tracking, "eval", loaded.info.get("variant", ""), tags=tags) as run:
        metrics, out, saved = _evaluate(cfg, model_cfg, data_cfg, loaded, device, run)
        params = {k: metrics[k] for k in ("img_size", "prompt", "split", "model_type", "source")}
        params.update({"n_images_requested": cfg.n_images, "amp": cfg.amp, "prompts": ",".join(metrics["prompts"])})
        run.log_params(params)
        run.log_metrics({k: v for k, v in metrics.items() if k not in params})
        run.log_artifact(str(out / "metrics.json"))
        for path in saved:
            run.log_artifact(str(path), "overlays")
    return metrics


def _evaluate(cfg: EvalConfig, model_cfg: ModelConfig, data_cfg: DataConfig, loaded: LoadedForEval,
              device: torch.device, run) -> tuple[dict, Path, list[Path]]:
    """The evaluation itself: prepare every prompt kind's inputs, score, write metrics.json and overlays."""
    model = loaded.model.to(device)
    img_size = model.image_encoder.img_size
    kinds = prompt_kinds(cfg, data_cfg)
    head = kinds[0]
    data_cfg = dataclasses.replace(data_cfg, prompt=head)
    inputs = {kind: prepare_split(data_cfg, cfg.split, img_size, n_images=cfg.n_images, seed=cfg.seed,
                                  repeat=False, prompt=kind)
              for kind in kinds}
    run.log_dataset(data_cfg.root, cfg.split, len(inputs[head]), sum(inp.n_objects for inp in inputs[head]),
                    data_cfg.kind)
    out = Path(cfg.out or paths.user_eval_dir(cfg.name))
    (out / "overlays").mkdir(parents=True, exist_ok=True)  # a declared DVC output, even when empty
    saved: list[Path] = []

    def keep_overlay(inp, logits):
        if len(saved) < cfg.overlays:
            saved.append(save_overlay(inp, logits, out / "overlays" / f"{len(saved):02d}_{Path(inp.name).stem}.png"))

    with _progress() as bar:
        task = bar.add_task("eval", total=2 * len(inputs[head]))
        step = lambda n: bar.advance(task, n)  # noqa: E731
        result = run_eval(model, inputs[head], device, cfg.amp, cfg.batch_size, on_prediction=keep_overlay,
                          advance=step, also={k: inputs[k] for k in kinds[1:]})
        untrained = untrained_mious(loaded.info["model_type"], img_size, model_cfg.seed, inputs, device,
                                    cfg.amp, cfg.batch_size, advance=step)
    by_kind = {head: result, **result.get("also", {})}
    params = loaded.info.get("params") or count_params(model)
    metrics = {
        "miou": result["miou"], "miou_oracle": result["miou_oracle"],
        "n_images": result["n_images"], "n_objects": result["n_objects"],
        "params": int(params), "encoder_params": _encoder_params(loaded),
        "img_size": img_size, "pretrained": loaded.info["pretrained"],
        "seconds": result["seconds"], "images_per_second": result["images_per_second"],
        "encoder_seconds": result["encoder_seconds"], "prompt": head, "prompts": kinds,
        "split": cfg.split, "model_type": loaded.info["model_type"], "source": loaded.info["source"],
        "variant": loaded.info.get("variant", ""),
    }
    log.info("mIoU %.4f (single mask), %.4f (oracle best of 3) with %s prompts on %d objects in %d images "
             "of the %s split", metrics["miou"], metrics["miou_oracle"], head, metrics["n_objects"],
             metrics["n_images"], cfg.split)
    for kind in kinds:
        metrics.update(kind_metrics(kind, by_kind[kind], trivial_baselines(inputs[kind]), untrained[kind]))
    if loaded.info.get("subnet"):
        metrics["subnet"] = loaded.info["subnet"]
    write_json(out / "metrics.json", metrics)
    log.info("wrote %s", out / "metrics.json")
    return metrics, out, saved


def _encoder_params(loaded: LoadedForEval) -> int:
    subnet = loaded.info.get("subnet")
    if subnet and loaded.info.get("params") is not None:
        encoder = loaded.model.image_encoder
        total = count_params(loaded.model)
        return int(loaded.info["params"] - (total - count_params(encoder)))
    return count_params(loaded.model.image_encoder)
