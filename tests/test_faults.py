"""Fault injection: bad input and broken surroundings end in one clear line and lose nothing.

Every refused case asserts a non-zero exit, exactly one ``error:`` line (the last
line, no traceback) naming the problem, and that no file of the project changed
(a snapshot of every file's bytes before and after). The handled cases assert
the behaviour that replaces a failure: retries, KILLED runs, a resumed search
equal to an uninterrupted one, byte-identical exports. docs/contracts.md, "Failures".
The kill -9 loop is tests/test_kill.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from conftest import run_cli

from supersam.artifacts.records import SupernetMeta
from supersam.model.checkpoint import save_supernet
from supersam.model.elastic import SuperSam
from supersam.model.sam import build_sam_model
from supersam.model.space import SearchSpace

SUPERSAM_BIN = Path(sys.executable).parent / "supersam"
TINY_MLP_DIMS = (64, 128, 256)
SUBNET = {"kept_layers": [0, 1, 3, 4, 6, 7, 8, 10, 11], "mlp_dims": [256, 64, 0, 128, 256, 0, 64, 256, 128, 0, 256, 64]}
SUBNET_JSON = json.dumps(SUBNET)


def _supernet(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    supernet = SuperSam(build_sam_model("tiny", 128), SearchSpace.for_arch("tiny", mlp_dim_choices=TINY_MLP_DIMS))
    save_supernet(path, supernet, SupernetMeta("tiny", 128, False, "wanda"))
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory, shared_data) -> Path:
    """A project folder: a tiny trained supernet where the pipeline puts it, its export, and a params.yaml
    for tiny CPU runs (tracking off unless a test turns it on)."""
    from supersam.stages.export import export_subnet

    root = tmp_path_factory.mktemp("project")
    supernet = _supernet(root / "outputs" / "train" / "wanda" / "supernet.pt")
    export_subnet(
        supernet,
        SearchSpace.for_arch("tiny", mlp_dim_choices=TINY_MLP_DIMS).max_subnet(),
        root / "outputs" / "export" / "model",
    )
    params = {
        "model": {"type": "tiny", "img_size": 128},
        "data": {"root": str(shared_data / "isbi2012_em"), "patch": 256, "max_objects": 2},
        "search": {"n_images": 1, "budget": 4, "device": "cpu", "max_params": "60e6", "min_miou": "0.0"},
        "train": {
            "iterations": 2,
            "batch_size": 2,
            "val_images": 1,
            "eval_every": 0,
            "save_every": 1,
            "target_miou": "0.0",
            "device": "cpu",
            "target_every": 0,
        },
        "eval": {"n_images": 1, "overlays": 0, "device": "cpu", "prompts": ["box"], "split": "val"},
        "mlflow": {"tracking_uri": f"sqlite:///{root}/mlflow.db", "enabled": False},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "notes").mkdir()
    (root / "notes" / "mine.txt").write_text("a user's file\n")
    (root / "empty").mkdir()  # a user's empty folder
    (root / "notes" / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))  # not text
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` -> the SHA-1 of its bytes; every folder -> "folder" (so an empty
    folder left behind by a refused command shows too)."""
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in sorted(root.rglob("*"))
    }


