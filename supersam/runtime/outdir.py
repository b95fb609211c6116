"""Output folders: the guard a stage passes before its work, and one writer per folder
(docs/contracts.md, "Failures").

:func:`prepare_out` checks an output folder before a stage starts its work (refusing a
folder of someone else's files unless ``--force``); :func:`check_writable` proves it can
be written; :func:`claim_out` keeps a second supersam process from writing the same
folder while a stage runs (an advisory lock, released when the stage ends or its process
dies); :func:`releases_claims` wraps a stage function so its claims are released and the
empty folders it created are removed again when it fails.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from supersam.runtime.io import clean_stale_temps, is_temp_name, temp_prefix

log = logging.getLogger(__name__)

# Files the version-control tools write beside a stage's outputs: DVC adds a
# .gitignore next to every cached output, so they never make a folder foreign.
TOOL_FILES = (".gitignore", ".dvcignore")
# Output folders this process holds (claim_out), by resolved path.
_CLAIMED: dict[Path, FileLock] = {}
# Folders check_writable created (top first): removed again if still empty when a stage fails.
_CREATED: list[Path] = []


def check_writable(folder: str | Path, what: str) -> Path:
    """Create ``folder`` if needed and prove it is writable by writing and removing a file.

    Raises:
        ConfigError: the folder cannot be created or written (one line naming it and the fix).
    """
    from supersam.runtime.errors import ConfigError

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
        raise ConfigError(
            f"{what} {folder} is not writable ({exc.strerror or exc}); choose another folder or fix its permissions"
        ) from None
    return folder


LOCK_ROOT = Path("/tmp") if os.name == "posix" and Path("/tmp").is_dir() else Path(tempfile.gettempdir())
"""Where output-folder locks live: one fixed place per machine, never taken from the environment
(``XDG_CACHE_HOME``, ``HOME`` or ``TMPDIR``), so two processes of one user see each other's claim
whatever their environments say."""


def _lock_file(folder: Path) -> Path:
    """The lock of ``folder``: outside it (no stray file among a stage's outputs), in the per-user
    folder ``LOCK_ROOT/supersam-locks-<uid>``, named after the folder's resolved, case-normalised path."""
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    locks = LOCK_ROOT / f"supersam-locks-{user}"
    locks.mkdir(parents=True, exist_ok=True, mode=0o700)
    return locks / f"{hashlib.sha1(os.path.normcase(str(folder)).encode()).hexdigest()}.lock"


def claim_out(folder: str | Path, what: str) -> None:
    """Hold ``folder`` for this stage: another supersam process claiming it is refused until
    the stage returns (:func:`releases_claims`) or this process ends (also by ``kill -9``).

    An advisory lock (``filelock``) on a file in :data:`LOCK_ROOT` named after the
    folder's resolved path; a claim this process already holds is kept.

    Raises:
        ConfigError: another process holds the folder (one line naming it and the fix).
    """
    from supersam.runtime.errors import ConfigError

    key = Path(folder).resolve()
    if key in _CLAIMED:
        return
    lock = FileLock(str(_lock_file(key)), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(
            f"{what} {folder} is being written by another supersam process; wait for it to "
            "finish or choose another folder"
        ) from None
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


def check_user_out(out: str | Path, what: str) -> Path:
    """Keep a hand-run command's output folder where it belongs (docs/contracts.md, "Failures").

    A relative path must stay inside the working directory (``../x`` is refused: give an
    absolute path to write elsewhere), and ``outputs/`` belongs to ``dvc repro``: a command
    run by hand (no ``DVC_STAGE`` in the environment, which DVC sets for every stage
    command) may not write there, so it never replaces the pipeline's results.

    Raises:
        ConfigError: a relative path that leaves the working directory, or one inside
            ``outputs/`` outside ``dvc repro``.
    """
    from supersam.artifacts import paths
    from supersam.runtime.errors import ConfigError

    out = Path(out)
    cwd = Path(os.path.abspath(os.getcwd()))
    resolved = Path(os.path.abspath(out))  # ".." by name, as mkdir resolves it
    if not out.is_absolute() and cwd not in (resolved, *resolved.parents):
        raise ConfigError(f"{what} {out} leaves the working directory; give an absolute path to write there")
    pipeline = Path(os.path.realpath(cwd / paths.OUTPUTS))
    real = Path(os.path.realpath(resolved))
    if not os.environ.get("DVC_STAGE") and pipeline in (real, *real.parents):
        raise ConfigError(
            f"{what} {out} is inside {paths.OUTPUTS}/, which `dvc repro` writes; a command run by hand "
            f"writes elsewhere (e.g. {paths.RUNS}/...) so the pipeline's results stay as they are"
        )
    return out


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
    from supersam.runtime.errors import ConfigError

    if not str(out).strip():
        raise ConfigError(f'{what} is empty; pass a folder path ("" would write into the working directory)')
    out = Path(out)
    claim_out(out, what)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{what} {out} is a file; pass a folder path")
    if out.is_dir():
        clean_stale_temps(out)
        entries = sorted(p.name for p in out.iterdir())
        foreign = [name for name in entries if name not in owned and name not in TOOL_FILES and not is_temp_name(name)]
        if foreign and not force:
            at_stake = [name for name in entries if name in owned]
            replaced = f"; --force would replace its {', '.join(at_stake)}" if at_stake else ""
            raise ConfigError(
                f"{what} {out} holds files this stage did not write ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty folder, "
                f"or pass --force to write beside them{replaced}"
            )
        if entries and not foreign:
            log.info("replacing the previous results in %s", out)
    return check_writable(out, what)
