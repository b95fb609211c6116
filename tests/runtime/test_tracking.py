"""MLflow as users meet it, against a real ``mlflow server`` on 127.0.0.1 (no mock).

A tiny ``supersam eval`` runs over HTTP, twice as DVC would run a stage (``DVC_STAGE``
set) and once by hand; everything is read back through MLflow's client.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SHARED_DATA

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--default-artifact-root",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    import mlflow

    client = mlflow.MlflowClient(uri)
    deadline = time.monotonic() + 120
    while True:
        try:
            client.search_experiments()
            break
        except Exception:  # noqa: BLE001 - not up yet
            assert proc.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(1)
    yield uri, client
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def _eval(uri: str, cwd: Path, name: str, dvc_stage: str | None) -> float:
    (cwd / "params.yaml").write_text("{}\n")
    env = {k: v for k, v in os.environ.items() if k != "DVC_STAGE"}
    env["OMP_NUM_THREADS"] = "1"
    if dvc_stage:
        env["DVC_STAGE"] = dvc_stage
    args = [
        str(BIN / "supersam"),
        "eval",
        "--set",
        "model.type=tiny",
        "--set",
        "model.img_size=128",
        "--set",
        "data.kind=image_label",
        "--data-root",
        str(SHARED_DATA / "dsb2018_nuclei"),
        "--set",
        "data.images=img2d.tif",
        "--set",
        "data.labels=mask2d.tif",
        "--set",
        "data.label_mode=instance",
        "--set",
        "data.max_objects=4",
        "--split",
        "all",
        "--set",
        "eval.overlays=1",
        "--set",
        "eval.device=cpu",
        "--set",
        f"mlflow.tracking_uri={uri}",
        "--name",
        name,
        "--out",
        str(cwd / name),
    ]
    start = time.monotonic()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return time.monotonic() - start


@pytest.mark.slow
def test_stage_runs_against_a_real_server(server, tmp_path):
    uri, client = server
    walls = {
        name: _eval(uri, tmp_path, name, stage) for name, stage in (("a", "eval"), ("b", "eval"), ("byhand", None))
    }
    experiment = client.get_experiment_by_name("supersam")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = {r.data.tags.get("name"): r for r in client.search_runs([experiment.experiment_id])}
    parents = [r for r in runs.values() if r.data.tags["stage"] == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # one execution, closed by its last stage
    parent = parents[0]
    for name in ("a", "b"):  # both stage runs of the execution nest under it
        assert runs[name].data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert parent.info.start_time <= runs[name].info.start_time and runs[name].info.end_time <= parent.info.end_time
    assert "mlflow.parentRunId" not in runs["byhand"].data.tags  # a hand run is a top-level run
    for name, run in ((n, runs[n]) for n in ("a", "b", "byhand")):
        duration = (run.info.end_time - run.info.start_time) / 1000
        work = run.data.metrics["seconds"]  # the evaluation loop the stage measured itself
        assert work <= duration + 1 and duration <= walls[name], (name, duration, work, walls[name])
        inputs = run.inputs.dataset_inputs
        assert len(inputs) == 1 and inputs[0].dataset.name == "dsb2018_nuclei/all"
        tags = {t.key: t.value for t in inputs[0].tags}
        assert tags["mlflow.data.context"] == "all" and tags["n_images"] == "1" and tags["n_objects"] == "4"
        assert len(inputs[0].dataset.digest) == 16
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "metrics.json" in artifacts and "overlays" in artifacts
    assert runs["a"].inputs.dataset_inputs[0].dataset.digest == runs["b"].inputs.dataset_inputs[0].dataset.digest
