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
        main(restore_signals=True)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def make_voc_folder(shared_data: Path, dest: Path, n_images: int = 3, border: int = 2, min_area: int = 0) -> dict:
    """A Pascal-VOC-style folder built from real tiny-COCO val images: ``image/<stem>.jpg`` (RGB) and
    ``label/<stem>.png`` (palette PNG of instance ids: 0 background, 1..k one instance each, 255 void).

    Every non-crowd annotation of at least ``min_area`` px is painted in COCO order (a later instance
    covers an earlier one where they overlap; an instance left with no pixel is dropped); then, as in
    VOC, a ``border`` px band along every instance boundary and every crowd region become 255 (void).

    Returns:
        {stem: {"ids": [instance ids], "label": H x W uint8 array}} of the images written (the first
        ``n_images`` val images with at least two instances left).
    """
    import contextlib
    import io

    from pycocotools.coco import COCO
    from scipy import ndimage

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(shared_data / "tiny_coco" / "annotations" / "instances_val2017.json"))
    (dest / "image").mkdir(parents=True, exist_ok=True)
    (dest / "label").mkdir(exist_ok=True)
    palette = list(np.random.default_rng(0).integers(0, 256, 768, dtype=np.uint8))
    palette[:3] = [0, 0, 0]
    palette[765:768] = [224, 224, 192]  # VOC's void colour
    written = {}
    for img_id in sorted(coco.getImgIds()):
        info = coco.imgs[img_id]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
        label = np.zeros((info["height"], info["width"]), np.uint8)
        k = 0
        for ann in anns:
            mask = coco.annToMask(ann).astype(bool)
            if ann.get("iscrowd", 0) or mask.sum() < max(min_area, 1) or k >= 254:
                continue
            k += 1
            label[mask] = k
        ids = [int(i) for i in np.unique(label) if i]
        if len(ids) < 2:
            continue
        void = np.zeros(label.shape, bool)
        for i in ids:
            inst = label == i
            void |= ndimage.binary_dilation(inst, iterations=border) & ~ndimage.binary_erosion(inst, iterations=border)
        for ann in anns:
            if ann.get("iscrowd", 0):
                void |= coco.annToMask(ann).astype(bool)
        label[void] = 255
        ids = [int(i) for i in np.unique(label) if i not in (0, 255)]
        stem = Path(info["file_name"]).stem
        Image.open(shared_data / "tiny_coco" / "val2017" / info["file_name"]).convert("RGB").save(
            dest / "image" / f"{stem}.jpg", quality=95
        )
        png = Image.fromarray(label, mode="P")
        png.putpalette([int(v) for v in palette])
        png.save(dest / "label" / f"{stem}.png")
        written[stem] = {"ids": ids, "label": label}
        if len(written) == n_images:
            break
    return written


CUSTOM_PIXEL_MEAN = [100.0, 110.0, 120.0]
CUSTOM_PIXEL_STD = [40.0, 45.0, 50.0]


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    """An exported tiny SAM (128 px, max subnet of a tiny supernet) whose config.json carries pixel
    statistics other than SAM's (CUSTOM_PIXEL_MEAN / CUSTOM_PIXEL_STD), so a test sees whether they are used."""
    import json

    from supersam.artifacts.records import SupernetMeta
    from supersam.model.checkpoint import save_supernet
    from supersam.model.elastic import SuperSam
    from supersam.model.sam import build_sam_model
    from supersam.model.space import SearchSpace
    from supersam.stages.export import export_subnet

    root = tmp_path_factory.mktemp("tiny_export")
    torch.manual_seed(0)
    space = SearchSpace.for_arch("tiny")
    supernet = SuperSam(build_sam_model("tiny", 128), space)
    save_supernet(root / "supernet.pt", supernet, SupernetMeta("tiny", 128, False, "none"))
    out = export_subnet(root / "supernet.pt", space.max_subnet(), root / "model")
    config = json.loads((out / "config.json").read_text())
    config.update(pixel_mean=CUSTOM_PIXEL_MEAN, pixel_std=CUSTOM_PIXEL_STD)
    (out / "config.json").write_text(json.dumps(config))
    return out
