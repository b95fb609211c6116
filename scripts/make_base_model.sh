#!/usr/bin/env bash
# Pretrain the generalist base model models/base_vit_ti.pt and write its manifest
# models/base_vit_ti.json (docs/base-model.md, "A generalist base model"): build the generalist data (procedural scenes + tiny COCO + DSB nuclei;
# none of the downstream ISBI EM sections), then pretrain vit_ti on it from random init with
# SAM's recipe (profiles/base-model.yaml). About 45 minutes on 2 CPU cores (7 for the data,
# 34 for 2500 steps). Bit-identical weights need the same torch build and thread count (the
# measured run: torch 2.14.1 CPU, 2 threads, float32).
#   bash scripts/make_base_model.sh [OUT_MODEL]
set -euo pipefail
cd "$(dirname "$0")/.."
out_model="${1:-models/base_vit_ti.pt}"
python scripts/make_base_data.py data/base --scenes 1200 --seed 0
supersam pretrain -p profiles/base-model.yaml --out outputs/base_model --set mlflow.enabled=false
mkdir -p "$(dirname "$out_model")"
cp outputs/base_model/model.pt "$out_model"
python scripts/base_model_manifest.py outputs/base_model "$out_model"
