"""The one layout of every artifact path (docs/architecture.md, "Artifacts").

The commands' defaults come from here and dvc.yaml spells out the same paths;
tests/test_layout.py fails when the two disagree. All paths are relative to the
working directory (the repository root when run by ``dvc repro``).

Per stage (``<variant>`` is the reordering variant, ``<name>`` an eval label)::

    outputs/params/valid.json                    marker: params.yaml passed `supersam validate`
    outputs/pretrain/model.pt                    base model, official SAM key layout
    outputs/rank_layers/ranking.json             prunable blocks + theta_i (LayerRanking)
    outputs/calibration/calibration_stats.pt     calibration stats: Wanda norms, Taylor importance (CalibrationStats)
    outputs/supernet/<variant>/supernet.pt       reordered supernet (+ search_space.json)
    outputs/train/<variant>/supernet.pt          trained supernet (+ metrics, history, checkpoints/)
    outputs/finetune/supernet.pt                 the base model fine-tuned downstream (train.mode finetune)
    outputs/search/<variant>/best_subnet.json    search result (+ candidates, Pareto front)
    outputs/compare/table1.json                  the variants side by side (Table I, Fig. 4/5)
    outputs/export/model/                        exported subnet: model.pt + config.json
    outputs/eval/<name>/metrics.json             evaluation (+ objects.csv, predictions/, overlays/)
    outputs/latency/<device-key>.json            search's per-device latency lookup table (a cache)

A search or eval run by hand (not by the pipeline) writes ``runs/search/<variant>`` or
``runs/eval/<name>`` unless ``--out`` is given, so it never overwrites what DVC tracks;
``supersam predict`` writes ``runs/predict/<image stem>``.
"""

from __future__ import annotations

from pathlib import Path

OUTPUTS = Path("outputs")
RUNS = Path("runs")

PARAMS_VALID = OUTPUTS / "params" / "valid.json"  # the validate stage's marker, a dep of every other stage
PRETRAIN_DIR = OUTPUTS / "pretrain"
BASE_MODEL = PRETRAIN_DIR / "model.pt"
RANK_LAYERS_DIR = OUTPUTS / "rank_layers"
RANKING = RANK_LAYERS_DIR / "ranking.json"
CALIBRATION_STATS = OUTPUTS / "calibration" / "calibration_stats.pt"
FINETUNE_DIR = OUTPUTS / "finetune"  # the plain fine-tuning baseline: `train --set train.mode=finetune`
FINETUNE_VARIANT = "none"  # it fine-tunes the unreordered supernet (the base model's own order)
COMPARE_DIR = OUTPUTS / "compare"
USER_COMPARE_DIR = RUNS / "compare"
EXPORT_DIR = OUTPUTS / "export" / "model"
EVAL_DIR = OUTPUTS / "eval"
LATENCY_DIR = OUTPUTS / "latency"
EXPORT_ONNX_DIR = "onnx"  # export --format onnx: encoder.onnx, decoder.onnx, onnx.json
EXPORT_HF_DIR = "hf"  # export --format hf: model.safetensors (transformers SamModel keys)

SUPERNET_FILE = "supernet.pt"
SEARCH_SPACE_FILE = "search_space.json"
BEST_SUBNET_FILE = "best_subnet.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
TABLE1_FILE = "table1.json"  # train: this variant's Table I row; compare: the whole table
PROBES_FILE = "probes.json"  # train: the smallest subnet at every target probe
PARETO_FILE = "pareto.json"  # search: the Pareto frontier on search.pareto_x
CANDIDATES_FILE = "candidates.json"  # search: every evaluated subnet
TIMING_FILE = "timing.json"  # search: wall time and evaluations per minute (not a DVC metric of the result)
EXPORT_WEIGHTS_FILE = "model.pt"
EXPORT_CONFIG_FILE = "config.json"
OBJECTS_FILE = "objects.csv"  # eval: one row per object and prompt kind
PREDICTIONS_DIR = "predictions"  # eval: <kind>.json, COCO results with RLE masks
OVERLAYS_DIR = "overlays"  # eval: <image>[_y<y0>_x<x0>].png


def supernet_dir(variant: str) -> Path:
    """``outputs/supernet/<variant>``: build-supernet's output folder."""
    return OUTPUTS / "supernet" / variant


def built_supernet(variant: str) -> Path:
    """``outputs/supernet/<variant>/supernet.pt``: the reordered, untrained supernet."""
    return supernet_dir(variant) / SUPERNET_FILE


def train_dir(variant: str) -> Path:
    """``outputs/train/<variant>``: train's output folder."""
    return OUTPUTS / "train" / variant


def trained_supernet(variant: str) -> Path:
    """``outputs/train/<variant>/supernet.pt``: the sandwich-trained supernet."""
    return train_dir(variant) / SUPERNET_FILE


def train_table1(variant: str) -> Path:
    """``outputs/train/<variant>/table1.json``: the variant's paper Table I row."""
    return train_dir(variant) / TABLE1_FILE


def search_dir(variant: str) -> Path:
    """``outputs/search/<variant>``: the pipeline's search output folder."""
    return OUTPUTS / "search" / variant


def user_search_dir(variant: str) -> Path:
    """``runs/search/<variant>``: where a hand-run ``supersam search`` writes by default."""
    return RUNS / "search" / variant


def search_pareto(variant: str) -> Path:
    """``outputs/search/<variant>/pareto.json``: the search's params-vs-mIoU frontier."""
    return search_dir(variant) / PARETO_FILE


def best_subnet(variant: str) -> Path:
    """``outputs/search/<variant>/best_subnet.json``: the subnet export cuts out."""
    return search_dir(variant) / BEST_SUBNET_FILE


def eval_dir(name: str) -> Path:
    """``outputs/eval/<name>``: one of the pipeline's evaluations (metrics.json, objects.csv, predictions/,
    overlays/)."""
    return EVAL_DIR / name


def user_predict_dir(image_stem: str) -> Path:
    """``runs/predict/<image stem>``: where ``supersam predict`` writes by default."""
    return RUNS / "predict" / (image_stem or "image")


def user_eval_dir(name: str) -> Path:
    """``runs/eval/<name>`` (``runs/eval/default`` without a name): a hand-run ``supersam eval``."""
    return RUNS / "eval" / (name or "default")


def latency_table(device_key: str) -> Path:
    """``outputs/latency/<device-key>.json``: the search's latency lookup table of one device (a cache)."""
    return LATENCY_DIR / f"{device_key}.json"
