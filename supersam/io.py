"""Atomic, reproducible artifact writes and the output-folder guard (docs/contracts.md, "Failures").

Every artifact is written to a temporary sibling and renamed into place
(``os.replace``), so an interrupted write never leaves a half-written artifact
where a good one was. Temporary names carry the writer's process id
(``.<name>.<pid>.<random>.tmp``); :func:`clean_stale_temps` removes those of dead
processes (a ``kill -9`` skips every ``finally``), so interrupted runs do not pile
up temp files. ``torch.save`` records the file name inside the archive, so
:func:`torch_save` writes under the final name in a temporary folder: the same
state gives the same bytes, and DVC sees an unchanged artifact as unchanged.
:func:`prepare_out` checks an output folder before a stage starts its work, and
:func:`claim_out` keeps a second supersam process from writing the same folder
while a stage runs (an advisory lock, released when the stage ends or its
process dies).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

# .<name>.<pid>.<random>.tmp (files) and .<name>.<pid>.<random>.tmpdir / .old (folders)
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.(tmp|tmpdir|old)$")
# Files the version-control tools write beside a stage's outputs: DVC adds a
# .gitignore next to every cached output, so they never make a folder foreign.
TOOL_FILES = (".gitignore", ".dvcignore")
# Output folders this process holds (claim_out), by resolved path.
_CLAIMED: dict[Path, FileLock] = {}
# Folders check_writable created (top first): removed again if still empty when a stage fails.
_CREATED: list[Path] = []


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
    """``torch.save(obj)`` to ``path`` atomically; the same ``obj`` gives the same bytes.

    The archive is written under ``path``'s own name inside a temporary sibling
    folder (``torch.save`` records the file name in the archive), then renamed.
    """
    path = Path(path)
    clean_stale_temps(path.parent)
    tmp_dir = make_temp_dir(path)
    try:
        tmp = tmp_dir / path.name
        torch.save(obj, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


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
    from supersam.errors import ConfigError

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; pass the JSON file")
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist; run the stage that writes it or fix the path")
    try:
        return json.loads(path.read_bytes())  # bytes: json detects UTF-8/16/32 (PowerShell's `>` writes UTF-16)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid JSON ({exc.msg} at line {exc.lineno}); "
                          "fix the file or write it again") from None
    except (UnicodeDecodeError, ValueError):
        raise ConfigError(f"{what} {path} is not a JSON text file (undecodable bytes); "
                          "point at the JSON file the stage wrote") from None


def check_writable(folder: str | Path, what: str) -> Path:
    """Create ``folder`` if needed and prove it is writable by writing and removing a file.

    Raises:
        ConfigError: the folder cannot be created or written (one line naming it and the fix).
    """
    from supersam.errors import ConfigError

    folder = Path(folder)
    absolute = Path(os.path.abspath(folder))  # ".." resolved by name, as mkdir does
    blocker = next((p for p in (absolute, *absolute.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"{what} {folder}: {blocker} is a file, not a folder; choose another path")
    try:
        for level in reversed((absolute, *absolute.parents)):  # top down; only the levels made here count
            try:
                os.mkdir(level)
            except FileExistsError:
                continue
            _CREATED.append(level)
        fd, probe = tempfile.mkstemp(prefix=temp_prefix(folder / "probe"), suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{what} {folder} is not writable ({exc.strerror or exc}); "
                          "choose another folder or fix its permissions") from None
    return folder


def _lock_file(folder: Path) -> Path:
    """The lock of ``folder``: outside it (no stray file among a stage's outputs), in a per-user
    folder that does not depend on ``TMPDIR`` (``$XDG_CACHE_HOME`` or ``~/.cache``, then
    ``supersam/locks``), named after the folder's resolved, case-normalised path."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    locks = Path(cache) / "supersam" / "locks"
    try:
        locks.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:  # no writable home (some containers): the temporary folder, per user
        user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
        locks = Path(tempfile.gettempdir()) / f"supersam-locks-{user}"
        locks.mkdir(parents=True, exist_ok=True, mode=0o700)
    return locks / f"{hashlib.sha1(os.path.normcase(str(folder)).encode()).hexdigest()}.lock"


def claim_out(folder: str | Path, what: str) -> None:
    """Hold ``folder`` for this stage: another supersam process claiming it is refused until
    the stage returns (:func:`releases_claims`) or this process ends (also by ``kill -9``).

    An advisory lock (``filelock``) on a file in the temporary folder named after the
    folder's resolved path; a claim this process already holds is kept.

    Raises:
        ConfigError: another process holds the folder (one line naming it and the fix).
    """
    from supersam.errors import ConfigError

    key = Path(folder).resolve()
    if key in _CLAIMED:
        return
    lock = FileLock(str(_lock_file(key)), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(f"{what} {folder} is being written by another supersam process; wait for it to "
                          "finish or choose another folder") from None
    _CLAIMED[key] = lock


def _claimed_elsewhere(folder: Path) -> bool:
    """Whether another process holds ``folder`` (:func:`claim_out`) right now."""
    lock = FileLock(str(_lock_file(folder.resolve())), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


def releases_claims(fn: Callable) -> Callable:
    """Decorator of a stage function: the folders it claimed (:func:`claim_out`) are released
    when it returns or raises; claims made before the call are kept. When it raises (a refused
    input, Ctrl-C), the output folders it created and left empty are removed again."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before, created = set(_CLAIMED), len(_CREATED)
        try:
            return fn(*args, **kwargs)
        except BaseException:
            for key in set(_CLAIMED) - before:  # ours first, so the probe below sees only others' claims
                _CLAIMED.pop(key).release()
            for folder in reversed(_CREATED[created:]):  # deepest first
                if not _claimed_elsewhere(folder):
                    try:
                        folder.rmdir()  # only an empty folder
                    except OSError:
                        pass
            raise
        finally:
            del _CREATED[created:]
            for key in set(_CLAIMED) - before:
                _CLAIMED.pop(key).release()

    return wrapper


def prepare_out(out: str | Path, owned: tuple[str, ...], what: str, force: bool = False) -> Path:
    """Check an output folder before a stage's work starts; create it.

    A folder is the stage's own when every entry in it is one of ``owned`` (the
    names the stage writes), a temporary file of ours or a version-control file
    (``TOOL_FILES``: DVC's ``.gitignore`` beside cached outputs): a previous result is
    then replaced as the pipeline expects (logged). Any other non-empty folder is
    refused unless ``force``, so a mistyped ``--out`` never overwrites a user's files.

    Args:
        out: the output folder (must not be empty: "" would mean the working directory).
        owned: file and folder names the stage writes there.
        what: the option's name for messages (``eval --out``).
        force: write into a foreign non-empty folder anyway (only ``owned`` names are replaced).

    The folder is claimed for the calling stage (:func:`claim_out`).

    Raises:
        ConfigError: an empty path, a file, a foreign non-empty folder without
            ``force``, a folder that cannot be written or that another process is writing.
    """
    from supersam.errors import ConfigError

    if not str(out).strip():
        raise ConfigError(f"{what} is empty; pass a folder path (\"\" would write into the working directory)")
    out = Path(out)
    claim_out(out, what)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{what} {out} is a file; pass a folder path")
    if out.is_dir():
        clean_stale_temps(out)
        entries = sorted(p.name for p in out.iterdir())
        foreign = [name for name in entries
                   if name not in owned and name not in TOOL_FILES and _TEMP.match(name) is None]
        if foreign and not force:
            raise ConfigError(f"{what} {out} holds files this stage did not write ({', '.join(foreign[:3])}"
                              f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty folder, "
                              "or pass --force to write beside them")
        if entries and not foreign:
            log.info("replacing the previous results in %s", out)
    return check_writable(out, what)


def file_digest(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes: the content identity of a resumed run's inputs.

    Raises:
        CheckpointError: the file does not exist.
    """
    from supersam.errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; run the stage that writes it or fix the path")
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
