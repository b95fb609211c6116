"""``supersam predict``: parse options, then call :func:`supersam.predict.predict`."""

from __future__ import annotations

from typing import Optional

import typer

from supersam.cli.app import app


@app.command("predict")
def predict_cli(
    model: str = typer.Argument(..., help="Exported model folder (supersam export: model.pt + config.json)."),
    image: str = typer.Argument(..., help="Image file (PNG, JPEG, TIFF)."),
    box: list[str] = typer.Option([], "--box", help="x0,y0,x1,y1 in image pixels; one object per --box (repeatable).", metavar="X0,Y0,X1,Y1"),
    point: list[str] = typer.Option([], "--point", help="x,y[,label] in image pixels, label 1 = object (default), 0 = background; all --point items prompt one object, with at most one --box (repeatable).", metavar="X,Y[,LABEL]"),
    out: Optional[str] = typer.Option(None, help="Output folder (default runs/predict/<image stem>)."),
    rle: bool = typer.Option(False, "--rle", help="Also write masks_rle.json (pycocotools RLE)."),
    multimask: bool = typer.Option(False, "--multimask", help="Keep the best of SAM's 3 masks (by its predicted IoU) instead of its single mask."),
    overlay: bool = typer.Option(True, "--overlay/--no-overlay", help="Also write overlay.png."),
    device: str = typer.Option("auto", help="auto, cpu, cuda..."),
) -> None:
    """Segment objects of one image with an exported model: mask PNGs at the image's size, predicted IoU, optional RLE.

    Examples:

        supersam predict outputs/export/model image.png --box 10,20,120,200 --out pred
        supersam predict outputs/export/model image.png --point 64,80 --point 90,80,0 --rle
    """
    from supersam.predict import PredictConfig, predict

    predict(PredictConfig(model=model, image=image, boxes=tuple(box), points=tuple(point), out=out or "",
                          rle=rle, multimask=multimask, overlay=overlay, device=device))
