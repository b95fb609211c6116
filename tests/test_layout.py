"""The layout guards (docs/architecture.md, "Layout tests").

- dvc.yaml's paths are the ones :mod:`supersam.paths` owns (and the commands use).
- Every stage's dvc.yaml deps cover the source files its command imports,
  computed from the import graph, so a new import cannot escape DVC's change
  detection.
- Layering: core modules never import a stage; stages never import each other.

Each check is also run on a deliberately drifted input to prove it can fail.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import yaml

from supersam import paths

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "supersam"

# stage name in dvc.yaml -> the CLI module that runs it
STAGE_COMMANDS = {
    "validate": "validate", "pretrain": "pretrain", "rank-layers": "rank_layers", "calibrate-wanda": "calibrate_wanda",
    "build-supernet": "build_supernet", "train": "train", "finetune": "train", "search": "search", "compare": "compare",
    "export": "export", "eval": "eval",
}
# the stage modules/packages (one per command); everything else in supersam/ but cli/ is core
STAGE_MODULES = ("supersam.pretrain", "supersam.rank_layers", "supersam.calibrate", "supersam.build_supernet",
                 "supersam.train", "supersam.search", "supersam.compare", "supersam.compare_seeds", "supersam.export", "supersam.eval",
                 "supersam.predict")
# sources that cannot change a stage's outputs, so dvc.yaml need not list them:
# messages (errors.py) and MLflow logging (tracking.py); cli/ only parses options.
NOT_DEPS = {"supersam/errors.py", "supersam/tracking.py"}


def _module_file(module: str) -> Path | None:
    base = REPO / Path(*module.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else None


def _imports(module: str) -> set[str]:
    """supersam modules ``module`` imports: module level and inside functions (lazy imports
    run when the command runs), plus the lazy export tables of packages (``_EXPORTS``).
    The top-level ``supersam/__init__.py`` counts only its module-level imports: its lazy
    ``load_model`` is not called by any stage."""
    path = _module_file(module)
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = tree.body if module == "supersam" else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("supersam"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names if _module_file(f"{base}.{a.name}"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("supersam"))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and node.value.startswith("supersam.") and _module_file(node.value)):
            found.add(node.value)
    return found


def import_closure(module: str) -> set[str]:
    """Every supersam module importing ``module`` executes (parent packages included)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or _module_file(name) is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(_imports(name))
    return seen


def stage_sources(command: str) -> set[str]:
    """Source files (repo-relative) the ``supersam <command>`` run depends on."""
    files = {str(_module_file(m).relative_to(REPO)) for m in import_closure(f"supersam.cli.{command}")}
    return {f for f in files if not f.startswith("supersam/cli/") and f != "supersam/__init__.py"} - NOT_DEPS


def uncovered(sources: set[str], deps: list[str]) -> list[str]:
    """Sources not covered by a dep entry (a file, or a folder containing it)."""
    prefixes = [d.rstrip("/") for d in deps]
    return sorted(s for s in sources if not any(s == d or s.startswith(d + "/") for d in prefixes))


def _dvc() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def _params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def _stage(name: str) -> dict:
    stage = _dvc()["stages"][name]
    return stage.get("do", stage)


def _resolve(text: str, item: str | None = None) -> str:
    """Expand the ${...} templates dvc.yaml uses (params.yaml values and ${item})."""
    params = _params()
    out = text
    if item is not None:
        out = out.replace("${item}", item)
    while "${" in out:
        start = out.index("${")
        end = out.index("}", start)
        value = params
        for part in out[start + 2:end].split("."):
            value = value[part]
        out = out[:start] + str(value) + out[end + 1:]
    return out


def _entries(stage: dict, key: str) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in stage.get(key, [])]


@pytest.mark.parametrize("stage", sorted(STAGE_COMMANDS))
def test_stage_deps_cover_the_import_graph(stage):
    deps = _entries(_stage(stage), "deps")
    missing = uncovered(stage_sources(STAGE_COMMANDS[stage]), deps)
    assert not missing, f"dvc.yaml stage {stage} does not list {missing} in its deps"


def test_deps_check_fails_when_an_import_escapes():
    sources = stage_sources("export")
    assert "supersam/export.py" in sources and "supersam/checkpoint.py" in sources
    deps = _entries(_stage("export"), "deps")
    assert uncovered(sources, [d for d in deps if d != "supersam/checkpoint.py"]) == ["supersam/checkpoint.py"]
    assert uncovered({"supersam/data/prepare.py"}, ["supersam/data"]) == []  # a folder covers its files


