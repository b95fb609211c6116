"""Atomic, reproducible artifact writes and the output-folder guard (docs/contracts.md, "Failures").

Every artifact is written to a temporary sibling and renamed into place
(``os.replace``), so an interrupted write never leaves a half-written artifact
where a good one was. Temporary names carry the writer's process id
(``.<name>.<pid>.<random>.tmp``); :func:`clean_stale_temps` removes those of dead
processes (a ``kill -9`` skips every ``finally``), so interrupted runs do not pile
up temp files. ``torch.save`` records the file name inside the archive, so
:func:`torch_save` writes under the final name in a temporary folder: the same
state gives the same bytes, and DVC sees an unchanged artifact as unchanged.
The output-folder guard and lock are :mod:`supersam.runtime.outdir`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

# .<name>.<pid>.<random>.tmp (files) and .<name>.<pid>.<random>.tmpdir / .old (folders)
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.(tmp|tmpdir|old)$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of our temporaries (``.<name>.<pid>.<random>.tmp|tmpdir|old``)."""
    return _TEMP.match(name) is not None


def temp_prefix(path: str | Path) -> str:
    """Prefix of this process's temporary siblings of ``path``: ``.<name>.<pid>.``."""
    return f".{Path(path).name}.{os.getpid()}."


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (True when unsure: it belongs to another user)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def writer_alive(temp: str | Path) -> bool:
    """Whether the process that made temporary file or folder ``temp`` still runs (True if not one of ours)."""
    match = _TEMP.match(Path(temp).name)
    return match is None or process_alive(int(match["pid"]))


def clean_stale_temps(folder: str | Path) -> int:
    """Remove temporary files and folders left in ``folder`` by writers that no longer run.

    Returns:
        how many entries were removed (0 when ``folder`` does not exist).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for entry in folder.iterdir():
        if writer_alive(entry):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    if removed:
        log.info("removed %d temporary file(s) of interrupted runs in %s", removed, folder)
    return removed


def make_temp_dir(path: str | Path, kind: str = "tmpdir") -> Path:
    """A new temporary folder beside ``path`` (same file system), named for :func:`clean_stale_temps`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=f".{kind}", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; artifacts get normal modes
    return tmp


def _atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; artifacts get normal file modes
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _naming(exc, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _naming(exc: OSError, path: str | Path) -> OSError:
    """``exc`` with ``path`` as its file name where it has none (a failed ``write`` on an open
    file, e.g. disk full, names no file): the CLI's one-line report names the file."""
    if exc.filename is not None:
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON ``null``).

    JSON has no NaN: Python's ``json`` would write a bare ``NaN`` that other readers
    (JavaScript, jq, MLflow's UI) refuse. Containers are copied; other values are kept.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented UTF-8 JSON to ``path`` atomically; NaN and infinities become ``null``."""
    text = json.dumps(finite_json(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

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
                writer.writerow(
                    {k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in row.items()}
                )

    return _atomic(path, write)


# What torch's zip writer (caffe2 PyTorchStreamWriter) says when a write fails, e.g. on a full disk.
_TORCH_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter failed", "file write failed", "unexpected pos")


def torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; the same ``obj`` gives the same bytes.

    The archive is written under ``path``'s own name inside a temporary sibling
    folder (``torch.save`` records the file name in the archive), then renamed.
    """
    path = Path(path)
    clean_stale_temps(path.parent)
    tmp_dir = make_temp_dir(path)
    try:
        tmp = tmp_dir / path.name
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:  # torch's zip writer reports a failed write (disk full) as a RuntimeError
            message = str(exc)
            if not any(mark in message for mark in _TORCH_WRITE_FAILURES):
                raise  # not a write failure: a bug keeps its traceback
            reason = message.strip().splitlines()[0]
            raise OSError(errno.EIO, f"writing failed ({reason[:120]}); the disk may be full", str(path)) from None
        except OSError as exc:
            raise _naming(exc, path) from None
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def replace_dir(tmp: str | Path, out: str | Path) -> None:
    """Move the finished folder ``tmp`` to ``out``; an existing ``out`` is moved aside, then removed.

    Two renames: a kill between them leaves the previous folder aside as
    ``.<name>.<pid>.<x>.old/<name>`` (export restores it on its next run); ``out`` never
    holds a mix of old and new files.
    """
    tmp, out = Path(tmp), Path(out)
    if not out.exists():
        os.replace(tmp, out)
        return
    old = make_temp_dir(out, "old")
    os.replace(out, old / out.name)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def publish(stage: str | Path, out: str | Path, names: tuple[str, ...]) -> None:
    """Move each of ``names`` that the finished staging folder ``stage`` holds into ``out``.

    A command writes its results into a temporary folder and publishes them only once
    all are written, so a failure (disk full, Ctrl-C, a bug) before this point leaves
    the previous results in ``out`` as they were. Files are replaced with ``os.replace``;
    folders with :func:`replace_dir`. Other files in ``out`` are not touched.
    """
    stage, out = Path(stage), Path(out)
    for name in names:
        src, dst = stage / name, out / name
        if not src.exists():
            continue
        if src.is_dir():
            if dst.exists() and not dst.is_dir():
                dst.unlink()
            replace_dir(src, dst)
        else:
            if dst.is_dir():
                shutil.rmtree(dst)
            os.replace(src, dst)


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
    from supersam.runtime.errors import CheckpointError

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a folder; pass the checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist; {missing_fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # RuntimeError, UnpicklingError, EOFError, ... depending on the damage
        # torch's own messages ("pop from empty list", a page of weights_only advice) do not help here
        reason = f"not a PyTorch file of tensors, or a truncated one: {type(exc).__name__}"
        raise CheckpointError(f"{what} {path} cannot be read ({reason}); {corrupt_fix}") from None


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read a JSON file in UTF-8, UTF-16 or UTF-32 (the encoding is detected, RFC 8259).

    Raises:
        ConfigError: a missing file, a folder, or bytes that are not JSON (one line naming it).
    """
    from supersam.runtime.errors import ConfigError

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; pass the JSON file")
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist; run the stage that writes it or fix the path")
    try:
        return json.loads(path.read_bytes())  # bytes: json detects UTF-8/16/32 (PowerShell's `>` writes UTF-16)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{what} {path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix the file or write it again"
        ) from None
    except RecursionError:
        raise ConfigError(
            f"{what} {path} nests its JSON arrays or objects too deeply to read; point at the file the stage wrote"
        ) from None
    except (UnicodeDecodeError, ValueError):
        raise ConfigError(
            f"{what} {path} is not a JSON text file (undecodable bytes); point at the JSON file the stage wrote"
        ) from None


def file_digest(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes: the content identity of a resumed run's inputs.

    Raises:
        CheckpointError: the file does not exist.
    """
    from supersam.runtime.errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; run the stage that writes it or fix the path")
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
