r"""In-plane slip systems of LiFePO4 for the dislocation model M2 (DESIGN §4, "Dislocations").

A slip system whose Burgers vector b and glide-plane normal n both lie in the platelet's
ac-plane (dislocation line along [010], the zone axis) shears the ac-plane with the plastic
eigenstrain :math:`\varepsilon_p = \gamma\,\mathrm{sym}(\hat s\otimes\hat n)`,
:math:`\hat s = b/|b|`; its geometrically necessary (edge) dislocation density is
:math:`\rho = |\nabla\gamma\cdot\hat s| / |b|`.  Candidates (`IN_PLANE_SYSTEMS`, labels):

======  ==================  ==================  ==========================================
label   Burgers vector      plane               |b| (LiFePO4 lattice)
======  ==================  ==================  ==========================================
D       [001]               (100)               c = 0.4692 nm (the study's Table 1 "D")
a       [100]               (001)               a = 1.0332 nm
ac+     [101]               (10-1)              (a^2 + c^2)^1/2 = 1.1347 nm
ac-     [10-1]              (101)               (a^2 + c^2)^1/2 = 1.1347 nm
======  ==================  ==================  ==========================================

All have line [010] and are pure edge.  D is system D of the study's Table 1
(`TABLE1_SYSTEMS` below); Table 1 holds no other system with b and n in the
ac-plane, so the others are labelled by their Burgers vector.  [100](001) is the other
lattice-vector system; [101] and [10-1] are the shortest lattice translations between them
(Pnma is primitive, so the full vectors, not halves).  Note that D and "a" have the *same*
plastic strain :math:`\gamma\,\mathrm{sym}(\hat c\otimes\hat a)` (a pure e_ac shear): strain
data cannot tell them apart; they differ only in the density a given slip field implies
(different |b| and different gradient component).  The <101> systems shear along the
diagonals and also change e_aa and e_cc.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from chemomech.correlative.frames import rotation_matrix
from chemomech.exceptions import InputError
from chemomech.mechanics.crystal import direction_vector, reciprocal_vector
from chemomech.mechanics.materials import LATTICE_ANGSTROM

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



#: Orthorhombic LiFePO4 cell (a, b, c, alpha, beta, gamma) in Angstrom and degrees.
LATTICE_LFP = (*LATTICE_ANGSTROM["LiFePO4"], 90.0, 90.0, 90.0)


@dataclass(frozen=True, slots=True)
class InPlaneSlipSystem:
    """A slip system with b and n in the ac-plane: unit vectors in the crystal frame (a, c)."""

    label: str
    system: SlipSystem
    slip_direction: tuple[float, float]  #: s = b/|b|, components (a, c)
    plane_normal: tuple[float, float]  #: n, components (a, c)
    burgers_nm: float  #: |b| (nm)

    @classmethod
    def from_indices(cls, label: str, system: SlipSystem,
                     lattice: tuple[float, ...] = LATTICE_LFP) -> InPlaneSlipSystem:
        """From plane and Burgers indices: s = b/|b|, n = g_hkl/|g_hkl| (Cartesian a, b, c)."""
        b = direction_vector(lattice, system.burgers)
        n = reciprocal_vector(lattice, system.plane)
        if abs(b[1]) > 1e-12 or abs(n[1]) > 1e-12 or abs(b @ n) > 1e-9 * np.linalg.norm(b):
            raise InputError(f"slip system {label!r} ({system.notation()}) does not have b and "
                             "n in the ac-plane and orthogonal", field="slip_systems")
        s2, n2 = (np.where(np.abs(v) < 1e-12, 0.0, v)
                  for v in (b[[0, 2]] / np.linalg.norm(b), n[[0, 2]] / np.linalg.norm(n)))
        return cls(label, system, (float(s2[0]), float(s2[1])), (float(n2[0]), float(n2[1])),
                   system.burgers_length_nm(lattice))

    def schmid_tensor(self, rotation_rad: float) -> np.ndarray:
        r""":math:`\mathrm{sym}(\hat s\otimes\hat n)` in the image frame (R s, R n; 2x2, -)."""
        R = rotation_matrix(rotation_rad)
        s, n = R @ np.asarray(self.slip_direction), R @ np.asarray(self.plane_normal)
        return 0.5 * (np.outer(s, n) + np.outer(n, s))

    def slip_direction_image(self, rotation_rad: float) -> np.ndarray:
        """Unit slip direction R s in the image frame (x, y)."""
        return rotation_matrix(rotation_rad) @ np.asarray(self.slip_direction)

    def notation(self) -> str:
        """Text like 'D: [001](100) l=[010], |b| = 0.469 nm'."""
        return f"{self.label}: {self.system.notation()}, |b| = {self.burgers_nm:.4g} nm"


def _table() -> dict[str, InPlaneSlipSystem]:
    table1_d = next(s for s in TABLE1_SYSTEMS if s.label == "D")
    systems = [("D", table1_d),
               ("a", SlipSystem("a", (0, 0, 1), (1, 0, 0), (0, 1, 0))),
               ("ac+", SlipSystem("ac+", (1, 0, -1), (1, 0, 1), (0, 1, 0))),
               ("ac-", SlipSystem("ac-", (1, 0, 1), (1, 0, -1), (0, 1, 0)))]
    return {label: InPlaneSlipSystem.from_indices(label, s) for label, s in systems}


#: The candidate in-plane systems by label (see the module docstring).
IN_PLANE_SYSTEMS: dict[str, InPlaneSlipSystem] = _table()


def slip_system(label: str) -> InPlaneSlipSystem:
    """The in-plane slip system with this label (one of `IN_PLANE_SYSTEMS`)."""
    try:
        return IN_PLANE_SYSTEMS[label]
    except KeyError:
        raise InputError(f"unknown slip system {label!r}; choose from "
                         f"{sorted(IN_PLANE_SYSTEMS)}", field="slip_systems") from None
