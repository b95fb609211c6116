"""Rich progress bar, final metrics JSON and history.json for DVC."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from supersam.io import write_json
from supersam.plots import plot_history


class TrainProgress:
    """Progress bar with the latest loss and smallest/largest-subnet mIoU (no-op when disabled)."""

    def __init__(self, total: int, completed: int, enabled: bool) -> None:
        self._progress = None
        if enabled:
            self._progress = Progress(
                TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("mIoU min/max {task.fields[miou]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False,
            )
            self._task = self._progress.add_task("train", total=total, completed=completed, loss="-", miou="-")

    def __enter__(self) -> "TrainProgress":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, loss: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, loss=f"{loss:.4f}")

    def show_miou(self, scores: dict[str, float]) -> None:
        if self._progress is not None:
            self._progress.update(self._task, miou=f"{scores['miou_min']:.3f}/{scores['miou_max']:.3f}")


TABLE1_KEYS = ("iterations_to_target", "seconds_to_target", "energy_kwh_to_target", "co2_kg_to_target",
               "target_miou", "target_miou_setting", "target_every", "metric", "iterations", "seconds",
               "energy_kwh", "co2_kg", "seconds_total", "energy_kwh_total", "energy_method", "energy_detail",
               "miou_min", "params_min")


def write_outputs(out: Path, metrics: dict, history: list[dict], probes: list[dict],
                  title: str = "") -> tuple[str, ...]:
    """Atomically write ``out/``: metrics.json, history.json, probes.json (the smallest
    subnet's mIoU at every target probe), the training curve (history.png) and this
    run's paper Table I row (table1.json: iterations, time, energy and CO2 to target;
    time and energy exclude validation and probes, ``*_total`` include them).

    Returns:
        the file names written (for MLflow artifacts).
    """
    write_json(out / "metrics.json", metrics)
    write_json(out / "history.json", history)
    write_json(out / "probes.json", probes)
    write_json(out / "table1.json", {key: metrics.get(key) for key in TABLE1_KEYS})
    plot_history(out / "history.png", history, metrics.get("target_miou"), title, probes)
    return ("metrics.json", "history.json", "probes.json", "table1.json", "history.png")
