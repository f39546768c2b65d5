"""Writing results atomically: a failed or interrupted run never leaves half a file."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chemomech.exceptions import ConfigError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix), renamed over `path` when the block
    succeeds and removed when it fails; the file gets the umask's permissions, not 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write `data` as indented JSON to `path` atomically (`atomic_path`)."""
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def versions() -> dict[str, str]:
    """Versions of the stack, for provenance in summary files."""
    import sys

    import numpy

    import chemomech

    out = {"chemomech": chemomech.__version__, "python": sys.version.split()[0],
           "numpy": numpy.__version__}
    try:
        import dolfinx
        import petsc4py

        out |= {"dolfinx": dolfinx.__version__, "petsc4py": petsc4py.__version__}
    except ImportError:
        pass
    return out


# --------------------------------------------------------------------------- run folders

#: files of which at least one marks a folder as a chemomech run (safe to replace)
RUN_MARKERS = ("summary.json", "config.yaml", "log.txt")
CHECKPOINTS = "checkpoints"


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    done = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return done == 0


def fail_partial(path: Path) -> Path | None:
    """Move a run's partial folder ``OUTPUT.partial-<id>`` to ``OUTPUT.failed``; returns it.

    Also for a process that does not own the run: the MPI rank whose error aborts the job
    (the owner, rank 0, is then killed in a collective and cannot clean up)."""
    path = Path(path)
    if not path.is_dir():
        return None
    failed = path.with_name(path.name.rsplit(".partial-", 1)[0] + ".failed")
    shutil.rmtree(failed, ignore_errors=True)
    try:
        os.replace(path, failed)
    except OSError:
        return None  # moved by the owner meanwhile
    return failed


class RunFolder:
    """The output folder of a run, replaced as a whole: it holds one complete run or none.

    `open()` takes a lock (``.OUTPUT.lock`` beside the folder; a second run into the same
    folder fails at once), removes temporaries left by killed runs, and creates
    ``OUTPUT.partial-<id>/`` where the run writes.  `commit()` moves the finished run in
    place: it is swapped with the old ``OUTPUT`` in one atomic rename (Linux; two renames
    elsewhere) and the old run is kept as ``OUTPUT.previous`` (one generation).  `fail()`
    moves an unfinished run to ``OUTPUT.failed`` (its log.txt ends with the error) and leaves
    ``OUTPUT`` as it was.  Each run removes the partial and failed folders of earlier runs;
    with `resume`, the checkpoints of the newest of them are carried over to the new run
    (see `chemomech.inverse.optimise.Checkpoint`).
    """

    def __init__(self, output: str | Path, *, resume: bool = False):
        self.output = Path(output).absolute()
        self.resume = resume
        self.path: Path | None = None
        self.resumed_from: Path | None = None  # the folder whose checkpoints were carried over
        self._lock = None

    def sibling(self, suffix: str) -> Path:
        return self.output.with_name(self.output.name + suffix)

    def _check_target(self) -> None:
        out = self.output
        if out == out.parent:
            raise ConfigError(f"output {out}: a run needs a folder of its own, not the root")
        if out.exists() and not out.is_dir():
            raise ConfigError(f"output {out} exists and is not a folder")
        if out.is_dir() and any(out.iterdir()) and \
                not any((out / m).exists() for m in RUN_MARKERS):
            raise ConfigError(f"output {out} is a folder that does not hold a chemomech run "
                              f"(no {', '.join(RUN_MARKERS)}); it would be replaced as a "
                              "whole, so choose a new or empty folder")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"output {out}: cannot create its parent folder "
                              f"({err.strerror})") from None
        if not os.access(out.parent, os.W_OK | os.X_OK):
            raise ConfigError(f"output {out}: its parent folder {out.parent} is not writable")

    def _take_lock(self) -> None:
        lock_path = self.output.with_name(f".{self.output.name}.lock")
        try:
            handle = open(lock_path, "a+")  # noqa: SIM115 - held until close()
        except OSError as err:
            raise ConfigError(f"output {self.output}: cannot create the lock file "
                              f"{lock_path} ({err.strerror})") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise ConfigError(f"output {self.output} is in use by another run ({owner}); "
                              "wait for it to finish or choose another output") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        handle.flush()
        self._lock = handle

    def stale(self) -> list[Path]:
        """Folders of killed (OUTPUT.partial-*) and failed (OUTPUT.failed) runs, newest first."""
        found = [*self.output.parent.glob(f"{self.output.name}.partial-*"),
                 self.sibling(".failed")]
        return sorted((p for p in found if p.is_dir()), key=lambda p: p.stat().st_mtime,
                      reverse=True)

    def open(self) -> Path:
        """Validate and lock the output, clean up, create the partial folder; returns it."""
        self._check_target()
        self._take_lock()
        try:
            self.path = self.sibling(f".partial-{uuid.uuid4().hex[:12]}")
            self.path.mkdir()
            for old in self.stale():
                if old == self.path:
                    continue
                carried = old / CHECKPOINTS
                if self.resume and carried.is_dir() and \
                        not (self.path / CHECKPOINTS).exists():
                    carried.rename(self.path / CHECKPOINTS)
                    self.resumed_from = old
                shutil.rmtree(old, ignore_errors=True)
        except OSError as err:
            self.close()
            raise ConfigError(f"output {self.output}: cannot create the run folder "
                              f"({err.strerror})") from None
        return self.path

    @property
    def checkpoints(self) -> Path:
        """Folder of the optimiser checkpoints of this run (inside the partial folder)."""
        assert self.path is not None, "RunFolder.open() first"
        return self.path / CHECKPOINTS

    def commit(self) -> Path:
        """Put the finished run in place of OUTPUT; the old run becomes OUTPUT.previous."""
        assert self.path is not None, "RunFolder.open() first"
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        previous = self.sibling(".previous")
        if self.output.exists():
            if _exchange(self.path, self.output):
                shutil.rmtree(previous, ignore_errors=True)
                os.replace(self.path, previous)
            else:
                shutil.rmtree(previous, ignore_errors=True)
                os.replace(self.output, previous)
                os.replace(self.path, self.output)
        else:
            os.replace(self.path, self.output)
        shutil.rmtree(self.sibling(".failed"), ignore_errors=True)
        self.path = None
        self.close()
        return self.output

    def fail(self) -> Path | None:
        """Move the unfinished run to OUTPUT.failed (OUTPUT unchanged); returns its path."""
        failed = None if self.path is None else fail_partial(self.path)
        self.path = None
        self.close()
        return failed

    def close(self) -> None:
        """Release the lock (the lock file stays: removing it would race with a waiter)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None