def _layout(variant: str) -> dict[str, list[str]]:
    """What each stage must read and write, by paths.py."""
    return {
        "validate": [str(paths.PARAMS_VALID)],
        "pretrain": [str(paths.BASE_MODEL)],
        "rank-layers": [str(paths.RANKING)],
        "calibrate-wanda": [str(paths.CALIBRATION_STATS)],
        "build-supernet": [str(paths.built_supernet(variant)), str(paths.supernet_dir(variant) / paths.SEARCH_SPACE_FILE)],
        "train": [str(paths.trained_supernet(variant)), str(paths.train_dir(variant) / paths.METRICS_FILE)],
        "finetune": [str(paths.FINETUNE_DIR / paths.SUPERNET_FILE), str(paths.FINETUNE_DIR / paths.METRICS_FILE)],
        "search": [str(paths.best_subnet(variant)), str(paths.search_dir(variant) / paths.METRICS_FILE)],
        "compare": [str(paths.COMPARE_DIR / name) for name in ("table1.json", "metrics.json", "subnets.json")],
        "export": [str(paths.EXPORT_DIR)],
        "eval": [str(paths.eval_dir(name) / paths.METRICS_FILE) for name in ("subnet", "full", "base", "finetuned")],
    }


def _declared(stage: str, item: str | None) -> list[str]:
    spec = _stage(stage)
    return [_resolve(p, item) for key in ("outs", "metrics") for p in _entries(spec, key)]


def test_dvc_outputs_are_the_layout():
    variants = _params()["variants"]
    for stage, expected in _layout("wanda").items():
        for variant in (variants if "foreach" in _dvc()["stages"][stage] else [None]):
            want = _layout(variant)[stage] if variant else expected
            declared = _declared(stage, variant)
            assert set(want) <= set(declared), f"{stage}: dvc.yaml declares {declared}, paths.py says {want}"


def test_dvc_inputs_are_the_layout():
    params = _params()
    for name, stage in _dvc()["stages"].items():  # every stage waits for params.yaml to be validated
        if name != "validate":
            assert str(paths.PARAMS_VALID) in _entries(stage.get("do", stage), "deps"), name
    assert params["model"]["checkpoint"] == str(paths.BASE_MODEL)
    for variant in params["variants"]:
        assert str(paths.RANKING) in [_resolve(d) for d in _entries(_stage("build-supernet"), "deps")]
        assert str(paths.built_supernet(variant)) in [_resolve(d, variant) for d in _entries(_stage("train"), "deps")]
        assert str(paths.trained_supernet(variant)) in [_resolve(d, variant) for d in _entries(_stage("search"), "deps")]
    # compare reads every variant's trained supernet, Table I row and search frontier
    compare_deps = {_resolve(d) for d in _entries(_stage("compare"), "deps")}
    for variant in params["variants"]:
        want = {str(paths.trained_supernet(variant)), str(paths.train_table1(variant)), str(paths.search_pareto(variant))}
        assert want <= compare_deps, f"dvc.yaml compare deps lack {sorted(want - compare_deps)} (params.yaml variants)"
        assert str(paths.train_table1(variant)) in _declared("train", variant)
        assert str(paths.search_pareto(variant)) in [_resolve(p, variant) for p in _entries(_stage("search"), "plots")]
    export_deps = [_resolve(d) for d in _entries(_stage("export"), "deps")]
    variant = params["export"]["variant"]
    assert {str(paths.trained_supernet(variant)), str(paths.best_subnet(variant))} <= set(export_deps)


def test_command_defaults_are_the_layout():
    """The commands' defaults (what a stage writes without --out) come from paths.py."""
    from supersam.build_supernet import SpaceConfig, SupernetConfig
    from supersam.calibrate import CalibrateConfig
    from supersam.compare import CompareConfig
    from supersam.eval import EvalConfig
    from supersam.export import ExportConfig
    from supersam.pretrain import PretrainConfig
    from supersam.rank_layers import RankLayersConfig
    from supersam.search import SearchConfig
    from supersam.train import TrainConfig

    assert Path(PretrainConfig().out) / paths.BASE_MODEL.name == paths.BASE_MODEL
    assert Path(RankLayersConfig().out) / paths.RANKING.name == paths.RANKING
    assert Path(CalibrateConfig().out) == paths.CALIBRATION_STATS
    assert Path(SpaceConfig().ranking) == paths.RANKING and Path(SupernetConfig().stats) == paths.CALIBRATION_STATS
    assert SupernetConfig().out == "" and EvalConfig().out == ""  # "": paths.supernet_dir(variant), paths.user_eval_dir(name)
    train = TrainConfig(variant="none")
    assert (train.supernet_path, train.out_dir) == (paths.built_supernet("none"), paths.train_dir("none"))
    assert train.out_dir_for("magnitude") == paths.train_dir("magnitude")  # the loaded supernet's variant wins
    search = SearchConfig(variant="none")
    assert (search.supernet_path, search.out_dir()) == (paths.trained_supernet("none"), paths.user_search_dir("none"))
    assert CompareConfig().out_dir == paths.COMPARE_DIR
    export = ExportConfig(variant="none").resolved()
    assert (Path(export.supernet), Path(export.subnet), Path(export.out)) == (
        paths.trained_supernet("none"), paths.best_subnet("none"), paths.EXPORT_DIR)


