"""Atomic artifact writes (temp file in the same folder + ``os.replace``).

An interrupted write never leaves a half-written artifact where a good one was.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; artifacts get normal file modes
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False)
            fh.write("\n")

    return _atomic(path, write)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return _atomic(path, write)


def write_csv(path: str | Path, fieldnames: list[str], rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` (dicts keyed by ``fieldnames``) as a CSV file with a header, atomically.

    Floats are written with ``repr`` (round-trip exact), None as an empty cell.
    """
    import csv

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fieldnames, extrasaction="raise")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in row.items()})

    return _atomic(path, write)


def torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    return _atomic(path, lambda tmp: torch.save(obj, tmp))


def save_figure(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """Save a matplotlib figure to ``path`` atomically (format from the suffix)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return _atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))


def load_torch(path: str | Path, what: str, missing_fix: str, corrupt_fix: str) -> Any:
    """The one loader of ``.pt``/``.pth`` files: ``torch.load(map_location="cpu", weights_only=True)``.

    Args:
        path: file to read.
        what: what the file is, for messages (``"supernet checkpoint"``).
        missing_fix / corrupt_fix: the fix each one-line error names.

    Raises:
        CheckpointError: the file is missing, truncated or not a weights-only torch file.
    """
    from supersam.errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist; {missing_fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # RuntimeError, UnpicklingError, EOFError, ... depending on the damage
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise CheckpointError(f"{what} {path} cannot be read ({reason}); {corrupt_fix}") from None


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read a JSON file, raising a one-line :class:`ConfigError` naming it on failure."""
    from supersam.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist; run the stage that writes it or fix the path")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
