"""The root params schema: every params.yaml section's class, and the sections each command reads.

:class:`Params` is params.yaml as one typed object, one field per section (``variants`` and
``metric`` at the top level); ``supersam validate`` builds it, and so does the pipeline's first
stage. :data:`supersam.cli.app.READS` names the sections each command reads: ``--set`` of any other
section is refused (it would be silently ignored), and tests/test_pipeline_config.py checks that
dvc.yaml's ``params:`` list of every stage is exactly its command's reads, so the two cannot drift.

Adding a key to a section touches its class only (e.g. ``TrainConfig``): ``--set``, validation,
the pipeline's ``validate`` stage and dvc.yaml (which lists whole sections) follow. A new section
adds its class, a field here, :data:`supersam.schema.SECTIONS` and the reads of its commands
(:data:`supersam.cli.app.READS`).
The map lives in the CLI layer because the section classes belong to the stages that read them.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass
from typing import Any

from supersam.data import DataConfig
from supersam.schema import ModelConfig, TrackingConfig, stage_config
from supersam.stages.build_supernet import SpaceConfig, SupernetConfig
from supersam.stages.calibrate import CalibrateConfig
from supersam.stages.compare import CompareConfig
from supersam.stages.eval import EvalConfig
from supersam.stages.export import ExportConfig
from supersam.stages.pretrain import PretrainConfig
from supersam.stages.rank_layers import RankLayersConfig
from supersam.stages.search.config import SearchConfig
from supersam.stages.train.config import TrainConfig
from supersam.tools.bench import BenchConfig


@dataclass(frozen=True)
class Params:
    """params.yaml, every section validated against its class (docs/architecture.md, "Configuration").

    Attributes:
        variants: the reordering variants the pipeline builds, trains and compares.
        metric: ``single`` or ``oracle``, copied into the sections that select on an mIoU.
        model ... bench: one built config per section (e.g. ``train`` is a :class:`TrainConfig`).
    """

    variants: list[str]
    metric: str
    model: ModelConfig
    data: DataConfig
    mlflow: TrackingConfig
    pretrain: PretrainConfig
    rank_layers: RankLayersConfig
    calibrate: CalibrateConfig
    space: SpaceConfig
    supernet: SupernetConfig
    train: TrainConfig
    search: SearchConfig
    compare: CompareConfig
    export: ExportConfig
    eval: EvalConfig
    bench: BenchConfig

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> Params:
        """Build every section of params already read (``--set`` applied, ``metric`` copied into its sections).

        Runs what each stage runs on its sections before any work (types, unknown keys, ranges,
        enumerations, thresholds), for all sections at once. Checks that need the model or the
        data (a layer count, a file's existence) stay with their stage.

        Raises:
            ConfigError: the first problem, one line naming ``section.key`` and the fix.
        """
        from supersam.model.reorder import check_variants

        built: dict[str, Any] = {"variants": check_variants(values), "metric": values.get("metric", "single")}
        for section, config_class in section_classes().items():
            config = stage_config(config_class, values, section)
            validate = getattr(config, "validate", None)
            if validate is not None and not [
                p for p in inspect.signature(validate).parameters.values() if p.default is inspect.Parameter.empty
            ]:
                validate()
            built[section] = config
        return cls(**built)


def section_classes() -> dict[str, type]:
    """params.yaml section name -> its config class: :class:`Params`' fields but the top-level values."""
    hints = typing.get_type_hints(Params)
    return {f.name: hints[f.name] for f in dataclasses.fields(Params) if f.name not in ("variants", "metric")}
