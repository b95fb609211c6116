"""`dvc repro` of the whole pipeline on the tiny SAM config in a temporary copy of the project.

Runs `pretrain`, the seven SuperSAM stages and `compare` on real ISBI EM patches, checks every stage's artifacts and
metrics, that a second `dvc repro` does nothing, and reads the MLflow runs back
through the REST API of a real `mlflow server` on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SHARED_DATA

pytestmark = pytest.mark.slow  # a whole `dvc repro` (~3 min on 2 cores)

# two of the four variants: the reference (none) and the exported one (wanda) exercise every foreach
# stage; README's first command (CI's main job) runs all four on the default params
VARIANTS = ["none", "wanda"]
BIN = Path(sys.executable).parent


def _tiny_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["variants"] = list(VARIANTS)
    params["model"].update(type="tiny", img_size=128)
    params["data"].update(root=str(SHARED_DATA / "isbi2012_em"), max_objects=4)
    params["pretrain"].update(iterations=4, batch_size=2, max_objects=4, eval_every=2, val_images=2, save_every=2)
    params["rank_layers"].update(n_images=2)
    params["calibrate"].update(n_images=2, batch_size=2)
    params["train"].update(iterations=4, batch_size=2, max_objects=4, eval_every=2, val_images=2, save_every=2)
    params["search"].update(budget=6, n_images=2, max_params="0.6M", min_miou=0.0)
    params["compare"].update(n_subnets=3, n_images=2)
    params["eval"].update(n_images=2, overlays=1)
    return params


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project (code, shipped models, dvc.yaml, tiny params) after one `dvc repro`."""
    dest = tmp_path_factory.mktemp("pipeline") / "project"
    dest.mkdir()
    for name in ("supersam", "models", "dvc.yaml", ".dvcignore"):
        src = ROOT / name
        copy = shutil.copytree if src.is_dir() else shutil.copy2
        copy(src, dest / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if src.is_dir() else {}))
    (dest / "params.yaml").write_text(yaml.safe_dump(_tiny_params(), sort_keys=False))
    _keep_variants(dest / "dvc.yaml", VARIANTS)
    _run(["git", "init", "-q"], dest)
    _run([str(BIN / "dvc"), "init", "-q"], dest)
    _run([str(BIN / "dvc"), "config", "core.analytics", "false"], dest)
    started = time.perf_counter()
    _run([str(BIN / "dvc"), "repro"], dest, timeout=600)
    (dest / "repro_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    return dest


def _keep_variants(dvc_yaml: Path, variants: list[str]) -> None:
    """Drop compare's deps on variants not in ``variants`` (the edit dvc.yaml asks for beside params.yaml's list)."""
    dropped = [v for v in ("none", "magnitude", "wanda", "taylor") if v not in variants]
    lines = dvc_yaml.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not any(f"/{v}/" in line for v in dropped)]
    assert len(lines) - len(kept) == 4 * len(dropped)  # supernet.pt, table1.json, pareto.json, metrics.json each
    dvc_yaml.write_text("".join(kept))


def _json(path: Path):
    return json.loads(path.read_text())


