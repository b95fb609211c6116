"""Elastic supernet overhead on CPU: speed and peak memory, side by side in one run.

Targets: elastic forward of a subnet / its exported model's forward <= 1.05;
elastic max subnet / plain SAM <= 1.02. vit_b at 256 px, random weights, real
tiny_coco images, image-encoder forward (the decoder is identical in all models).
Speed: the two models of a row run back to back on each image (order
alternating per repeat) in this process; ratio = median of the paired ratios.
A plain-vs-plain row shows the noise floor of the machine.
Memory: each model is loaded and run in its own subprocess (a fresh
interpreter) that reports its RSS after loading and its peak RSS (VmHWM from
/proc/self/status, MiB). tracemalloc does not see torch's allocations, and
ru_maxrss would include the parent's peak (inherited across fork/exec).
"forward" = peak - loaded is the forward's working set (activations + allocator).

    python benchmarks/bench_elastic.py [--img-size 256] [--images 4] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Before torch loads OpenMP: busy-waiting OpenMP threads make a shared 2-core machine up to
# 40x slower when other processes run; passive waiting only adds wake-up latency per parallel region.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from segment_anything.utils.transforms import ResizeLongestSide  # noqa: E402

from supersam.artifacts.records import SupernetMeta  # noqa: E402
from supersam.model.checkpoint import load_model, load_supernet, save_supernet  # noqa: E402
from supersam.model.elastic import SuperSam  # noqa: E402
from supersam.model.sam import build_sam_model, count_params  # noqa: E402
from supersam.model.space import SearchSpace, SubnetConfig  # noqa: E402
from supersam.stages.export import export_subnet  # noqa: E402

COCO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tiny_coco" / "val2017"
SUBNETS = {  # the docs/contracts.md example (mixed widths, 5 blocks dropped) and the paper's smallest subnet
    "design": SubnetConfig.from_mlp_dims([3072, 0, 0, 768, 1536, 0, 0, 2304, 768, 0, 3072, 1020]),
    "min": SearchSpace.for_arch("vit_b").min_subnet(),
}


def load_images(n: int, size: int) -> list[torch.Tensor]:
    """n real images, SAM-preprocessed: 1 x 3 x size x size each."""
    resize, out = ResizeLongestSide(size), []
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    for path in sorted(COCO.glob("*.jpg"))[:n]:
        image = resize.apply_image(np.asarray(Image.open(path).convert("RGB")))
        x = (torch.as_tensor(image).permute(2, 0, 1).float() - mean) / std
        padded = torch.zeros(3, size, size)
        padded[:, : x.shape[1], : x.shape[2]] = x
        out.append(padded[None])
    return out


def rss_mib() -> dict[str, float]:
    """Current and peak resident set of this process (MiB), from /proc/self/status.

    VmHWM belongs to this process image only (``ru_maxrss`` would include the
    parent's peak inherited across fork/exec)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def child(kind: str, path: str, subnet: str, size: int, n_images: int) -> None:
    """Load one model, run the forwards, print peak RSS (MiB) as JSON."""
    images = load_images(n_images, size)
    start = rss_mib()["VmRSS"]
    if kind == "plain":
        model = build_sam_model("vit_b", size).image_encoder
    elif kind == "exported":
        model = load_model(path).image_encoder
    else:
        supernet = load_supernet(path)
        supernet.set_active_subnet(SubnetConfig.load(subnet))
        model = supernet.sam.image_encoder
    loaded = rss_mib()["VmRSS"]
    with torch.no_grad():
        for x in images:
            model(x)
    print(json.dumps({"start": start, "loaded": loaded, "peak": rss_mib()["VmHWM"], "params": count_params(model)}))


def measure_memory(kind: str, path: Path, subnet: SubnetConfig, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--path",
        str(path),
        "--subnet",
        json.dumps(subnet.to_dict()),
        "--img-size",
        str(args.img_size),
        "--images",
        str(args.images),
        "--threads",
        str(args.threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_pair(model_a, model_b, images, repeats: int) -> tuple[float, float, float]:
    """Median s/image of two modules run back to back on each image (order alternating),
    and the median of the paired ratios a/b (robust to load drifting during the run)."""
    times_a, times_b = [], []
    with torch.no_grad():
        model_a(images[0]), model_b(images[0])  # warm-up
        for r in range(repeats):
            for x in images:
                pair = {}
                for idx in (0, 1) if r % 2 == 0 else (1, 0):
                    start = time.perf_counter()
                    (model_a, model_b)[idx](x)
                    pair[idx] = time.perf_counter() - start
                times_a.append(pair[0])
                times_b.append(pair[1])
    ratio = statistics.median(a / b for a, b in zip(times_a, times_b))
    return statistics.median(times_a), statistics.median(times_b), ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--child", default="")
    parser.add_argument("--path", default="")
    parser.add_argument("--subnet", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)
    if args.child:
        return child(args.child, args.path, args.subnet, args.img_size, args.images)

    torch.manual_seed(0)
    images = load_images(args.images, args.img_size)
    plain = build_sam_model("vit_b", args.img_size)
    space = SearchSpace.for_arch("vit_b")
    supernet = SuperSam(build_sam_model("vit_b", args.img_size), space)
    supernet.sam.load_state_dict(plain.state_dict())
    print(
        f"vit_b @ {args.img_size}px, CPU, {args.threads} threads (OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}), "
        f"{len(images)} tiny_coco images x "
        f"{args.repeats} repeats, random weights; median s/image of the image encoder"
    )
    print(f"{'comparison':<34}{'model':>9}{'reference':>11}{'ratio':>8}{'target':>8}")
    rows = [
        ("plain SAM vs plain SAM (noise)", plain.image_encoder, plain.image_encoder, "~1.00"),
        ("max subnet vs plain SAM", supernet.sam.image_encoder, plain.image_encoder, "<=1.02"),
    ]
    for label, model, reference, target in rows:
        t_a, t_b, ratio = time_pair(model, reference, images, args.repeats)
        print(f"{label:<34}{t_a:9.4f}{t_b:11.4f}{ratio:8.3f}{target:>8}")
    for name, cfg in SUBNETS.items():
        supernet.set_active_subnet(cfg)
        exported = supernet.get_active_subnet().image_encoder
        t_a, t_b, ratio = time_pair(supernet.sam.image_encoder, exported, images, args.repeats)
        print(f"{name + ' subnet vs its export':<34}{t_a:9.4f}{t_b:11.4f}{ratio:8.3f}{'<=1.05':>8}")
    supernet.set_active_subnet(space.max_subnet())

    meta = SupernetMeta("vit_b", args.img_size, False, "none")
    with tempfile.TemporaryDirectory() as tmp:
        save_supernet(Path(tmp) / "supernet.pt", supernet, meta)
        cfg = SUBNETS["design"]
        export_subnet(Path(tmp) / "supernet.pt", cfg, Path(tmp) / "export")
        runs = {
            "plain SAM": measure_memory("plain", Path(tmp), cfg, args),
            "elastic, max subnet": measure_memory("elastic", Path(tmp) / "supernet.pt", space.max_subnet(), args),
            "elastic, design subnet": measure_memory("elastic", Path(tmp) / "supernet.pt", cfg, args),
            "exported design subnet": measure_memory("exported", Path(tmp) / "export", cfg, args),
        }
    print(
        "\nRSS per fresh process (MiB): after imports+images, after loading the model, peak (VmHWM);\n"
        "forward = peak - loaded (activations + allocator); weights = encoder params x 4 B"
    )
    print(f"{'model':<26}{'imports':>9}{'loaded':>9}{'peak':>9}{'forward':>9}{'weights':>9}")
    for name, r in runs.items():
        print(
            f"{name:<26}{r['start']:9.0f}{r['loaded']:9.0f}{r['peak']:9.0f}"
            f"{r['peak'] - r['loaded']:9.0f}{r['params'] * 4 / 2**20:9.0f}"
        )


if __name__ == "__main__":
    main()
