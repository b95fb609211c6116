"""Calibration overhead: hooked forward (Wanda) and disturbed Taylor pass vs a plain encoder forward.

Run: ``.venv/bin/python benchmarks/bench_calibrate.py [--model vit_b --img-size 256 --images 8]``.
Prints both wall times (min and median of interleaved repeats, order alternating) and
their ratio; target <= 1.15. On a shared, busy machine the min is the robust figure; the
hook work alone (the accumulators on activations of the same shapes) is printed too.
The Taylor pass (SlimSAM's disturbed Taylor importance, one forward + backward per
image, ``supersam.model.taylor``) has no target; its ratio to the plain pass is printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from segment_anything.utils.transforms import ResizeLongestSide

from supersam.model.activation_stats import SquaredNormAccumulator, collect_mlp_sq_norms
from supersam.model.sam import build_sam_model
from supersam.model.taylor import disturbed_taylor_importance

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny_coco" / "val2017"


def load_images(sam: torch.nn.Module, n: int) -> list[torch.Tensor]:
    """``n`` real COCO images, SAM-preprocessed to 3 x S x S."""
    size = sam.image_encoder.img_size
    files = sorted(DATA.glob("*.jpg"))[:n]
    out = []
    for f in files:
        img = ResizeLongestSide(size).apply_image(np.asarray(Image.open(f).convert("RGB")))
        out.append(sam.preprocess(torch.as_tensor(img).permute(2, 0, 1).float()[None])[0])
    return out


def plain_forward(sam: torch.nn.Module, images: list[torch.Tensor], batch_size: int) -> None:
    """The same batched inference pass without hooks."""
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            sam.image_encoder(torch.stack(images[start : start + batch_size]))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def hook_work(sam: torch.nn.Module, n_images: int, batch_size: int) -> float:
    """Seconds the accumulators alone spend on one pass' worth of MLP inputs."""
    grid = sam.image_encoder.img_size // 16
    mlp = sam.image_encoder.blocks[0].mlp
    acc1, acc2 = SquaredNormAccumulator(mlp.lin1.in_features), SquaredNormAccumulator(mlp.lin2.in_features)
    x = torch.randn(batch_size, grid, grid, mlp.lin1.in_features)
    h = torch.randn(batch_size, grid, grid, mlp.lin2.in_features)
    batches = -(-n_images // batch_size) * len(sam.image_encoder.blocks)
    start = time.perf_counter()
    for _ in range(batches):
        acc1.add(x)
        acc2.add(h)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()

    torch.manual_seed(0)
    sam = build_sam_model(args.model, args.img_size)
    images = load_images(sam, args.images)
    plain_forward(sam, images[: args.batch_size], args.batch_size)  # warm-up
    plain, hooked, taylor = [], [], []
    for i in range(args.repeats):  # interleaved, order alternating, so load drift hits all alike
        runs = [
            (plain, lambda: plain_forward(sam, images, args.batch_size)),
            (hooked, lambda: collect_mlp_sq_norms(sam, images, args.batch_size)),
            (taylor, lambda: disturbed_taylor_importance(sam, images)),
        ]
        for times, fn in runs if i % 2 == 0 else runs[::-1]:
            times.append(timed(fn))
    hooks = min(hook_work(sam, len(images), args.batch_size) for _ in range(3))
    print(
        f"{args.model} @ {args.img_size}px, {len(images)} images, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads, {args.repeats} interleaved repeats"
    )
    print(f"{'':18s} {'min s':>8s} {'median s':>9s}")
    print(f"{'plain forward':18s} {min(plain):8.3f} {statistics.median(plain):9.3f}")
    print(f"{'calibrate (hooks)':18s} {min(hooked):8.3f} {statistics.median(hooked):9.3f}")
    print(f"{'taylor (backward)':18s} {min(taylor):8.3f} {statistics.median(taylor):9.3f}")
    print(f"hook work alone: {hooks:.3f} s ({100 * hooks / min(plain):.1f}% of the plain pass)")
    print(
        f"ratio calibrate / plain: min {min(hooked) / min(plain):.3f}, "
        f"median {statistics.median(hooked) / statistics.median(plain):.3f}  (target <= 1.15)"
    )
    print(
        f"ratio taylor / plain: min {min(taylor) / min(plain):.3f}, "
        f"median {statistics.median(taylor) / statistics.median(plain):.3f}"
    )


if __name__ == "__main__":
    main()
