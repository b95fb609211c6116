"""mIoU thresholds relative to the base model (``0.95x``): parsing, and resolution in search and train."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_cli

from supersam.artifacts.records import SupernetMeta
from supersam.data import DataConfig, prepare_split
from supersam.measure.scoring import SubnetEvaluator, run_eval
from supersam.measure.thresholds import MiouThreshold, ResolvedThreshold
from supersam.model.checkpoint import save_supernet
from supersam.model.elastic import SuperSam
from supersam.model.sam import build_sam, build_sam_model
from supersam.model.space import SearchSpace
from supersam.runtime.errors import ConfigError
from supersam.schema import build_config
from supersam.stages.search import SearchConfig
from supersam.stages.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_MLP_DIMS = (64, 128, 256)
CPU = torch.device("cpu")


# -- parsing -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value, relative",
    [
        (0.8, 0.8, False),
        ("0.8", 0.8, False),
        (0, 0.0, False),
        (1, 1.0, False),
        ("0.029", 0.029, False),
        ("0.95x", 0.95, True),
        ("0.95X", 0.95, True),
        (" 0.95 x ", 0.95, True),
        ("95%", 0.95, True),
        ("1.5x", 1.5, True),
        (".5x", 0.5, True),
        ("1e-2", 0.01, False),
    ],
)
def test_parse_accepts_absolute_and_relative_forms(text, value, relative):
    threshold = MiouThreshold.parse(text, "search.min_miou")
    assert threshold == MiouThreshold(value, relative)
    assert MiouThreshold.parse(str(threshold)) == threshold  # __str__ round-trips


@pytest.mark.parametrize(
    "text, margin",
    [
        ("baseline+0.05", 0.05),
        ("Baseline + 0.05", 0.05),
        (" baseline+.1 ", 0.1),
        ("baseline", 0.0),
        ("baseline+1", 1.0),
    ],
)
def test_parse_accepts_a_margin_over_the_baselines(text, margin):
    threshold = MiouThreshold.parse(text, "train.target_miou")
    assert threshold == MiouThreshold(margin, over_baseline=True) and not threshold.relative
    assert MiouThreshold.parse(str(threshold)) == threshold
    assert threshold.resolve(baseline_miou=0.61) == pytest.approx(0.61 + margin, abs=1e-12)
    with pytest.raises(ValueError):
        threshold.resolve(base_miou=0.7)  # a margin needs the baseline, not the base model


@pytest.mark.parametrize(
    "bad", ["baseline+", "baseline-0.05", "baseline+1.5", "baseline+nan", "baselines", "0.05+baseline"]
)
def test_parse_rejects_bad_margins(bad):
    with pytest.raises(ConfigError) as exc:
        MiouThreshold.parse(bad, "train.target_miou")
    assert "\n" not in str(exc.value) and "baseline+0.05" in str(exc.value)


def test_margin_over_the_baselines_resolves_on_a_hand_computed_sample():
    """Box prompts on a 4 x 4 square in a 10 x 10 image: all-foreground 16/100, box fill 1.0 for the
    tight box and 16/64 for the 8 x 8 one, so the best baseline is box fill (1 + 0.25) / 2 = 0.625."""
    from test_baselines import model_input, square

    from supersam.measure.thresholds import best_baseline, resolve_threshold

    masks = square()[None].repeat(2, 1, 1)
    inputs = [model_input(masks, (10, 10), boxes=[[3, 3, 6, 6], [1, 1, 8, 8]])]
    assert best_baseline(inputs) == ("box_fill", pytest.approx(0.625, abs=1e-12))
    meta = SupernetMeta(model_type="tiny", img_size=64, pretrained=False, variant="none")  # no base model needed
    resolved = resolve_threshold("baseline+0.05", meta, inputs, CPU, what="train.target_miou")
    assert resolved.value == pytest.approx(0.675, abs=1e-12) and resolved.baseline == "box_fill"
    assert resolved.report("min_miou") == {
        "min_miou": resolved.value,
        "min_miou_setting": "baseline+0.05",
        "baseline_miou": pytest.approx(0.625, abs=1e-12),
    }
    assert resolved.describe() == "0.6750 (baseline+0.05: box fill 0.6250)"
    with pytest.raises(ConfigError, match="has none"):
        best_baseline([])


def test_resolve_and_str():
    relative = MiouThreshold.parse("0.95x")
    assert relative.relative and relative.value == 0.95
    assert abs(relative.resolve(0.8) - 0.76) < 1e-12 and str(relative) == "0.95x"
    assert MiouThreshold.parse("95%") == relative and MiouThreshold.parse("95%").resolve(0.8) == relative.resolve(0.8)
    absolute = MiouThreshold.parse("0.8")
    assert absolute.resolve(0.3) == 0.8 and absolute.resolve() == 0.8 and str(absolute) == "0.8"
    with pytest.raises(ValueError):
        relative.resolve(None)
    resolved = ResolvedThreshold(0.76, "0.95x", 0.8)
    assert resolved.report("min_miou") == {"min_miou": 0.76, "min_miou_setting": "0.95x", "base_miou": 0.8}
    assert ResolvedThreshold(0.8, "0.8").report("target_miou") == {"target_miou": 0.8, "target_miou_setting": "0.8"}


@pytest.mark.parametrize(
    "bad", ["1.2", "x", "-0.1x", "abc", "", "0x", "1.6x", "-0.1", "nan", "inf", "0.9xx", True, None]
)
def test_parse_rejects_bad_values_naming_the_setting(bad):
    with pytest.raises(ConfigError) as exc:
        MiouThreshold.parse(bad, "search.min_miou")
    message = str(exc.value)
    assert "\n" not in message and message.startswith("search.min_miou is ")
    assert "0.8" in message and "0.95x" in message and "[0, 1]" in message and "(0, 1.5]" in message


def test_configs_accept_both_forms_and_keep_the_setting_as_text():
    assert build_config(SearchConfig, {"min_miou": 0.029}, "search").min_miou == "0.029"  # params.yaml value
    assert build_config(SearchConfig, {"min_miou": "0.95x"}, "search").min_miou_threshold == MiouThreshold(0.95, True)
    assert SearchConfig(min_miou=0.5).min_miou == "0.5"
    with pytest.raises(ConfigError, match="^search.min_miou is '1.2'"):
        SearchConfig(min_miou="1.2").validate()
    assert TrainConfig(target_miou=0.028).to_dict()["target_miou"] == "0.028"
    assert TrainConfig(target_miou="90%").target_threshold == MiouThreshold(0.9, True)
    with pytest.raises(ConfigError, match="^train.target_miou is 'abc'"):
        TrainConfig(target_miou="abc")


# -- resolution against a real base checkpoint ----------------------------------------------------------------


def em_data(shared_data: Path) -> DataConfig:
    return DataConfig(root=str(shared_data / "isbi2012_em"), patch=256, max_objects=4)


def supernet_from_checkpoint(folder: Path, space: SearchSpace, perturb: bool) -> tuple[Path, Path]:
    """A tiny base model saved as a SAM checkpoint, and a supernet built from it.

    ``perturb`` changes the supernet's encoder weights as training would, so its
    max subnet is no longer the base model.
    """
    torch.manual_seed(1)
    base = folder / "base.pt"
    torch.save(build_sam_model("tiny", 128).state_dict(), base)
    loaded = build_sam("tiny", 128, str(base))
    supernet = SuperSam(loaded.model, space)
    if perturb:
        with torch.no_grad():
            for block in supernet.sam.image_encoder.blocks[:4]:
                for p in block.parameters():
                    p.add_(0.5 * torch.randn_like(p))
    path = folder / "supernet.pt"
    save_supernet(
        path,
        supernet,
        SupernetMeta(loaded.model_type, loaded.img_size, loaded.pretrained, "none", loaded.checkpoint or ""),
    )
    return base, path


def random_init_supernet(folder: Path, space: SearchSpace) -> Path:
    torch.manual_seed(0)
    path = folder / "random_supernet.pt"
    save_supernet(path, SuperSam(build_sam_model("tiny", 128), space), SupernetMeta("tiny", 128, False, "none"))
    return path


def test_search_resolves_relative_min_miou_against_the_base_checkpoint(shared_data, tmp_path, monkeypatch, capsys):
    space = SearchSpace.for_arch("tiny", mlp_dim_choices=TINY_MLP_DIMS)
    base, supernet_path = supernet_from_checkpoint(tmp_path, space, perturb=True)
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "data": {"root": str(shared_data / "isbi2012_em"), "patch": 256, "max_objects": 4},
                "search": {"n_images": 2, "budget": 4, "device": "cpu", "technique": "random"},
                "mlflow": {"enabled": False},
            }
        )
    )
    out = tmp_path / "out"
    code, err = run_cli(
        [
            "search",
            "--params",
            str(params),
            "--supernet",
            str(supernet_path),
            "--out",
            str(out),
            "--max-params",
            "60M",
            "--min-miou",
            "0.95x",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    # the base model, measured independently on the same validation sample
    inputs = prepare_split(em_data(shared_data), "val", 128, n_images=2)
    expected = run_eval(build_sam("tiny", 128, str(base)).model, inputs, CPU)["miou"]
    assert metrics["base_miou"] == pytest.approx(expected, rel=1e-6) and expected > 0
    assert metrics["min_miou_setting"] == "0.95x"
    assert abs(metrics["min_miou"] - 0.95 * metrics["base_miou"]) < 1e-12
    assert metrics["constraints"]["min_miou"] == metrics["min_miou"]
    for c in json.loads((out / "candidates.json").read_text()):
        assert c["feasible"] == (c["miou"] >= metrics["min_miou"])
    # the trained (here: perturbed) supernet's max subnet is not the base model
    from supersam.model.checkpoint import load_supernet

    supernet = load_supernet(supernet_path)
    max_miou = SubnetEvaluator(supernet, inputs, CPU).evaluate(space.max_subnet())["miou"]
    assert abs(max_miou - expected) > 1e-4

    # an absolute threshold is reported as given, without a base model
    code, err = run_cli(
        [
            "search",
            "--params",
            str(params),
            "--supernet",
            str(supernet_path),
            "--out",
            str(tmp_path / "abs"),
            "--max-params",
            "60M",
            "--min-miou",
            "0.01",
        ],
        monkeypatch,
        capsys,
    )
    metrics = json.loads((tmp_path / "abs" / "metrics.json").read_text())
    assert code == 0 and metrics["min_miou"] == 0.01 and metrics["min_miou_setting"] == "0.01"
    assert "base_miou" not in metrics

    # a supernet from a randomly initialised SAM has no base model: refused at once, one line
    random_path = random_init_supernet(tmp_path, space)
    code, err = run_cli(
        [
            "search",
            "--params",
            str(params),
            "--supernet",
            str(random_path),
            "--out",
            str(tmp_path / "rand"),
            "--max-params",
            "60M",
            "--min-miou",
            "95%",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 1 and "search.min_miou 0.95x is relative" in err
    assert "a relative threshold needs a base model checkpoint" in err
    assert "Traceback" not in err and not (tmp_path / "rand").exists()


def test_train_resolves_relative_target_once_and_resumes(shared_data, tmp_path):
    from supersam.schema import TrackingConfig
    from supersam.stages.train import train

    data_cfg = DataConfig(
        kind="image_label",
        root=str(shared_data / "dsb2018_nuclei"),
        images="img2d.tif",
        labels="mask2d.tif",
        label_mode="instance",
        patch=128,
        min_area=20,
        max_objects=4,
        prompt="box",
        box_pad=5,
    )
    base, supernet_path = supernet_from_checkpoint(tmp_path, SearchSpace.for_arch("tiny"), perturb=False)
    cfg = TrainConfig(
        supernet=str(supernet_path),
        out=str(tmp_path / "run"),
        iterations=2,
        batch_size=2,
        lr=1e-3,
        eval_every=0,
        val_images=2,
        save_every=1,
        target_miou="0.5x",
        device="cpu",
        seed=3,
    )
    off = TrackingConfig(enabled=False)
    assert train(cfg, data_cfg, off, stop_after=1, show_progress=False).stopped
    metrics = train(cfg, data_cfg, off, resume=True, show_progress=False).metrics
    # the probe's sample follows data.seed (not train.seed 3): every training seed is measured alike
    inputs = prepare_split(data_cfg, "val", 128, n_images=2, seed=data_cfg.seed)
    base_miou = run_eval(build_sam("tiny", 128, str(base)).model, inputs, CPU)["miou"]
    assert metrics["target_miou_setting"] == "0.5x"
    assert metrics["target_miou"] == pytest.approx(0.5 * base_miou, rel=1e-6)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["target_miou"] == metrics["target_miou"]

    random_path = random_init_supernet(tmp_path, SearchSpace.for_arch("tiny"))
    with pytest.raises(ConfigError, match="train.target_miou 0.9x is relative.*needs a base model checkpoint"):
        train(
            TrainConfig(
                supernet=str(random_path),
                out=str(tmp_path / "rand"),
                iterations=1,
                val_images=2,
                target_miou="0.9x",
                device="cpu",
            ),
            data_cfg,
            off,
            show_progress=False,
        )
