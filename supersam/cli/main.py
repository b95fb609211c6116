"""Console entry point ``supersam``: registers every stage command and maps failures to one line.

A :class:`~supersam.runtime.errors.SupersamError` (bad input) becomes one red line and exit code 1; a usage error
(unknown flag or command, a flag's value of the wrong type) one line naming the problem and the help command, exit 2;
a file-system error (disk full, permission denied) one line naming the file where it is known, exit 1; running out of
memory and text that is not UTF-8 one line each, exit 1; Ctrl-C and SIGTERM one line saying how to continue, exit 130
/ 143, after every ``finally`` has run (temporary files removed, the MLflow run marked KILLED). Anything else is a bug
and keeps its traceback. docs/contracts.md, "Failures".
"""

from __future__ import annotations

import errno
import logging
import signal
import sys

import typer

from supersam.cli import (  # noqa: F401  (imports register the commands)
    bench,
    build_supernet,
    calibrate,
    compare,
    compare_seeds,
    eval,
    export,
    predict,
    pretrain,
    rank_layers,
    search,
    train,
    validate,
)
from supersam.cli.app import app, console
from supersam.runtime.errors import Interrupted, SupersamError, interruption_of

try:  # typer < 0.29 raises click's own exceptions; newer typer vendors click under TyperException
    from click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover
    _ClickException = typer.TyperException
USAGE_ERRORS = (typer.TyperException, _ClickException) if hasattr(typer, "TyperException") else (_ClickException,)

try:  # a RuntimeError subclass: CUDA (or MPS) memory exhausted
    from torch import OutOfMemoryError as _TorchOOM
except ImportError:  # pragma: no cover  (torch < 2.5)
    from torch.cuda import OutOfMemoryError as _TorchOOM

RESUMABLE = {"train": "--resume", "search": "--resume", "pretrain": "--resume"}
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


# True once the command has returned or been interrupted: a later signal is ignored (a second
# Ctrl-C cannot break the cleanup and the one-line report of the first).
_STATE = {"finished": False}


def _raise_interrupted(signum, frame) -> None:  # noqa: ARG001
    if not _STATE["finished"]:
        _STATE["finished"] = True
        raise Interrupted(signal.Signals(signum).name)


def _interrupted(exc: BaseException) -> None:
    """One line saying how to continue, and exit 130 (SIGINT) or 143 (SIGTERM)."""
    name = getattr(exc, "signal_name", "SIGINT")
    what = "terminated (SIGTERM)" if name == "SIGTERM" else "interrupted"
    _error(f"{what}; {_how_to_continue()}")
    sys.exit(EXIT_CODES.get(name, 130))


def _error(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def main(restore_signals: bool = False) -> None:
    """Run the CLI; user errors, file-system errors and interruptions end in one line and a non-zero exit.

    Args:
        restore_signals: put the previous SIGINT/SIGTERM handlers back at the end (for
            in-process callers such as tests). The ``supersam`` executable ignores both
            once the command has finished (``SIG_IGN``, which Python's finalisation keeps),
            so a Ctrl-C during the interpreter's shutdown (about a second with torch
            loaded) cannot kill a finished run without a word.
    """
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    _STATE["finished"] = False
    for sig in saved:  # click would turn KeyboardInterrupt into "Aborted!"; ours reaches the finally blocks
        signal.signal(sig, _raise_interrupted)
    try:
        code = app(standalone_mode=False)  # click's exceptions reach us instead of printing a framed panel
        _STATE["finished"] = True
        if code == EXIT_CODES["SIGINT"]:  # typer turned a KeyboardInterrupt raised by other code into exit 130
            _interrupted(KeyboardInterrupt())
    except USAGE_ERRORS as exc:
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one has shown the help already
            _error(_usage_line(exc))
        sys.exit(getattr(exc, "exit_code", 2))
    except SupersamError as exc:
        _error(str(exc))
        sys.exit(1)
    except (Interrupted, KeyboardInterrupt) as exc:
        _interrupted(exc)
    except OSError as exc:
        if interruption_of(exc) is not None:
            _interrupted(interruption_of(exc))
        _error(_os_error_line(exc))
        sys.exit(1)
    except (MemoryError, _TorchOOM) as exc:  # numpy's _ArrayMemoryError and torch's CUDA out-of-memory too
        _error(
            f"out of memory ({str(exc).splitlines()[0][:160] if str(exc) else 'an allocation failed'}); "
            "earlier results are kept: use smaller inputs (data.patch, fewer images, a smaller img_size) "
            "or a machine with more memory"
        )
        sys.exit(1)
    except UnicodeError as exc:  # bytes that are not text where text is read, or a name that is not UTF-8
        _error(f"{_unicode_line(exc)}; earlier results are kept")
        sys.exit(1)
    except Exception as exc:
        if interruption_of(exc) is None:
            raise  # a bug: keep its traceback
        logging.getLogger(__name__).debug("interrupted inside native code", exc_info=exc)
        _interrupted(interruption_of(exc))
    finally:
        _STATE["finished"] = True
        for sig, handler in saved.items():
            if restore_signals:
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            else:  # SIG_IGN survives the interpreter's finalisation, which resets Python-level handlers
                signal.signal(sig, signal.SIG_IGN)
    sys.exit(code if isinstance(code, int) else 0)  # typer.Exit(N) and --help return their code


def _os_error_line(exc: OSError) -> str:
    """One line for a file-system or device error: the file when known, and what to do."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free space (or write elsewhere with --out) and rerun; earlier results are kept"
    elif exc.filename is not None or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO):
        fix = "free space or fix the path and its permissions"
    else:  # a network or system error (a tracking server, say)
        fix = "check the connection or the system named, then rerun"
    if exc.filename is None:
        return f"{reason}; {fix}"
    return f"cannot use {exc.filename}: {reason}; {fix}"


def _unicode_line(exc: UnicodeError) -> str:
    """One line for a text that is not UTF-8 (decoding) or a name that cannot be written (encoding)."""
    if isinstance(exc, UnicodeDecodeError):
        return (
            f"a file holds bytes that are not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position "
            f"{exc.start}); pass the text file the command expects, saved as UTF-8"
        )
    if isinstance(exc, UnicodeEncodeError):
        return f"a name is not valid UTF-8 ({exc.object[exc.start : exc.end]!a}); rename the file or folder"
    return f"text cannot be read or written ({exc})"


def _usage_line(exc: Exception) -> str:
    """``exc``'s message and, for a usage error, the help command of the command it concerns."""
    message = exc.format_message().rstrip(".")
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else " ".join(["supersam", *sys.argv[1:2]])
    return f"{message[:1].lower()}{message[1:]}; see '{command} --help'"


def _how_to_continue() -> str:
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
    flag = RESUMABLE.get(command)
    if flag:
        return f"the finished part is kept: rerun the same command with {flag} to continue"
    return "its outputs were not written; rerun the command"


if __name__ == "__main__":
    main()
