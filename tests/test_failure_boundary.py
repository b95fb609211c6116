"""Failures beyond the tool's own checks end in one line and lose nothing (issue 29, docs/contracts.md "Failures").

Each case runs a real command on real files: a disk that fills up (a small tmpfs; where
mounting is not permitted, ``fsync`` reports ENOSPC as a full disk does), undecodable bytes,
a file name that is not UTF-8, a colour photo given as a label, a float label with NaN, an
export whose config.json is impossible, out-of-memory, Ctrl-C at the last write, and paths
that would leave their folder or replace the pipeline's results. Every refusal is one
``error:`` line with no traceback, and a snapshot of the files shows nothing lost.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from conftest import run_cli
from PIL import Image
from test_faults import _supernet, assert_one_line, snapshot

TINY_MLP_DIMS = (64, 128, 256)
EM_IMAGE = "image/0.png"


@pytest.fixture(scope="module")
def project(tmp_path_factory, shared_data) -> Path:
    """A tiny exported subnet, its supernet, a params.yaml for one-image CPU runs and a finished eval."""
    from supersam.model.space import SearchSpace
    from supersam.stages.export import export_subnet

    root = tmp_path_factory.mktemp("boundary")
    supernet = _supernet(root / "outputs" / "train" / "wanda" / "supernet.pt")
    export_subnet(
        supernet,
        SearchSpace.for_arch("tiny", mlp_dim_choices=TINY_MLP_DIMS).max_subnet(),
        root / "outputs" / "export" / "model",
    )
    params = {
        "model": {"type": "tiny", "img_size": 128},
        "data": {"root": str(shared_data / "isbi2012_em"), "patch": 256, "max_objects": 2},
        "search": {"n_images": 1, "budget": 3, "device": "cpu", "max_params": "60e6", "min_miou": "0.0"},
        "eval": {"n_images": 1, "overlays": 1, "device": "cpu", "prompts": ["box"], "split": "val"},
        "mlflow": {"enabled": False},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


@pytest.fixture
def full_disk(tmp_path):
    """A folder on a 4 MiB tmpfs and a function that fills it up to ``leave`` bytes.

    Where mounting is not permitted, ``fill`` makes ``fsync`` (which every artifact write
    calls) fail with ENOSPC instead: what a full disk reports when buffered data cannot be stored.
    """
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode
        == 0
    )
    patch = pytest.MonkeyPatch()

    def fill(leave: int = 2048) -> None:
        if mounted:
            free = shutil.disk_usage(mount).free
            with open(mount / "filler.bin", "wb") as fh:
                fh.write(b"\0" * max(free - leave, 0))
            return

        def no_space(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        patch.setattr("supersam.runtime.io.os.fsync", no_space)

    yield mount, fill
    patch.undo()
    if mounted:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _without_filler(root: Path) -> dict[str, str]:
    return {k: v for k, v in snapshot(root).items() if k != "filler.bin"}


# --- writes that fail ---------------------------------------------------------------------------------------------


def test_a_full_disk_during_eval_keeps_the_previous_evaluation(project, full_disk, monkeypatch, capsys):
    mount, fill = full_disk
    monkeypatch.chdir(project)
    out = mount / "eval"
    code, err = run_cli(["eval", "--model", "outputs/export/model", "--out", str(out)], monkeypatch, capsys)
    assert code == 0, err
    assert (out / "overlays").is_dir() and any((out / "overlays").iterdir())  # an overlay to lose
    before = _without_filler(mount)
    fill()
    code, err = run_cli(["eval", "--model", "outputs/export/model", "--out", str(out)], monkeypatch, capsys)
    assert_one_line(code, err, "No space left on device")
    assert _without_filler(mount) == before  # metrics, objects, predictions and overlays as they were; no temporaries


def test_a_full_disk_during_export_keeps_the_previous_export(project, full_disk, monkeypatch, capsys):
    mount, fill = full_disk
    monkeypatch.chdir(project)
    out = mount / "model"
    args = [
        "export",
        "--supernet",
        "outputs/train/wanda/supernet.pt",
        "--subnet",
        json.dumps(
            {
                "kept_layers": [0, 1, 3, 4, 6, 7, 8, 10, 11],
                "mlp_dims": [256, 256, 0, 256, 256, 0, 256, 256, 256, 0, 256, 256],
            }
        ),
        "--out",
        str(out),
    ]
    code, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    before = _without_filler(mount)
    fill(leave=64 * 1024)  # room for config.json, not for the weights: torch's writer fails inside its zip
    args[4] = json.dumps({"kept_layers": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], "mlp_dims": [256] * 12})
    code, err = run_cli(args, monkeypatch, capsys)
    assert_one_line(code, err, "model")
    assert "space" in err.lower() or "writing failed" in err, err
    assert _without_filler(mount) == before


def test_a_full_disk_during_predict_keeps_the_previous_prediction(project, full_disk, shared_data, monkeypatch, capsys):
    mount, fill = full_disk
    monkeypatch.chdir(project)
    out = mount / "pred"
    args = [
        "predict",
        "outputs/export/model",
        str(shared_data / "isbi2012_em" / EM_IMAGE),
        "--box",
        "100,100,200,180",
        "--out",
        str(out),
    ]
    code, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    before = _without_filler(mount)
    fill()
    code, err = run_cli(
        args[:3] + ["--box", "10,10,90,90", "--box", "200,200,300,300", "--out", str(out)], monkeypatch, capsys
    )
    assert_one_line(code, err, "No space left on device")
    assert _without_filler(mount) == before


def test_ctrl_c_at_evals_last_write_keeps_the_previous_evaluation(project, tmp_path, monkeypatch, capsys):
    import supersam.stages.eval as eval_module

    monkeypatch.chdir(project)
    out = tmp_path / "eval"
    code, err = run_cli(["eval", "--model", "outputs/export/model", "--out", str(out)], monkeypatch, capsys)
    assert code == 0, err
    before = snapshot(out)
    real = eval_module.write_json

    def interrupted(path, obj):
        if Path(path).name == "metrics.json":
            raise KeyboardInterrupt
        return real(path, obj)

    monkeypatch.setattr(eval_module, "write_json", interrupted)
    code, err = run_cli(
        ["eval", "--model", "outputs/export/model", "--out", str(out), "--set", "eval.seed=1"], monkeypatch, capsys
    )
    assert code == 130 and "interrupted" in err and "Traceback" not in err, err
    assert snapshot(out) == before


def test_nan_never_reaches_a_json_file(tmp_path):
    from supersam.runtime.io import write_json

    path = write_json(tmp_path / "m.json", {"miou": float("nan"), "rows": [1.5, float("inf")], "n": 3})

    def refuse(constant):
        raise AssertionError(f"{constant} in JSON")

    assert json.loads(path.read_text(), parse_constant=refuse) == {"miou": None, "rows": [1.5, None], "n": 3}


# --- bytes and names that are not text ----------------------------------------------------------------------------


def test_undecodable_bytes_are_one_line_naming_the_file(project, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(project)
    bad = tmp_path / "params.yaml"
    bad.write_bytes(b"eval:\n  split: \xff\xfe\xfa val\n")
    code, err = run_cli(["eval", "--model", "outputs/export/model", "-p", str(bad)], monkeypatch, capsys)
    assert_one_line(code, err, "not UTF-8")
    assert str(bad) in err
    exp = tmp_path / "exp.json"
    exp.write_bytes(b"\x80\x81[{}]")
    code, err = run_cli(["compare-seeds", "--from", str(exp)], monkeypatch, capsys)
    assert_one_line(code, err, str(exp))
    search_out = tmp_path / "search"
    search_out.mkdir()
    (search_out / "candidates.partial.jsonl").write_bytes(b"\xff\xfe{not a journal}\n")
    before = snapshot(search_out)
    code, err = run_cli(["search", "--out", str(search_out), "--resume"], monkeypatch, capsys)
    assert_one_line(code, err, "not UTF-8")
    assert snapshot(search_out) == before


def test_a_file_name_that_is_not_utf8_is_refused_before_the_work(project, tmp_path, shared_data, monkeypatch, capsys):
    monkeypatch.chdir(project)
    data = tmp_path / "data"
    for sub in ("image", "label"):
        (data / sub).mkdir(parents=True)
        for stem in (b"0", b"caf\xe9"):  # Latin-1 bytes: not UTF-8
            shutil.copyfile(
                shared_data / "isbi2012_em" / sub / "0.png", os.fsencode(data / sub) + b"/" + stem + b".png"
            )
    out = tmp_path / "eval"
    code, err = run_cli(
        ["eval", "--model", "outputs/export/model", "--data-root", str(data), "--out", str(out)], monkeypatch, capsys
    )
    assert_one_line(code, err, "not valid UTF-8")
    assert not out.exists()


# --- sizes from the user ------------------------------------------------------------------------------------------


def _pair_folder(tmp_path: Path, shared_data: Path, label: np.ndarray, suffix: str) -> Path:
    data = tmp_path / "data"
    (data / "image").mkdir(parents=True)
    (data / "label").mkdir()
    shutil.copyfile(shared_data / "isbi2012_em" / EM_IMAGE, data / "image" / "0.png")
    if suffix == ".tif":
        tifffile.imwrite(data / "label" / "0.tif", label)
    else:
        Image.fromarray(label).save(data / "label" / f"0{suffix}")
    return data


def _eval_folder(data: Path, out: Path, monkeypatch, capsys, *flags: str) -> tuple[int, str]:
    """``supersam eval`` of the pipeline's export on a user's image/label folder, with extra ``flags``."""
    return run_cli(
        ["eval", "--model", "outputs/export/model", "--data-root", str(data), *flags, "--out", str(out)],
        monkeypatch,
        capsys,
    )


def test_a_colour_photo_given_as_a_label_is_refused_not_run_out_of_memory(
    project, tmp_path, shared_data, monkeypatch, capsys
):
    monkeypatch.chdir(project)
    noise = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)  # ~260k distinct colours
    data = _pair_folder(tmp_path, shared_data, noise, ".png")
    code, err = _eval_folder(data, tmp_path / "eval", monkeypatch, capsys, "--label-mode", "instance")
    assert_one_line(code, err, "more than data.max_label_values=4096")
    code, err = _eval_folder(data, tmp_path / "eval", monkeypatch, capsys, "--label-mode", "semantic")
    assert_one_line(code, err, "class values, more than data.max_label_values=4096")  # refused before a pass per class
    code, err = _eval_folder(data, tmp_path / "eval", monkeypatch, capsys, "--patch", "1")
    assert_one_line(code, err, "data.patch is 1")
    assert not (tmp_path / "eval").exists()


def test_a_float_label_with_nan_is_refused_not_read_as_an_object(project, tmp_path, shared_data, monkeypatch, capsys):
    monkeypatch.chdir(project)
    label = np.zeros((512, 512), np.float32)
    label[100:200, 100:200] = 1
    label[300:400, 300:400] = np.nan
    data = _pair_folder(tmp_path, shared_data, label, ".tif")
    code, err = _eval_folder(data, tmp_path / "eval", monkeypatch, capsys, "--label-mode", "instance")
    assert_one_line(code, err, "NaN")
    assert "whole numbers" in err
    label[300:400, 300:400] = 2.5
    tifffile.imwrite(data / "label" / "0.tif", label)
    code, err = _eval_folder(data, tmp_path / "eval", monkeypatch, capsys, "--label-mode", "instance")
    assert_one_line(code, err, "fractional")
    label[300:400, 300:400] = 2  # whole numbers in a float file are ids as usual
    tifffile.imwrite(data / "label" / "0.tif", label)
    code, err = _eval_folder(data, tmp_path / "eval", monkeypatch, capsys, "--label-mode", "instance")
    assert code == 0, err
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n_objects"] == 2


@pytest.mark.parametrize(
    "change,needle",
    [
        (lambda c: c.update(img_size=100000), "above the limit of 2048"),
        (lambda c: c.update(pixel_std=[58.4, 0.0, 57.4]), "pixel_std"),
        (lambda c: c.update(pixel_mean=[123.7, "x", 103.5]), "pixel_mean"),
        (lambda c: c.update(img_size=float("inf")), "img_size inf is not a positive multiple of 16"),
    ],
)
def test_an_impossible_export_config_is_refused(change, needle, project, tmp_path, shared_data, monkeypatch, capsys):
    model = tmp_path / "model"
    shutil.copytree(project / "outputs" / "export" / "model", model)
    config = json.loads((model / "config.json").read_text())
    change(config)
    (model / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(project)
    code, err = run_cli(
        [
            "predict",
            str(model),
            str(shared_data / "isbi2012_em" / EM_IMAGE),
            "--box",
            "10,10,90,90",
            "--out",
            str(tmp_path / "pred"),
        ],
        monkeypatch,
        capsys,
    )
    assert_one_line(code, err, needle)
    assert not (tmp_path / "pred").exists()


def test_an_img_size_beyond_the_limit_is_refused_before_any_allocation(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    for command in (["pretrain", "--out", "runs/pretrain"], ["rank-layers"], ["validate"]):
        code, err = run_cli([*command, "--set", "model.img_size=65536"], monkeypatch, capsys)
        assert_one_line(code, err, "above the limit of 2048")


def test_out_of_memory_is_one_line(project, tmp_path, monkeypatch, capsys):
    import supersam.stages.eval as eval_module

    def allocate(*args, **kwargs):
        return np.empty((1 << 62,), np.uint8)  # numpy's _ArrayMemoryError, a MemoryError

    monkeypatch.setattr(eval_module, "prepare_split", allocate)
    monkeypatch.chdir(project)
    code, err = run_cli(
        ["eval", "--model", "outputs/export/model", "--out", str(tmp_path / "eval")], monkeypatch, capsys
    )
    assert_one_line(code, err, "out of memory")

    def gpu_full(*args, **kwargs):  # what torch raises when CUDA memory runs out (a RuntimeError subclass)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")

    monkeypatch.setattr(eval_module, "prepare_split", gpu_full)
    code, err = run_cli(
        ["eval", "--model", "outputs/export/model", "--out", str(tmp_path / "eval")], monkeypatch, capsys
    )
    assert_one_line(code, err, "out of memory (CUDA out of memory")


# --- names and paths from the user --------------------------------------------------------------------------------


def test_names_and_paths_stay_where_they_belong(project, tmp_path, shared_data, monkeypatch, capsys):
    monkeypatch.chdir(project)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    (project / "outputs" / "eval" / "subnet").mkdir(parents=True, exist_ok=True)
    (project / "outputs" / "eval" / "subnet" / "metrics.json").write_text('{"miou": 0.68}\n')
    before = snapshot(project)
    cases = [
        (["eval", "--model", "outputs/export/model", "--name", "../../outputs/eval/subnet"], "plain name"),
        (["eval", "--model", "outputs/export/model", "--out", "outputs/eval/subnet"], "dvc repro"),
        (["eval", "--model", "outputs/export/model", "--out", "outputs/search/wanda", "--force"], "dvc repro"),
        (["eval", "--model", "outputs/export/model", "--out", "../elsewhere"], "leaves the working directory"),
        (["search", "--out", "outputs/search/wanda"], "dvc repro"),
        (
            [
                "predict",
                "outputs/export/model",
                str(shared_data / "isbi2012_em" / EM_IMAGE),
                "--box",
                "10,10,90,90",
                "--out",
                "outputs/x",
            ],
            "dvc repro",
        ),
    ]
    for args, needle in cases:
        code, err = run_cli(args, monkeypatch, capsys)
        assert_one_line(code, err, needle)
    assert snapshot(project) == before
    assert not (project.parent / "elsewhere").exists()
    # the pipeline itself (DVC sets DVC_STAGE for every stage command) writes there
    monkeypatch.setenv("DVC_STAGE", "eval@subnet")
    code, err = run_cli(
        ["eval", "--model", "outputs/export/model", "--out", "outputs/eval/subnet", "--force"], monkeypatch, capsys
    )
    assert code == 0, err
    # an absolute --out goes where the user says
    code, err = run_cli(
        ["eval", "--model", "outputs/export/model", "--out", str(tmp_path / "mine"), "--name", "ok-1"],
        monkeypatch,
        capsys,
    )
    assert code == 0 and (tmp_path / "mine" / "metrics.json").is_file(), err


def test_a_refusal_to_write_beside_foreign_files_names_what_force_would_replace(project, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(project)
    out = tmp_path / "search_like"
    out.mkdir()
    (out / "metrics.json").write_text('{"best_miou": 0.7}\n')
    (out / "pareto.json").write_text("[]\n")
    code, err = run_cli(["eval", "--model", "outputs/export/model", "--out", str(out)], monkeypatch, capsys)
    assert_one_line(code, err, "--force would replace its metrics.json")


def test_torch_save_failures_name_the_file(tmp_path, monkeypatch):
    from supersam.runtime.io import torch_save

    def broken(obj, path):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError) as info:
        torch_save({"w": torch.zeros(2)}, tmp_path / "model.pt")
    assert info.value.filename == str(tmp_path / "model.pt") and "disk may be full" in info.value.strerror
    assert list(tmp_path.iterdir()) == []

    def bug(obj, path):
        raise RuntimeError("Can't pickle local object")

    monkeypatch.setattr(torch, "save", bug)  # anything else is a bug and keeps its traceback
    with pytest.raises(RuntimeError, match="pickle"):
        torch_save({"w": torch.zeros(2)}, tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []


def test_input_nested_too_deeply_is_one_line(tmp_path, monkeypatch, capsys):
    """JSON and YAML nested past Python's recursion limit: a subnet file, an inline subnet, a params
    file and an experiments file each end in one line, never a RecursionError traceback."""
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "deep.json").write_text(deep)
    (tmp_path / "deep.yaml").write_text(f"train:\n  iterations: {deep}\n")
    out = tmp_path / "export"
    cases = [
        (["export", "--subnet", str(tmp_path / "deep.json"), "--out", str(out)], "nests its JSON arrays"),
        (["export", "--subnet", '{"kept_layers": ' + "[" * 5000 + "]" * 5000 + "}", "--out", str(out)], "nests"),
        (["validate", "-p", str(tmp_path / "deep.yaml"), "--out", str(tmp_path / "v.json")], "too deeply"),
        (["compare-seeds", "--from", str(tmp_path / "deep.json"), "--out", str(tmp_path / "s")], "nested too deeply"),
    ]
    for args, needle in cases:
        code, err = run_cli(args, monkeypatch, capsys)
        assert_one_line(code, err, needle)
        assert "RecursionError" not in err
    assert not out.exists() and not (tmp_path / "v.json").exists()
    # a --set value nested that deeply is kept as text and refused by its type
    code, err = run_cli(
        ["validate", "--set", "train.iterations=" + "[" * 5000 + "]" * 5000, "--out", str(tmp_path / "v.json")],
        monkeypatch,
        capsys,
    )
    assert_one_line(code, err, "train.iterations")
