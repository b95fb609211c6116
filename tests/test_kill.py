"""The kill -9 loop: SIGKILLs at random moments of pretrain, train, search and export, then resume.

Each command runs as a user would run it (the ``supersam`` executable, in a
subprocess) with the flags the DVC pipeline uses (``pretrain --auto-resume``,
``train --auto-resume``, ``search --auto-resume``, ``export``) and is killed with SIGKILL at a seeded
random moment; after every kill the artifacts on disk must be valid (a complete
file or none: the training checkpoint loads, an export folder is complete), and
after the last kill the command is run to its end. The results must equal an
uninterrupted run's: the trained weights bit for bit, the search's candidates and
best subnet, the exported files byte for byte; no temporary file is left behind.
docs/contracts.md, "Failures".
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from supersam.artifacts.records import SupernetMeta
from supersam.model.checkpoint import load_supernet, read_export_manifest, save_supernet
from supersam.model.elastic import SuperSam
from supersam.model.sam import build_sam_model
from supersam.model.space import SearchSpace
from supersam.runtime.resume import checkpoint_path, load_training_state

pytestmark = pytest.mark.slow

SUPERSAM_BIN = Path(sys.executable).parent / "supersam"
KILLS = {"train": 4, "search": 4, "export": 2, "pretrain": 3}  # 10 kill points, and 3 in the base model's training


def _run(args: list[str], cwd: Path, kill_after: float | None = None) -> tuple[int | None, str]:
    """Run ``supersam ARGS``; with ``kill_after`` seconds, SIGKILL it then if it still runs (code None)."""
    proc = subprocess.Popen(
        [str(SUPERSAM_BIN), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _, err = proc.communicate(timeout=kill_after)
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None, ""


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _no_temporaries(folder: Path) -> None:
    leftovers = [p.name for p in folder.rglob(".*") if ".tmp" in p.name or p.name.endswith(".old")]
    assert not leftovers, leftovers


@pytest.fixture(scope="module")
def project(tmp_path_factory, shared_data) -> Path:
    root = tmp_path_factory.mktemp("kill")
    torch.manual_seed(0)
    supernet = SuperSam(build_sam_model("tiny", 128), SearchSpace.for_arch("tiny", mlp_dim_choices=(64, 128, 256)))
    save_supernet(root / "supernet.pt", supernet, SupernetMeta("tiny", 128, False, "wanda"))
    params = {
        "data": {"root": str(shared_data / "isbi2012_em"), "patch": 256, "max_objects": 2},
        "train": {
            "iterations": 8,
            "batch_size": 2,
            "max_objects": 2,
            "val_images": 1,
            "eval_every": 4,
            "save_every": 1,
            "target_miou": "0.0",
            "device": "cpu",
            "target_every": 0,
            "lr": 1e-3,
        },
        "search": {"n_images": 1, "budget": 10, "device": "cpu", "max_params": "60e6", "min_miou": "0.0"},
        "pretrain": {
            "iterations": 6,
            "batch_size": 2,
            "max_objects": 2,
            "val_images": 1,
            "eval_every": 3,
            "save_every": 1,
            "warmup": 2,
            "device": "cpu",
        },
        "mlflow": {"enabled": False},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _kill_loop(name: str, args: list[str], project: Path, seconds: float, rng: random.Random, check) -> int:
    """Kill ``args`` KILLS[name] times at random moments (checking the disk after each; at most twice as many
    tries), then run it to the end."""
    kills = 0
    for _ in range(2 * KILLS[name]):  # a run that finishes before its moment (a busy machine) gets another try
        if kills == KILLS[name]:
            break
        code, err = _run(args, project, kill_after=rng.uniform(0.3, 1.0) * seconds)
        assert code in (None, 0), err
        kills += code is None
        check()
    code, err = _run(args, project)
    assert code == 0, err
    return kills


def test_ten_kill_9_points_end_in_valid_artifacts_and_the_uninterrupted_result(project):
    rng = random.Random(0)
    train_args = ["train", "--supernet", "supernet.pt", "--no-progress", "--auto-resume"]
    search_args = ["search", "--auto-resume"]

    # the uninterrupted runs (and their durations, so the kill points fall inside the work)
    t0 = time.perf_counter()
    code, err = _run([*train_args, "--out", "ref/train"], project)
    t_train = time.perf_counter() - t0
    assert code == 0, err
    t0 = time.perf_counter()
    code, err = _run([*search_args, "--supernet", "ref/train/supernet.pt", "--out", "ref/search"], project)
    t_search = time.perf_counter() - t0
    assert code == 0, err
    t0 = time.perf_counter()
    code, err = _run(
        [
            "export",
            "--supernet",
            "ref/train/supernet.pt",
            "--subnet",
            "ref/search/best_subnet.json",
            "--out",
            "ref/export",
        ],
        project,
    )
    t_export = time.perf_counter() - t0
    assert code == 0, err

    def check_train() -> None:
        ckpt = checkpoint_path(project / "run" / "train")
        if ckpt.exists():
            assert 1 <= load_training_state(ckpt)["iteration"] <= 8  # a complete checkpoint, never a torn one
        if (project / "run" / "train" / "supernet.pt").exists():
            load_supernet(project / "run" / "train" / "supernet.pt")

    kills = _kill_loop("train", [*train_args, "--out", "run/train"], project, t_train, rng, check_train)
    ref, got = (load_supernet(project / d / "train" / "supernet.pt").state_dict() for d in ("ref", "run"))
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)  # bit for bit
    for key in ("iterations", "miou_min", "miou_max"):
        assert (
            json.loads((project / "run/train/metrics.json").read_text())[key]
            == json.loads((project / "ref/train/metrics.json").read_text())[key]
        )

    def check_search() -> None:
        journal = project / "run" / "search" / "candidates.partial.jsonl"
        if journal.exists():
            for line in journal.read_text().splitlines()[:-1]:  # every line but a cut last one is whole
                json.loads(line)

    kills += _kill_loop(
        "search",
        [*search_args, "--supernet", "run/train/supernet.pt", "--out", "run/search"],
        project,
        t_search,
        rng,
        check_search,
    )
    strip = lambda d: [
        {k: v for k, v in c.items() if k != "seconds"}  # noqa: E731
        for c in json.loads((project / d / "search" / "candidates.json").read_text())
    ]
    assert strip("run") == strip("ref") and len(strip("run")) == 10
    assert (project / "run/search/best_subnet.json").read_bytes() == (
        project / "ref/search/best_subnet.json"
    ).read_bytes()

    def check_export() -> None:
        out = project / "run" / "export"
        if out.exists():  # all or nothing
            read_export_manifest(out)
            assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.pt"]

    kills += _kill_loop(
        "export",
        [
            "export",
            "--supernet",
            "run/train/supernet.pt",
            "--subnet",
            "run/search/best_subnet.json",
            "--out",
            "run/export",
        ],
        project,
        t_export,
        rng,
        check_export,
    )
    ref_export, run_export = _files(project / "ref" / "export"), _files(project / "run" / "export")
    assert ref_export["model.pt"] == run_export["model.pt"]
    manifest = lambda d: {
        k: v
        for k, v in json.loads((project / d / "export/config.json").read_text()).items()  # noqa: E731
        if k != "supernet"
    }
    assert manifest("run") == manifest("ref")
    _no_temporaries(project / "run")
    assert kills >= 8  # the kill points fell inside the work (a run may finish before its moment)


def test_kill_9_during_pretrain_then_auto_resume_gives_the_uninterrupted_base_model(project):
    rng = random.Random(1)
    args = ["pretrain", "--auto-resume", "--set", "model.type=tiny", "--set", "model.img_size=128"]
    t0 = time.perf_counter()
    code, err = _run([*args, "--out", "ref/pretrain"], project)
    seconds = time.perf_counter() - t0
    assert code == 0, err

    def check() -> None:
        ckpt = checkpoint_path(project / "run" / "pretrain")
        if ckpt.exists():
            assert 1 <= load_training_state(ckpt)["iteration"] <= 6  # a complete checkpoint, never a torn one

    kills = _kill_loop("pretrain", [*args, "--out", "run/pretrain"], project, seconds, rng, check)
    ref, got = (torch.load(project / d / "pretrain" / "model.pt", weights_only=True) for d in ("ref", "run"))
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)  # bit for bit
    history = lambda d: [
        {k: v for k, v in e.items() if k != "seconds"}  # noqa: E731
        for e in json.loads((project / d / "pretrain" / "history.json").read_text())
    ]
    assert history("run") == history("ref")
    _no_temporaries(project / "run" / "pretrain")
    assert kills >= 2
