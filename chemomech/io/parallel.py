"""Failing together under MPI: an exception on one rank ends the job on every rank.

A rank that raises while the others wait in a collective would leave them blocked until the
batch system kills the allocation.  Two mechanisms prevent that:

* `stage(name, comm)` wraps a step that every rank runs (reading, meshing, writing): after
  the block the ranks agree (one `allreduce`) whether any of them raised; if so every rank
  raises, the failing rank its own exception, the others `RankError` with the failing rank's
  message.  The exception is then *collective*: every rank leaves the job the same way.
* `exit_on_error(main, comm)` is the last resort around a command: an exception that is not
  collective (raised inside a collective operation, where the other ranks cannot be reached
  any more) is logged with its rank and ends the job with ``comm.Abort``.

`install_signal_handlers()` turns SIGTERM (what ``kill``, ``Popen.terminate()`` and batch
schedulers send) into `Interrupted`, like SIGINT, so that ``finally`` blocks remove
temporary files before the process ends.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mpi4py import MPI

from chemomech.exceptions import ChemomechError

logger = logging.getLogger(__name__)

#: exit status of a domain error (bad input or configuration), of a bug, of a signal
EXIT_ERROR, EXIT_BUG = 2, 1


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: the process stops, cleaning up on the way out."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class RankError(ChemomechError):
    """Raised on the ranks that did not fail when another rank raised in a `stage`."""

    def __init__(self, message: str, *, rank: int, domain: bool):
        super().__init__(message)
        self.rank = rank
        self.domain = domain  # the failing rank's exception was a ChemomechError


def _mark_collective(exc: BaseException) -> BaseException:
    exc.chemomech_collective = True  # type: ignore[attr-defined]
    return exc


def is_collective(exc: BaseException) -> bool:
    """True if every rank raised it (or a `RankError` for it) at the same stage."""
    return bool(getattr(exc, "chemomech_collective", False))


def describe(exc: BaseException) -> str:
    """The one-line message of an error: domain errors as they are, others with their type."""
    if isinstance(exc, OSError) and exc.strerror:
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f)
        text = f"{where}: {exc.strerror}" if where else exc.strerror
    elif isinstance(exc, (ChemomechError, KeyboardInterrupt)):
        text = str(exc) or type(exc).__name__
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def check(comm: MPI.Comm, error: BaseException | None, name: str) -> None:
    """Agree over `comm` whether any rank failed at stage `name`; if so, raise on all ranks.

    Collective: every rank of `comm` must call it.  The failing rank re-raises `error`; the
    others raise `RankError` naming the lowest failing rank and its message."""
    if comm.size == 1:
        if error is not None:
            raise _mark_collective(error)
        return
    if comm.allreduce(0 if error is None else 1, op=MPI.SUM) == 0:
        return
    mine = None if error is None else (describe(error), exit_status(error) == EXIT_ERROR)
    reports = comm.allgather(mine)
    if error is not None:
        raise _mark_collective(error)
    rank = next(r for r, rep in enumerate(reports) if rep is not None)
    message, domain = reports[rank]
    raise _mark_collective(RankError(f"rank {rank} failed ({name}): {message}", rank=rank,
                                     domain=domain))


@contextmanager
def stage(name: str, comm: MPI.Comm = MPI.COMM_WORLD) -> Iterator[None]:
    """Run a block on every rank of `comm`, then `check` that none of them raised."""
    error = None
    try:
        yield
    except Exception as exc:  # KeyboardInterrupt passes: every rank gets the signal
        error = exc
    check(comm, error, name)


def exit_status(exc: BaseException) -> int:
    """2 for domain and file-system errors (also when another rank had one), 128 + n for
    signal n, else 1 (a bug)."""
    if isinstance(exc, Interrupted):
        return 128 + exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return 128 + signal.SIGINT
    if isinstance(exc, RankError):
        return EXIT_ERROR if exc.domain else EXIT_BUG
    return EXIT_ERROR if isinstance(exc, (ChemomechError, OSError)) else EXIT_BUG


def exit_on_error(main: Callable[[], int], comm: MPI.Comm = MPI.COMM_WORLD) -> int:
    """Run `main`; errors become one logged line and an exit status (`exit_status`).

    Bugs (not `ChemomechError`) also print their traceback; any error after SIGINT or SIGTERM
    arrived is `Interrupted` (whatever the interrupted code turned the signal into).  Under
    MPI an error that is not collective ends every rank with ``comm.Abort`` after its message
    is logged: the other ranks may be blocked in a collective that this rank will never join."""
    try:
        return int(main() or 0)
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        if _received and not isinstance(exc, KeyboardInterrupt):
            # the signal's exception was turned into another one by the code it interrupted
            # (an import wrapper, a C library's error code): the process was interrupted
            exc = Interrupted(_received[-1])
        status = exit_status(exc)
        prefix = f"rank {comm.rank}: " if comm.size > 1 and not isinstance(exc, RankError) \
            else ""
        if status == EXIT_BUG and not isinstance(exc, RankError):
            traceback.print_exception(exc, file=sys.stderr)
        if comm.rank == 0 or not is_collective(exc):  # one message, from the failing rank
            logging.getLogger("chemomech").error("%s%s", prefix, describe(exc))
        if comm.size > 1 and not is_collective(exc):
            for handler in logging.getLogger().handlers + logging.getLogger("chemomech").handlers:
                handler.flush()
            sys.stderr.flush()
            comm.Abort(status)
        return status


_received: list[int] = []
_deferring: list[bool] = []


def _raise_interrupted(signum: int, frame) -> None:
    _received.append(signum)
    if not _deferring:
        raise Interrupted(signum)


def raise_if_interrupted() -> None:
    """Raise `Interrupted` again if a signal arrived (for C libraries, such as PETSc, that
    turn the exception raised in their Python callback into an error code of their own)."""
    if _received:
        raise Interrupted(_received[-1])


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back during the block (raised when it ends), so that steps
    that must not be cut in two, such as replacing the output folder, finish first."""
    before = len(_received)
    _deferring.append(True)
    try:
        yield
    finally:
        _deferring.pop()
    if not _deferring and len(_received) > before:
        raise Interrupted(_received[-1])


def import_deferred(*names: str) -> None:
    """Import the modules `names` with SIGINT and SIGTERM held back (`signals_deferred`).

    For compiled extensions whose initialisation runs Python code (DOLFINx's nanobind module
    imports others): the `Interrupted` raised there by the signal handler does not unwind,
    the process dies with SIGSEGV, without cleaning up.  Imported once, before the work
    starts, they are never initialised under a signal."""
    with signals_deferred():
        for name in names:
            importlib.import_module(name)


def install_signal_handlers() -> dict:
    """SIGINT and SIGTERM raise `Interrupted`; returns the previous handlers (main thread
    only; elsewhere a no-op returning {})."""
    previous = {}
    _received.clear()
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, _raise_interrupted)
    except ValueError:  # not the main thread
        pass
    return previous


def restore_signal_handlers(previous: dict) -> None:
    """Put back the handlers `install_signal_handlers` replaced."""
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
