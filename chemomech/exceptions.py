"""Domain errors of chemomech: each names what was wrong and where."""

from __future__ import annotations


class ChemomechError(Exception):
    """Base class of every error chemomech raises on purpose."""


class InputError(ChemomechError, ValueError):
    """Bad input data: names the file (if any) and the field."""

    def __init__(self, message: str, *, path: str | None = None, field: str | None = None):
        where = ", ".join(p for p in (f"file {path}" if path else "",
                                      f"field {field!r}" if field else "") if p)
        super().__init__(f"{where}: {message}" if where else message)
        self.path = path
        self.field = field


class ConfigError(ChemomechError, ValueError):
    """Invalid configuration file or option."""


class SolverError(ChemomechError, RuntimeError):
    """A linear or nonlinear solve did not converge."""
