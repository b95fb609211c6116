"""Eval memory against the number of images: peak RSS of ``supersam eval`` on a small and a large folder.

Target (issue 29): flat in the number of images, i.e. at most 0.1 MB more peak memory per
extra image (it was 4.6 MB per image here, 2026-12-06, when every prepared input was held). Writes
``--small`` and ``--large`` synthetic 96 px images with instance labels (random disks),
runs ``supersam eval`` on each in its own process with the shipped base model
(``models/base_vit_ti.pt``, 256 px) and prints both peaks, their ratio and the growth per image.

    python benchmarks/bench_eval_memory.py [--small 32] [--large 512]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SIZE = 96


def write_images(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` grey images with 3-6 bright disks each; the label image numbers the disks 1..k."""
    rng = np.random.default_rng(seed)
    (folder / "image").mkdir(parents=True)
    (folder / "label").mkdir(parents=True)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i in range(n):
        ids = np.zeros((SIZE, SIZE), np.uint16)
        for k in range(1, int(rng.integers(3, 7)) + 1):
            cy, cx, r = rng.integers(12, SIZE - 12), rng.integers(12, SIZE - 12), rng.integers(5, 11)
            ids[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
        image = np.where(ids > 0, 180, 60).astype(np.uint8) + rng.integers(0, 30, (SIZE, SIZE)).astype(np.uint8)
        Image.fromarray(np.stack([image] * 3, -1)).save(folder / "image" / f"img_{i:05d}.png")
        Image.fromarray(ids).save(folder / "label" / f"img_{i:05d}.png")


def peak_rss_mb(data: Path, out: Path) -> float:
    """Peak resident memory (MB) of one ``supersam eval`` process on ``data``."""
    model = str(ROOT / "models" / "base_vit_ti.pt")
    args = ["--data-root", str(data), "--label-mode", "instance", "--split", "all", "--patch", "0", "--overlays", "0"]
    cmd = [str(Path(sys.executable).parent / "supersam"), "eval", "--checkpoint", model, *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"eval failed: {proc.stderr.read()[-2000:]}")
    return usage.ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=32)
    parser.add_argument("--large", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        peaks = {}
        for n in (args.small, args.large):
            data = Path(tmp) / f"data_{n}"
            write_images(data, n)
            peaks[n] = peak_rss_mb(data, Path(tmp) / f"eval_{n}")
            print(f"{n:5d} images: peak RSS {peaks[n]:8.1f} MB")
    growth = (peaks[args.large] - peaks[args.small]) / (args.large - args.small)
    print(f"ratio large / small peak: {peaks[args.large] / peaks[args.small]:.3f}")
    print(f"growth per extra image: {growth:.3f} MB (target <= 0.1)")


if __name__ == "__main__":
    main()
