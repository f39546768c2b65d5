"""Elastic constants and lattice parameters of LiFePO4 / FePO4, reduced to the ac-plane.

Crystal axes 1 = a, 2 = b, 3 = c; Voigt order (11, 22, 33, 23, 13, 12).  The platelet
plane is the ac-plane and b is the zone axis.  In-plane tensors use the index order
(a, c) in the crystal frame and (x, y) in the image frame.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Literal

import numpy as np

from chemomech.correlative.frames import rotation_matrix
from chemomech.exceptions import InputError

Reduction = Literal["plane_stress", "plane_strain"]

#: Maxisch & Ceder, PRB 73, 174112 (2006), GPa: C11 C22 C33 C12 C13 C23 C44 C55 C66.
MAXISCH_CEDER_GPA: dict[str, dict[str, float]] = {
    "FePO4": dict(C11=175.9, C22=153.6, C33=135.0, C12=29.6, C13=54.0, C23=19.6,
                  C44=38.8, C55=47.5, C66=55.6),
    "LiFePO4": dict(C11=138.9, C22=198.0, C33=173.0, C12=72.4, C13=52.4, C23=45.8,
                    C44=36.8, C55=50.6, C66=47.6),
}

#: Lattice parameters (a, b, c) in Angstrom.
LATTICE_ANGSTROM: dict[str, tuple[float, float, float]] = {
    "LiFePO4": (10.332, 6.010, 4.692),
    "FePO4": (9.821, 5.792, 4.788),
}


def voigt_stiffness(name: str) -> np.ndarray:
    """6x6 Voigt stiffness (GPa) of an orthorhombic phase from `MAXISCH_CEDER_GPA`."""
    if name not in MAXISCH_CEDER_GPA:
        raise InputError(f"unknown phase {name!r}; known: {sorted(MAXISCH_CEDER_GPA)}")
    c = MAXISCH_CEDER_GPA[name]
    C = np.zeros((6, 6))
    C[0, 0], C[1, 1], C[2, 2] = c["C11"], c["C22"], c["C33"]
    C[0, 1] = C[1, 0] = c["C12"]
    C[0, 2] = C[2, 0] = c["C13"]
    C[1, 2] = C[2, 1] = c["C23"]
    C[3, 3], C[4, 4], C[5, 5] = c["C44"], c["C55"], c["C66"]
    return C


def mixed_voigt_stiffness(X: float) -> np.ndarray:
    """Rule of mixtures C(X) = X C_LFP + (1 - X) C_FP (GPa), X the Li fraction."""
    if not 0.0 <= X <= 1.0:
        raise InputError(f"Li fraction must lie in [0, 1], got {X}", field="X")
    return X * voigt_stiffness("LiFePO4") + (1.0 - X) * voigt_stiffness("FePO4")


def average_voigt_stiffness() -> np.ndarray:
    """The default stiffness: the average of the LiFePO4 and FePO4 tensors (GPa)."""
    return mixed_voigt_stiffness(0.5)


def ac_plane_moduli(C, reduction: Reduction = "plane_stress") -> dict:
    r"""In-plane moduli Q_aa, Q_cc, Q_ac, Q_ss (GPa) of the ac-plane.

    Plane stress (sigma_bb = 0): :math:`Q_{aa} = C_{11} - C_{12}^2/C_{22}`,
    :math:`Q_{cc} = C_{33} - C_{23}^2/C_{22}`, :math:`Q_{ac} = C_{13} - C_{12}C_{23}/C_{22}`;
    plane strain (eps_bb = 0): Q_aa = C11, Q_cc = C33, Q_ac = C13.  Shear Q_ss = C55.
    `C` is a 6x6 array, or a nested 6x6 list of UFL scalars (then the moduli are UFL).
    """
    if _is_numeric(C):
        C = np.asarray(C, dtype=float)
        moduli = _reduce(C[0, 0], C[1, 1], C[2, 2], C[0, 1], C[0, 2], C[1, 2], C[4, 4],
                         reduction)
        return {key: float(value) for key, value in moduli.items()}
    return _reduce(C[0][0], C[1][1], C[2][2], C[0][1], C[0][2], C[1][2], C[4][4], reduction)


def _is_numeric(C) -> bool:
    if isinstance(C, np.ndarray):
        return C.dtype != object
    return all(isinstance(v, numbers.Real) for row in C for v in row)


def _reduce(c11, c22, c33, c12, c13, c23, c55, reduction: Reduction) -> dict:
    """The ac-plane reduction formulas (numbers or UFL scalars)."""
    if reduction == "plane_stress":
        return dict(aa=c11 - c12**2 / c22, cc=c33 - c23**2 / c22, ac=c13 - c12 * c23 / c22,
                    ss=c55)
    if reduction == "plane_strain":
        return dict(aa=c11, cc=c33, ac=c13, ss=c55)
    raise InputError(f"reduction must be 'plane_stress' or 'plane_strain', got {reduction!r}")


def plane_stiffness_tensor(moduli: dict, ufl_entries: bool = False):
    """The 2x2x2x2 stiffness tensor C_ijkl (GPa) in the crystal frame (a, c).

    With ``ufl_entries`` the moduli may be UFL scalars and a nested list is returned.
    """
    if ufl_entries:
        z = 0.0 * moduli["ss"]
        C = [[[[z, z], [z, z]] for _ in range(2)] for _ in range(2)]
        C[0][0][0][0], C[1][1][1][1] = moduli["aa"], moduli["cc"]
        C[0][0][1][1] = C[1][1][0][0] = moduli["ac"]
        for i, j in ((0, 1), (1, 0)):
            for k, l in ((0, 1), (1, 0)):
                C[i][j][k][l] = moduli["ss"]
        return C
    C = np.zeros((2, 2, 2, 2))
    C[0, 0, 0, 0] = moduli["aa"]
    C[1, 1, 1, 1] = moduli["cc"]
    C[0, 0, 1, 1] = C[1, 1, 0, 0] = moduli["ac"]
    for i, j in ((0, 1), (1, 0)):
        for k, l in ((0, 1), (1, 0)):
            C[i, j, k, l] = moduli["ss"]
    return C


def isotropic_plane_tensor(E: float, nu: float,
                           reduction: Reduction = "plane_stress") -> np.ndarray:
    """Isotropic 2x2x2x2 stiffness (units of E), for verification against analytic solutions."""
    if reduction == "plane_stress":
        lam = E * nu / (1 - nu**2)
    else:
        lam = E * nu / ((1 + nu) * (1 - 2 * nu))
    mu = E / (2 * (1 + nu))
    d = np.eye(2)
    return (lam * np.einsum("ij,kl->ijkl", d, d)
            + mu * (np.einsum("ik,jl->ijkl", d, d) + np.einsum("il,jk->ijkl", d, d)))


def rotate_stiffness(C_crystal: np.ndarray, angle_rad: float) -> np.ndarray:
    """C'_ijkl = R_ip R_jq R_kr R_ls C_pqrs: the stiffness in the image frame."""
    R = rotation_matrix(angle_rad)
    return np.einsum("ip,jq,kr,ls,pqrs->ijkl", R, R, R, R, C_crystal)


