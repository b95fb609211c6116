"""GPU check of the paper profile (issue 25), and the project builders tests/test_profiles.py shares.

Needs the project installed as README.md says (``pip install -c constraints.txt -e ".[test]"``).
Run it through ``benchmarks/gpu_check.sh`` (options: ``--help``)::

    bash benchmarks/gpu_check.sh --out OUT                # one GPU: 1024 px, the profile's bf16
    bash benchmarks/gpu_check.sh --dry --out OUT          # CPU (CUDA hidden): 128 px, tiny counts
    bash benchmarks/gpu_check.sh --project DIR --out OUT  # measurements only, on a finished project

Without ``--project``: a project copy in a work folder with ``params.yaml`` = ``profiles/paper.yaml``
changed only in counts (and the input size with ``--dry``), a random ViT-B in the official
``segment_anything`` key layout at ``pretrain.init`` and an SA-1B folder made from tiny COCO;
then ``dvc repro``, timed per stage. Then, on the export variant: ``supersam train`` for a few
iterations (s/iteration, peak ``torch.cuda.max_memory_allocated``); image-encoder latency of the
base model and the export in float32 and bf16 autocast; elastic-versus-export parity (float32,
TF32 off, max abs difference of the mask logits <= 1e-3); ``supersam bench`` of both.

``gpu_check.json`` (``supersam-gpu-check/1``), ``gpu_check.md`` and ``pipeline.log`` are written
into ``--out`` after every step. With ``--dry`` what needs CUDA reads ``skipped: no CUDA``.
Exit status: 0 all ran and parity holds, 1 otherwise, 2 nothing ran (a module missing, no CUDA
without --dry, an unusable --project).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SUMMARY_FORMAT = "supersam-gpu-check/1"
INSTALL = 'pip install -c constraints.txt -e ".[test]"'
REQUIRED_MODULES = ("supersam", "torch", "yaml", "dvc", "mlflow", "segment_anything", "pycocotools")

# Settings changed from profiles/paper.yaml: counts only (model.img_size is set apart). On a GPU the
# paper's batch sizes, 64 objects per image and timing repeats stay.
CPU_COUNTS: dict[str, dict[str, int]] = {
    "data": {"max_objects": 4},
    "pretrain": {"val_images": 2},
    "rank_layers": {"n_images": 1, "batch_size": 1},
    "calibrate": {"n_images": 2, "batch_size": 2},
    "train": {"iterations": 2, "batch_size": 1, "val_images": 2},
    "search": {"budget": 4, "n_images": 2},
    "compare": {"n_subnets": 2, "n_images": 2},
    "eval": {"n_images": 2, "overlays": 1},
    "bench": {"warmup": 1, "repeats": 3},
}
GPU_COUNTS: dict[str, dict[str, int]] = {
    "pretrain": {"val_images": 2},
    "rank_layers": {"n_images": 4},
    "calibrate": {"n_images": 4},
    "train": {"iterations": 2, "val_images": 4},
    "search": {"budget": 4, "n_images": 4},
    "compare": {"n_subnets": 2, "n_images": 4},
    "eval": {"n_images": 4, "overlays": 1},
}
CPU_SPLITS = {"train": 3, "val": 2, "test": 2}  # SA-1B images per split built from tiny COCO
GPU_SPLITS = {"train": 8, "val": 4, "test": 4}
# the settings a shrunk profile may change (anything else would change the method)
COUNT_NAMES = frozenset(
    {
        "img_size",
        "max_objects",
        "val_images",
        "n_images",
        "batch_size",
        "iterations",
        "budget",
        "n_subnets",
        "overlays",
        "warmup",
        "repeats",
    }
)


def changed_keys(before: Any, after: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two nested dicts: ``{key: (before, after)}``."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for key in sorted(set(before) | set(after), key=str):
            out.update(changed_keys(before.get(key), after.get(key), f"{prefix}{key}."))
        return out
    return {} if before == after else {prefix.rstrip("."): (before, after)}


# ---------------------------------------------------------------- the project copy

# not copied where the project is no git checkout (relative to its root)
_SKIP = {
    ".git",
    ".venv",
    "outputs",
    "runs",
    "data",
    "mlruns",
    "mlartifacts",
    "mlflow.db",
    "dvc.lock",
    ".dvc/cache",
    ".dvc/tmp",
    ".pytest_cache",
}


def copy_project(dest: Path, root: Path = ROOT) -> Path:
    """Copy the project into ``dest``: ``git ls-files`` (tracked plus untracked files git does not
    ignore; else a walk that skips environments, caches and outputs) without ``dvc.lock`` (a copy
    records its own run)."""
    try:
        names = (
            subprocess.run(
                ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                cwd=root,
                capture_output=True,
                check=True,
            )
            .stdout.decode()
            .split("\0")
        )
    except (OSError, subprocess.CalledProcessError):
        names = []
        for folder, dirs, files in os.walk(root):
            rel = Path(folder).relative_to(root)
            dirs[:] = [
                d for d in dirs if str(rel / d) not in _SKIP and d != "__pycache__" and not d.endswith(".egg-info")
            ]
            names += [str(rel / f) for f in files if str(rel / f) not in _SKIP]
    for name in (n for n in names if n and n != "dvc.lock" and (root / n).is_file()):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, dest / name)
    return dest


def write_params(project: Path, params: dict) -> None:
    """Write ``params`` as the project's ``params.yaml``."""
    import yaml

    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def write_official_checkpoint(path: Path, model_type: str = "vit_b", seed: int = 0) -> Path:
    """A randomly initialised SAM of ``model_type`` at its official input size, saved as a bare
    ``state_dict()``: the key layout of Meta's ``sam_vit_*.pth`` files (about 375 MB for ViT-B)."""
    import torch

    from supersam.model.sam import build_sam_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_sam_model(model_type)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam.state_dict(), path)
    return path


