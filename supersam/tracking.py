"""MLflow tracking shared by every stage (docs/contracts.md, "MLflow").

One experiment; every run tagged ``stage`` and ``variant`` (and ``pretrained``);
runs of one pipeline share the tag ``pipeline_run``: the ``SUPERSAM_PIPELINE_RUN``
environment variable when set, else a digest of ./params.yaml (every stage of one
``dvc repro`` runs in the project root with the same params), so the UI can
filter one pipeline's runs with ``tags.pipeline_run = '...'``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from supersam.config import TrackingConfig

log = logging.getLogger(__name__)


class Run:
    """Thin handle on an active MLflow run (or a no-op when tracking is disabled)."""

    def __init__(self, mlflow_module: Any | None) -> None:
        self._mlflow = mlflow_module
        self.run_id: str | None = None

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric, finite entries of ``metrics`` (None/NaN/str entries skipped)."""
        if self._mlflow is None:
            return
        clean = {
            k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        }
        clean.update({k: float(v) for k, v in metrics.items() if isinstance(v, bool)})
        if clean:
            self._mlflow.log_metrics(clean, step=step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (values stringified, truncated to MLflow's 6000-char limit)."""
        if self._mlflow is not None and params:
            self._mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values stringified)."""
        if self._mlflow is not None and tags:
            self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str) -> None:
        """Attach a file to the run."""
        if self._mlflow is not None and os.path.exists(path):
            self._mlflow.log_artifact(path)


def pipeline_run_id(params: Path = Path("params.yaml")) -> str:
    """Group id of the current pipeline run ("" when neither source exists)."""
    if os.environ.get("SUPERSAM_PIPELINE_RUN"):
        return os.environ["SUPERSAM_PIPELINE_RUN"]
    if params.is_file():
        return "params-" + hashlib.sha1(params.read_bytes()).hexdigest()[:10]
    return ""


def artifact_location(cfg: TrackingConfig) -> str | None:
    """Artifact root for a new experiment: ``mlartifacts/`` beside a sqlite DB.

    MLflow's own default (``./mlruns`` in the working directory) would scatter
    artifacts wherever a command runs; beside the database they stay together.
    """
    if cfg.artifact_location:
        return cfg.artifact_location
    prefix = "sqlite:///"
    if cfg.tracking_uri.startswith(prefix):
        db = Path(cfg.tracking_uri[len(prefix):]).resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


def _ensure_experiment(mlflow: Any, cfg: TrackingConfig) -> None:
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        try:
            mlflow.create_experiment(cfg.experiment, artifact_location=artifact_location(cfg))
        except Exception:  # created concurrently by another stage: use that one
            if mlflow.get_experiment_by_name(cfg.experiment) is None:
                raise
    mlflow.set_experiment(cfg.experiment)


@contextlib.contextmanager
def start_run(
    cfg: TrackingConfig,
    stage: str,
    variant: str = "",
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Iterator[Run]:
    """Open an MLflow run tagged ``stage``/``variant`` in ``cfg``'s experiment.

    Args:
        cfg: tracking URI, experiment and on/off switch.
        stage: pipeline stage name (``eval``, ``train``, ...).
        variant: reordering variant (``none``, ``magnitude``, ``wanda``) or "".
        params: logged as MLflow params.
        tags: extra tags, e.g. ``{"pretrained": False}``.

    Yields:
        a :class:`Run`; a no-op handle when ``cfg.enabled`` is False.
    """
    if not cfg.enabled:
        yield Run(None)
        return
    import mlflow  # configures its own loggers on import: quiet them afterwards

    for name in ("alembic", "mlflow", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)

    mlflow.set_tracking_uri(cfg.tracking_uri)
    _ensure_experiment(mlflow, cfg)
    all_tags = {"stage": stage, "variant": variant or "-"}
    group = pipeline_run_id()
    if group:
        all_tags["pipeline_run"] = group
    all_tags.update({k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in (tags or {}).items()})
    name = f"{stage}-{variant}" if variant else stage
    with mlflow.start_run(run_name=name, tags=all_tags) as active:
        run = Run(mlflow)
        run.run_id = active.info.run_id
        run.log_params(params or {})
        yield run
    log.info("MLflow run %s (%s) logged to %s", run.run_id, name, cfg.tracking_uri)
