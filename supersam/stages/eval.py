"""The ``eval`` stage: mIoU of plain SAM, an exported subnet, or a supernet subnet.

Writes ``metrics.json`` (``miou`` single mask, ``miou_oracle`` best of 3,
counts, params, speed, ``pretrained``), ``objects.csv`` (one row per object and
prompt kind), ``predictions/<kind>.json`` (COCO results with RLE masks), overlay
PNGs at the images' own resolution, and an MLflow run tagged ``stage=eval``.
The same objects are evaluated with every prompt kind of ``eval.prompts``, each
next to trivial baselines (:mod:`supersam.measure.baselines`) and an untrained model of
the same architecture, so a collapsed model shows. Images are normalised with
the evaluated model's own pixel statistics.

The pipeline (no ``--data-root``) reads params.yaml's ``data`` section as is; a
user's own folder (``--data-root``) gets :data:`USER_FOLDER_DEFAULTS` first
(whole images, every object, tight boxes, no split), which ``--set`` and the
command's flags override.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from supersam.artifacts import paths
from supersam.data import DataConfig, prepare_split
from supersam.data.config import PROMPTS, SPLITS
from supersam.data.types import ModelInput
from supersam.measure.baselines import kind_metrics, trivial_baselines, untrained_mious
from supersam.measure.metrics import object_ious
from supersam.measure.scoring import run_eval
from supersam.model.sam import build_sam_from_config, count_params, pixel_stats
from supersam.runtime.device import resolve_device
from supersam.runtime.errors import ConfigError
from supersam.runtime.io import make_temp_dir, publish, write_csv, write_json
from supersam.runtime.outdir import check_user_out, prepare_out, releases_claims
from supersam.runtime.overlays import overlay_name, save_overlay
from supersam.runtime.tracking import start_run
from supersam.schema import ModelConfig, TrackingConfig, metric_key

if TYPE_CHECKING:
    from supersam.measure.everything import EverythingConfig

log = logging.getLogger(__name__)

USER_FOLDER_DEFAULTS: dict[str, Any] = {
    "data.patch": 0,
    "data.max_objects": 0,
    "data.box_pad": "0",
    "data.min_area": 0,
    "data.max_images": 0,
    "data.val_images": "",
    "data.val_labels": "",
    "data.test_images": "",
    "data.test_labels": "",
    "eval.split": "all",
}
"""Settings applied when ``supersam eval`` is given ``--data-root`` (a user's own folder): whole
images, every object once (any size), tight boxes, every image of the folder (no split). They sit
between the params file and ``--set``/flags; ``data.label_mode`` and the rest stay the params file's."""

OBJECT_COLUMNS = [
    "image",
    "tile_y0",
    "tile_x0",
    "object_id",
    "category",
    "prompt",
    "box_x0",
    "box_y0",
    "box_x1",
    "box_y1",
    "point_x",
    "point_y",
    "area",
    "iou",
    "iou_oracle",
    "predicted_iou",
    "stability_score",
]
"""Columns of ``objects.csv`` (docs/contracts.md, "Evaluation outputs")."""


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
        metric: ``single`` or ``oracle`` (params.yaml's top-level ``metric``): which of
            ``miou`` / ``miou_oracle`` is the headline (``headline_miou``); both are reported.
        out: output folder (metrics.json, overlays/); "" = ``runs/eval/<name>``
            (the pipeline passes ``outputs/eval/<name>``; :mod:`supersam.artifacts.paths`).
        overlays: number of images (tiles) drawn as overlay PNGs (the first of the split).
        batch_size: images per encoder forward.
        device: ``auto``, ``cpu``, ``cuda``...
        amp: bf16 autocast.
        seed: seed of the image sample and prompt draw (fixed evaluation sample).
        name: label of this evaluation in MLflow (run name suffix / variant tag).
        everything: also run everything mode (:mod:`supersam.measure.everything`) on each image of the
            split and report the recall of its ground-truth objects (``everything_recall_50`` /
            ``_75``: share matched at IoU >= 0.5 / 0.75 by some generated mask), next to the
            all-foreground mask and the untrained model run the same way.
        points_per_side: the everything-mode grid (points_per_side x points_per_side points).
        pred_iou_thresh, stability_score_thresh: everything mode's mask filters (SAM's 0.88 / 0.95).
        runtime: ``torch`` (the model's PyTorch weights) or ``onnxruntime``: the ONNX graphs
            of the ``model`` export folder (``export --format onnx``;
            :class:`supersam.model.onnx_runtime.OnnxSam`), the deployed model itself.
        precision: with ``onnxruntime``: which exported graphs run, ``fp32``, ``fp16`` or
            ``int8`` (``export --precision``); ``torch`` runs fp32 (``amp`` for bf16).
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
    metric: str = "single"
    everything: bool = False
    points_per_side: int = 32
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    runtime: str = "torch"
    precision: str = "fp32"

    def everything_config(self) -> EverythingConfig:
        """The everything-mode settings of this evaluation (:class:`supersam.measure.everything.EverythingConfig`)."""
        from supersam.measure.everything import EverythingConfig

        return EverythingConfig(
            points_per_side=self.points_per_side,
            pred_iou_thresh=self.pred_iou_thresh,
            stability_score_thresh=self.stability_score_thresh,
        )

    def validate(self) -> None:
        """Check ranges and option combinations.

        Raises:
            ConfigError: naming the offending ``eval.<key>`` and the fix.
        """
        metric_key(self.metric, "metric")
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
            raise ConfigError(
                f"eval.prompts must be a non-empty list of {', '.join(PROMPTS)}, got {list(self.prompts)!r}"
            )
        if self.model and self.supernet:
            raise ConfigError("give either --model (an exported subnet) or --supernet, not both")
        if self.subnet and not self.supernet:
            raise ConfigError("--subnet needs --supernet (the supernet to cut it from)")
        from supersam.model.onnx import PRECISIONS
        from supersam.model.onnx_runtime import RUNTIMES

        if self.runtime not in RUNTIMES:
            raise ConfigError(f"eval.runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"eval.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.runtime == "onnxruntime" and not self.model:
            raise ConfigError(
                "eval --runtime onnxruntime runs an export's ONNX graphs; pass --model EXPORT_DIR "
                "(written by supersam export --format onnx)"
            )
        if self.amp and self.runtime != "torch":
            raise ConfigError(
                "eval --amp is for PyTorch (bf16 autocast); with --runtime onnxruntime pick the graphs' "
                "precision with --precision fp16|int8"
            )
        if self.everything and self.runtime != "torch":
            raise ConfigError(
                "eval --everything runs SAM's automatic mask generator in PyTorch; drop --runtime onnxruntime"
            )
        if self.precision != "fp32" and self.runtime != "onnxruntime":
            raise ConfigError(
                f"eval --precision {self.precision} runs exported ONNX graphs; add --runtime onnxruntime "
                "(PyTorch runs fp32, or bf16 with --amp)"
            )
        if self.everything:
            self.everything_config().validate()
        if self.name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", self.name):
            raise ConfigError(
                f"eval --name {self.name!r} must be a plain name (letters, digits, '.', '_', '-'; "
                "no '/' or '..'): it names runs/eval/<name>; use --out for another folder"
            )


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
        from supersam.model.checkpoint import load_model, read_export_manifest

        model = load_model(cfg.model)
        manifest = read_export_manifest(cfg.model)
        info = {
            "source": f"export:{cfg.model}",
            "model_type": manifest.model_type,
            "variant": manifest.variant,
            "pretrained": manifest.pretrained,
            "subnet": manifest.subnet,
            "params": manifest.params,
            "encoder_params": count_params(model.image_encoder),
            "runtime": cfg.runtime,
            "precision": cfg.precision,
        }
        if cfg.runtime == "onnxruntime":
            from supersam.model.onnx_runtime import OnnxSam

            # device auto: the CPU provider (the declared onnxruntime is the CPU build); cuda asks for CUDA's
            device = torch.device("cpu") if cfg.device == "auto" else resolve_device(cfg.device)
            model = OnnxSam(cfg.model, cfg.precision, device)
        return LoadedForEval(model, info)
    if cfg.supernet:
        from supersam.model.checkpoint import load_supernet
        from supersam.model.space import SubnetConfig

        supernet = load_supernet(cfg.supernet)
        subnet = SubnetConfig.load(cfg.subnet) if cfg.subnet else supernet.space.max_subnet()
        supernet.set_active_subnet(subnet)
        meta = supernet.meta
        info = {
            "source": f"supernet:{cfg.supernet}",
            "model_type": meta.model_type,
            "variant": meta.variant,
            "pretrained": meta.pretrained,
            "subnet": subnet.to_dict(),
            "params": supernet.params(subnet),
        }
        return LoadedForEval(supernet.sam, info)
    loaded = build_sam_from_config(model_cfg)
    info = {"source": f"sam:{model_cfg.type}", "model_type": model_cfg.type, "pretrained": loaded.pretrained}
    return LoadedForEval(loaded.model, info)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]eval"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    )


def prompt_kinds(cfg: EvalConfig, data_cfg: DataConfig) -> list[str]:
    """Prompt kinds to evaluate: the headline kind (``eval.prompt`` or ``data.prompt``) first,
    then the other kinds of ``eval.prompts`` in their order, each once."""
    head = cfg.prompt or data_cfg.prompt
    return [head] + [k for k in dict.fromkeys(cfg.prompts) if k != head]


# What an evaluation writes into its folder (anything else there is the user's: outdir.prepare_out)
EVAL_FILES = (paths.METRICS_FILE, paths.OBJECTS_FILE, paths.PREDICTIONS_DIR, paths.OVERLAYS_DIR)
PUBLISH_ORDER = (paths.OVERLAYS_DIR, paths.PREDICTIONS_DIR, paths.OBJECTS_FILE, paths.METRICS_FILE)


@releases_claims
def evaluate(
    cfg: EvalConfig, model_cfg: ModelConfig, data_cfg: DataConfig, tracking: TrackingConfig, force: bool = False
) -> dict:
    """Evaluate a model on a data split with box and point prompts (``supersam eval``).

    The same objects (``prepare_split`` under ``cfg.seed``) are prompted with
    every kind of :func:`prompt_kinds`; the images are encoded once per model.

    Returns:
        the metrics dict also written to ``<out>/metrics.json``: ``miou`` (single mask), ``miou_oracle`` (best of 3)
        of the headline prompt kind (``prompt``), ``headline_miou`` (the one of the two ``metric`` names),
        ``n_images``, ``n_objects``, ``params`` and ``encoder_params`` (params), ``img_size`` (px), ``pretrained``,
        ``seconds``, ``images_per_second``, ``split``, ``prompts``, and per prompt kind K: ``miou_K``,
        ``miou_oracle_K``, ``fg_fraction_K`` (share of image pixels predicted foreground, mean over objects),
        ``baseline_all_foreground_K``, ``baseline_box_fill_box`` /
        ``baseline_disk_point`` (:mod:`supersam.measure.baselines`),
        ``baseline_untrained_K`` (:func:`untrained_mious`) and ``collapsed_K``;
        all mIoUs in [0, 1]; ``data`` (the data settings applied) and
        ``objects_csv``, ``predictions`` (file names). ``miou`` is the mean of
        ``objects.csv``'s ``iou`` over the rows whose ``prompt`` is ``prompt``
        (``miou_K`` over the rows of kind K).

    Args:
        force: write into an output folder that holds files eval did not write
            (only eval's own names are replaced).

    Raises:
        ConfigError, CheckpointError, DataError: bad options, model or data; an
            output folder holding other files (without ``force``) or not writable.
    """
    cfg.validate()
    out = prepare_out(
        check_user_out(cfg.out or paths.user_eval_dir(cfg.name), "eval --out"), EVAL_FILES, "eval --out", force
    )
    device = resolve_device(cfg.device)
    loaded = load_for_eval(cfg, model_cfg)
    tags = {"pretrained": loaded.info["pretrained"], "name": cfg.name or loaded.info["source"]}
    stage = make_temp_dir(out / "results")  # written whole, then published: a failure keeps the previous eval
    try:
        with start_run(tracking, "eval", loaded.info.get("variant", ""), tags=tags) as run:
            metrics, saved = _evaluate(cfg, model_cfg, data_cfg, loaded, device, run, stage)
            publish(stage, out, PUBLISH_ORDER)  # metrics.json last: it says the rest is complete
            _log_run(run, metrics, cfg, out, [out / p.relative_to(stage) for p in saved])
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return metrics


def _log_run(run, metrics: dict[str, Any], cfg: EvalConfig, out: Path, saved: list[Path]) -> None:
    """The evaluation's MLflow params, metrics and artifacts (the published files in ``out``)."""
    params = {k: metrics[k] for k in ("img_size", "prompt", "split", "model_type", "source", "metric")}
    params.update({"n_images_requested": cfg.n_images, "amp": cfg.amp, "prompts": ",".join(metrics["prompts"])})
    params.update({f"data.{k}": v for k, v in metrics["data"].items()})
    run.log_params(params)
    run.log_metrics({k: v for k, v in metrics.items() if k not in params})
    run.log_artifact(str(out / paths.METRICS_FILE))
    run.log_artifact(str(out / paths.OBJECTS_FILE))
    run.log_artifact(str(out / paths.PREDICTIONS_DIR), paths.PREDICTIONS_DIR)
    for path in saved:
        run.log_artifact(str(path), paths.OVERLAYS_DIR)


class _Collector:
    """Per prediction: RLE masks for the COCO results, and the first ``n_overlays`` head-kind overlays."""

    def __init__(self, head: str, out: Path, n_overlays: int, tiled: bool) -> None:
        self.head, self.out, self.n_overlays, self.tiled = head, out, n_overlays, tiled
        self.rles: dict[str, list[dict]] = {}
        self.saved: list[Path] = []

    def __call__(self, key: str | None, inp: ModelInput, single: torch.Tensor) -> None:
        import pycocotools.mask as mask_utils

        kind = key or self.head
        pred = (single[:, 0] > 0).cpu().numpy()  # N x H x W
        encoded = mask_utils.encode(np.asfortranarray(np.moveaxis(pred, 0, -1).astype(np.uint8)))
        self.rles.setdefault(kind, []).extend(
            {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")} for r in encoded
        )
        if kind == self.head and len(self.saved) < self.n_overlays and inp.raw_image is not None:
            meta = inp.meta
            ious = object_ious(single, inp.gt_masks, inp.ignore)[:, 0].tolist()
            path = self.out / paths.OVERLAYS_DIR / overlay_name(meta.source, meta.origin, self.tiled)
            ignore = None if inp.ignore is None else inp.ignore.cpu().numpy()
            self.saved.append(
                save_overlay(
                    inp.raw_image,
                    pred,
                    meta.prompts,
                    meta.prompt,
                    path,
                    gt=inp.gt_masks.cpu().numpy(),
                    ious=ious,
                    ignore=ignore,
                    labels=[f"#{i}" for i in meta.ids],
                    title=f"{kind} prompts, mIoU {float(np.mean(ious)):.3f}" if ious else f"{kind} prompts",
                )
            )


def object_rows(kind: str, inputs: list[ModelInput], objects: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """``objects.csv`` rows of one prompt kind: one per object, in input order.

    Prompt coordinates are in pixels of the evaluated image (tile): add
    ``tile_x0``/``tile_y0`` for the source image. ``area`` is the ground-truth
    mask's pixels (void excluded); the IoU columns come from ``run_eval``'s
    per-object numbers, so their mean over the rows of a kind is ``miou_<kind>``.
    """
    rows: list[dict[str, Any]] = []
    columns = {k: v.tolist() for k, v in objects.items()}
    index = 0
    for inp in inputs:
        meta = inp.meta
        areas = inp.gt_masks.flatten(1).sum(1).tolist()
        for j in range(inp.n_objects):
            p = [float(v) for v in meta.prompts[j]]
            row = {
                "image": meta.source,
                "tile_y0": int(meta.origin[0]),
                "tile_x0": int(meta.origin[1]),
                "object_id": int(meta.ids[j]),
                "category": int(meta.categories[j]),
                "prompt": kind,
                "box_x0": None,
                "box_y0": None,
                "box_x1": None,
                "box_y1": None,
                "point_x": None,
                "point_y": None,
                "area": int(areas[j]),
            }
            if kind == "box":
                row.update(box_x0=p[0], box_y0=p[1], box_x1=p[2], box_y1=p[3])
            else:
                row.update(point_x=p[0], point_y=p[1])
            row.update({k: columns[k][index] for k in ("iou", "iou_oracle", "predicted_iou", "stability_score")})
            rows.append(row)
            index += 1
    return rows


def coco_results(kind: str, inputs: list[ModelInput], rles: list[dict], objects: dict[str, torch.Tensor]) -> list[dict]:
    """COCO results (``loadRes`` format) of one prompt kind: ``image_id``, ``category_id``,
    ``segmentation`` (RLE, counts as text), ``score`` (SAM's predicted IoU), plus ``object_id``,
    ``file_name`` (the evaluated image or tile), ``prompt`` and ``iou``."""
    out, index = [], 0
    predicted, ious = objects["predicted_iou"].tolist(), objects["iou"].tolist()
    for inp in inputs:
        meta = inp.meta
        for j in range(inp.n_objects):
            out.append(
                {
                    "image_id": meta.image_id,
                    "category_id": int(meta.categories[j]),
                    "segmentation": rles[index],
                    "score": predicted[index],
                    "object_id": int(meta.ids[j]),
                    "file_name": inp.name,
                    "prompt": kind,
                    "iou": ious[index],
                }
            )
            index += 1
    return out


def _data_settings(data_cfg: DataConfig) -> dict[str, Any]:
    keys = (
        "root",
        "kind",
        "images",
        "labels",
        "label_mode",
        "ignore_label",
        "patch",
        "min_area",
        "max_objects",
        "box_pad",
        "point",
    )
    return {k: getattr(data_cfg, k) for k in keys}


def _evaluate(
    cfg: EvalConfig,
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    loaded: LoadedForEval,
    device: torch.device,
    run,
    out: Path,
) -> tuple[dict, list[Path]]:
    """The evaluation itself: prepare every prompt kind's inputs, score, write metrics, objects, predictions,
    overlays into ``out`` (the staging folder); returns (metrics, the overlays written)."""
    model = loaded.model.to(device)
    img_size = model.image_encoder.img_size
    kinds = prompt_kinds(cfg, data_cfg)
    head = kinds[0]
    data_cfg = dataclasses.replace(data_cfg, prompt=head)
    stats = pixel_stats(model)
    inputs = {
        # lazy: each pass reads and prepares one image at a time, so memory stays flat in the split's size
        kind: prepare_split(
            data_cfg,
            cfg.split,
            img_size,
            n_images=cfg.n_images,
            seed=cfg.seed,
            repeat=False,
            prompt=kind,
            lazy=True,
            **stats,
        )
        for kind in kinds
    }
    run.log_dataset(
        data_cfg.root, cfg.split, len(inputs[head]), sum(inp.n_objects for inp in inputs[head]), data_cfg.kind
    )
    (out / paths.OVERLAYS_DIR).mkdir(parents=True, exist_ok=True)  # a declared DVC output, even when empty
    collect = _Collector(head, out, cfg.overlays, tiled=data_cfg.patch > 0)

    with _progress() as bar:
        task = bar.add_task("eval", total=2 * len(inputs[head]))
        step = lambda n: bar.advance(task, n)  # noqa: E731
        result = run_eval(
            model,
            inputs[head],
            device,
            cfg.amp,
            cfg.batch_size,
            advance=step,
            also={k: inputs[k] for k in kinds[1:]},
            per_object=True,
            on_decoded=collect,
        )
        untrained = untrained_mious(
            loaded.info["model_type"], img_size, model_cfg.seed, inputs, device, cfg.amp, cfg.batch_size, advance=step
        )
    by_kind = {head: result, **result.get("also", {})}
    params = loaded.info.get("params") or count_params(model)
    metrics = {
        "miou": result["miou"],
        "miou_oracle": result["miou_oracle"],
        "metric": cfg.metric,
        "headline_miou": result[metric_key(cfg.metric)],
        "n_images": result["n_images"],
        "n_objects": result["n_objects"],
        "params": int(params),
        "encoder_params": _encoder_params(loaded),
        "img_size": img_size,
        "pretrained": loaded.info["pretrained"],
        "seconds": result["seconds"],
        "images_per_second": result["images_per_second"],
        "encoder_seconds": result["encoder_seconds"],
        "prompt": head,
        "prompts": kinds,
        "split": cfg.split,
        "model_type": loaded.info["model_type"],
        "source": loaded.info["source"],
        "variant": loaded.info.get("variant", ""),
        "runtime": cfg.runtime,
        "precision": cfg.precision,
    }
    log.info(
        "mIoU (%s) %.4f; single mask %.4f, oracle best of 3 %.4f, with %s prompts on %d objects in %d "
        "images of the %s split",
        cfg.metric,
        metrics["headline_miou"],
        metrics["miou"],
        metrics["miou_oracle"],
        head,
        metrics["n_objects"],
        metrics["n_images"],
        cfg.split,
    )
    for kind in kinds:
        metrics.update(kind_metrics(kind, by_kind[kind], trivial_baselines(inputs[kind]), untrained[kind]))
    if cfg.everything:
        metrics.update(everything_metrics(cfg, model, loaded.info["model_type"], model_cfg.seed, inputs[head], device))
    if loaded.info.get("subnet"):
        metrics["subnet"] = loaded.info["subnet"]
    rows = [row for kind in kinds for row in object_rows(kind, inputs[kind], by_kind[kind]["objects"])]
    write_csv(out / paths.OBJECTS_FILE, OBJECT_COLUMNS, rows)
    predictions = {}
    for kind in kinds:
        name = f"{paths.PREDICTIONS_DIR}/{kind}.json"
        write_json(out / name, coco_results(kind, inputs[kind], collect.rles[kind], by_kind[kind]["objects"]))
        predictions[kind] = name
    metrics.update(
        {
            "data": _data_settings(data_cfg),
            "pixel_mean": list(stats["pixel_mean"]),
            "pixel_std": list(stats["pixel_std"]),
            "objects_csv": paths.OBJECTS_FILE,
            "predictions": predictions,
        }
    )
    write_json(out / paths.METRICS_FILE, metrics)
    log.info(
        "wrote %s (%d objects x %d prompt kinds in %s; miou = mean iou of its %s rows), %s, %d overlays",
        out / paths.METRICS_FILE,
        metrics["n_objects"],
        len(kinds),
        paths.OBJECTS_FILE,
        head,
        ", ".join(predictions.values()),
        len(collect.saved),
    )
    return metrics, collect.saved


def everything_metrics(
    cfg: EvalConfig, model: torch.nn.Module, model_type: str, seed: int, inputs: list[ModelInput], device: torch.device
) -> dict[str, Any]:
    """Everything-mode recall of the evaluated objects (``eval --everything``), beside two baselines.

    Each image (tile) of ``inputs`` is segmented from a ``cfg.points_per_side`` grid; a ground-truth
    object counts as found at IoU t when some generated mask reaches t with it (void pixels left out).
    The all-foreground baseline is one whole-image mask; the components baseline proposes every connected
    region of the Otsu-thresholded image (:func:`supersam.measure.everything.component_masks`); the untrained
    baseline is the untrained model of ``model_type`` (seed ``seed``, as in
    :func:`supersam.measure.baselines.untrained_mious`) run the same way.

    Returns:
        ``everything_recall_50``, ``everything_recall_75``, ``everything_mean_best_iou`` (in [0, 1]),
        ``everything_masks_per_image``, ``everything_seconds_per_image`` and
        ``everything_encoder_seconds_per_image`` (s), ``baseline_components_everything_masks_per_image``,
        ``everything_points_per_side``,
        ``everything_pred_iou_thresh``, ``everything_stability_score_thresh``, and
        ``baseline_all_foreground_everything_recall_50``/``_75``, ``baseline_components_everything_recall_50``/``_75``
        and ``baseline_untrained_everything_recall_50``/``_75``.

    Raises:
        DataError: an image smaller than the grid, or no objects.
    """
    from supersam.measure.baselines import _quiet_random_init
    from supersam.measure.everything import best_ious, component_masks, generate, recall
    from supersam.model.sam import build_sam

    settings = cfg.everything_config()
    for inp in inputs:
        settings.check_image(inp.original_size, f"image {inp.name}")

    def run(sam: torch.nn.Module) -> tuple[dict[str, float], list]:
        best, results = [], []
        for inp in inputs:
            result = generate(sam, inp.raw_image, settings)
            ignore = None if inp.ignore is None else inp.ignore.cpu().numpy()
            best.append(best_ious(inp.gt_masks.cpu().numpy(), result.masks, ignore))
            results.append(result)
        return recall(np.concatenate(best)), results

    ours, results = run(model)
    with _quiet_random_init():
        untrained = build_sam(model_type, model.image_encoder.img_size, None, seed=seed).model.to(device)
    baseline_untrained, _ = run(untrained)
    del untrained
    whole = []
    for inp in inputs:  # one mask covering the whole image: IoU = object area / image area (void excluded)
        gt = inp.gt_masks.cpu().numpy().reshape(inp.n_objects, -1)
        keep = np.ones(gt.shape[1], bool) if inp.ignore is None else ~inp.ignore.cpu().numpy().reshape(-1)
        whole.append((gt & keep).sum(1) / max(int(keep.sum()), 1))
    baseline_whole = recall(np.concatenate(whole))
    components, n_components = [], 0
    for inp in inputs:  # the classical proposal: connected regions of the Otsu-thresholded image
        ignore = None if inp.ignore is None else inp.ignore.cpu().numpy()
        proposals = component_masks(inp.raw_image)
        n_components += len(proposals)
        components.append(best_ious(inp.gt_masks.cpu().numpy(), proposals, ignore))
    baseline_components = recall(np.concatenate(components))
    n = len(results)
    metrics = {f"everything_{k}": v for k, v in ours.items()}
    metrics.update(
        {
            "everything_masks_per_image": sum(len(r.masks) for r in results) / n,
            "everything_seconds_per_image": sum(r.seconds for r in results) / n,
            "everything_encoder_seconds_per_image": sum(r.encoder_seconds for r in results) / n,
            "baseline_components_everything_masks_per_image": n_components / n,
            "everything_points_per_side": settings.points_per_side,
            "everything_pred_iou_thresh": settings.pred_iou_thresh,
            "everything_stability_score_thresh": settings.stability_score_thresh,
        }
    )
    for key in ("recall_50", "recall_75"):
        metrics[f"baseline_all_foreground_everything_{key}"] = baseline_whole[key]
        metrics[f"baseline_untrained_everything_{key}"] = baseline_untrained[key]
        metrics[f"baseline_components_everything_{key}"] = baseline_components[key]
    log.info(
        "everything mode (%d x %d grid): recall %.3f at IoU 0.5, %.3f at 0.75 (all-foreground %.3f / %.3f, "
        "Otsu components %.3f / %.3f, untrained %.3f / %.3f); %.1f masks and %.2f s per image",
        settings.points_per_side,
        settings.points_per_side,
        ours["recall_50"],
        ours["recall_75"],
        baseline_whole["recall_50"],
        baseline_whole["recall_75"],
        baseline_components["recall_50"],
        baseline_components["recall_75"],
        baseline_untrained["recall_50"],
        baseline_untrained["recall_75"],
        metrics["everything_masks_per_image"],
        metrics["everything_seconds_per_image"],
    )
    return metrics


def _encoder_params(loaded: LoadedForEval) -> int:
    if "encoder_params" in loaded.info:  # an export: counted on its PyTorch weights
        return int(loaded.info["encoder_params"])
    subnet = loaded.info.get("subnet")
    if subnet and loaded.info.get("params") is not None:
        encoder = loaded.model.image_encoder
        total = count_params(loaded.model)
        return int(loaded.info["params"] - (total - count_params(encoder)))
    return count_params(loaded.model.image_encoder)