def build_sa1b(coco_root: Path, dest: Path, sizes: dict[str, int]) -> dict[str, list[str]]:
    """An SA-1B folder from tiny COCO: ``dest/<split>/sa_<id>.jpg`` (the COCO JPEG) and ``sa_<id>.json``
    (``{"image": {...}, "annotations": [...]}``: non-crowd objects as compressed RLE, ``bbox``, ``area``,
    ``point_coords`` = one pixel of the object). ``train`` comes from train2017, ``val`` then ``test``
    from val2017, each the first ``sizes[split]`` images in id order with an object. Returns the names.

    Raises:
        ValueError: tiny COCO holds too few images with objects.
    """
    import numpy as np
    import pycocotools.mask as mask_utils
    from pycocotools.coco import COCO

    def records(coco, img_id: int) -> list[dict]:
        h, w = coco.imgs[img_id]["height"], coco.imgs[img_id]["width"]
        found = []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img_id])):
            if ann.get("iscrowd", 0):
                continue
            rle = coco.annToRLE(ann)
            ys, xs = np.nonzero(mask_utils.decode(rle))
            if len(ys):
                counts = rle["counts"].decode() if isinstance(rle["counts"], bytes) else rle["counts"]
                found.append(
                    {
                        "id": ann["id"],
                        "segmentation": {"size": [h, w], "counts": counts},
                        "area": int(mask_utils.area(rle)),
                        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                        "predicted_iou": 1.0,
                        "stability_score": 1.0,
                        "crop_box": [0.0, 0.0, float(w), float(h)],
                        "point_coords": [[float(xs[len(xs) // 2]), float(ys[len(ys) // 2])]],
                    }
                )
        return found

    written: dict[str, list[str]] = {}
    used: set[tuple[str, int]] = set()
    for split in ("train", "val", "test"):
        source = "train2017" if split == "train" else "val2017"
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its loading times
            coco = COCO(str(coco_root / "annotations" / f"instances_{source}.json"))
        (dest / split).mkdir(parents=True, exist_ok=True)
        written[split] = []
        for img_id in sorted(coco.getImgIds()):
            if len(written[split]) == sizes.get(split, 0):
                break
            anns = [] if (source, img_id) in used else records(coco, img_id)
            if anns:
                used.add((source, img_id))
                info, name = coco.imgs[img_id], f"sa_{img_id}.jpg"
                shutil.copyfile(coco_root / source / info["file_name"], dest / split / name)
                image = {"image_id": img_id, "width": info["width"], "height": info["height"], "file_name": name}
                (dest / split / f"sa_{img_id}.json").write_text(json.dumps({"image": image, "annotations": anns}))
                written[split].append(name)
        if len(written[split]) < sizes.get(split, 0):
            raise ValueError(f"{coco_root} has only {len(written[split])} usable {source} images for {split}")
    return written


def prepare_paper_project(
    dest: Path,
    coco_root: Path,
    img_size: int,
    counts: dict[str, dict[str, int]],
    splits: dict[str, int],
    root: Path = ROOT,
    extra: dict | None = None,
) -> dict:
    """Copy the project to ``dest``; write ``params.yaml`` = the paper profile with ``model.img_size``,
    the ``counts`` and then ``extra`` (``{section: {key: value}}``) replaced, the random official
    checkpoint at ``pretrain.init`` and the SA-1B folder at ``data.root``. Returns the params written."""
    import yaml

    copy_project(dest, root)
    params = yaml.safe_load((root / "profiles" / "paper.yaml").read_text())
    params["model"]["img_size"] = int(img_size)
    for section, values in [*counts.items(), *(extra or {}).items()]:
        params.setdefault(section, {}).update(values)
    write_params(dest, params)
    write_official_checkpoint(dest / params["pretrain"]["init"], params["model"]["type"], params["model"]["seed"])
    build_sa1b(coco_root, dest / params["data"]["root"], splits)
    return params


# ---------------------------------------------------------------- dvc repro


def init_dvc(project: Path) -> dict[str, str]:
    """Make ``project`` a git + DVC repository (a copy holds .dvc/config already; the cache links
    where it can: ViT-B checkpoints are ~375 MB each). Returns the environment of the stage
    commands: this interpreter's bin folder (``dvc``, ``supersam``) first on PATH."""
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    cmds = [["git", "init", "-q"]] if not (project / ".git").exists() else []
    cmds += [["dvc", "init", "-q"]] if not (project / ".dvc" / "config").is_file() else []
    for cmd in cmds + [
        ["dvc", "config", "core.analytics", "false"],
        ["dvc", "config", "cache.type", "reflink,hardlink,copy"],
    ]:
        subprocess.run(cmd, cwd=project, env=env, check=True, capture_output=True)
    return env


def run_dvc(project: Path, env: dict[str, str], log_file: Path, on_stage=None) -> list[dict]:
    """``dvc repro`` in ``project``, its output appended to ``log_file``. Returns the stages in the
    order they ran, ``[{"stage", "seconds"}]`` (from DVC's "Running stage" lines); ``on_stage(times)``
    is called as each stage ends.

    Raises:
        RuntimeError: dvc repro failed (the log's tail in the message).
    """
    times: list[dict] = []
    current: list = []  # [name, start] of the running stage

    def close() -> None:
        if current:
            times.append({"stage": current[0], "seconds": round(time.perf_counter() - current[1], 2)})
            print(f"  {current[0]}: {times[-1]['seconds']:.1f} s", flush=True)
            if on_stage is not None:
                on_stage(times)

    with log_file.open("a") as log:
        proc = subprocess.Popen(
            ["dvc", "repro"],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        for line in proc.stdout:
            log.write(line)
            match = re.search(r"Running stage '([^']+)'", line)
            if match:
                close()
                current[:] = [match.group(1), time.perf_counter()]
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"dvc repro exited {code}:\n{log_file.read_text(errors='replace')[-4000:]}")
    close()
    return times


def pipeline_train_figures(project: Path) -> dict:
    """Seconds per iteration of every ``supersam train`` stage of dvc.lock (train@<variant>, finetune):
    its metrics.json's training seconds (validation and probes excluded)."""
    import yaml

    out = {}
    for name, stage in yaml.safe_load((project / "dvc.lock").read_text())["stages"].items():
        cmds = stage["cmd"] if isinstance(stage["cmd"], list) else [stage["cmd"]]
        metrics = [o["path"] for o in stage.get("outs", []) if o["path"].endswith("metrics.json")]
        if metrics and any(c.startswith("supersam train ") for c in cmds):
            m = json.loads((project / metrics[0]).read_text())
            out[name] = {
                "iterations": m["iterations"],
                "seconds": m["seconds"],
                "s_per_iteration": m["seconds"] / m["iterations"] if m["iterations"] else None,
            }
    return out


# ---------------------------------------------------------------- measurements


def cli(project: Path, args: list[str]) -> None:
    """``supersam ARGS`` in this process (its own CUDA peak memory), in ``project``.

    Raises:
        RuntimeError: the command exited non-zero.
    """
    from supersam.cli.main import main

    saved = sys.argv
    sys.argv = ["supersam", *args]
    try:
        with contextlib.chdir(project):
            main(restore_signals=True)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise RuntimeError(f"supersam {' '.join(args)} exited {exc.code}") from None
    finally:
        sys.argv = saved


def timed_train(project: Path, variant: str, iterations: int) -> dict:
    """``supersam train`` of ``variant`` for ``iterations`` steps, validated after each (its history
    then holds the cumulative training seconds per step): s/iteration and peak GPU memory."""
    import torch

    out = Path("runs") / "gpu_check" / "train"
    sets = [
        f"train.iterations={iterations}",
        "train.eval_every=1",
        "train.target_every=1",
        "train.save_every=0",
        "mlflow.enabled=false",
    ]
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    cli(
        project,
        ["train", "--variant", variant, "--out", str(out), "--no-progress", *[x for s in sets for x in ("--set", s)]],
    )
    metrics = json.loads((project / out / "metrics.json").read_text())
    seconds = {
        int(h["iteration"]): float(h["seconds"]) for h in json.loads((project / out / "history.json").read_text())
    }
    n = int(metrics["iterations"])
    result: dict[str, Any] = {
        "variant": variant,
        "iterations": n,
        "seconds": metrics["seconds"],
        "s_per_iteration": metrics["seconds"] / n,
        "s_per_iteration_steady": (seconds[n] - seconds[1]) / (n - 1) if n >= 2 and {1, n} <= set(seconds) else None,
    }
    if cuda:
        result["peak_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    else:
        result["peak_memory"] = "skipped: no CUDA"
    return result


def encoder_latency(sam, warmup: int, repeats: int) -> dict:
    """Median / p90 ms of ``sam.image_encoder`` on one image, float32 and bf16 autocast
    (:func:`supersam.runtime.device.autocast`: float32 where the device has no native bf16)."""
    from supersam.measure.timing import example_image, summarise_ms, time_ms
    from supersam.runtime.device import autocast, native_bf16

    device = next(sam.parameters()).device
    image = example_image(sam)

    def bf16() -> None:
        with autocast(device, True):
            sam.image_encoder(image)

    return {
        "img_size": sam.image_encoder.img_size,
        "bf16_native": native_bf16(device),
        "fp32": summarise_ms(time_ms(lambda: sam.image_encoder(image), warmup, repeats, device)),
        "bf16": summarise_ms(time_ms(bf16, warmup, repeats, device)),
    }


def parity(project: Path, params: dict, device, tolerance: float = 1e-3) -> dict:
    """Elastic versus export, float32 with TF32 off, through ``SamPredictor`` on the first test image
    and the point of its first object: max abs difference of the full-size and low-res mask logits and
    the IoU predictions; ``ok`` when both logit differences are within ``tolerance``."""
    import numpy as np
    import torch
    from PIL import Image
    from segment_anything import SamPredictor

    from supersam.model.checkpoint import load_model, load_supernet
    from supersam.model.space import SubnetConfig

    variant = params["export"]["variant"]
    supernet = load_supernet(project / "outputs" / "train" / variant / "supernet.pt", device).eval()
    subnet = SubnetConfig.load(str(project / "outputs" / "search" / variant / "best_subnet.json"))
    supernet.set_active_subnet(subnet)
    exported = load_model(project / "outputs" / "export" / "model", device)
    jpg = sorted((project / params["data"]["root"] / params["data"]["test_images"]).glob("*.jpg"))[0]
    point = np.array(json.loads(jpg.with_suffix(".json").read_text())["annotations"][0]["point_coords"])
    image = np.asarray(Image.open(jpg).convert("RGB"))
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        outs = []
        for model in (supernet.sam, exported):
            predictor = SamPredictor(model)
            predictor.set_image(image)
            outs.append(
                predictor.predict(
                    point_coords=point, point_labels=np.array([1]), multimask_output=True, return_logits=True
                )
            )
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    diff = {
        f"max_abs_diff_{k}": float(np.abs(a - b).max())
        for k, a, b in zip(("mask_logits", "iou", "low_res_logits"), *outs)
    }
    ok = max(diff["max_abs_diff_mask_logits"], diff["max_abs_diff_low_res_logits"]) <= tolerance
    return {
        "device": str(device),
        "variant": variant,
        "subnet": subnet.to_dict(),
        "dtype": "float32",
        "tf32": False,
        "tolerance": tolerance,
        **diff,
        "ok": bool(ok),
    }


# ---------------------------------------------------------------- the check


def markdown(data: dict) -> str:
    """A human-readable page of the summary."""
    steps, result = data["steps"], {True: "ok", False: "FAILED"}.get(data.get("ok"), "running")
    lines = [
        f"# supersam GPU check ({data['mode']})",
        "",
        f"- device: {data['device']} ({data['device_name']}), torch {data['torch']}, CUDA {data['cuda']}",
        f"- model: {data['model_type']} at {data['img_size']} px; project {data['project']}",
        f"- total: {data['seconds_total']:.0f} s; result: {result}",
        "",
    ]
    pipe = steps.get("pipeline", {})
    if "reused" in pipe:
        lines += ["- pipeline: reused (no dvc repro in this run)", ""]
    elif "stages" in pipe:
        lines += [f"## dvc repro: {pipe['seconds']:.0f} s", "", "| stage | s |", "|---|---|"]
        lines += [f"| {s['stage']} | {s['seconds']:.1f} |" for s in pipe["stages"]] + [""]
    lines += [
        f"- pipeline {k}: {v['iterations']} iterations, {v['s_per_iteration']} s/iteration"
        for k, v in steps.get("pipeline_train", {}).items()
    ]
    if "train" in steps:
        t = steps["train"]
        lines += [
            "",
            f"## train ({t['variant']}, {t['iterations']} iterations)",
            "",
            f"- {t['s_per_iteration']:.3f} s/iteration, steady {t['s_per_iteration_steady']}",
            "- peak GPU memory (max_memory_allocated, GiB): "
            f"{t.get('peak_memory_allocated_gib', t.get('peak_memory'))}",
            "",
        ]
    if "encoder_latency" in steps:
        lines += [
            "## Image encoder latency (ms, median / p90)",
            "",
            "| model | fp32 | bf16 autocast |",
            "|---|---|---|",
        ]
        for name, v in steps["encoder_latency"].items():
            cell = {k: f"{v[k]['median_ms']:.2f} / {v[k]['p90_ms']:.2f}" for k in ("fp32", "bf16")}
            lines.append(
                f"| {name} | {cell['fp32']} | {cell['bf16']}{'' if v['bf16_native'] else ' (no native bf16)'} |"
            )
        lines.append("")
    if "parity" in steps:
        par = steps["parity"]
        lines += [
            "## Elastic vs export parity",
            "",
            f"- {par['device']}, float32, TF32 off; subnet {par['subnet']}",
            f"- max |diff|: mask logits {par['max_abs_diff_mask_logits']:.3g}, low-res logits "
            f"{par['max_abs_diff_low_res_logits']:.3g}, IoU {par['max_abs_diff_iou']:.3g}: "
            f"{'ok' if par['ok'] else 'FAILED'} (tolerance {par['tolerance']})",
            "",
        ]
    for title in ("skipped", "errors"):
        lines += (
            [f"## {title.capitalize()}", ""] + [f"- {e.splitlines()[0]}" for e in data[title]] + [""]
            if data[title]
            else []
        )
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    coco = ROOT.parent / "shared" / "data" / "tiny_coco"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json, gpu_check.md, pipeline.log")
    p.add_argument("--dry", action="store_true", help="CPU (CUDA hidden), 128 px, tiny counts: checks the script")
    p.add_argument(
        "--project",
        type=Path,
        help="a folder where the paper profile's dvc repro already ran: measure only (with its params.yaml)",
    )
    p.add_argument(
        "--coco",
        type=Path,
        default=coco if coco.is_dir() else ROOT / "shared" / "data" / "tiny_coco",
        help="tiny_coco folder (default %(default)s)",
    )
    p.add_argument("--workdir", type=Path, help="where the project copy goes (default a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (measure it again with --project)")
    p.add_argument("--train-iterations", type=int, help="timed train run (default 6; --dry 2)")
    p.add_argument(
        "--budget-s",
        type=float,
        help="skip the measurements left this many seconds after the start (default 450; --dry none)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The check (module docstring); returns the exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.dry:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: the CPU path, on a GPU machine too
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    missing = [m for m in REQUIRED_MODULES if importlib.util.find_spec(m) is None]
    if not missing and not (Path(sys.executable).parent / "dvc").exists() and not shutil.which("dvc"):
        missing.append("the dvc command")
    if missing:
        print(f"missing {', '.join(missing)}: install the project first: {INSTALL}", file=sys.stderr)
        return 2
    project = args.project.resolve() if args.project else None
    if project and not ((project / "dvc.lock").is_file() and (project / "outputs" / "export" / "model").is_dir()):
        print(f"--project {project}: no finished dvc repro there (dvc.lock, outputs/export/model)", file=sys.stderr)
        return 2
    import torch
    import yaml

    from supersam.measure.timing import device_name

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.dry:
        print("no CUDA device: run with --dry on a CPU machine", file=sys.stderr)
        return 2
    workdir = None if project else (args.workdir or Path(tempfile.mkdtemp(prefix="supersam-gpu-check-"))).resolve()
    if workdir and (workdir / "project").exists():
        print(f"{workdir / 'project'} exists: pass an empty --workdir, or --project to measure it", file=sys.stderr)
        return 2
    project = project or workdir / "project"
    paper = yaml.safe_load((ROOT / "profiles" / "paper.yaml").read_text())
    img_size = (
        yaml.safe_load((project / "params.yaml").read_text())["model"]["img_size"]
        if args.project
        else (128 if args.dry else paper["model"]["img_size"])
    )
    data: dict[str, Any] = {
        "format": SUMMARY_FORMAT,
        "mode": "dry" if args.dry else "gpu",
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "model_type": paper["model"]["type"],
        "img_size": img_size,
        "project": str(project),
        "steps": {},
        "skipped": [],
        "errors": [],
    }
    out, t_start = args.out.resolve(), time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.log").write_text("")

    def write() -> None:
        data["seconds_total"] = round(time.monotonic() - t_start, 1)
        (out / "gpu_check.json").write_text(json.dumps(data, indent=2, default=str))
        (out / "gpu_check.md").write_text(markdown(data))

    def note(kind: str, line: str) -> None:  # kind: skipped | errors
        print(line if kind == "skipped" else f"ERROR {line}", flush=True)
        data[kind].append(line[:4000])
        write()

    def step(name: str, value: Any) -> None:
        data["steps"][name] = value
        write()

    try:
        ok = _run_steps(args, project, paper, device, img_size, out / "pipeline.log", step, note)
    finally:
        if workdir is not None and args.keep:
            print(f"kept {workdir}: measure it again with --project {project}", flush=True)
        elif workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    data["ok"] = ok
    write()
    print((out / "gpu_check.md").read_text(), flush=True)
    return 0 if ok else 1


def _run_steps(args, project: Path, paper: dict, device, img_size: int, log_file: Path, step, note) -> bool:
    """Build and run the pipeline (unless --project), then the measurements; True when all ran and parity holds."""
    import yaml

    budget = args.budget_s if args.budget_s is not None else (None if args.dry else 450.0)
    deadline = None if budget is None else time.monotonic() + budget  # the pipeline always runs to its end
    if args.project:
        step("pipeline", {"reused": str(project)})
    else:
        try:
            print(f"preparing {project} ({img_size} px, SA-1B from {args.coco})", flush=True)
            counts, splits = (CPU_COUNTS, CPU_SPLITS) if args.dry else (GPU_COUNTS, GPU_SPLITS)
            prepare_paper_project(project, args.coco.resolve(), img_size, counts, splits)
            env, t0 = init_dvc(project), time.perf_counter()
            stages = run_dvc(
                project,
                env,
                log_file,
                on_stage=lambda times: step(
                    "pipeline", {"seconds": round(time.perf_counter() - t0, 1), "stages": times, "complete": False}
                ),
            )
            step("pipeline", {"seconds": round(time.perf_counter() - t0, 1), "stages": stages, "complete": True})
        except Exception as exc:  # noqa: BLE001 - in the summary; the measurements need the pipeline
            note("errors", f"pipeline: {type(exc).__name__}: {exc}")
            return False
    params = yaml.safe_load((project / "params.yaml").read_text())
    step("params_changed", {k: list(v) for k, v in changed_keys(paper, params).items()})
    shutil.rmtree(project / "runs" / "gpu_check", ignore_errors=True)
    (project / "runs" / "gpu_check").mkdir(parents=True)
    warmup, repeats = params["bench"]["warmup"], params["bench"]["repeats"]
    no_cuda = device.type != "cuda"

    def train() -> dict:
        result = timed_train(project, params["export"]["variant"], args.train_iterations or (2 if args.dry else 6))
        if no_cuda:
            note("skipped", "peak GPU memory of train (torch.cuda.max_memory_allocated): skipped: no CUDA")
        return result

    def latency() -> dict:
        from supersam.model.checkpoint import load_model
        from supersam.model.sam import build_sam

        base = build_sam(params["model"]["type"], img_size, str(project / params["model"]["checkpoint"])).model
        result = {"base": encoder_latency(base.to(device).eval(), warmup, repeats)}
        del base
        result["export"] = encoder_latency(
            load_model(project / "outputs" / "export" / "model", device), warmup, repeats
        )
        return result

    def check_parity() -> dict:
        result = parity(project, params, device)
        if no_cuda:
            note("skipped", "parity on CUDA: skipped: no CUDA (ran on cpu to check the code path)")
        return result

    def bench() -> dict:
        result = {}
        for name, model in (("base", params["model"]["checkpoint"]), ("export", "outputs/export/model")):
            cli(project, ["bench", model, "--out", f"runs/gpu_check/bench_{name}.json"])
            result[name] = json.loads((project / "runs" / "gpu_check" / f"bench_{name}.json").read_text())
        return result

    ok, results = True, {}
    for name, measure in (
        ("pipeline_train", lambda: pipeline_train_figures(project)),
        ("train", train),
        ("encoder_latency", latency),
        ("parity", check_parity),
        ("bench", bench),
    ):
        if deadline is not None and time.monotonic() > deadline:
            note("skipped", f"{name}: skipped: time budget of {budget:.0f} s spent")
            ok = False
            continue
        print(f"measuring {name}", flush=True)
        try:
            results[name] = measure()
            step(name, results[name])
        except Exception as exc:  # noqa: BLE001 - in the summary; the other steps still run
            note("errors", f"{name}: {type(exc).__name__}: {exc}")
            ok = False
    if "parity" in results and not results["parity"]["ok"]:
        note("errors", f"parity: max |diff| of the mask logits above {results['parity']['tolerance']}")
    return ok and results.get("parity", {}).get("ok", False)


if __name__ == "__main__":
    sys.exit(main())