@dataclass(frozen=True, slots=True)
class Material:
    """In-plane elastic description used by the forward model.

    `stiffness`: "average" (default), "LiFePO4", "FePO4" or "mixed" (C(X) varies with X);
    `reduction`: plane stress (default) or plane strain; `b_law`: shifted-Legendre
    coefficients of the out-of-plane eigenstrain f_b(X) used in plane strain (None: Vegard,
    `vegard_b_coefficients`); rejected in plane stress, where sigma_bb = 0 and f_b has no
    effect on the in-plane fields.
    """

    stiffness: str = "average"
    reduction: Reduction = "plane_stress"
    b_law: tuple[float, ...] | None = None

    def __post_init__(self):
        allowed = ("average", "mixed", *MAXISCH_CEDER_GPA)
        if self.stiffness not in allowed:
            raise InputError(f"stiffness must be one of {allowed}, got {self.stiffness!r}",
                             field="stiffness")
        ac_plane_moduli(np.eye(6), self.reduction)  # validates the reduction
        if self.b_law is not None:
            if self.reduction != "plane_strain":
                raise InputError("a b-law acts only in plane strain (plane stress has "
                                 "sigma_bb = 0)", field="b_law")
            if len(self.b_law) == 0 or not np.all(np.isfinite(self.b_law)):
                raise InputError(f"b_law needs finite coefficients, got {self.b_law!r}",
                                 field="b_law")

    @property
    def b_coefficients(self) -> tuple[float, ...]:
        """Coefficients of f_b(X) in plane strain (Vegard by default); () in plane stress."""
        if self.reduction != "plane_strain":
            return ()
        return tuple(self.b_law) if self.b_law is not None else vegard_b_coefficients()

    def b_coupling(self, angle_rad: float, X=None):
        r"""Image-frame tensor :math:`B_{ij} = C_{ij\,bb}` of the plane-strain in-plane stress
        :math:`\sigma = Q:(\varepsilon - \varepsilon^*) - B\,f_b(X)` (GPa).

        Crystal frame :math:`B = \mathrm{diag}(C_{12}, C_{23})` (orthorhombic: no ac term);
        None in plane stress.  Numpy 2x2, or UFL when ``stiffness="mixed"`` (X a UFL
        expression).
        """
        if self.reduction != "plane_strain":
            return None
        R = rotation_matrix(angle_rad)
        if self.stiffness != "mixed":
            C = self.voigt()
            return R @ np.diag([C[0, 1], C[1, 2]]) @ R.T
        import ufl

        if X is None:
            raise InputError("stiffness 'mixed' needs the composition X (a UFL expression)",
                             field="X")
        lfp, fp = voigt_stiffness("LiFePO4"), voigt_stiffness("FePO4")
        b_a = X * lfp[0, 1] + (1 - X) * fp[0, 1]
        b_c = X * lfp[1, 2] + (1 - X) * fp[1, 2]
        Rm = ufl.as_matrix(R.tolist())
        return Rm * ufl.as_matrix([[b_a, 0], [0, b_c]]) * Rm.T

    def voigt(self, X: float = 0.5) -> np.ndarray:
        """The 6x6 Voigt stiffness (GPa) of this material (X used only by "mixed")."""
        if self.stiffness == "average":
            return average_voigt_stiffness()
        if self.stiffness == "mixed":
            return mixed_voigt_stiffness(X)
        return voigt_stiffness(self.stiffness)

    def crystal_tensor(self, X: float = 0.5) -> np.ndarray:
        """2x2x2x2 ac-plane stiffness (GPa) in the crystal frame (X used only by "mixed")."""
        return plane_stiffness_tensor(ac_plane_moduli(self.voigt(X), self.reduction))

    def image_tensor(self, angle_rad: float, X: float = 0.5) -> np.ndarray:
        """The crystal tensor rotated to the image frame by `angle_rad`."""
        return rotate_stiffness(self.crystal_tensor(X), angle_rad)

    def ufl_tensor(self, angle_rad: float, X=None):
        r"""Image-frame stiffness (GPa) as a UFL 4th-order tensor.

        Constant unless ``stiffness="mixed"``: then :math:`C(X) = X C_{LFP} + (1 - X) C_{FP}`
        (3-D Voigt rule of mixtures, then reduced to the ac-plane exactly, so plane-stress
        moduli are rational in X), X a UFL expression such as the composition Function.
        """
        import ufl

        if self.stiffness != "mixed":
            return ufl.as_tensor(self.image_tensor(angle_rad).tolist())
        if X is None:
            raise InputError("stiffness 'mixed' needs the composition X (a UFL expression)",
                             field="X")
        lfp, fp = voigt_stiffness("LiFePO4"), voigt_stiffness("FePO4")
        C_X = [[X * lfp[m, n] + (1 - X) * fp[m, n] for n in range(6)] for m in range(6)]
        C_cr = ufl.as_tensor(plane_stiffness_tensor(ac_plane_moduli(C_X, self.reduction),
                                                    ufl_entries=True))
        R = ufl.as_matrix(rotation_matrix(angle_rad).tolist())
        i, j, k, l, p, q, r, s = ufl.indices(8)
        return ufl.as_tensor(R[i, p] * R[j, q] * R[k, r] * R[l, s] * C_cr[p, q, r, s],
                             (i, j, k, l))


