"""Powder patterns: readers for .xy, .xye and .csv files in 2theta, d or q.

Every pattern is converted to the scattering-vector length s = 1/d = 2 sin(theta)/lambda in
1/nm, ascending, which is the variable of the variance method (Groma's q is s - s_hkl).
Conventions of the abscissa:

  - "2theta": degrees, needs the wavelength (Angstrom);
  - "d": Angstrom;
  - "q": 4 pi sin(theta)/lambda in 1/Angstrom (s = q / 2 pi).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from chemomech.exceptions import InputError

logger = logging.getLogger(__name__)

Axis = Literal["2theta", "d", "q"]


@dataclass(frozen=True)
class Pattern:
    """A powder pattern on s = 1/d (1/nm, strictly increasing) with counts and their sigma."""

    s: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray
    source: str = ""

    def __post_init__(self):
        if not (self.s.shape == self.intensity.shape == self.sigma.shape) or self.s.ndim != 1:
            raise InputError("s, intensity and sigma must be 1-D arrays of one length",
                             path=self.source or None, field="intensity")
        if self.s.size < 10:
            raise InputError(f"a pattern needs at least 10 points, got {self.s.size}",
                             path=self.source or None, field="intensity")
        if np.any(np.diff(self.s) <= 0):
            raise InputError("s must be strictly increasing", path=self.source or None,
                             field="s")


def s_from_axis(x: np.ndarray, axis: Axis, wavelength_angstrom: float | None,
                source: str = "") -> np.ndarray:
    """s = 1/d in 1/nm from 2theta (deg, s = 2 sin(theta)/lambda), d (A) or q (1/A, q/2pi)."""
    where = source or None
    if axis == "2theta":
        if wavelength_angstrom is None or not wavelength_angstrom > 0:
            raise InputError("a 2theta axis needs a positive wavelength (Angstrom)",
                             path=where, field="wavelength_angstrom")
        if np.any((x <= 0) | (x >= 180)):
            raise InputError("2theta must lie in (0, 180) degrees", path=where, field="2theta")
        return 10.0 * 2.0 * np.sin(np.radians(x) / 2.0) / wavelength_angstrom
    if axis == "d":
        if np.any(x <= 0):
            raise InputError("d spacings must be positive (Angstrom)", path=where, field="d")
        return 10.0 / x
    if axis == "q":
        if np.any(x <= 0):
            raise InputError("q must be positive (1/Angstrom)", path=where, field="q")
        return 10.0 * x / (2.0 * np.pi)
    raise InputError(f"axis must be '2theta', 'd' or 'q', got {axis!r}", path=where,
                     field="axis")


def two_theta_from_s(s: np.ndarray, wavelength_angstrom: float) -> np.ndarray:
    """2theta (deg) = 2 arcsin(lambda s / 2) with s in 1/nm and lambda in Angstrom."""
    return np.degrees(2.0 * np.arcsin(0.1 * wavelength_angstrom * np.asarray(s) / 2.0))


def pattern_from_arrays(x: np.ndarray, intensity: np.ndarray, sigma: np.ndarray | None = None,
                        *, axis: Axis = "2theta", wavelength_angstrom: float | None = None,
                        source: str = "") -> Pattern:
    """Build a Pattern from an abscissa in 2theta/d/q; the abscissa must be strictly monotonic."""
    where = source or None
    x = np.asarray(x, dtype=float)
    y = np.asarray(intensity, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise InputError("abscissa and intensity must be 1-D of one length", path=where,
                         field="intensity")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise InputError("pattern contains NaN or inf", path=where, field="intensity")
    dx = np.diff(x)
    if not (np.all(dx > 0) or np.all(dx < 0)):
        bad = int(np.argmax(dx <= 0)) if np.any(dx > 0) else int(np.argmax(dx >= 0))
        raise InputError(f"{axis} is not strictly monotonic (first break at row {bad + 1}: "
                         f"{x[bad]} then {x[bad + 1]})", path=where, field=axis)
    if sigma is None:
        sigma = np.sqrt(np.maximum(y, 1.0))     # counting statistics
    sigma = np.asarray(sigma, dtype=float)
    if sigma.shape != y.shape or np.any(sigma <= 0) or not np.all(np.isfinite(sigma)):
        raise InputError("esd column must be positive and finite", path=where, field="esd")
    s = s_from_axis(x, axis, wavelength_angstrom, source)
    order = np.argsort(s)
    return Pattern(s=s[order], intensity=y[order], sigma=sigma[order], source=source)


def read_pattern(path: str | Path, *, axis: Axis = "2theta",
                 wavelength_angstrom: float | None = None, x_column: str | None = None,
                 y_column: str | None = None, esd_column: str | None = None) -> Pattern:
    """Read .xy / .xye / .dat (whitespace, '#' comments) or .csv (header names the columns).

    For CSV the default columns are the first (abscissa), second (intensity) and an optional
    third (esd); `x_column`, `y_column`, `esd_column` pick columns by header name.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("pattern file not found", path=str(path))
    suffix = path.suffix.lower()
    if suffix == ".csv":
        x, y, e = _read_csv(path, x_column, y_column, esd_column)
    elif suffix in (".xy", ".xye", ".dat", ".txt"):
        try:
            data = np.loadtxt(path, comments=("#", "!", "'"), ndmin=2)
        except ValueError as err:
            raise InputError(f"not a numeric column file: {err}", path=str(path)) from err
        if data.shape[1] < 2:
            raise InputError("need at least two columns (x, intensity)", path=str(path))
        x, y = data[:, 0], data[:, 1]
        e = data[:, 2] if (data.shape[1] >= 3 and suffix == ".xye") else None
    else:
        raise InputError(f"unknown pattern format {suffix!r} (use .xy, .xye, .dat, .csv)",
                         path=str(path))
    logger.info("read %d points from %s (%s axis)", x.size, path, axis)
    return pattern_from_arrays(x, y, e, axis=axis, wavelength_angstrom=wavelength_angstrom,
                               source=str(path))


def _read_csv(path: Path, x_column: str | None, y_column: str | None,
              esd_column: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Columns of a CSV file with a header row, by name or position."""
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and not r[0].lstrip().startswith("#")]
    if len(rows) < 2:
        raise InputError("CSV needs a header row and data rows", path=str(path))
    header = [h.strip() for h in rows[0]]

    def column(name: str | None, default: int | None) -> np.ndarray | None:
        if name is None and (default is None or default >= len(header)):
            return None
        if name is not None and name not in header:
            raise InputError(f"column {name!r} not in header {header}", path=str(path),
                             field=name)
        idx = header.index(name) if name is not None else default
        try:
            return np.array([float(r[idx]) for r in rows[1:]])
        except (ValueError, IndexError) as err:
            raise InputError(f"non-numeric or missing value in column {header[idx]!r}",
                             path=str(path), field=header[idx]) from err

    x = column(x_column, 0)
    y = column(y_column, 1)
    e = column(esd_column, 2 if len(header) >= 3 and esd_column is None else None)
    return x, y, e


def write_xye(path: str | Path, two_theta: np.ndarray, intensity: np.ndarray,
              sigma: np.ndarray, wavelength_angstrom: float) -> Path:
    """Write a .xye file (2theta deg, counts, esd) with the wavelength in a comment line."""
    path = Path(path)
    header = f"2theta_deg intensity esd; wavelength_angstrom={wavelength_angstrom}"
    np.savetxt(path, np.column_stack([two_theta, intensity, sigma]), fmt="%.6f %.4f %.4f",
               header=header)
    return path
