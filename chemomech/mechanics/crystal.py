"""Crystal geometry for line-profile analysis: lattice bases, d-spacings, point groups.

The Cartesian crystal frame is the standard one: a along x, b in the xy-plane, c completing a
right-handed set.  For orthorhombic crystals (LiFePO4, FePO4) x = a, y = b, z = c, which is the
frame of the Voigt stiffness in chemomech.mechanics.materials (1 = a, 2 = b, 3 = c).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import numpy as np

from chemomech.exceptions import InputError

logger = logging.getLogger(__name__)

Lattice = tuple[float, float, float, float, float, float]


def validate_lattice(lattice: Sequence[float]) -> np.ndarray:
    """Check (a, b, c, alpha, beta, gamma) in Angstrom and degrees; return it as an array."""
    arr = np.asarray(lattice, dtype=float)
    if arr.shape != (6,) or not np.all(np.isfinite(arr)):
        raise InputError(f"lattice must be (a, b, c, alpha, beta, gamma), got {lattice!r}",
                         field="lattice")
    if np.any(arr[:3] <= 0) or np.any(arr[3:] <= 0) or np.any(arr[3:] >= 180):
        raise InputError(f"lattice lengths must be > 0 and angles in (0, 180) deg, got {lattice}",
                         field="lattice")
    return arr


def direct_basis(lattice: Sequence[float]) -> np.ndarray:
    """3x3 matrix whose columns are a, b, c in the Cartesian crystal frame (Angstrom)."""
    a, b, c, al, be, ga = validate_lattice(lattice)
    al, be, ga = np.radians([al, be, ga])
    cx = c * np.cos(be)
    cy = c * (np.cos(al) - np.cos(be) * np.cos(ga)) / np.sin(ga)
    cz2 = c**2 - cx**2 - cy**2
    if cz2 <= 0:
        raise InputError(f"lattice angles {lattice[3:]} do not form a cell", field="lattice")
    return np.array([[a, b * np.cos(ga), cx],
                     [0.0, b * np.sin(ga), cy],
                     [0.0, 0.0, np.sqrt(cz2)]])


def reciprocal_basis(lattice: Sequence[float]) -> np.ndarray:
    """Columns a*, b*, c* (1/Angstrom, no 2 pi): a_i . a*_j = delta_ij."""
    return np.linalg.inv(direct_basis(lattice)).T


def direction_vector(lattice: Sequence[float], uvw: Sequence[float]) -> np.ndarray:
    """Cartesian vector u a + v b + w c (Angstrom) of the direction indices [uvw]."""
    uvw = np.asarray(uvw, dtype=float)
    if uvw.shape != (3,) or not np.any(uvw):
        raise InputError(f"direction indices must be three numbers, not all zero: {uvw}",
                         field="direction")
    return direct_basis(lattice) @ uvw


def reciprocal_vector(lattice: Sequence[float], hkl: Sequence[float]) -> np.ndarray:
    """Cartesian diffraction vector g = h a* + k b* + l c* (1/Angstrom), |g| = 1/d."""
    hkl = np.asarray(hkl, dtype=float)
    if hkl.shape != (3,) or not np.any(hkl):
        raise InputError(f"reflection indices must be three numbers, not all zero: {hkl}",
                         field="hkl")
    return reciprocal_basis(lattice) @ hkl


def d_spacing(lattice: Sequence[float], hkl: Sequence[float]) -> float:
    """Interplanar spacing d_hkl = 1/|g_hkl| (Angstrom)."""
    return 1.0 / float(np.linalg.norm(reciprocal_vector(lattice, hkl)))


def point_group_operations(name: str) -> np.ndarray:
    """Cartesian rotation/reflection matrices (n, 3, 3) of a point group: -1, 2/m, mmm, m-3m.

    2/m is the b-unique monoclinic group (2-fold along y); m-3m are the 48 signed
    permutation matrices (valid for a cubic cell).
    """
    signs = [np.diag(s) for s in itertools.product((1.0, -1.0), repeat=3)]
    if name == "-1":
        return np.array([np.eye(3), -np.eye(3)])
    if name == "2/m":
        return np.array([np.eye(3), -np.eye(3), np.diag([-1.0, 1, -1]), np.diag([1.0, -1, 1])])
    if name == "mmm":
        return np.array(signs)
    if name == "m-3m":
        perms = [np.eye(3)[list(p)] for p in itertools.permutations(range(3))]
        return np.array([s @ p for s in signs for p in perms])
    raise InputError(f"point group must be one of '-1', '2/m', 'mmm', 'm-3m'; got {name!r}",
                     field="point_group")
