#!/usr/bin/env bash
# GPU check of the paper profile (issue 25): the paper's pipeline shrunk in counts only, at 1024 px
# with bf16, on a random official-layout ViT-B and an SA-1B folder made from tiny COCO (`dvc repro`,
# timed per stage); then s/iteration and peak GPU memory of `train`, image-encoder latency in fp32
# and bf16, elastic-versus-export parity and `supersam bench`. Under 8 minutes on one H100/H200
# (the measurements stop at --budget-s, default 450 s). Details: benchmarks/gpu_check.py's docstring.
#
#   bash benchmarks/gpu_check.sh --out DIR [--dry] [--project DIR] [--coco DIR] [--workdir DIR --keep]
#                                [--train-iterations N] [--budget-s S]
#
#   --out DIR       writes DIR/gpu_check.json, DIR/gpu_check.md and DIR/pipeline.log (dvc repro's output)
#   --dry           CPU only (CUDA hidden), 128 px, tiny counts: checks the script (tests/test_profiles.py)
#   --project DIR   measure only, on a folder where this check's `dvc repro` already ran (kept with --keep)
#   --coco DIR      the tiny_coco folder (default ../shared/data/tiny_coco, else shared/data/tiny_coco)
#
# Needs the project installed as README.md says: pip install -c constraints.txt -e ".[test]".
# Interpreter: $PYTHON, else the repository's .venv/bin/python, else python3. Exit status: 0 ok,
# 1 a step failed or parity is off (the summary says which), 2 nothing ran (a module missing, no CUDA
# without --dry, an unusable --project).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$here/../.venv/bin/python" ]; then python="$here/../.venv/bin/python"; else python="$(command -v python3)"; fi
fi
export PYTHONUNBUFFERED=1
exec "$python" "$here/gpu_check.py" "$@"
