"""Cost measures and latency-aware search: counted MACs, `supersam bench`, the per-device
latency lookup table, and `search --max-latency-ms / --max-macs` on a tiny supernet and real EM data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from test_search import write_params

from supersam.artifacts.records import SupernetMeta
from supersam.measure.latency import LatencyTable, load_or_measure, measure_subnet_ms, table_shape
from supersam.measure.timing import count_macs, device_key, model_latency, model_macs, summarise_ms
from supersam.model.checkpoint import load_model, load_supernet, save_supernet
from supersam.model.elastic import SuperSam
from supersam.model.sam import build_sam_model
from supersam.model.space import SearchSpace, SubnetConfig, subnet_macs
from supersam.stages.export import export_subnet
from supersam.stages.search import Constraints

pytestmark = pytest.mark.usefixtures("one_thread")

CHOICES = (64, 128, 256)
MIXED = SubnetConfig.from_mlp_dims([256, 0, 128, 64, 256, 0, 64, 128, 64, 0, 128, 256])


@pytest.fixture(scope="module")
def supernet_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    supernet = SuperSam(build_sam_model("tiny"), SearchSpace.for_arch("tiny", mlp_dim_choices=CHOICES))
    path = tmp_path_factory.mktemp("supernet") / "supernet.pt"
    save_supernet(path, supernet, SupernetMeta("tiny", 128, False, "wanda"))
    return path


def test_counted_macs_equal_the_analytic_count_and_halve_flops(supernet_path, tmp_path):
    model = load_model(export_subnet(supernet_path, MIXED, tmp_path / "m"))
    macs = model_macs(model)
    assert macs["macs"] == macs["encoder_macs"] + macs["decoder_macs"]
    assert macs["macs"] == subnet_macs("tiny", 128, MIXED)  # FlopCounterMode / 2 == the hand count
    lin = torch.nn.Linear(10, 7, bias=False)
    assert count_macs(lambda: lin(torch.randn(3, 10))) == 3 * 10 * 7  # one MAC per multiply-add
    full = load_model(
        export_subnet(
            supernet_path, SearchSpace.for_arch("tiny", mlp_dim_choices=CHOICES).max_subnet(), tmp_path / "full"
        )
    )
    assert (
        model_macs(full)["decoder_macs"]
        == macs["decoder_macs"]
        < macs["encoder_macs"]
        < model_macs(full)["encoder_macs"]
    )


def test_latency_summary_and_measurement():
    assert summarise_ms([float(v) for v in range(1, 11)]) == {"median_ms": 5.5, "p90_ms": 9.0}
    model = build_sam_model("tiny")
    lat = model_latency(model, warmup=1, repeats=5)
    assert set(lat) == {"encoder_median_ms", "encoder_p90_ms", "decoder_median_ms", "decoder_p90_ms"}
    assert (
        0 < lat["encoder_median_ms"] <= lat["encoder_p90_ms"] and 0 < lat["decoder_median_ms"] <= lat["decoder_p90_ms"]
    )
    key = device_key(torch.device("cpu"), "tiny", 128)
    assert key.endswith(f"_t{torch.get_num_threads()}_tiny_128") and "/" not in key and " " not in key


def test_bench_cli_on_export_and_supernet(supernet_path, tmp_path, monkeypatch, capsys):
    out = export_subnet(supernet_path, MIXED, tmp_path / "m")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    code, err = run_cli(
        ["bench", str(out), "--repeats", "3", "--warmup", "1", "--threads", "1", "--out", str(tmp_path / "b.json")],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["params"] == json.loads((out / "config.json").read_text())["params"]
    assert result["macs"] == subnet_macs("tiny", 128, MIXED) and result["threads"] == 1 and result["repeats"] == 3
    assert 0 < result["encoder_median_ms"] <= result["encoder_p90_ms"]
    threads_after = torch.get_num_threads()
    torch.set_num_threads(before)
    assert threads_after == 2  # bench --threads 1 measured on 1 thread and gave the caller's setting back
    code, err = run_cli(
        [
            "bench",
            str(supernet_path),
            "--subnet",
            json.dumps(MIXED.to_dict()),
            "--repeats",
            "2",
            "--out",
            str(tmp_path / "s.json"),
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    assert json.loads((tmp_path / "s.json").read_text())["macs"] == result["macs"]
    code, err = run_cli(["bench", str(out), "--subnet", "{}"], monkeypatch, capsys)
    assert code == 1 and "--subnet applies to a supernet" in err and "Traceback" not in err


def test_latency_table_predicts_the_sum_caches_and_remeasures(supernet_path, tmp_path, monkeypatch):
    supernet = load_supernet(supernet_path)
    path = tmp_path / "lat.json"
    table, written = load_or_measure(supernet, path, warmup=1, repeats=3, rounds=1)
    assert written == path and path.is_file()
    assert set(table.blocks_ms) == set(range(12)) and all(set(r) == set(CHOICES) for r in table.blocks_ms.values())
    expected = table.rest_ms + sum(table.blocks_ms[i][MIXED.mlp_dims[i]] for i in MIXED.kept_layers)
    assert table.predict_ms(MIXED) == pytest.approx(expected * table.scale) and 0.2 < table.scale < 5
    assert table.predict_ms(supernet.space.min_subnet()) < table.predict_ms(supernet.space.max_subnet())
    assert LatencyTable.from_dict(json.loads(path.read_text())).to_dict() == table.to_dict()
    import supersam.measure.latency as latency

    def boom(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(latency, "measure_table", boom)
    again, _ = load_or_measure(supernet, path)  # cached: same device key and encoder shape
    assert again.to_dict() == table.to_dict()
    stale = table.to_dict()
    stale["shape"] = {**table_shape(supernet), "mlp_dim_choices": [1, 2]}
    path.write_text(json.dumps(stale))
    with pytest.raises(AssertionError, match="measured again"):
        load_or_measure(supernet, path)
    path.write_text(json.dumps({**table.to_dict(), "torch_version": "2.0.0"}))  # kernels change between versions
    with pytest.raises(AssertionError, match="measured again"):
        load_or_measure(supernet, path)
    measured = measure_subnet_ms(supernet, MIXED, warmup=1, repeats=3, rounds=2)
    assert 0 < measured["measured_ms"] <= measured["p90_ms"]
    assert supernet.active_subnet == supernet.space.max_subnet()  # restored


@pytest.fixture(scope="module")
def measured(supernet_path) -> tuple[SuperSam, dict]:
    """The tiny supernet and a table measured on this machine (JSON form)."""
    supernet = load_supernet(supernet_path)
    table, _ = load_or_measure(supernet, supernet_path.parent / "lat.json", warmup=1, repeats=3, rounds=1)
    return supernet, table.to_dict()


def _fake_measure(monkeypatch, base: dict, scales: list[float]) -> list[float]:
    """Replace measure_table by one returning ``base`` with the next of ``scales``; returns the scales used."""
    import supersam.measure.latency as latency

    used: list[float] = []

    def fake(*args, **kwargs):
        used.append(scales[len(used)])
        return LatencyTable.from_dict({**base, "scale": used[-1]})

    monkeypatch.setattr(latency, "measure_table", fake)
    return used


def _warnings(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "supersam.measure.latency"
    ]


@pytest.mark.parametrize(
    "entry, value",
    [
        ("rest_ms", -0.5),
        ("decoder_ms", float("nan")),
        ("scale", float("inf")),
        ("scale", 0),
        ("block", 0.0),
        ("block", float("-inf")),
        ("scale", "1.0"),
    ],
)
def test_cached_table_with_non_positive_or_non_finite_timings_is_measured_again(
    measured, tmp_path, monkeypatch, caplog, entry, value
):
    supernet, base = measured
    bad = json.loads(json.dumps(base))
    if entry == "block":
        bad["blocks_ms"]["3"]["128"] = value
    else:
        bad[entry] = value
    path = tmp_path / "lat.json"
    path.write_text(json.dumps(bad))  # NaN / Infinity literals, as json.dumps writes them
    used = _fake_measure(monkeypatch, base, [base["scale"]])
    with caplog.at_level(logging.INFO, logger="supersam.measure.latency"):
        table, _ = load_or_measure(supernet, path)
    assert used == [base["scale"]] and table.to_dict() == base  # measured again, not used
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "unreadable" in warnings[0] and "measuring again" in warnings[0]
    assert LatencyTable.from_dict(json.loads(path.read_text())).to_dict() == base  # the cache holds the new one


@pytest.mark.parametrize(
    "change",
    [
        {"device_name": "AMD EPYC 7B13 64-Core Processor"},
        {"threads": 64},
        {"device": {"type": "cpu", "name": "AMD EPYC", "cpus": 128}},
        {"device": {}},
        {"device": None},
    ],
)
def test_table_of_another_machine_under_this_key_is_measured_again(measured, tmp_path, monkeypatch, caplog, change):
    supernet, base = measured
    path = tmp_path / "lat.json"
    other = {
        **base,
        **change,
        "rest_ms": base["rest_ms"] / 10,
        "blocks_ms": {i: {d: t / 10 for d, t in row.items()} for i, row in base["blocks_ms"].items()},
    }
    path.write_text(json.dumps(other))
    used = _fake_measure(monkeypatch, base, [base["scale"]])
    table, _ = load_or_measure(supernet, path)
    assert used and table.to_dict() == base
    path.write_text(json.dumps(base))
    again, _ = load_or_measure(supernet, path)  # this machine's own table is used
    assert len(used) == 1 and again.to_dict() == base
    assert base["device"]["type"] == "cpu" and base["device"]["name"] == base["device_name"]  # the full description


def test_implausible_scale_is_measured_once_more_then_kept_with_a_warning(measured, tmp_path, monkeypatch, caplog):
    supernet, base = measured
    assert 0.8 <= base["scale"] <= 1.5  # 1.05-1.09 for the tiny model (latency.SCALE_RANGE)
    path = tmp_path / "lat.json"
    used = _fake_measure(monkeypatch, base, [2.0, 1.05])  # busy during the first measurement
    with caplog.at_level(logging.INFO, logger="supersam.measure.latency"):
        table, _ = load_or_measure(supernet, path)
    assert used == [2.0, 1.05] and table.scale == 1.05 and table.attempts == 2
    assert json.loads(path.read_text())["scale"] == 1.05
    assert len(_warnings(caplog)) == 1 and "busy" in _warnings(caplog)[0]
    caplog.clear()
    path.unlink()
    used = _fake_measure(monkeypatch, base, [2.0, 0.5])  # implausible twice: kept, with the fix
    with caplog.at_level(logging.INFO, logger="supersam.measure.latency"):
        table, _ = load_or_measure(supernet, path)
    assert used == [2.0, 0.5] and table.scale == 0.5 and table.attempts == 2
    assert len(_warnings(caplog)) == 2 and "delete" in _warnings(caplog)[1] and "idle machine" in _warnings(caplog)[1]
    caplog.clear()
    used = _fake_measure(monkeypatch, base, [])  # kept after two measurements: not measured a third time
    with caplog.at_level(logging.INFO, logger="supersam.measure.latency"):
        again, _ = load_or_measure(supernet, path)
    assert used == [] and again.scale == 0.5 and len(_warnings(caplog)) == 1 and "delete" in _warnings(caplog)[0]
    path.write_text(json.dumps({**base, "scale": 2.0}))  # cached by a single measurement on a busy machine
    used = _fake_measure(monkeypatch, base, [1.07])
    table, _ = load_or_measure(supernet, path)
    assert used == [1.07] and table.scale == 1.07


def test_constraints_with_macs_and_latency():
    cons = Constraints(100, 0.5, "min-latency", "miou", max_macs=1000, max_latency_ms=10.0)
    assert cons.feasible(100, 0.5, 1000, 10.0) and not cons.feasible(100, 0.5, 1001, 10.0)
    assert not cons.feasible(100, 0.5, 1000, 10.5)
    assert cons.violation(100, 0.5, 1500, 12.0) == pytest.approx(0.5 + 0.2)
    assert cons.score(50, 0.9, 500, 4.0) == pytest.approx(0.4)  # latency / max_latency_ms
    assert cons.score(50, 0.9, 500, 9.0) < 1.0 < cons.score(50, 0.9, 500, 10.5)
    assert Constraints(100, 0.0, "min-macs", max_macs=1000).score(50, 0.9, 250) == pytest.approx(0.25)


def test_cli_search_under_latency_and_macs(supernet_path, shared_data, tmp_path, monkeypatch, capsys):
    supernet = load_supernet(supernet_path)
    table_path = tmp_path / "lat.json"
    table, _ = load_or_measure(supernet, table_path, warmup=1, repeats=3, rounds=1)
    low, high = table.predict_ms(supernet.space.min_subnet()), table.predict_ms(supernet.space.max_subnet())
    bound = low + 0.9 * (high - low)  # 6 random subnets: some feasible for any table a busy machine measures
    params = str(
        write_params(
            tmp_path,
            shared_data,
            supernet=str(supernet_path),
            latency_table=str(table_path),
            latency_repeats=3,
            latency_rounds=1,
            objective="max-miou",
        )
    )
    code, err = run_cli(
        [
            "search",
            "--params",
            params,
            "--max-params",
            "60M",
            "--min-miou",
            "0",
            "--max-latency-ms",
            f"{bound:.4f}",
            "--max-macs",
            "1G",
            "--pareto-x",
            "latency",
            "--out",
            str(tmp_path / "s"),
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    candidates = json.loads((tmp_path / "s" / "candidates.json").read_text())
    assert all(
        c["latency_ms"] == pytest.approx(table.predict_ms(SubnetConfig.from_dict(c["subnet"])), abs=1e-3)
        and c["macs"] == supernet.macs(SubnetConfig.from_dict(c["subnet"]))
        for c in candidates
    )
    assert all(c["feasible"] == (c["latency_ms"] <= bound) for c in candidates)
    assert metrics["feasible"] and metrics["best_latency_ms_predicted"] <= bound
    assert metrics["constraints"]["max_latency_ms"] == pytest.approx(round(bound, 4))
    assert metrics["constraints"]["max_macs"] == 1_000_000_000
    assert metrics["best_latency_ms_measured"] > 0 and metrics["latency_table"] == str(table_path)
    assert metrics["latency_rel_error"] == pytest.approx(
        (metrics["best_latency_ms_predicted"] - metrics["best_latency_ms_measured"])
        / metrics["best_latency_ms_measured"],
        abs=1e-3,
    )
    pareto = json.loads((tmp_path / "s" / "pareto.json").read_text())
    assert all(p["latency_ms"] < q["latency_ms"] and p["miou"] < q["miou"] for p, q in zip(pareto, pareto[1:]))
    assert (tmp_path / "s" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    code, err = run_cli(
        ["search", "--params", params, "--max-latency-ms", f"{low / 2:.4f}", "--out", str(tmp_path / "x")],
        monkeypatch,
        capsys,
    )
    assert code == 1 and "below the predicted latency of the smallest subnet" in err and "Traceback" not in err
    code, err = run_cli(
        ["search", "--params", params, "--max-macs", "1k", "--out", str(tmp_path / "y")], monkeypatch, capsys
    )
    assert code == 1 and "--max-macs 1,000 is below the smallest subnet" in err


def test_search_reports_a_measured_latency_over_the_bound_as_infeasible(
    measured, supernet_path, shared_data, tmp_path, monkeypatch, capsys
):
    import supersam.measure.latency as latency
    from supersam.cli.app import console

    monkeypatch.setattr(console, "width", 1000)  # one log record per line, paths unbroken
    supernet, base = measured
    table_path = tmp_path / "lat.json"
    table_path.write_text(json.dumps(base))
    bound = round(LatencyTable.from_dict(base).predict_ms(supernet.space.max_subnet()) + 0.01, 2)  # all feasible
    params = str(
        write_params(tmp_path, shared_data, supernet=str(supernet_path), latency_table=str(table_path), budget=3)
    )
    for factor, name in ((10.0, "slow"), (1.05, "close")):  # e.g. a table of a 10x faster machine; then within 10%
        monkeypatch.setattr(
            latency,
            "measure_subnet_ms",
            lambda *a, f=factor, **k: {"measured_ms": f * bound, "median_ms": f * bound, "p90_ms": f * bound},
        )
        code, err = run_cli(
            [
                "search",
                "--params",
                params,
                "--max-params",
                "60M",
                "--min-miou",
                "0",
                "--max-latency-ms",
                str(bound),
                "--out",
                str(tmp_path / name),
            ],
            monkeypatch,
            capsys,
        )
        assert code == 0, err
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert metrics["best_latency_ms_predicted"] <= bound and metrics["n_feasible"] == metrics["n_evaluations"]
        assert metrics["best_latency_ms_measured"] == pytest.approx(factor * bound)
        assert (tmp_path / name / "best_subnet.json").is_file()
        if factor > 1.1:
            assert metrics["feasible"] is False and metrics["latency_within_bound"] is False
            assert metrics["latency_tolerance"] == 0.1
            assert (
                err.count("exceeds --max-latency-ms") == 1
                and err.count("reported infeasible") == 1
                and f"predicted {metrics['best_latency_ms_predicted']:.2f} ms" in err
            )
            assert f"delete the latency table {table_path}" in err
        else:
            assert metrics["feasible"] is True and metrics["latency_within_bound"] is True
            assert "reported infeasible" not in err
    monkeypatch.setattr(
        latency,
        "measure_subnet_ms",
        lambda *a, **k: {"measured_ms": 10 * bound, "median_ms": 10 * bound, "p90_ms": 10 * bound},
    )
    code, err = run_cli(
        [
            "search",
            "--params",
            params,
            "--max-params",
            "60M",
            "--min-miou",
            "0",
            "--max-latency-ms",
            str(bound),
            "--set",
            "search.strict=true",
            "--out",
            str(tmp_path / "strict"),
        ],
        monkeypatch,
        capsys,
    )
    assert code == 1 and json.loads((tmp_path / "strict" / "metrics.json").read_text())["feasible"] is False
