"""Rich progress bar, final metrics JSON and history.json for DVC."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from supersam.artifacts import paths
from supersam.artifacts.records import Table1Row
from supersam.runtime.io import write_json
from supersam.runtime.plots import plot_history

HISTORY_PLOT = "history.png"  # the training curve (train's own output, read by no other stage)


class TrainProgress:
    """Progress bar with the latest loss and smallest/largest-subnet mIoU (no-op when disabled)."""

    def __init__(self, total: int, completed: int, enabled: bool) -> None:
        self._progress = None
        if enabled:
            self._progress = Progress(
                TextColumn("train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("mIoU min/max {task.fields[miou]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._task = self._progress.add_task("train", total=total, completed=completed, loss="-", miou="-")

    def __enter__(self) -> TrainProgress:
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


def write_outputs(
    out: Path, metrics: dict, history: list[dict], probes: list[dict], title: str = ""
) -> tuple[str, ...]:
    """Atomically write ``out/``: metrics.json, history.json, probes.json (the smallest
    subnet's mIoU at every target probe), the training curve (history.png) and this
    run's paper Table I row (table1.json: iterations, time, energy and CO2 to target;
    time and energy exclude validation and probes, ``*_total`` include them).

    Returns:
        the file names written (for MLflow artifacts).
    """
    write_json(out / paths.METRICS_FILE, metrics)
    write_json(out / paths.HISTORY_FILE, history)
    write_json(out / paths.PROBES_FILE, probes)
    Table1Row.from_metrics(metrics).save(out / paths.TABLE1_FILE)
    plot_history(out / HISTORY_PLOT, history, metrics.get("target_miou"), title, probes)
    return (paths.METRICS_FILE, paths.HISTORY_FILE, paths.PROBES_FILE, paths.TABLE1_FILE, HISTORY_PLOT)
