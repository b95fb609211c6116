"""Write the manifest of a pretrained base model (models/base_vit_ti.json, docs/base-model.md).

Records what a user needs to trust and re-create ``models/base_vit_ti.pt``: its
SHA-256, the recipe (profile, and each ``pretrain`` run's iterations and start), the
data, the wall time and the validation figures of the last run, next to the trivial
baselines. ``supersam pretrain`` refuses a ``pretrain.init`` whose bytes differ from
the SHA-256 its manifest records.

    python scripts/base_model_manifest.py models/base_vit_ti.pt outputs/base_model outputs/base_model2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
from pathlib import Path

import torch


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="the shipped model file")
    parser.add_argument(
        "runs", type=Path, nargs="+", help="the pretrain output folders, in order (metrics.json, config.json)"
    )
    parser.add_argument("--profile", default="profiles/base-model.yaml")
    args = parser.parse_args()
    stages = []
    for run in args.runs:
        run_metrics = json.loads((run / "metrics.json").read_text())
        run_config = json.loads((run / "config.json").read_text())
        stages.append(
            {
                "run": str(run),
                "init": run_config["init"] or "random",
                **(
                    {"init_sha256": sha256(Path(run_config["init"]))}
                    if Path(run_config["init"] or "-").is_file()
                    else {}
                ),
                "iterations": run_config["iterations"],
                "seed": run_config["seed"],
                "wall_seconds": run_metrics["seconds"],
                "val_miou_box": run_metrics["miou_box"],
                "val_miou_point": run_metrics["miou_point"],
            }
        )
    metrics = json.loads((args.runs[-1] / "metrics.json").read_text())
    config = json.loads((args.runs[-1] / "config.json").read_text())
    manifest = {
        "file": args.model.name,
        "sha256": sha256(args.model),
        "bytes": args.model.stat().st_size,
        "model_type": config["model_type"],
        "img_size": config["img_size"],
        "params": metrics["params"],
        "encoder_params": metrics["encoder_params"],
        "recipe": {
            "profile": args.profile,
            "command": "bash scripts/make_base_model.sh",
            "iterations": sum(stage["iterations"] for stage in stages),
            "runs": stages,
        },
        "data": "scripts/make_base_data.py data/base --scenes 1200 --seed 0: 1200 procedural scenes, "
        "the 100 tiny-COCO train+val images, 4 DSB 2018 nuclei tiles; no ISBI EM section",
        "wall_seconds": sum(stage["wall_seconds"] for stage in stages),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
        "val": {k: metrics[k] for k in sorted(metrics) if k.startswith(("miou_", "baseline_"))},
        "val_objects": metrics["val_objects"],
    }
    out = args.model.with_suffix(".json")
    out.write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
