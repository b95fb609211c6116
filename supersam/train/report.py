"""Rich progress bar, final metrics JSON and history.json for DVC."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from supersam.io import write_json


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


def write_outputs(out: Path, metrics: dict, history: list[dict]) -> tuple[Path, Path]:
    """Atomically write ``out/metrics.json`` and ``out/history.json``."""
    return write_json(out / "metrics.json", metrics), write_json(out / "history.json", history)