def test_every_stage_writes_its_artifacts(project):
    out = project / "outputs"
    base = _json(out / "pretrain" / "metrics.json")
    assert base["iterations"] == 4 and base["model_type"] == "tiny" and (out / "pretrain" / "model.pt").is_file()
    ranking = _json(out / "rank_layers" / "ranking.json")
    assert len(ranking["importance"]) == 12 and 0 not in ranking["prunable"]
    assert (out / "calibration" / "calibration_stats.pt").stat().st_size > 0
    for variant in VARIANTS:
        assert (out / "supernet" / variant / "supernet.pt").is_file()
        space = _json(out / "supernet" / variant / "search_space.json")
        assert space["prunable"] == ranking["prunable"]
        train = _json(out / "train" / variant / "metrics.json")
        assert train["iterations"] == 4 and train["pretrained"] is True  # built from the pretrain stage's model
        for key in ("miou_min", "miou_max", "iterations_to_target", "energy_kwh", "co2_kg", "energy_method", "seconds"):
            assert key in train, key
        history = _json(out / "train" / variant / "history.json")
        assert [h["iteration"] for h in history][-1] == 4
        search = _json(out / "search" / variant / "metrics.json")
        assert search["feasible"] is True and search["best_params"] <= 600_000
        best = _json(out / "search" / variant / "best_subnet.json")
        assert len(best["mlp_dims"]) == 12 and best["mlp_dims"][0] == 256
        probes = _json(out / "train" / variant / "probes.json")
        assert [p["iteration"] for p in probes] == [0, 1, 2, 3, 4]  # target_every: 1
    # the greedy curve: each step's choice is the best remaining candidate
    for step in _json(out / "rank_layers" / "curve.json")[1:]:
        assert step["miou"] == max(c["miou"] for c in step["candidates"])
        assert step["removed"] == step["dropped"][-1] and len(step["candidates"]) == 12 - step["step"]
    compare = out / "compare"
    subnets = _json(compare / "subnets.json")
    assert set(subnets["miou"]) == set(VARIANTS) and len(subnets["subnets"]) == len(subnets["params"]) == 3
    table = _json(compare / "table1.json")
    assert set(table["variants"]) == set(VARIANTS) and table["reference"] == "none"
    assert "| wanda |" in (compare / "table1.md").read_text()
    for name in ("fig4.png", "fig5.png"):
        assert (compare / name).read_bytes()[:4] == b"\x89PNG"
    export = _json(out / "export" / "model" / "config.json")
    assert export["subnet"]["kept_layers"] == _json(out / "search" / "wanda" / "best_subnet.json")["kept_layers"]
    subnet_eval = _json(out / "eval" / "subnet" / "metrics.json")
    full_eval = _json(out / "eval" / "full" / "metrics.json")
    assert subnet_eval["params"] == search_best_params(out) and full_eval["params"] == 712_931
    assert subnet_eval["n_images"] == full_eval["n_images"] == 2
    # the plain fine-tuning baseline: the max subnet alone, as many optimizer steps as the sandwich training
    finetune = _json(out / "finetune" / "metrics.json")
    assert finetune["iterations"] == 4 and [h["iteration"] for h in _json(out / "finetune" / "history.json")] == [0, 4]
    finetuned_eval = _json(out / "eval" / "finetuned" / "metrics.json")
    assert finetuned_eval["params"] == 712_931 and finetuned_eval["n_images"] == 2
    assert finetuned_eval["miou_box"] != _json(out / "eval" / "base" / "metrics.json")["miou_box"]
    assert list((out / "eval" / "subnet" / "overlays").glob("*.png"))


def search_best_params(out: Path) -> int:
    return _json(out / "search" / "wanda" / "metrics.json")["best_params"]


def test_second_repro_is_a_no_op_and_metrics_show(project):
    proc = _run([str(BIN / "dvc"), "repro"], project)
    assert "Data and pipelines are up to date" in proc.stdout + proc.stderr
    shown = _run([str(BIN / "dvc"), "metrics", "show", "--json"], project).stdout
    assert "miou_min" in shown and "best_params" in shown


