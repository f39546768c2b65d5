"""Writing results atomically: a failed or interrupted run never leaves half a file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write `data` as indented JSON to `path` via a temporary file and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
