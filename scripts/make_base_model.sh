#!/usr/bin/env bash
# Pretrain the generalist base model models/base_vit_ti.pt and write its manifest
# models/base_vit_ti.json (docs/base-model.md, "The shipped base model"): build the generalist
# data (procedural scenes + tiny COCO + DSB nuclei; none of the downstream ISBI EM sections),
# then pretrain vit_ti on it with SAM's recipe (profiles/base-model.yaml) in two runs: 2500
# steps from random initialisation, then 5000 more steps from that model (a fresh cosine
# schedule, 50 warm-up steps). About 2 hours on 2 CPU cores (7 min data, 34 + 75 min
# training). Bit-identical weights need the same torch build and thread count (the measured
# runs: torch 2.14.1 CPU, 2 threads, float32). The default pipeline passes the result through.
#   bash scripts/make_base_model.sh [OUT_MODEL]
set -euo pipefail
cd "$(dirname "$0")/.."
out_model="${1:-models/base_vit_ti.pt}"
python scripts/make_base_data.py data/base --scenes 1200 --seed 0
supersam pretrain -p profiles/base-model.yaml --out outputs/base_model --set mlflow.enabled=false
supersam pretrain -p profiles/base-model.yaml --out outputs/base_model2 --set mlflow.enabled=false \
  --set pretrain.init=outputs/base_model/model.pt --set pretrain.iterations=5000 --set pretrain.warmup=50
mkdir -p "$(dirname "$out_model")"
cp outputs/base_model2/model.pt "$out_model"
python scripts/base_model_manifest.py "$out_model" outputs/base_model outputs/base_model2
