"""``supersam predict``: parse options, then call :func:`supersam.tools.predict.predict`."""

from __future__ import annotations

import typer

from supersam.cli.app import app


@app.command("predict")
def predict_cli(
    model: str = typer.Argument(..., help="Exported model folder (supersam export: model.pt + config.json)."),
    image: str = typer.Argument(..., help="Image file (PNG, JPEG, TIFF)."),
    box: list[str] = typer.Option(
        [], "--box", help="x0,y0,x1,y1 in image pixels; one object per --box (repeatable).", metavar="X0,Y0,X1,Y1"
    ),
    point: list[str] = typer.Option(
        [],
        "--point",
        help=(
            "x,y[,label] in image pixels, label 1 = object (default), 0 = background; all --point items prompt one "
            "object, with at most one --box (repeatable)."
        ),
        metavar="X,Y[,LABEL]",
    ),
    out: str | None = typer.Option(None, help="Output folder (default runs/predict/<image stem>)."),
    rle: bool = typer.Option(False, "--rle", help="Also write masks_rle.json (pycocotools RLE)."),
    multimask: bool = typer.Option(
        False, "--multimask", help="Keep the best of SAM's 3 masks (by its predicted IoU) instead of its single mask."
    ),
    overlay: bool = typer.Option(True, "--overlay/--no-overlay", help="Also write overlay.png."),
    device: str = typer.Option("auto", help="auto, cpu, cuda..."),
    everything: bool = typer.Option(
        False,
        "--everything",
        help=(
            "Segment every object from a grid of point prompts (SAM's automatic mask generator) instead of "
            "--box/--point; writes masks.json (COCO RLE) and the time taken."
        ),
    ),
    points_per_side: int = typer.Option(
        32, "--points-per-side", help="With --everything: the grid is N x N points (SAM's default 32; at most 128)."
    ),
    pred_iou_thresh: float = typer.Option(
        0.88,
        "--pred-iou-thresh",
        help="With --everything: drop masks whose predicted IoU is lower (SAM's 0.88; small models need less).",
    ),
    stability_thresh: float = typer.Option(
        0.95, "--stability-thresh", help="With --everything: drop masks whose stability score is lower (SAM's 0.95)."
    ),
) -> None:
    """Segment objects of one image with an exported model: mask PNGs at the image's size, predicted IoU, optional RLE.

    Examples:

        supersam predict outputs/export/model image.png --box 10,20,120,200 --out pred
        supersam predict outputs/export/model image.png --point 64,80 --point 90,80,0 --rle
        supersam predict outputs/export/model image.png --everything --points-per-side 16
    """
    from supersam.tools.predict import PredictConfig, predict

    predict(
        PredictConfig(
            model=model,
            image=image,
            boxes=tuple(box),
            points=tuple(point),
            out=out or "",
            rle=rle,
            multimask=multimask,
            overlay=overlay,
            device=device,
            everything=everything,
            points_per_side=points_per_side,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_thresh,
        )
    )
