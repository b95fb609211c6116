"""MLflow tracking shared by every stage (docs/contracts.md, "MLflow").

One experiment, created with the tag ``mlflow.experimentKind =
custom_model_development`` so MLflow 3's UI opens it on the runs table. Every run
is tagged ``stage`` and ``variant`` (and ``pretrained``); runs of one pipeline
share the tag ``pipeline_run``: the ``SUPERSAM_PIPELINE_RUN`` environment variable
when set, else a digest of ./params.yaml.

Under ``dvc repro`` (DVC sets ``DVC_STAGE``) every stage run is nested under one
parent run per pipeline execution (``stage = pipeline``): the first stage creates
it, each stage re-opens it and closes it again when done, so its duration spans
the execution; a stage that starts more than :data:`EXECUTION_GAP_S` after the
parent last closed starts a new execution. A run opened by :func:`start_run`
spans the work inside the ``with`` block; stages open it before they start.

Faults (docs/contracts.md, "Failures"): a store that cannot be opened (a corrupt
or locked database, a bad URI, an unreachable server, with HTTP timeouts bounded
by :data:`HTTP_TIMEOUT_S`) stops the command at the start with one
:class:`TrackingError` line naming the URI and the fix. Once the run is open, a
failed logging call is retried with back-off (:data:`RETRY_DELAYS_S`) and then
downgraded to a warning: the stage's figures are in its metrics.json too, so a
store problem never kills a long run. Ctrl-C and SIGTERM mark the run KILLED, an
exception FAILED; a run whose process died without either (``kill -9``) is marked
KILLED by the next run on the same host. ``mlflow: false`` (or
``mlflow.enabled: false``) switches tracking off.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import os
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from supersam.runtime.errors import TrackingError, interruption_of
from supersam.runtime.io import process_alive
from supersam.schema import TrackingConfig

log = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 10  # per request to a tracking server (MLflow's default: 120 s, x7 retries)
HTTP_MAX_RETRIES = 1
RETRY_DELAYS_S = (0.5, 2.0, 5.0)  # back-off of a failed logging call before it becomes a warning
PID_TAG, HOST_TAG = "supersam.pid", "supersam.host"


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # MLflow 3: open the experiment on its runs table
PIPELINE_STAGE = "pipeline"
EXECUTION_GAP_S = 300  # s; a stage starting later than this after the previous one ended starts a new execution


class Run:
    """Thin handle on an active MLflow run (or a no-op when tracking is disabled)."""

    def __init__(self, mlflow_module: Any | None) -> None:
        self._mlflow = mlflow_module
        self.run_id: str | None = None
        self.failed_calls = 0  # logging calls given up after the retries (each a warning)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        """``fn(*args)`` retried with back-off; a last failure is a warning, never an exception."""
        for attempt, delay in enumerate((*RETRY_DELAYS_S, None)):
            try:
                fn(*args, **kwargs)
                return
            except Exception as exc:  # noqa: BLE001  (any store error: locked DB, network, server 5xx)
                if delay is None:
                    self.failed_calls += 1
                    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                    log.warning(
                        "MLflow %s failed %d times (%s); continuing without it (the figures are in "
                        "the stage's metrics.json)",
                        what,
                        attempt + 1,
                        reason,
                    )
                    return
                time.sleep(delay)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric, finite entries of ``metrics`` (None/NaN/str entries skipped)."""
        if self._mlflow is None:
            return
        clean = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        }
        clean.update({k: float(v) for k, v in metrics.items() if isinstance(v, bool)})
        if clean:
            self._call("log_metrics", self._mlflow.log_metrics, clean, step=step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (values stringified, truncated to MLflow's 6000-char limit)."""
        if self._mlflow is not None and params:
            self._call("log_params", self._mlflow.log_params, {k: str(v)[:6000] for k, v in params.items()})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values stringified)."""
        if self._mlflow is not None and tags:
            self._call("set_tags", self._mlflow.set_tags, {k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        """Attach a file (or a folder's files) to the run, under ``artifact_path``."""
        if self._mlflow is None or not os.path.exists(path):
            return
        if os.path.isdir(path):
            self._call("log_artifacts", self._mlflow.log_artifacts, path, artifact_path)
        else:
            self._call("log_artifact", self._mlflow.log_artifact, path, artifact_path)

    def log_dataset(
        self, root: str | Path, split: str, n_images: int, n_objects: int, kind: str = "", digest: str | None = None
    ) -> None:
        """Record the data a stage read as an MLflow dataset input (the UI's Dataset column).

        Args:
            root: the data set folder (the dataset's source).
            split: ``train``, ``val``, ``test`` or ``all`` (the input's context).
            n_images, n_objects: what was read (input tags).
            kind: ``image_label``, ``coco`` or ``sa1b``.
            digest: content digest; default :func:`data_digest` of ``root``.
        """
        if self._mlflow is None:
            return
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        root = Path(root)
        with warnings.catch_warnings():  # a local folder matches two equivalent source types
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(root.resolve()))
        dataset = MetaDataset(source, name=f"{root.name}/{split}", digest=digest or data_digest(root))
        self._call(
            "log_input",
            self._mlflow.log_input,
            dataset,
            context=split,
            tags={"n_images": str(n_images), "n_objects": str(n_objects), "kind": kind},
        )


MAX_DIGEST_BYTES = 1 << 30  # above 1 GB of files the digest covers names, sizes and mtimes only


@functools.lru_cache(maxsize=8)
def data_digest(root: str | Path) -> str:
    """SHA-1 (16 hex digits) of a data set folder: every file's relative path and bytes.

    Folders over :data:`MAX_DIGEST_BYTES` are digested by path, size and mtime
    instead (prefix ``stat-``), so SA-1B-sized roots cost no full read.
    """
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    by_content = sum(p.stat().st_size for p in files) <= MAX_DIGEST_BYTES
    digest = hashlib.sha1()
    for path in files:
        digest.update(str(path.relative_to(root) if root.is_dir() else path.name).encode())
        if by_content:
            digest.update(path.read_bytes())
        else:
            stat = path.stat()
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return ("" if by_content else "stat-") + digest.hexdigest()[:16]


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
        db = Path(cfg.tracking_uri[len(prefix) :]).resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


def _ensure_experiment(mlflow: Any, cfg: TrackingConfig) -> str:
    """The experiment's id; created (or tagged) as a model-development experiment."""
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        try:
            mlflow.create_experiment(
                cfg.experiment, artifact_location=artifact_location(cfg), tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except Exception:  # created concurrently by another stage: use that one
            if mlflow.get_experiment_by_name(cfg.experiment) is None:
                raise
        experiment = mlflow.get_experiment_by_name(cfg.experiment)
    elif experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(cfg.experiment)
    return experiment.experiment_id


def _open_execution(mlflow: Any, experiment_id: str, group: str) -> str | None:
    """The parent run of this pipeline execution, (re)opened; None outside ``dvc repro``."""
    if not os.environ.get("DVC_STAGE"):
        return None
    client = mlflow.MlflowClient()
    query = f"tags.stage = '{PIPELINE_STAGE}' and tags.pipeline_run = '{group}'"
    found = client.search_runs([experiment_id], query, max_results=1, order_by=["attributes.start_time DESC"])
    now_ms = int(time.time() * 1000)
    if found:
        info = found[0].info
        if info.status == "RUNNING" or (info.end_time or 0) >= now_ms - EXECUTION_GAP_S * 1000:
            client.update_run(info.run_id, status="RUNNING")
            return info.run_id
    run = client.create_run(
        experiment_id,
        run_name=f"pipeline {time.strftime('%Y-%m-%d %H:%M')}",
        tags={"stage": PIPELINE_STAGE, "variant": "-", "pipeline_run": group},
    )
    return run.info.run_id


def _close_execution(mlflow: Any, parent: str | None) -> None:
    """Mark the parent finished now (the next stage of the execution re-opens it)."""
    if parent:
        mlflow.MlflowClient().set_terminated(parent, "FINISHED")


def _import_mlflow() -> Any:
    """``mlflow`` with bounded HTTP timeouts (unless the user set them) and quiet loggers."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(HTTP_TIMEOUT_S))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(HTTP_MAX_RETRIES))
    import mlflow  # configures its own loggers on import: quiet them afterwards

    for name in ("alembic", "mlflow", "sqlalchemy", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # store errors are reported by us in one line (TrackingError) or retried (Run._call): not as
    # MLflow's own tracebacks
    for name in ("mlflow.store.db.utils", "mlflow.utils.rest_utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return mlflow


def _reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def _mark_dead_runs(mlflow: Any, experiment_id: str) -> None:
    """Runs of this host left RUNNING by a process that no longer exists (``kill -9``) -> KILLED."""
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    query = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'"
    for found in client.search_runs([experiment_id], query, max_results=50):
        pid = int(found.data.tags.get(PID_TAG, "0") or 0)
        if pid and pid != os.getpid() and not process_alive(pid):
            client.set_terminated(found.info.run_id, "KILLED")
            log.info("marked MLflow run %s (process %d, gone) KILLED", found.info.run_id, pid)


def open_store(cfg: TrackingConfig) -> tuple[Any, str]:
    """Connect to ``cfg``'s tracking store and return ``(mlflow, experiment_id)``.

    Raises:
        TrackingError: the store cannot be opened or written (one line naming the
            URI, the reason and the fix).
    """
    mlflow = _import_mlflow()
    try:
        mlflow.set_tracking_uri(cfg.tracking_uri)
        experiment_id = _ensure_experiment(mlflow, cfg)
        _mark_dead_runs(mlflow, experiment_id)
    except Exception as exc:  # noqa: BLE001  (sqlalchemy, requests, MlflowException, ...)
        raise TrackingError(
            f"MLflow tracking store {cfg.tracking_uri} cannot be used ({_reason(exc)}); fix or move it, point "
            "--set mlflow.tracking_uri=... elsewhere, or run without tracking with --set mlflow.enabled=false"
        ) from None
    return mlflow, experiment_id


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
    mlflow, experiment_id = open_store(cfg)
    all_tags = {"stage": stage, "variant": variant or "-", PID_TAG: os.getpid(), HOST_TAG: socket.gethostname()}
    group = pipeline_run_id() or "adhoc"
    all_tags["pipeline_run"] = group
    all_tags.update({k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in (tags or {}).items()})
    name = f"{stage}-{variant}" if variant else stage
    try:
        parent = _open_execution(mlflow, experiment_id, group)
        active = mlflow.start_run(run_name=name, tags={k: str(v) for k, v in all_tags.items()}, parent_run_id=parent)
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(
            f"MLflow tracking store {cfg.tracking_uri} refused a new run ({_reason(exc)}); "
            "fix the store or run with --set mlflow.enabled=false"
        ) from None
    run = Run(mlflow)
    run.run_id = active.info.run_id
    status = "FAILED"
    try:
        run.log_params(params or {})
        yield run
        status = "FINISHED"
    except BaseException as exc:  # Ctrl-C / SIGTERM (the CLI raises Interrupted), also when it surfaces
        if interruption_of(exc) is not None:  # through native code as another exception
            status = "KILLED"
        raise
    finally:
        run._call(f"end_run({status})", mlflow.end_run, status)
        if parent:
            run._call("closing the pipeline run", _close_execution, mlflow, parent)
    log.info(
        "MLflow run %s (%s) logged to %s%s",
        run.run_id,
        name,
        cfg.tracking_uri,
        f" ({run.failed_calls} logging call(s) lost)" if run.failed_calls else "",
    )
