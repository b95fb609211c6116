"""Deploy table: the base model vs the exported subnet on this machine, side by side in one run.

For each model: params, MACs (FlopCounterMode, MACs = FLOPs / 2; one image + one box
prompt), image-encoder and prompt+mask-decoder latency in PyTorch (float32, no_grad; the
low-res masks) and in onnxruntime (CPUExecutionProvider, the graphs of ``supersam export
--format onnx``; Meta's decoder graph also upsamples the masks to the image size), and
the test-split box mIoU read from the pipeline's eval metrics (not re-run). Latency: after
warm-up, the two models run alternately in ``--rounds`` rounds of ``--repeats`` runs; a
model's figure is the median over all its runs, so a burst of load from other processes
hits both models alike. Ratios are subnet / base.

    python benchmarks/bench_deploy.py [--root .] [--repeats 20] [--rounds 5] [--threads N] [--out FILE.json]

``--root`` is the project folder whose ``outputs/`` holds pretrain/model.pt, export/model
and eval/{base,subnet}/metrics.json (``dvc repro`` writes them). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Before torch loads OpenMP: busy-waiting OpenMP threads make a shared 2-core machine many
# times slower when other processes run; passive waiting only adds wake-up latency.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from supersam.artifacts import paths  # noqa: E402
from supersam.measure.timing import (
    device_name,
    example_box,
    example_image,
    model_macs,
    run_decoder,  # noqa: E402
)
from supersam.model.checkpoint import load_model  # noqa: E402
from supersam.model.onnx import box_prompt, decoder_inputs, export_onnx  # noqa: E402
from supersam.model.sam import build_sam, count_params  # noqa: E402


def _runners(sam: torch.nn.Module, onnx_dir: Path, threads: int) -> dict:
    """name -> zero-argument callable: torch encoder/decoder, onnxruntime encoder/decoder."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    enc = ort.InferenceSession(str(onnx_dir / "encoder.onnx"), opts, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(onnx_dir / "decoder.onnx"), opts, providers=["CPUExecutionProvider"])
    image, box = example_image(sam), example_box(sam)
    with torch.no_grad():
        embedding = sam.image_encoder(image)
    coords, labels = box_prompt(box[0])  # Meta's decoder graph: one object, masks upsampled to the image size
    size = sam.image_encoder.img_size
    feeds = {k: v.numpy() for k, v in decoder_inputs(sam, coords, labels, (size, size)).items()}
    feeds["image_embeddings"] = embedding.numpy()
    image_np = image.numpy()
    return {
        "torch_encoder": lambda: sam.image_encoder(image),
        "torch_decoder": lambda: run_decoder(sam, embedding, box),
        "ort_encoder": lambda: enc.run(None, {"image": image_np}),
        "ort_decoder": lambda: dec.run(None, feeds),
    }


def _time(fn, repeats: int) -> list[float]:
    out = []
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def _miou(path: Path) -> float | None:
    try:
        return float(json.loads(path.read_text())["miou"])
    except (OSError, KeyError, ValueError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=".", help="project folder holding outputs/")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per model per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch and onnxruntime threads (0 = torch's default)")
    parser.add_argument("--out", default="", help="write the figures as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    root = Path(args.root)
    base_path, export_path = root / paths.BASE_MODEL, root / paths.EXPORT_DIR
    manifest = json.loads((export_path / paths.EXPORT_CONFIG_FILE).read_text())
    models = {
        "base": build_sam(manifest["model_type"], manifest["img_size"], str(base_path)).model.eval(),
        "subnet": load_model(export_path),
    }
    miou = {
        "base": _miou(root / paths.eval_dir("base") / paths.METRICS_FILE),
        "subnet": _miou(root / paths.eval_dir("subnet") / paths.METRICS_FILE),
    }
    rows: dict[str, dict] = {}
    runners = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, sam in models.items():
            export_onnx(sam, Path(tmp) / name)
            rows[name] = {"params": count_params(sam), **model_macs(sam), "miou_test": miou[name]}
            runners[name] = _runners(sam, Path(tmp) / name, threads)
        times = {name: {part: [] for part in runners[name]} for name in models}
        for name in models:
            for fn in runners[name].values():
                _time(fn, args.warmup)
        for r in range(args.rounds):
            order = list(models) if r % 2 == 0 else list(models)[::-1]
            for name in order:
                for part, fn in runners[name].items():
                    times[name][part] += _time(fn, args.repeats)
    for name in models:
        for part, values in times[name].items():
            rows[name][f"{part}_ms"] = round(statistics.median(values), 3)
            rows[name][f"{part}_p90_ms"] = round(float(np.percentile(values, 90)), 3)
    ratio = {
        k: rows["subnet"][k] / rows["base"][k]
        for k in (
            "params",
            "macs",
            "encoder_macs",
            "torch_encoder_ms",
            "ort_encoder_ms",
            "torch_decoder_ms",
            "ort_decoder_ms",
        )
    }
    result = {
        "device": device_name(torch.device("cpu")),
        "threads": threads,
        "img_size": manifest["img_size"],
        "model_type": manifest["model_type"],
        "subnet": manifest["subnet"],
        "repeats": args.repeats,
        "rounds": args.rounds,
        "rows": rows,
        "ratio_subnet_to_base": ratio,
        "load_average": os.getloadavg(),
    }
    b, s = rows["base"], rows["subnet"]
    lines = [
        f"{manifest['model_type']} at {manifest['img_size']} px on {result['device']}, {threads} threads, float32, "
        f"median of {args.rounds} x {args.repeats} runs (load average {result['load_average'][0]:.2f})",
        "",
        "| | params | MACs (encoder + decoder) | encoder, torch (ms) | encoder, onnxruntime (ms) | decoder, torch "
        "(ms) | decoder, onnxruntime (ms) | test box mIoU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def miou(value: float | None) -> str:  # n/a when outputs/eval/<name>/metrics.json is missing
        return "n/a (run dvc repro)" if value is None else f"{value:.4f}"

    for name, row in (("base model", b), ("exported subnet", s)):
        lines.append(
            f"| {name} | {row['params'] / 1e6:.3f}M | {row['macs'] / 1e9:.3f}G | {row['torch_encoder_ms']:.2f} | "
            f"{row['ort_encoder_ms']:.2f} | {row['torch_decoder_ms']:.2f} | {row['ort_decoder_ms']:.2f} | "
            f"{miou(row['miou_test'])} |"
        )
    gain = "n/a" if b["miou_test"] is None or s["miou_test"] is None else f"{s['miou_test'] - b['miou_test']:+.4f}"
    lines.append(
        f"| subnet / base | {ratio['params']:.3f} | {ratio['macs']:.3f} (encoder {ratio['encoder_macs']:.3f}) | "
        f"{ratio['torch_encoder_ms']:.3f} | {ratio['ort_encoder_ms']:.3f} | {ratio['torch_decoder_ms']:.3f} | "
        f"{ratio['ort_decoder_ms']:.3f} | {gain} |"
    )
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
