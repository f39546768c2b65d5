"""Candidate slip systems of olivine LiFePO4 / FePO4: the 15 systems A-O of the study's Table 1.

Each system has a glide-plane normal n (plane indices), a Burgers vector b (fraction times
direction indices) and a line ("sensing") vector l.  Where the OCR of the table lost an
overbar we chose the sign that puts b and l in the plane and makes the character edge or
mixed, as the table states (never screw).  Averages over the variants use the orthorhombic
point group mmm (`chemomech.xrd.contrast.average_contrast_factors`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from chemomech.exceptions import InputError
from chemomech.xrd.contrast import average_contrast_factors
from chemomech.xrd.crystal import direction_vector, reciprocal_vector

logger = logging.getLogger(__name__)

Character = Literal["edge", "screw", "mixed"]


@dataclass(frozen=True, slots=True)
class SlipSystem:
    """One dislocation system: plane (hkl), Burgers vector fraction*[uvw], line [uvw]."""

    label: str
    plane: tuple[int, int, int]
    burgers: tuple[int, int, int]
    line: tuple[int, int, int]
    fraction: float = 1.0

    def burgers_length_nm(self, lattice: Sequence[float]) -> float:
        """|b| = fraction * |u a + v b + w c| in nm (lattice in Angstrom)."""
        return 0.1 * self.fraction * float(np.linalg.norm(direction_vector(lattice,
                                                                           self.burgers)))

    def character(self, lattice: Sequence[float]) -> Character:
        """'edge' if b is normal to l, 'screw' if parallel, else 'mixed' (Cartesian angle)."""
        b = direction_vector(lattice, self.burgers)
        t = direction_vector(lattice, self.line)
        cos = abs(b @ t) / (np.linalg.norm(b) * np.linalg.norm(t))
        return "edge" if cos < 1e-9 else ("screw" if cos > 1 - 1e-9 else "mixed")

    def in_plane(self, lattice: Sequence[float]) -> bool:
        """True when both b and l lie in the glide plane (n . b = n . l = 0)."""
        n = reciprocal_vector(lattice, self.plane)
        return bool(abs(n @ direction_vector(lattice, self.burgers)) < 1e-9
                    and abs(n @ direction_vector(lattice, self.line)) < 1e-9)

    def notation(self) -> str:
        """Text like '1/2[011](100) l=[001]'."""
        frac = "" if self.fraction == 1 else "1/2"
        uvw = "".join(str(v) for v in self.burgers)
        hkl = "".join(str(v) for v in self.plane)
        lin = "".join(str(v) for v in self.line)
        return f"{frac}[{uvw}]({hkl}) l=[{lin}]"


#: Table 1 of the study (Nat. Mater. paper), systems A-O.
TABLE1_SYSTEMS: tuple[SlipSystem, ...] = (
    SlipSystem("A", (1, 0, 0), (0, 1, 0), (0, 0, 1)),
    SlipSystem("B", (1, 0, 0), (0, 1, 0), (0, 1, 1)),
    SlipSystem("C", (1, 0, 0), (0, 1, 0), (0, 2, 1)),
    SlipSystem("D", (1, 0, 0), (0, 0, 1), (0, 1, 0)),
    SlipSystem("E", (1, 0, 0), (0, 1, 1), (0, 0, 1), 0.5),
    SlipSystem("F", (1, 0, 0), (0, 1, 1), (0, 1, 0), 0.5),
    SlipSystem("G", (0, 1, 0), (0, 0, 1), (1, 0, 0)),
    SlipSystem("H", (0, 1, 0), (1, 0, 1), (1, 0, -1), 0.5),
    SlipSystem("I", (0, 0, 1), (0, 1, 0), (1, 0, 0)),
    SlipSystem("J", (0, 0, 1), (0, 1, 0), (1, 1, 0)),
    SlipSystem("K", (0, 0, 1), (0, 1, 0), (1, 2, 0)),
    SlipSystem("L", (0, 0, 1), (1, 1, 0), (1, -1, 0), 0.5),
    SlipSystem("M", (0, 0, 1), (1, 1, 0), (0, 1, 0), 0.5),
    SlipSystem("N", (0, 1, 1), (0, 1, -1), (1, 0, 0), 0.5),
    SlipSystem("O", (1, 1, 0), (1, -1, 0), (0, 0, 1), 0.5),
)


def slip_systems(labels: Sequence[str] | Literal["all"] = "all") -> list[SlipSystem]:
    """The Table 1 systems with the given labels (in the given order), or all 15."""
    by_label = {s.label: s for s in TABLE1_SYSTEMS}
    if labels == "all":
        return list(TABLE1_SYSTEMS)
    unknown = [lab for lab in labels if lab not in by_label]
    if unknown:
        raise InputError(f"unknown slip systems {unknown}; known: {sorted(by_label)}",
                         field="systems")
    if len(set(labels)) != len(labels):
        raise InputError(f"slip systems listed twice: {list(labels)}", field="systems")
    return [by_label[lab] for lab in labels]


def design_matrix(C: np.ndarray, lattice: Sequence[float], systems: Sequence[SlipSystem],
                  hkls: Sequence[Sequence[int]], point_group: str = "mmm") -> np.ndarray:
    """A[r, s] = |b_s|^2 C_bar(hkl_r, s) in nm^2: broadening per unit density of system s.

    The dislocation term of reflection r is Lambda_r <rho> = (pi/2) g_r^2 sum_s A[r, s] rho_s.
    """
    A = np.empty((len(hkls), len(systems)))
    for j, s in enumerate(systems):
        cbar = average_contrast_factors(C, lattice, s.burgers, s.line, hkls, point_group)
        A[:, j] = s.burgers_length_nm(lattice) ** 2 * cbar
    return A
