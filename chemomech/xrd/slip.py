"""X-ray line-profile design matrix of the 15 slip systems A-O of the study's Table 1
(the systems themselves: `chemomech.mechanics.slip`).

Each system has a glide-plane normal n (plane indices), a Burgers vector b (fraction times
direction indices) and a line ("sensing") vector l.  Where the OCR of the table lost an
overbar we chose the sign that puts b and l in the plane and makes the character edge or
mixed, as the table states (never screw).  Averages over the variants use the orthorhombic
point group mmm (`chemomech.xrd.contrast.average_contrast_factors`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from chemomech.mechanics.slip import SlipSystem
from chemomech.xrd.contrast import average_contrast_factors

logger = logging.getLogger(__name__)


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
