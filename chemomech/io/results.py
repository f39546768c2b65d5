"""Writing results atomically: a failed or interrupted run never leaves half a file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


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
