"""Errors that jobs turn into a clear message and a non-zero exit.

Every error names what is wrong (file, column, row) so that a user can fix the input
without reading a traceback.
"""

from __future__ import annotations

from typing import Iterator


class SemrecError(Exception):
    """Base class: an expected failure with a user-facing message."""

    exit_code = 1


class InputError(SemrecError):
    """Bad input data: missing/wrong columns, NaN embeddings, duplicate ids, empty text..."""

    exit_code = 3


class ConfigError(SemrecError):
    """Invalid settings (bad value, unknown field, unreadable config file)."""

    exit_code = 2


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything wrapped in it: causes and contexts, Ray's ``RayTaskError.cause``, and Ray
    Train's per-rank ``WorkerGroupError.worker_failures``."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack.extend([e.__cause__, e.__context__, getattr(e, "cause", None)])
        stack.extend((getattr(e, "worker_failures", None) or {}).values())


def find_semrec_error(exc: BaseException) -> SemrecError | None:
    """The SemrecError inside Ray's wrappers (RayTaskError, UserCodeException, Ray Train's per-rank
    worker failures, chained causes)."""
    return next((e for e in exception_chain(exc) if isinstance(e, SemrecError)), None)


def user_message(err: SemrecError) -> str:
    # Ray's dynamic RayTaskError(InputError) subclasses keep the original args
    return str(err.args[0]) if err.args else str(err)


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def error_from_report(kind: str, message: str, exit_code: int) -> SemrecError:
    """Rebuild on the driver an error that a training worker reported (by class name and message): the
    SemrecError subclass of that name if it is imported here, else a SemrecError with the same exit code."""
    cls = next((c for c in _subclasses(SemrecError) if c.__name__ == kind and "RayTaskError" not in c.__name__),
               SemrecError)
    err = cls(message)
    err.exit_code = exit_code
    return err