def vegard_misfit(reference: str = "LiFePO4") -> dict[str, float]:
    """Linear (Vegard) misfit of the other end member relative to `reference` along a and c.

    With LiFePO4 as reference, FePO4 is about -4.9 % along a and +2.0 % along c.
    """
    other = "FePO4" if reference == "LiFePO4" else "LiFePO4"
    ref, oth = LATTICE_ANGSTROM[reference], LATTICE_ANGSTROM[other]
    return {"a": oth[0] / ref[0] - 1.0, "c": oth[2] / ref[2] - 1.0}


def vegard_b_coefficients(reference: str = "LiFePO4") -> tuple[float, float]:
    r"""Vegard b-law :math:`f_b(X) = (1 - X)\,\delta_b` relative to LiFePO4, as shifted-Legendre
    coefficients :math:`(\delta_b/2, -\delta_b/2)`; :math:`\delta_b = b_{FP}/b_{LFP} - 1
    \approx -3.63\,\%` from `LATTICE_ANGSTROM`."""
    if reference != "LiFePO4":
        raise InputError("the b-law is defined relative to LiFePO4", field="reference")
    delta = LATTICE_ANGSTROM["FePO4"][1] / LATTICE_ANGSTROM["LiFePO4"][1] - 1.0
    return 0.5 * delta, -0.5 * delta