def assert_one_line(code: int, err: str, needle: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert code not in (0, None), err
    assert "Traceback" not in err, err
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert needle in errors[0], err


def _with_params(project: Path, tmp_path: Path, change) -> str:
    params = yaml.safe_load((project / "params.yaml").read_text())
    change(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


# --- refused before any work: numbers, params.yaml, paths -------------------------------------------------------

REFUSED = {
    # numeric options: finite and in range, checked before any work
    "search time limit nan": (["search", "--set", "search.time_limit=nan"], "search.time_limit"),
    "search time limit inf": (["search", "--set", "search.time_limit=.inf"], "search.time_limit"),
    "search time limit negative": (["search", "--set", "search.time_limit=-1"], "search.time_limit"),
    "train weight decay nan": (["train", "--set", "train.weight_decay=nan"], "train.weight_decay"),
    "train lr inf": (["train", "--set", "train.lr=.inf"], "train.lr"),
    "negative emission factor": (["train", "--set", "train.emission_factor=-0.4"], "train.emission_factor"),
    "zero CPU power": (["train", "--set", "train.cpu_tdp_watts=0"], "train.cpu_tdp_watts"),
    "max params negative": (["search", "--max-params", "-5"], "--max-params"),
    "max params zero": (["search", "--max-params", "0"], "--max-params"),
    "max params nan": (["search", "--max-params", "nan"], "--max-params"),
    "max params words": (["search", "--max-params", "lots"], "--max-params"),
    "min miou above 1": (["search", "--min-miou", "1.5"], "search.min_miou"),
    "min miou negative": (["search", "--min-miou", "-0.1"], "search.min_miou"),
    "min miou nan": (["search", "--min-miou", "nan"], "search.min_miou"),
    "min miou factor 0": (["search", "--min-miou", "0x"], "search.min_miou"),
    "search budget negative": (["search", "--set", "search.budget=-3"], "search.budget"),
    "eval n_images negative": (
        ["eval", "--model", "outputs/export/model", "--set", "eval.n_images=-1"],
        "eval.n_images",
    ),
    "data patch nan": (["eval", "--model", "outputs/export/model", "--set", "data.patch=nan"], "data.patch"),
    "unknown key": (["search", "--set", "search.max_param=5"], "unknown key search.max_param"),
    # empty, foreign, file and unwritable outputs
    "eval out empty": (["eval", "--model", "outputs/export/model", "--out", ""], "--out is empty"),
    "search out empty": (["search", "--out", ""], "--out is empty"),
    "export out empty": (
        [
            "export",
            "--supernet",
            "outputs/train/wanda/supernet.pt",
            "--subnet",
            "outputs/export/model/config.json",
            "--out",
            "",
        ],
        "--out is empty",
    ),
    "train out empty": (["train", "--out", ""], "--out is empty"),
    "eval out foreign": (
        ["eval", "--model", "outputs/export/model", "--out", "notes"],
        "holds files this stage did not write",
    ),
    "search out foreign": (["search", "--out", "notes"], "holds files this stage did not write"),
    "export out foreign": (
        ["export", "--supernet", "outputs/train/wanda/supernet.pt", "--subnet", SUBNET_JSON, "--out", "notes"],
        "is not a supersam export",
    ),
    "eval out is a file": (["eval", "--model", "outputs/export/model", "--out", "notes/mine.txt"], "is a file"),
    "eval out unwritable": (
        ["eval", "--model", "outputs/export/model", "--out", "notes/mine.txt/sub"],
        "mine.txt is a file, not a folder",
    ),
    "search out unwritable": (["search", "--out", "notes/mine.txt/sub"], "mine.txt is a file, not a folder"),
    "train out unwritable": (
        ["train", "--supernet", "outputs/train/wanda/supernet.pt", "--out", "notes/mine.txt/sub"],
        "mine.txt is a file, not a folder",
    ),
    "export out unwritable": (
        [
            "export",
            "--supernet",
            "outputs/train/wanda/supernet.pt",
            "--subnet",
            SUBNET_JSON,
            "--out",
            "notes/mine.txt/sub",
        ],
        "mine.txt is a file, not a folder",
    ),
    "resume and auto-resume": (["search", "--resume", "--auto-resume"], "exclude each other"),
    "train nproc 0": (["train", "--nproc", "0"], "--nproc is 0"),
    "train stop-after negative": (["train", "--stop-after", "-1"], "--stop-after is -1"),
    "pretrain stop-after 0": (["pretrain", "--stop-after", "0"], "--stop-after is 0"),
    "garbage supernet": (["search", "--supernet", "notes/mine.txt"], "not a PyTorch file of tensors"),
    "train resume and auto-resume": (["train", "--resume", "--auto-resume"], "exclude each other"),
    "pretrain resume and auto-resume": (["pretrain", "--resume", "--auto-resume"], "exclude each other"),
    "pretrain out unwritable": (["pretrain", "--out", "notes/mine.txt/sub"], "mine.txt is a file, not a folder"),
    # files of the wrong kind
    "subnet is a picture": (
        ["export", "--supernet", "outputs/train/wanda/supernet.pt", "--subnet", "notes/picture.png", "--out", "new"],
        "is not a JSON text file",
    ),
    "subnet is a folder": (
        ["export", "--supernet", "outputs/train/wanda/supernet.pt", "--subnet", "notes", "--out", "new"],
        "is a folder; pass the JSON file",
    ),
    "supernet is a folder": (
        ["search", "--supernet", "notes", "--out", "new"],
        "is a folder; pass the checkpoint file",
    ),
    # bench: its --out file is checked before the timing
    "bench threads absurd": (["bench", "outputs/export/model", "--threads", "100000"], "bench.threads is 100000"),
    "bench out is a user's file": (
        ["bench", "outputs/export/model", "--out", "notes/mine.txt"],
        "exists and is not a bench result",
    ),
    "bench out is a folder": (["bench", "outputs/export/model", "--out", "notes"], "is a folder"),
    "bench out unwritable": (
        ["bench", "outputs/export/model", "--out", "notes/mine.txt/sub/b.json"],
        "mine.txt is a file, not a folder",
    ),
    "bench repeats 0": (["bench", "outputs/export/model", "--repeats", "0"], "bench.repeats is 0"),
    "pretrain init missing, new out": (
        ["pretrain", "--out", "new/deeper", "--set", "pretrain.init=nothing.pth"],
        "nothing.pth does not exist",
    ),
    "eval model missing, new out": (["eval", "--model", "nothing", "--out", "new/eval"], "nothing does not exist"),
    "pretrain into a user's empty folder by ..": (
        ["pretrain", "--out", "new/../empty", "--set", "pretrain.init=no.pth"],
        "no.pth does not exist",
    ),  # the empty folder stays
    # usage errors (click's own): one line and the help command, not a framed panel
    "unknown flag": (["search", "--max-param", "5"], "no such option: --max-param"),
    "unknown command": (["serch"], "no such command 'serch'"),
    "flag without its value": (
        ["search", "--out"],
        "option '--out' requires an argument; see 'supersam search --help'",
    ),
    "flag of the wrong type": (["train", "--nproc", "two"], "invalid value for '--nproc'"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_before_any_work(case, project, monkeypatch, capsys):
    args, needle = REFUSED[case]
    monkeypatch.chdir(project)
    before = snapshot(project)
    code, err = run_cli(args, monkeypatch, capsys)
    assert_one_line(code, err, needle)
    assert snapshot(project) == before
    assert "╭" not in err and "Usage:" not in err  # no framed panel either


def test_usage_errors_exit_2_and_help_exits_0(monkeypatch):
    for args, expected in ((["search", "--max-param", "5"], 2), (["search", "--help"], 0), ([], 2)):
        proc = subprocess.run([str(SUPERSAM_BIN), *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == expected, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert (
        "--max-params"
        in subprocess.run([str(SUPERSAM_BIN), "search", "--help"], capture_output=True, text=True, timeout=120).stdout
    )


PARAMS_FILES = {
    "section is a list": ("search:\n  - 1\n  - 2\n", "section search must be a mapping"),
    "section is a number": ("train: 3\n", "section train must be a mapping"),
    "mlflow is a string": ("mlflow: off-please\n", "section mlflow must be a mapping of keys or false"),
    "invalid YAML": ("search: {max_params: [\n", "not valid YAML"),
    "unknown section": ("serach:\n  budget: 3\n", "unknown section 'serach'"),
    "not a mapping": ("- a\n- b\n", "must hold a mapping"),
}


@pytest.mark.parametrize("case", sorted(PARAMS_FILES))
def test_bad_params_file(case, project, tmp_path, monkeypatch, capsys):
    text, needle = PARAMS_FILES[case]
    (tmp_path / "bad.yaml").write_text(text)
    monkeypatch.chdir(project)
    before = snapshot(project)
    code, err = run_cli(["search", "--params", str(tmp_path / "bad.yaml")], monkeypatch, capsys)
    assert_one_line(code, err, needle)
    assert snapshot(project) == before


# --- the tracking store ---------------------------------------------------------------------------------------------


def _tracking_case(project, tmp_path, monkeypatch, capsys, uri: str, needle: str) -> float:
    params = _with_params(project, tmp_path, lambda p: p["mlflow"].update(enabled=True, tracking_uri=uri))
    monkeypatch.chdir(project)
    before = snapshot(project)
    t0 = time.perf_counter()
    code, err = run_cli(["search", "--params", params, "--out", str(tmp_path / "s")], monkeypatch, capsys)
    seconds = time.perf_counter() - t0
    assert_one_line(code, err, needle)
    assert "--set mlflow.enabled=false" in err
    assert snapshot(project) == before
    assert not (tmp_path / "s" / "metrics.json").exists()
    return seconds


def test_corrupt_tracking_database_fails_fast_and_is_left_alone(project, tmp_path, monkeypatch, capsys):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"this is not an sqlite database" * 100)
    _tracking_case(project, tmp_path, monkeypatch, capsys, f"sqlite:///{db}", f"sqlite:///{db}")
    assert db.read_bytes() == b"this is not an sqlite database" * 100


def test_locked_tracking_database_fails_fast(project, tmp_path, monkeypatch, capsys):
    db = tmp_path / "locked.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # a valid store, then locked
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        seconds = _tracking_case(project, tmp_path, monkeypatch, capsys, f"sqlite:///{db}", "locked")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert seconds < 90


def test_bad_tracking_uri(project, tmp_path, monkeypatch, capsys):
    _tracking_case(project, tmp_path, monkeypatch, capsys, "nosuchscheme://somewhere", "nosuchscheme://somewhere")


def test_unreachable_tracking_server_fails_within_a_bounded_time(project, tmp_path, monkeypatch, capsys):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    seconds = _tracking_case(project, tmp_path, monkeypatch, capsys, f"http://127.0.0.1:{port}", f"127.0.0.1:{port}")
    assert seconds < 60


def test_tracking_can_be_switched_off_with_mlflow_false(project, tmp_path, monkeypatch, capsys):
    params = _with_params(project, tmp_path, lambda p: p.update(mlflow=False))
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(
        [
            "search",
            "--params",
            params,
            "--supernet",
            str(project / "outputs/train/wanda/supernet.pt"),
            "--out",
            str(tmp_path / "s"),
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    assert (tmp_path / "s" / "metrics.json").is_file()
    assert not list(tmp_path.glob("*.db")) and not (tmp_path / "mlruns").exists()


def test_a_store_failing_mid_run_is_retried_then_downgraded_to_a_warning(monkeypatch, caplog):
    from supersam.runtime import tracking

    monkeypatch.setattr(tracking, "RETRY_DELAYS_S", (0.0, 0.0))
    calls = []

    class Flaky:
        def __init__(self, failures):
            self.failures = failures

        def log_metrics(self, metrics, step=None):
            calls.append(metrics)
            if len(calls) <= self.failures:
                raise sqlite3.OperationalError("database is locked")

    run = tracking.Run(Flaky(failures=2))
    run.log_metrics({"loss": 1.0})  # third attempt succeeds
    assert len(calls) == 3 and run.failed_calls == 0
    calls.clear()
    run = tracking.Run(Flaky(failures=99))
    with caplog.at_level("WARNING"):
        run.log_metrics({"loss": 1.0})  # never raises
    assert len(calls) == 3 and run.failed_calls == 1
    assert "database is locked" in caplog.text and "metrics.json" in caplog.text


def test_train_survives_a_store_that_breaks_after_the_start(project, tmp_path, monkeypatch, capsys, shared_data):
    """The DB goes bad once the run is open: every logging call fails, training still finishes and writes
    metrics.json."""
    from supersam.runtime import tracking

    monkeypatch.setattr(tracking, "RETRY_DELAYS_S", (0.0,))
    params = _with_params(
        project, tmp_path, lambda p: p["mlflow"].update(enabled=True, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    )

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(mlflow, "log_metrics", broken)
    monkeypatch.setattr(mlflow, "set_tags", broken)
    monkeypatch.chdir(project)
    code, err = run_cli(
        [
            "train",
            "--params",
            params,
            "--supernet",
            "outputs/train/wanda/supernet.pt",
            "--out",
            str(tmp_path / "t"),
            "--no-progress",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["iterations"] == 2
    assert "continuing without it" in err


# --- interrupted runs -------------------------------------------------------------------------------------------------


def _spawn(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(SUPERSAM_BIN), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.1)


def _runs(uri: str) -> list:
    client = mlflow.MlflowClient(tracking_uri=uri)
    return client.search_runs([client.get_experiment_by_name("supersam").experiment_id])


@pytest.mark.slow
def test_sigterm_marks_the_run_killed_and_kill_9_is_marked_by_the_next_run(project, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    params = _with_params(
        project,
        tmp_path,
        lambda p: (p["mlflow"].update(enabled=True, tracking_uri=uri), p["search"].update(budget=200)),
    )
    out = tmp_path / "s"
    proc = _spawn(["search", "--params", params, "--out", str(out)], project)
    _wait_for(out / "candidates.partial.jsonl", proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: terminated (SIGTERM)") and "--resume" in err
    assert [r.info.status for r in _runs(uri)] == ["KILLED"]
    assert (out / "candidates.partial.jsonl").is_file()  # the evaluated candidates are kept

    proc = _spawn(["search", "--params", params, "--out", str(tmp_path / "k")], project)
    _wait_for(tmp_path / "k" / "candidates.partial.jsonl", proc)
    proc.kill()
    proc.communicate()
    assert sorted(r.info.status for r in _runs(uri)) == ["KILLED", "RUNNING"]  # kill -9: nothing could run
    proc = _spawn(
        ["search", "--params", params, "--out", str(tmp_path / "k"), "--resume", "--set", "search.budget=4"], project
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert sorted(r.info.status for r in _runs(uri)) == ["FINISHED", "KILLED", "KILLED"]


def test_ctrl_c_in_search_keeps_the_candidates_and_resume_gives_the_uninterrupted_result(
    project, tmp_path, monkeypatch, capsys
):
    from supersam.measure import scoring

    monkeypatch.chdir(project)
    base = ["search", "--set", "search.budget=6", "--set", "search.seed=3"]
    code, err = run_cli([*base, "--out", str(tmp_path / "whole")], monkeypatch, capsys)
    assert code == 0, err
    whole = json.loads((tmp_path / "whole" / "candidates.json").read_text())
    assert not (tmp_path / "whole" / "candidates.partial.jsonl").exists()  # removed once the search finished

    real, calls = scoring.SubnetEvaluator.evaluate, []

    def interrupted(self, subnet):
        calls.append(subnet)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during the 4th evaluation
            time.sleep(5)
        return real(self, subnet)

    monkeypatch.setattr(scoring.SubnetEvaluator, "evaluate", interrupted)
    code, err = run_cli([*base, "--out", str(tmp_path / "cut")], monkeypatch, capsys)
    assert_one_line(code, err, "interrupted")
    assert code == 130 and "--resume" in err
    journal = (tmp_path / "cut" / "candidates.partial.jsonl").read_text().splitlines()
    assert len(journal) == 1 + 3  # the header and the 3 finished evaluations
    monkeypatch.setattr(scoring.SubnetEvaluator, "evaluate", real)
    with open(tmp_path / "cut" / "candidates.partial.jsonl", "a") as fh:
        fh.write('{"key": "{\\"kept')  # a line cut by the interruption
    calls.clear()
    monkeypatch.setattr(scoring.SubnetEvaluator, "evaluate", lambda self, s: (calls.append(s), real(self, s))[1])
    code, err = run_cli([*base, "--out", str(tmp_path / "cut"), "--resume"], monkeypatch, capsys)
    assert code == 0, err
    resumed = json.loads((tmp_path / "cut" / "candidates.json").read_text())
    strip = lambda cands: [{k: v for k, v in c.items() if k != "seconds"} for c in cands]  # noqa: E731
    assert strip(resumed) == strip(whole) and len(calls) == 3  # 3 replayed, 3 evaluated
    assert (tmp_path / "cut" / "best_subnet.json").read_bytes() == (
        tmp_path / "whole" / "best_subnet.json"
    ).read_bytes()
    # another search's journal is refused by --resume (here: another seed)
    code, err = run_cli([*base, "--set", "search.seed=4", "--out", str(tmp_path / "cut2")], monkeypatch, capsys)
    (tmp_path / "cut2" / "candidates.partial.jsonl").write_text(
        (tmp_path / "whole" / "metrics.json").read_text()[:0]
        + json.dumps({"format": "supersam-search-journal/1", "fingerprint": "0" * 64})
        + "\n"
    )
    before = snapshot(tmp_path / "cut2")
    code, err = run_cli([*base, "--out", str(tmp_path / "cut2"), "--resume"], monkeypatch, capsys)
    assert_one_line(code, err, "cannot resume the search")
    assert snapshot(tmp_path / "cut2") == before


def test_searches_have_their_own_database_and_any_path_works(project, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(project)
    out = tmp_path / "a%20b c" / "search"
    code, err = run_cli(["search", "--out", str(out)], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["n_evaluations"] == 4
    assert not (out / "opentuner.db").exists()  # its database lived in a temporary folder of its own


def test_json_in_utf16_is_read_and_bench_replaces_only_its_own_results(project, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(project)
    subnet = tmp_path / "subnet16.json"
    subnet.write_text(SUBNET_JSON, encoding="utf-16")  # what PowerShell's `>` writes
    code, err = run_cli(
        [
            "export",
            "--supernet",
            "outputs/train/wanda/supernet.pt",
            "--subnet",
            str(subnet),
            "--out",
            str(tmp_path / "export"),
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    assert json.loads((tmp_path / "export" / "config.json").read_text())["subnet"] == SUBNET
    bench = ["bench", str(tmp_path / "export"), "--repeats", "1", "--warmup", "0"]
    code, err = run_cli([*bench, "--out", str(tmp_path / "b.json")], monkeypatch, capsys)
    assert code == 0, err
    first = json.loads((tmp_path / "b.json").read_text())
    assert first["format"] == "supersam-bench/1" and first["params"] > 0
    code, err = run_cli([*bench, "--out", str(tmp_path / "b.json")], monkeypatch, capsys)  # its own: replaced
    assert code == 0, err
    user = tmp_path / "user.json"
    user.write_text('{"mine": 1}')
    code, err = run_cli([*bench, "--out", str(user)], monkeypatch, capsys)
    assert_one_line(code, err, "exists and is not a bench result")
    assert user.read_text() == '{"mine": 1}'
    code, err = run_cli([*bench, "--out", str(user), "--force"], monkeypatch, capsys)
    assert code == 0 and json.loads(user.read_text())["format"] == "supersam-bench/1", err


def test_a_signal_surfacing_inside_native_code_is_an_interruption(project, monkeypatch, capsys):
    """Ctrl-C while torch runs C++ (the ONNX tracer) surfaces as a SystemError whose context is the
    interruption: still one line and exit 130, not a traceback."""
    from supersam.runtime.errors import Interrupted
    from supersam.tools import bench as bench_mod

    def interrupted_in_native_code(*args, **kwargs):
        try:
            raise Interrupted("SIGINT")
        except Interrupted:
            raise SystemError("<method '__float__'> returned a result with an exception set")

    monkeypatch.setattr(bench_mod, "bench", interrupted_in_native_code)
    monkeypatch.chdir(project)
    code, err = run_cli(["bench", "outputs/export/model"], monkeypatch, capsys)
    assert code == 130
    assert_one_line(code, err, "interrupted")


def test_an_interruption_surfacing_inside_native_code_marks_the_run_killed(project, tmp_path, monkeypatch, capsys):
    """The MLflow run of an eval interrupted inside native code (a SystemError whose context is the
    SIGTERM) is KILLED, as the CLI's one line says, not FAILED."""
    import supersam.stages.eval as eval_module
    from supersam.runtime.errors import Interrupted

    def interrupted_in_native_code(*args, **kwargs):
        try:
            raise Interrupted("SIGTERM")
        except Interrupted:
            raise SystemError("<built-in method run_backward> returned a result with an exception set")

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setattr(eval_module, "_evaluate", interrupted_in_native_code)
    monkeypatch.chdir(project)
    code, err = run_cli(
        [
            "eval",
            "--model",
            "outputs/export/model",
            "--out",
            str(tmp_path / "e"),
            "--set",
            "mlflow.enabled=true",
            "--set",
            f"mlflow.tracking_uri={uri}",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 143 and "terminated (SIGTERM)" in err and "Traceback" not in err, err
    assert [r.info.status for r in _runs(uri)] == ["KILLED"]


def test_an_export_folder_with_a_users_file_is_not_replaced(project, tmp_path, monkeypatch, capsys):
    import shutil

    monkeypatch.chdir(project)
    out = tmp_path / "export"
    shutil.copytree(project / "outputs" / "export" / "model", out)
    (out / "NOTES.txt").write_text("mine")
    before = snapshot(tmp_path)
    code, err = run_cli(
        ["export", "--supernet", "outputs/train/wanda/supernet.pt", "--subnet", SUBNET_JSON, "--out", str(out)],
        monkeypatch,
        capsys,
    )
    assert_one_line(code, err, "holds files export did not write (NOTES.txt)")
    assert snapshot(tmp_path) == before


def test_a_signal_after_the_command_finished_is_ignored(project, monkeypatch):
    """The executable keeps its handlers after the command returned: a Ctrl-C during the interpreter's
    shutdown (about a second with torch loaded) cannot kill a finished run without a word."""
    from supersam.cli.main import main

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "argv", ["supersam", "search", "--help"])
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == 0
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # either signal would have raised by now
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


# --- one writer per output folder -----------------------------------------------------------------------------------


def _holder(folder: Path, env: dict | None = None) -> subprocess.Popen:
    """Another process that claims ``folder`` (as a running stage does) and keeps it."""
    code = (
        "import sys, time; from supersam.runtime.outdir import claim_out; claim_out(sys.argv[1], 'test'); "
        "print('held', flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        env=None if env is None else {**os.environ, **env},
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("command", ["search", "eval", "train", "export", "pretrain"])
def test_a_folder_another_process_writes_is_refused_until_it_ends(command, project, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(project)
    out = tmp_path / "out"
    args = {
        "search": ["search"],
        "eval": ["eval", "--model", "outputs/export/model"],
        "train": ["train", "--supernet", "outputs/train/wanda/supernet.pt", "--no-progress"],
        "export": ["export", "--supernet", "outputs/train/wanda/supernet.pt", "--subnet", SUBNET_JSON],
        "pretrain": [
            "pretrain",
            *(
                f"--set=pretrain.{kv}"
                for kv in ("iterations=1", "batch_size=1", "val_images=1", "max_objects=2", "device=cpu")
            ),
        ],
    }[command]
    holder = _holder(out)
    try:
        before = snapshot(project)
        code, err = run_cli([*args, "--out", str(out)], monkeypatch, capsys)
        assert_one_line(code, err, "is being written by another supersam process")
        assert snapshot(project) == before and not out.exists()
    finally:
        holder.kill()  # kill -9: the kernel drops its lock
        holder.wait()
    code, err = run_cli([*args, "--out", str(out)], monkeypatch, capsys)
    assert code == 0, err
    holder = _holder(out)  # and the finished command released the folder
    holder.kill()
    holder.wait()


def test_the_claim_does_not_depend_on_the_environment(project, tmp_path, monkeypatch, capsys):
    """Two searches into one folder from shells with other XDG_CACHE_HOME, HOME and TMPDIR: the second is refused."""
    monkeypatch.chdir(project)
    out = tmp_path / "out"
    other = {"XDG_CACHE_HOME": str(tmp_path / "cache-a"), "HOME": str(tmp_path / "home-a"), "TMPDIR": str(tmp_path)}
    holder = _holder(out, other)
    try:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-b"))
        monkeypatch.setenv("HOME", str(tmp_path / "home-b"))
        code, err = run_cli(["search", "--out", str(out)], monkeypatch, capsys)
        assert_one_line(code, err, "is being written by another supersam process")
    finally:
        holder.kill()
        holder.wait()


# --- identity of resumed runs ---------------------------------------------------------------------------------------


def test_train_resume_refuses_a_supernet_rebuilt_at_the_same_path(project, tmp_path, monkeypatch, capsys):
    supernet = _supernet(tmp_path / "supernet.pt", seed=0)
    monkeypatch.chdir(project)
    args = ["train", "--supernet", str(supernet), "--out", str(tmp_path / "t"), "--no-progress"]
    code, err = run_cli([*args, "--stop-after", "1"], monkeypatch, capsys)
    assert code == 0, err
    _supernet(supernet, seed=1)  # rebuilt: same path, other weights
    before = snapshot(tmp_path / "t")
    code, err = run_cli([*args, "--resume"], monkeypatch, capsys)
    assert_one_line(code, err, "train.supernet_digest")
    assert snapshot(tmp_path / "t") == before
    # the pipeline's --auto-resume starts afresh instead, and finishes
    code, err = run_cli([*args, "--auto-resume"], monkeypatch, capsys)
    assert code == 0 and "starting afresh" in err, err
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["iterations"] == 2


# --- artifacts ------------------------------------------------------------------------------------------------------


def test_export_is_byte_identical_leaves_no_temporaries_and_recovers_a_half_swap(project, tmp_path):
    from supersam.runtime.io import clean_stale_temps
    from supersam.stages.export import export_subnet

    supernet = project / "outputs" / "train" / "wanda" / "supernet.pt"
    subnet = SUBNET
    out = tmp_path / "exp" / "model"
    export_subnet(supernet, subnet, out)
    first = snapshot(out)
    # temporaries of a killed run (its pid is gone) are removed by the next write
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (out.parent / f".model.{pid}.abc123.tmpdir").mkdir()
    (out.parent / f".model.{pid}.abc123.tmpdir" / "model.pt").write_bytes(b"x" * 1000)
    (out / f".config.json.{pid}.zz9.tmp").write_text("{")
    export_subnet(supernet, subnet, out)
    assert snapshot(out) == first  # same subnet, same bytes (DVC sees no change)
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]
    assert clean_stale_temps(out.parent) == 0
    # killed between the two renames: the previous export is aside, `model` is missing
    aside = out.parent / f".model.{pid}.qq1.old"
    aside.mkdir()
    os.replace(out, aside / "model")
    export_subnet(supernet, subnet, out)
    assert snapshot(out) == first and sorted(p.name for p in out.parent.iterdir()) == ["model"]


def test_eval_force_writes_beside_foreign_files_and_keeps_them(project, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(project)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, err = run_cli(["eval", "--model", "outputs/export/model", "--out", str(out), "--force"], monkeypatch, capsys)
    assert code == 0, err
    assert (out / "keep.txt").read_text() == "precious" and (out / "metrics.json").is_file()
    # our own previous result is replaced without --force
    code, err = run_cli(
        ["eval", "--model", "outputs/export/model", "--out", str(tmp_path / "own")], monkeypatch, capsys
    )
    # DVC writes a .gitignore beside its cached outputs (overlays/, predictions/): still our folder
    (tmp_path / "own" / ".gitignore").write_text("/overlays\n/predictions\n")
    code, err = run_cli(
        ["eval", "--model", "outputs/export/model", "--out", str(tmp_path / "own")], monkeypatch, capsys
    )
    assert code == 0 and "replacing the previous results" in err, err
    assert (tmp_path / "own" / ".gitignore").read_text() == "/overlays\n/predictions\n"


def test_coco_polygons_with_fewer_than_three_points_are_skipped(tmp_path, shared_data):
    from supersam.data import DataConfig, load_split

    src = shared_data / "tiny_coco"
    ann = json.loads((src / "annotations" / "instances_val2017.json").read_text())
    cfg = DataConfig(
        kind="coco", root=str(src), images="val2017", labels="annotations/instances_val2017.json", min_area=0
    )
    whole = load_split(cfg, "all")
    broken = [a for a in ann["annotations"] if isinstance(a["segmentation"], list) and not a.get("iscrowd")][:5]
    for a in broken:
        a["segmentation"] = [a["segmentation"][0][:4]]  # two points: no area
    (tmp_path / "instances.json").write_text(json.dumps(ann))
    ds = load_split(dataclasses.replace(cfg, labels=str(tmp_path / "instances.json")), "all")
    # no image is lost, exactly the 5 degenerate objects are
    assert len(ds) == len(whole) and sum(ds.object_counts) == sum(whole.object_counts) - 5


def test_a_missing_img_size_is_the_checkpoints_own_never_a_silent_resize(tmp_path, caplog):
    from supersam.model.sam import build_sam_model
    from supersam.schema import ModelConfig, build_config

    torch.save(build_sam_model("vit_ti", 256).state_dict(), tmp_path / "base.pt")
    with caplog.at_level("INFO"):
        cfg = build_config(ModelConfig, {"type": "vit_ti", "checkpoint": str(tmp_path / "base.pt")}, "model")
    assert cfg.img_size == 256 and "model.img_size is not set: using 256 px" in caplog.text
    assert build_config(ModelConfig, {"type": "vit_b"}, "model").img_size == 1024  # official SAM's
    assert (
        build_config(
            ModelConfig, {"type": "vit_ti", "img_size": 512, "checkpoint": str(tmp_path / "base.pt")}, "model"
        ).img_size
        == 512
    )  # as asked
