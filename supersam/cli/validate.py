"""``supersam validate``: a whole params file against the schema, before any stage runs.

The pipeline's first stage, ``validate``, runs it: DVC removes a stage's outputs before it
runs the stage's command, so without it ``dvc exp run -S search.budget=abc`` would delete
the previous search's results before the search could refuse the value
(docs/contracts.md, "Failures"). The map from section to config class lives here, in the
CLI layer, because the classes belong to the stages that read them.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any, Optional

import typer

from supersam.cli.app import app, load_params, params_option, set_option

VALID_FORMAT = "supersam-params/1"
"""``format`` of the marker ``validate --out`` writes; its content never depends on the params,
so the stages that depend on it are not re-run when it is rewritten."""


def section_classes() -> dict[str, type]:
    """params.yaml section name -> its config class (every section of :data:`supersam.config.SECTIONS`
    except the top-level ``variants`` and ``metric``)."""
    from supersam.bench import BenchConfig
    from supersam.build_supernet import SpaceConfig, SupernetConfig
    from supersam.calibrate import CalibrateConfig
    from supersam.compare import CompareConfig
    from supersam.config import SECTIONS, TOP_LEVEL, ModelConfig, TrackingConfig
    from supersam.data import DataConfig
    from supersam.eval import EvalConfig
    from supersam.export import ExportConfig
    from supersam.pretrain import PretrainConfig
    from supersam.rank_layers import RankLayersConfig
    from supersam.search.config import SearchConfig
    from supersam.train.config import TrainConfig

    classes = {
        "model": ModelConfig, "data": DataConfig, "mlflow": TrackingConfig, "pretrain": PretrainConfig,
        "rank_layers": RankLayersConfig, "calibrate": CalibrateConfig, "space": SpaceConfig,
        "supernet": SupernetConfig, "train": TrainConfig, "search": SearchConfig,
        "compare": CompareConfig, "export": ExportConfig, "eval": EvalConfig, "bench": BenchConfig,
    }
    assert set(classes) == set(SECTIONS) - set(TOP_LEVEL), "supersam.config.SECTIONS and the schema disagree"
    return classes


def validate_values(values: dict[str, Any]) -> dict[str, Any]:
    """Validate params already read (``--set`` applied, ``metric`` copied into its sections): every section
    against its class, and each class's own checks.

    Runs what each stage runs on its sections before any work (types, unknown keys, ranges,
    enumerations, thresholds), for all sections at once. Checks that need the model or the
    data (a layer count, a file's existence) stay with their stage.

    Returns:
        the built config of every section, by section name.

    Raises:
        ConfigError: the first problem, one line naming ``section.key`` and the fix.
    """
    from supersam.config import stage_config
    from supersam.reorder import check_variants

    check_variants(values)
    configs = {}
    for section, cls in section_classes().items():
        config = stage_config(cls, values, section)
        validate = getattr(config, "validate", None)
        if validate is not None and not [p for p in inspect.signature(validate).parameters.values()
                                         if p.default is inspect.Parameter.empty]:
            validate()
        configs[section] = config
    return configs


@app.command("validate")
def validate_cli(
    params: Path = params_option(),
    sets: list[str] = set_option(),
    out: Optional[str] = typer.Option(None, help="Also write this marker file when the params are valid (the "
                                                 "pipeline's first stage writes outputs/params/valid.json)."),
) -> None:
    """Check a whole params file against the schema (every section, every range) before any stage runs.

        supersam validate                          # ./params.yaml
        supersam validate -p profiles/paper.yaml --set search.budget=48
    """
    from supersam.config import SECTIONS
    from supersam.io import write_json

    values = load_params("validate", SECTIONS, params, sets)
    configs = validate_values(values)
    if out is not None:
        write_json(out, {"format": VALID_FORMAT})
    logging.getLogger(__name__).info("%s is valid (%d sections)", params, len(configs))
