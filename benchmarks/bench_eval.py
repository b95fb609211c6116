"""Eval speed on CPU: share of wall time spent outside the image encoder.

Target (issue 2): at most 15% for vit_b at 256 px. Runs ``supersam.stages.eval.evaluate``
(data preparation, encoder, prompt encoder, decoder, IoU) on ISBI EM 256 px
patches with box prompts and compares its total time with the encoder's.

    python benchmarks/bench_eval.py [--model-type vit_b] [--img-size 256] [--n-images 8]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from supersam.data import DataConfig
from supersam.schema import ModelConfig, TrackingConfig
from supersam.stages.eval import EvalConfig, evaluate

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012_em"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="vit_b")
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--n-images", type=int, default=8)
    parser.add_argument("--amp", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = DataConfig(root=str(DATA), patch=256, prompt="box", max_objects=8)
    model = ModelConfig(type=args.model_type, img_size=args.img_size)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = EvalConfig(
            out=tmp, split="val", prompts=("box",), n_images=args.n_images, overlays=0, device="cpu", amp=args.amp
        )
        evaluate(cfg, model, data, TrackingConfig(enabled=False))  # warm-up (imports, first-call costs)
        start = time.perf_counter()
        metrics = evaluate(cfg, model, data, TrackingConfig(enabled=False))
        total = time.perf_counter() - start
    encoder = metrics["encoder_seconds"]
    outside = total - encoder
    print(
        f"{args.model_type} @ {args.img_size}px, {metrics['n_images']} images, {metrics['n_objects']} objects, "
        f"amp={args.amp}, threads={torch.get_num_threads()}"
    )
    print(f"  eval total (incl. model build + data prep) {total:7.2f} s")
    print(
        f"  image encoder                              {encoder:7.2f} s  ({encoder / metrics['n_images']:.3f} s/image)"
    )
    print(f"  eval loop (run_eval)                       {metrics['seconds']:7.2f} s")
    loop_outside = metrics["seconds"] - encoder
    print(f"  share outside encoder, eval loop:          {loop_outside / metrics['seconds']:7.1%}  (target <= 15%)")
    print(f"  share outside encoder, whole command:      {outside / total:7.1%}")


if __name__ == "__main__":
    main()
