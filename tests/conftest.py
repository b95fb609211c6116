"""Shared fixtures: the real data sets in ../shared/data and the tiny SAM config."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Busy-waiting OpenMP threads slow tiny-model tests 40-100x when other processes
# share the cores; passive waiting costs nothing measurable on an idle machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder holding tiny_coco/, isbi2012_em/ and dsb2018_nuclei/ (must exist)."""
    assert SHARED_DATA.is_dir(), f"real data expected at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Tests are device-agnostic: CUDA when present, else CPU (these machines)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module (restored afterwards): tiny models gain
    nothing from threads, and on a busy 2-core machine OpenMP spin-waiting makes
    them up to 100x slower. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def coco_images(shared_data: Path, split: str, img_size: int, n: int) -> list[torch.Tensor]:
    """The first ``n`` tiny-COCO ``split`` images through SAM preprocessing: 3 x S x S each."""
    from supersam.data.prepare import preprocess_image

    files = sorted((shared_data / "tiny_coco" / f"{split}2017").glob("*.jpg"))[:n]
    return [preprocess_image(np.asarray(Image.open(f).convert("RGB")), img_size)[0] for f in files]


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """Run the ``supersam`` entry point in-process; returns (exit code, stderr); 0 when it returns."""
    from supersam.cli.main import main

    monkeypatch.setattr(sys, "argv", ["supersam", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err