def _cmd_option(cmd: str, option: str) -> str | None:
    words = cmd.split()
    return words[words.index(option) + 1] if option in words else None


def test_dvc_command_paths_are_the_layout():
    """Paths spelled inside dvc.yaml's commands (hand runs write under runs/, the pipeline under outputs/)."""
    variant = _params()["export"]["variant"]
    evals = {_cmd_option(c, "--name"): c for c in _stage("eval")["cmd"]}
    assert set(evals) == {"subnet", "full", "base", "finetuned"}
    for name, cmd in evals.items():
        assert _cmd_option(cmd, "--out") == str(paths.eval_dir(name)), cmd
    assert _cmd_option(evals["subnet"], "--model") == str(paths.EXPORT_DIR)
    assert _resolve(_cmd_option(evals["full"], "--supernet")) == str(paths.trained_supernet(variant))
    assert _cmd_option(evals["finetuned"], "--supernet") == str(paths.FINETUNE_DIR / paths.SUPERNET_FILE)
    finetune = _stage("finetune")
    assert _cmd_option(finetune["cmd"], "--out") == str(paths.FINETUNE_DIR)
    assert _cmd_option(finetune["cmd"], "--variant") == paths.FINETUNE_VARIANT
    assert str(paths.built_supernet(paths.FINETUNE_VARIANT)) in _entries(finetune, "deps")
    for item in _params()["variants"]:
        search = _resolve(_stage("search")["cmd"], item)
        assert _cmd_option(search, "--out") == str(paths.search_dir(item)) and _cmd_option(search, "--variant") == item
    assert paths.user_eval_dir("full") != paths.eval_dir("full") and paths.user_search_dir("x") != paths.search_dir("x")


def test_layout_check_fails_when_a_path_drifts(monkeypatch):
    monkeypatch.setattr(paths, "OUTPUTS", Path("elsewhere"))
    monkeypatch.setattr(paths, "RANKING", Path("elsewhere/rank_layers/ranking.json"))
    with pytest.raises(AssertionError):
        test_dvc_outputs_are_the_layout()
    with pytest.raises(AssertionError):
        test_dvc_inputs_are_the_layout()
    monkeypatch.setattr(paths, "EVAL_DIR", Path("elsewhere/eval"))
    with pytest.raises(AssertionError):
        test_dvc_command_paths_are_the_layout()


def _stage_of(module: str) -> str | None:
    return next((s for s in STAGE_MODULES if module == s or module.startswith(s + ".")), None)


def layering_violations(modules: list[str]) -> list[str]:
    """``a -> b`` for every core module importing a stage and every stage importing another stage."""
    bad = []
    for module in modules:
        own = _stage_of(module)
        for target in sorted(_imports(module)):
            other = _stage_of(target)
            if other is not None and other != own:
                bad.append(f"{module} -> {target}")
    return bad


def _all_modules() -> list[str]:
    names = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if parts[:2] != ("supersam", "cli"):
            names.append(".".join(parts))
    return names


def test_core_never_imports_a_stage_and_stages_never_import_each_other():
    modules = _all_modules()
    assert set(STAGE_MODULES) <= set(modules) and {"supersam.elastic", "supersam.config"} <= set(modules)
    assert layering_violations(modules) == []


def test_only_the_cli_imports_the_cli():
    """Nothing but supersam/cli (and ``python -m`` entry points, ``__main__``) imports the CLI."""
    bad = [f"{m} -> {t}" for m in _all_modules() if not m.endswith(".__main__")
           for t in sorted(_imports(m)) if t == "supersam.cli" or t.startswith("supersam.cli.")]
    assert bad == []


def test_layering_check_fails_on_a_stage_or_core_import(tmp_path, monkeypatch):
    (tmp_path / "supersam").mkdir()
    (tmp_path / "supersam" / "eval.py").write_text("from supersam.export import export\n")
    (tmp_path / "supersam" / "space.py").write_text("def f():\n    from supersam.train.config import TrainConfig\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert layering_violations(["supersam.eval", "supersam.space"]) == [
        "supersam.eval -> supersam.export", "supersam.space -> supersam.train.config"]


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "benchmarks").glob("bench_*.py")))
def test_benchmark_scripts_import(script, monkeypatch):
    """The benchmarks are not run by the suite; at least their imports must follow a rename."""
    import importlib.util

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    spec = importlib.util.spec_from_file_location(f"bench_{script}", REPO / "benchmarks" / script)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