def test_changing_one_param_reruns_only_that_stage_and_dependents(project):
    status = _run([str(BIN / "dvc"), "status", "--json"], project)
    assert json.loads(status.stdout or "{}") == {}
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["eval"]["overlays"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = json.loads(_run([str(BIN / "dvc"), "status", "--json"], project).stdout)
    assert set(changed) == {"validate", "eval"}  # validate reads every key; its marker's bytes stay the same
    params["eval"]["overlays"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_a_bad_param_is_refused_before_dvc_deletes_any_output(project):
    """DVC removes a stage's outputs before running its command; the validate stage runs first and
    stops `dvc repro` on a bad value, so the previous search results survive (issue 29)."""
    outputs = project / "outputs"
    before = {
        str(p.relative_to(outputs)): p.read_bytes()
        for p in sorted(outputs.rglob("*"))
        if p.is_file() and p.name != "valid.json"
    }
    text = (project / "params.yaml").read_text()
    params = yaml.safe_load(text)
    params["search"]["budget"] = -1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        [str(BIN / "dvc"), "repro"], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    assert "search.budget and search.time_limit must be >= 0" in proc.stdout + proc.stderr
    after = {
        str(p.relative_to(outputs)): p.read_bytes()
        for p in sorted(outputs.rglob("*"))
        if p.is_file() and p.name != "valid.json"
    }
    assert after == before  # nothing deleted, nothing rewritten
    (project / "params.yaml").write_text(text)
    proc = _run([str(BIN / "dvc"), "repro"], project)
    ran = [line for line in proc.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'validate':"], proc.stdout  # the same marker: nothing downstream re-runs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_mlflow_server_serves_one_train_run_per_variant(project):
    port = _free_port()
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{project / 'mlflow.db'}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                experiment = _post(f"{base}/experiments/search", {"max_results": 10})
                break
            except OSError:
                assert time.monotonic() < deadline, "mlflow server did not start within 90 s"
                time.sleep(1)
        supersam = [e for e in experiment["experiments"] if e["name"] == "supersam"]
        ids = [e["experiment_id"] for e in supersam]
        runs = _post(f"{base}/runs/search", {"experiment_ids": ids, "max_results": 100})["runs"]
        artifacts = {}
        for run in runs:
            run_id = run["info"]["run_id"]
            with urllib.request.urlopen(f"{base}/artifacts/list?run_id={run_id}", timeout=10) as response:
                artifacts[run_id] = {f["path"] for f in json.loads(response.read()).get("files", [])}
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    experiment_tags = {t["key"]: t["value"] for t in supersam[0].get("tags", [])}
    assert experiment_tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow 3 opens the runs table
    tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs]
    parents = [run["info"]["run_id"] for run, t in zip(runs, tags) if t["stage"] == "pipeline"]
    assert len(parents) == 1  # one `dvc repro`, one parent run; every stage run nested under it
    assert all(t["mlflow.parentRunId"] == parents[0] for t in tags if t["stage"] != "pipeline")
    runs, tags = zip(*[(run, t) for run, t in zip(runs, tags) if t["stage"] != "pipeline"])
    for run, t in zip(runs, tags):
        if t["stage"] in (
            "pretrain",
            "rank-layers",
            "calibrate",
            "train",
            "finetune",
            "search",
            "compare",
            "eval",
        ):
            assert run.get("inputs", {}).get("dataset_inputs"), f"{t['stage']} run has no dataset input"
    stages = sorted(t["stage"] for t in tags)
    assert stages.count("train") == stages.count("search") == stages.count("build-supernet") == len(VARIANTS)
    assert {"pretrain", "rank-layers", "calibrate", "finetune", "compare", "eval"} <= set(stages)
    assert len({t.get("pipeline_run") for t in tags}) == 1
    train = [run for run, t in zip(runs, tags) if t["stage"] == "train"]
    assert sorted(t["variant"] for t in tags if t["stage"] == "train") == sorted(VARIANTS)
    for run in train:
        metrics = {m["key"] for m in run["data"]["metrics"]}
        assert {"miou_min", "miou_max", "iterations", "energy_kwh", "co2_kg", "seconds"} <= metrics
        run_tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert run_tags["energy_method"] in ("nvml", "rapl", "estimate") and run_tags["pretrained"] == "true"
        assert {"history.json", "history.png", "table1.json", "metrics.json"} <= artifacts[run["info"]["run_id"]]
        assert run_tags["supernet_out"].endswith(f"outputs/train/{run_tags['variant']}/supernet.pt")


def test_a_search_rerun_with_the_same_result_leaves_compare_alone(project):
    """Deleting a plot re-runs the search; its wall-clock figures live in timing.json, which no stage
    depends on, so compare (which reads metrics.json and pareto.json) stays up to date (issue 29)."""
    (project / "outputs" / "search" / "wanda" / "pareto.png").unlink()
    proc = _run([str(BIN / "dvc"), "repro"], project)
    ran = [line for line in proc.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'search@wanda':"], proc.stdout
    assert (project / "outputs" / "search" / "wanda" / "pareto.png").is_file()


def test_seed_experiments_are_summarised_by_compare_seeds(project):
    """README's seeds one-liner on the tiny pipeline: one `dvc exp run -S train.seed=1`, then compare-seeds."""
    env_git = ["-c", "user.name=ci", "-c", "user.email=ci@localhost"]
    _run(["git", *env_git, "add", "-A"], project)
    _run(["git", *env_git, "commit", "-qm", "baseline"], project)
    _run([str(BIN / "dvc"), "exp", "run", "-S", "train.seed=1"], project, timeout=600)
    _run([str(BIN / "supersam"), "compare-seeds", "--out", "seeds"], project)
    summary = _json(project / "seeds" / "seeds.json")
    assert sorted(r["seed"] for r in summary["runs"]) == [0, 1]  # the workspace (seed 1) and the baseline (seed 0)
    figure = summary["figures"]["subnet_miou_mean_wanda"]
    assert figure["n"] == 2 and figure["std"] is not None
    assert "| wanda |" in (project / "seeds" / "seeds.md").read_text()
