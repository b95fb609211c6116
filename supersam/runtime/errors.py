"""User-facing error types.

Every error a user can cause (bad flag, bad file, bad data) is raised as a
:class:`SupersamError` subclass whose message is one line naming the problem
and the fix. The CLI turns these into a red one-line message and exit code 1,
without a traceback.
"""


class SupersamError(Exception):
    """Base class of all errors caused by user input; the message is shown as is."""


class ConfigError(SupersamError):
    """A params.yaml entry, flag or subnet config is invalid."""


class CheckpointError(SupersamError):
    """A checkpoint file is missing, unreadable or belongs to another model."""


class DataError(SupersamError):
    """A data set folder, image or annotation is missing or unusable."""


class TrackingError(SupersamError):
    """The MLflow tracking store cannot be opened or refuses a new run (at a stage's start)."""


class Interrupted(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM, raised by the CLI's signal handlers where the process is.

    A ``BaseException`` like ``KeyboardInterrupt``, so no ``except Exception``
    swallows it and every ``finally`` runs (temporary files removed, the MLflow
    run marked KILLED); the CLI then prints one line and exits 130 / 143.
    """

    def __init__(self, signal_name: str = "SIGINT") -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


def interruption_of(exc: BaseException | None) -> "Interrupted | KeyboardInterrupt | None":
    """The interruption behind ``exc``, or None: Ctrl-C or SIGTERM raised inside native code
    (torch's tracer, sqlite, say) surfaces as another exception (a ``SystemError``) whose
    ``__context__`` or ``__cause__`` is our :class:`Interrupted` or a ``KeyboardInterrupt``."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (Interrupted, KeyboardInterrupt)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
