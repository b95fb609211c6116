"""``supersam eval``: parse options, then call :func:`supersam.stages.eval.evaluate`."""

from __future__ import annotations

from pathlib import Path

import typer

from supersam.cli.app import app, load_params, params_option, set_option

DATA_HELP = "Data (params `data`; with --data-root the defaults are a user folder's: see the command help)"


@app.command("eval")
def eval_cli(
    params: Path = params_option(),
    sets: list[str] = set_option(),
    model: str | None = typer.Option(
        None, help="Exported subnet folder (supersam export); default: the base model of params `model`."
    ),
    supernet: str | None = typer.Option(None, help="Supernet checkpoint; evaluates --subnet (default its max subnet)."),
    subnet: str | None = typer.Option(None, help="Subnet JSON file or inline JSON, with --supernet."),
    checkpoint: str | None = typer.Option(
        None, help="SAM checkpoint to evaluate when neither --model nor --supernet is given (params model.checkpoint)."
    ),
    data_root: str | None = typer.Option(
        None,
        "--data-root",
        help="Your own data folder (params data.root); switches to the user-folder defaults below.",
        rich_help_panel=DATA_HELP,
    ),
    images: str | None = typer.Option(
        None, help="Image folder or file under the data root (data.images, default image).", rich_help_panel=DATA_HELP
    ),
    labels: str | None = typer.Option(
        None, help="Label folder or file under the data root (data.labels, default label).", rich_help_panel=DATA_HELP
    ),
    label_mode: str | None = typer.Option(
        None,
        "--label-mode",
        help=(
            "How label images become objects: instance (each id), binary (connected foreground regions), semantic "
            "(each class's connected regions) (data.label_mode)."
        ),
        rich_help_panel=DATA_HELP,
    ),
    ignore_label: int | None = typer.Option(
        None,
        "--ignore-label",
        help=(
            "Label value of void pixels: never an object, excluded from every IoU (e.g. 255 for Pascal VOC; "
            "data.ignore_label, -1 = none)."
        ),
        rich_help_panel=DATA_HELP,
    ),
    max_objects: int | None = typer.Option(
        None,
        "--max-objects",
        help="Objects per image, a seeded random subset when more; 0 = all (data.max_objects).",
        rich_help_panel=DATA_HELP,
    ),
    patch: int | None = typer.Option(
        None, help="Cut images into PATCH x PATCH px tiles; 0 = whole images (data.patch).", rich_help_panel=DATA_HELP
    ),
    box_pad: str | None = typer.Option(
        None,
        "--box-pad",
        help=(
            "Box prompt padding per side: N = fixed N px (0 = tight boxes), LO-HI = a seeded random LO..HI px, e.g. "
            "0-20 (data.box_pad)."
        ),
        rich_help_panel=DATA_HELP,
    ),
    min_area: int | None = typer.Option(
        None, "--min-area", help="Drop objects smaller than this many px (data.min_area).", rich_help_panel=DATA_HELP
    ),
    split: str | None = typer.Option(
        None,
        help="test, val, train or all (every image of the folder, no split) (eval.split).",
        rich_help_panel=DATA_HELP,
    ),
    overlays: int | None = typer.Option(None, help="Number of images drawn as overlay PNGs (eval.overlays)."),
    name: str | None = typer.Option(
        None, help="Label of this evaluation (MLflow run; default output folder runs/eval/<name>)."
    ),
    out: str | None = typer.Option(
        None,
        help=(
            "Output folder for metrics.json, objects.csv, predictions/ and overlays/ (default runs/eval/<name>; the "
            "pipeline writes outputs/eval/<name>)."
        ),
    ),
    force: bool = typer.Option(False, "--force", help="Write into an OUT that holds files eval did not write."),
    everything: bool | None = typer.Option(
        None,
        "--everything/--no-everything",
        help=(
            "Also segment everything (point grid) on each image and report the recall of its objects at IoU 0.5 and "
            "0.75 (eval.everything)."
        ),
    ),
    runtime: str | None = typer.Option(
        None,
        help=(
            "torch (default) or onnxruntime: run the --model export's ONNX graphs (export --format onnx), "
            "the deployed model itself."
        ),
    ),
    precision: str | None = typer.Option(
        None, help="With --runtime onnxruntime: fp32 (default), fp16 or int8 graphs (export --precision)."
    ),
    points_per_side: int | None = typer.Option(
        None, "--points-per-side", help="Everything mode's grid: N x N points (eval.points_per_side, SAM's 32)."
    ),
) -> None:
    """Evaluate SAM, an exported subnet or a supernet subnet: mIoU next to trivial baselines, per-object CSV, COCO
    results, overlays, MLflow run.

    Without --data-root (the pipeline) the data settings are params.yaml's `data` section as is
    (the default profile: 256 px tiles of the held-out test split). With --data-root DIR (your own
    folder of image/ and label/ files paired by name) they are a user folder's: whole images
    (--patch 0), every object once (--max-objects 0, --min-area 0), tight boxes (--box-pad 0) and every
    image (--split all); --label-mode stays params.yaml's (binary) unless given. --set and the flags
    above override either, e.g.:

        supersam eval --model outputs/export/model --data-root DIR --label-mode instance --ignore-label 255 --out OUT
    """
    from supersam.data import DataConfig
    from supersam.schema import ModelConfig, TrackingConfig, stage_config
    from supersam.stages.eval import USER_FOLDER_DEFAULTS, EvalConfig, evaluate

    values = load_params(
        "eval",
        params,
        sets,
        {
            "eval.model": model,
            "eval.supernet": supernet,
            "eval.subnet": subnet,
            "model.checkpoint": checkpoint,
            "data.root": data_root,
            "data.images": images,
            "data.labels": labels,
            "data.label_mode": label_mode,
            "data.ignore_label": ignore_label,
            "data.max_objects": max_objects,
            "data.patch": patch,
            "data.box_pad": box_pad,
            "data.min_area": min_area,
            "eval.split": split,
            "eval.overlays": overlays,
            "eval.name": name,
            "eval.out": out,
            "eval.everything": everything,
            "eval.runtime": runtime,
            "eval.precision": precision,
            "eval.points_per_side": points_per_side,
        },
        defaults=USER_FOLDER_DEFAULTS if data_root is not None else None,
    )
    evaluate(
        stage_config(EvalConfig, values, "eval"),
        stage_config(ModelConfig, values, "model"),
        stage_config(DataConfig, values, "data"),
        stage_config(TrackingConfig, values, "mlflow"),
        force=force,
    )
