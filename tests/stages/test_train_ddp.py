"""Data-parallel training: 2 gloo processes on CPU (spawned, and through ``supersam train --nproc 2``)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from supersam.artifacts.records import SupernetMeta
from supersam.data import DataConfig
from supersam.model.checkpoint import save_supernet
from supersam.model.elastic import SuperSam
from supersam.model.sam import build_sam_model
from supersam.model.space import SearchSpace
from supersam.schema import TrackingConfig
from supersam.stages.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg: TrainConfig, data: DataConfig, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    result = train(cfg, data, TrackingConfig(enabled=False), show_progress=False)
    Path(out, f"rank{rank}.json").write_text(json.dumps({"losses": result.losses, "subnets": result.subnets}))


@pytest.fixture(scope="module")
def setup(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(0)
    supernet = SuperSam(build_sam_model("tiny", 128), SearchSpace.for_arch("tiny"))
    save_supernet(root / "supernet.pt", supernet, SupernetMeta("tiny", 128, False, "wanda"))
    data = DataConfig(
        kind="image_label",
        root=str(shared_data / "dsb2018_nuclei"),
        images="img2d.tif",
        labels="mask2d.tif",
        label_mode="instance",
        patch=128,
        min_area=20,
        max_objects=4,
        box_pad=5,
    )
    cfg = TrainConfig(
        supernet=str(root / "supernet.pt"),
        out=str(root / "ddp"),
        iterations=4,
        batch_size=2,
        lr=1e-2,
        eval_every=0,
        val_images=1,
        save_every=0,
        device="cpu",
        seed=1,
    )
    return root, cfg, data


@pytest.mark.slow
def test_two_process_gloo_run_matches_single_process(setup):
    root, cfg, data = setup
    mp.spawn(_worker, args=(2, _free_port(), cfg, data, str(root)), nprocs=2, join=True)
    ranks = [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["subnets"] == ranks[1]["subnets"] and len(ranks[0]["subnets"]) == 4
    assert ranks[0]["losses"] == ranks[1]["losses"]
    metrics = json.loads((root / "ddp" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["iterations"] == 4
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(
            dataclasses.replace(cfg, out=str(root / "single")), data, TrackingConfig(enabled=False), show_progress=False
        )
    finally:
        torch.set_num_threads(threads)
    assert single.subnets == ranks[0]["subnets"]
    # each rank's loss is divided by the global batch and gradients are summed: same trajectory
    assert [e["loss"] for e in ranks[0]["losses"]] == pytest.approx([e["loss"] for e in single.losses], abs=1e-4)


@pytest.mark.slow
def test_cli_nproc_2_under_torchrun(setup, tmp_path):
    root, cfg, data = setup
    params = {
        "train": {**cfg.to_dict(), "out": str(tmp_path / "cli"), "iterations": 2},
        "data": vars(data),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "supersam.cli.main",
            "train",
            "--params",
            str(tmp_path / "params.yaml"),
            "--nproc",
            "2",
            "--no-progress",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["iterations"] == 2 and metrics["energy_method"] == "estimate"
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("supersam").experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["variant"] == "wanda" and runs[0].data.tags["stage"] == "train"
