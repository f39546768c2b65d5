r"""Dislocation contrast factors from anisotropic elasticity (Stroh sextic formalism).

The distortion of a straight dislocation in an infinite anisotropic medium is
:math:`\beta_{ij}(r, \phi) = \partial u_i/\partial x_j = F_{ij}(\phi)/r` (Stroh 1958).  With the
dislocation frame e1, e2 normal to the line and e3 along it, and
:math:`Q_{ik} = C_{i1k1}`, :math:`R_{ik} = C_{i1k2}`, :math:`T_{ik} = C_{i2k2}`, the sextic
eigenproblem :math:`[Q + p(R + R^T) + p^2 T] a = 0`, :math:`L = (R^T + p T) a` gives three
roots :math:`p_\alpha` with Im p > 0 and

.. math::
    u = 2\,\mathrm{Re} \sum_\alpha a_\alpha q_\alpha \ln(x_1 + p_\alpha x_2),

with the complex :math:`q_\alpha` fixed by the closure failure (the Burgers vector) and a zero
net line force: :math:`-4\pi\,\mathrm{Im}(A q) = b`, :math:`\mathrm{Im}(L q) = 0`.

The contrast factor of one dislocation variant for the diffraction vector g (unit vector
:math:`\gamma`) is (Klimanek & Kuzel, J. Appl. Cryst. 21 (1988) 59; Martinez-Garcia, Leoni &
Scardi, Acta Cryst. A65 (2009) 109)

.. math::
    C_{hkl} = \frac{4\pi}{|b|^2}\int_0^{2\pi} \big(\gamma_i \gamma_j F_{ij}(\phi)\big)^2 d\phi,

so that the mean-square strain along g is :math:`\langle\epsilon_g^2\rangle =
\rho C b^2 \ln(R_e/r_0)/(4\pi)`.  The isotropic limits are in `isotropic_screw_contrast` and
`isotropic_edge_contrast`; averaging over the symmetry-equivalent variants is
`average_contrast_factor`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from chemomech.exceptions import InputError
from chemomech.mechanics.crystal import (
    direction_vector,
    point_group_operations,
    reciprocal_vector,
    validate_lattice,
)

logger = logging.getLogger(__name__)

_VOIGT = {(0, 0): 0, (1, 1): 1, (2, 2): 2, (1, 2): 3, (2, 1): 3, (0, 2): 4, (2, 0): 4,
          (0, 1): 5, (1, 0): 5}

#: Number of angles in the periodic trapezoidal rule for the phi integral (spectrally accurate).
DEFAULT_ANGLES = 360


def voigt_to_tensor(C: np.ndarray) -> np.ndarray:
    """The 3x3x3x3 stiffness C_ijkl (GPa) of a 6x6 Voigt matrix (order 11 22 33 23 13 12)."""
    C = np.asarray(C, dtype=float)
    if C.shape != (6, 6) or not np.all(np.isfinite(C)):
        raise InputError(f"stiffness must be a finite 6x6 Voigt matrix, got shape {C.shape}",
                         field="C")
    if not np.allclose(C, C.T, rtol=1e-10, atol=1e-12 * np.abs(C).max()):
        raise InputError("stiffness matrix must be symmetric", field="C")
    if np.linalg.eigvalsh(C).min() <= 0:
        raise InputError("stiffness matrix must be positive definite", field="C")
    C4 = np.empty((3, 3, 3, 3))
    for i, j, k, l in np.ndindex(3, 3, 3, 3):
        C4[i, j, k, l] = C[_VOIGT[i, j], _VOIGT[k, l]]
    return C4


def isotropic_voigt(E: float, nu: float) -> np.ndarray:
    """6x6 Voigt stiffness (units of E) of an isotropic solid: lambda, mu from E and nu."""
    lam = E * nu / ((1 + nu) * (1 - 2 * nu))
    mu = E / (2 * (1 + nu))
    C = np.zeros((6, 6))
    C[:3, :3] = lam
    C[np.arange(3), np.arange(3)] = lam + 2 * mu
    C[np.arange(3, 6), np.arange(3, 6)] = mu
    return C


def cubic_voigt(c11: float, c12: float, c44: float) -> np.ndarray:
    """6x6 Voigt stiffness (GPa) of a cubic crystal from c11, c12, c44."""
    C = np.zeros((6, 6))
    C[:3, :3] = c12
    C[np.arange(3), np.arange(3)] = c11
    C[np.arange(3, 6), np.arange(3, 6)] = c44
    return C


def dislocation_frame(burgers: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Rows e1, e2, e3 of the dislocation frame: e3 = line, e1 along the edge part of b."""
    e3 = line / np.linalg.norm(line)
    edge = burgers - (burgers @ e3) * e3
    if np.linalg.norm(edge) < 1e-9 * np.linalg.norm(burgers):  # screw: any normal will do
        trial = np.eye(3)[np.argmin(np.abs(e3))]
        edge = trial - (trial @ e3) * e3
    e1 = edge / np.linalg.norm(edge)
    return np.array([e1, np.cross(e3, e1), e3])


def _stroh_roots(C4: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Roots p (Im p > 0) and the matrices A, L (columns a_alpha, L_alpha) of the sextic."""
    Q, R, T = C4[:, 0, :, 0], C4[:, 0, :, 1], C4[:, 1, :, 1]
    Tinv = np.linalg.inv(T)
    N1 = -Tinv @ R.T
    N = np.block([[N1, Tinv], [R @ Tinv @ R.T - Q, N1.T]])
    p, xi = np.linalg.eig(N)
    upper = np.argsort(-p.imag)[:3]
    if np.any(p[upper].imag <= 0):
        raise InputError("Stroh eigenvalues are not complex: the stiffness is not elastic",
                         field="C")
    return p[upper], xi[:3, upper], xi[3:, upper]


@dataclass(frozen=True)
class DislocationField:
    """Angular part F_ij(phi) = r beta_ij / |b| of one straight dislocation, crystal frame.

    `F` has shape (n_angles, 3, 3); `contrast(g)` evaluates C for Cartesian vectors g.
    """

    F: np.ndarray

    @classmethod
    def from_stroh(cls, C4: np.ndarray, burgers: np.ndarray, line: np.ndarray,
                   n_angles: int = DEFAULT_ANGLES) -> DislocationField:
        """Solve the Stroh problem for Cartesian b and line (any length) in stiffness C4."""
        frame = dislocation_frame(burgers, line)
        C_loc = np.einsum("ip,jq,kr,ls,pqrs->ijkl", frame, frame, frame, frame, C4)
        b_loc = frame @ (burgers / np.linalg.norm(burgers))
        p, A, L = _stroh_roots(C_loc)
        if _nearly_degenerate(p):
            # Isotropic-like media have coincident roots and a defective eigenbasis; a
            # perturbation of relative size 1e-8 changes C by O(1e-8) and restores a basis.
            scale = 1e-8 * np.abs(C_loc).max()
            C_loc = C_loc.copy()
            C_loc[0, 0, 0, 0] += scale
            C_loc[1, 1, 1, 1] += 2.3 * scale
            C_loc[2, 2, 2, 2] += 1.7 * scale
            p, A, L = _stroh_roots(C_loc)
            logger.debug("degenerate Stroh roots: perturbed the stiffness by 1e-8")
        M = np.block([[A.imag, A.real], [L.imag, L.real]])
        rhs = np.concatenate([-b_loc / (4 * np.pi), np.zeros(3)])
        sol = np.linalg.solve(M, rhs)
        q = sol[:3] + 1j * sol[3:]
        phi = 2 * np.pi * np.arange(n_angles) / n_angles
        z = np.cos(phi)[:, None] + p[None, :] * np.sin(phi)[:, None]      # (n, 3)
        Aq = A * q[None, :]                                                 # (3, 3)
        beta = np.zeros((n_angles, 3, 3))
        beta[:, :, 0] = 2 * np.real((Aq[None] / z[:, None, :]).sum(-1))
        beta[:, :, 1] = 2 * np.real((Aq[None] * p[None, None, :] / z[:, None, :]).sum(-1))
        F = np.einsum("pi,nij,jq->npq", frame.T, beta, frame)   # back to the crystal frame
        return cls(F=F)

    def strain_along(self, g: np.ndarray) -> np.ndarray:
        """gamma_i gamma_j F_ij(phi) for the unit vector gamma of g (per unit r and |b|)."""
        gamma = np.asarray(g, dtype=float) / np.linalg.norm(g)
        return np.einsum("i,nij,j->n", gamma, self.F, gamma)

    def contrast(self, g: np.ndarray) -> float:
        """C = 4 pi int_0^2pi (gamma.F.gamma)^2 dphi (dimensionless)."""
        eg = self.strain_along(g)
        return float(4 * np.pi * 2 * np.pi * np.mean(eg**2))


def _nearly_degenerate(p: np.ndarray, tol: float = 1e-5) -> bool:
    """True when two Stroh roots coincide to `tol` relative to their size."""
    scale = np.abs(p).max()
    return any(abs(p[i] - p[j]) < tol * scale for i in range(3) for j in range(i + 1, 3))


def _field(C: np.ndarray, lattice: Sequence[float], burgers: Sequence[float],
           line: Sequence[float], n_angles: int) -> DislocationField:
    """The DislocationField of direction indices `burgers`, `line` in `lattice`."""
    validate_lattice(lattice)
    b = direction_vector(lattice, burgers)
    t = direction_vector(lattice, line)
    return DislocationField.from_stroh(voigt_to_tensor(C), b, t, n_angles)


def contrast_factor(C: np.ndarray, lattice: Sequence[float], burgers: Sequence[float],
                    line: Sequence[float], hkl: Sequence[float],
                    n_angles: int = DEFAULT_ANGLES) -> float:
    """Contrast factor C_hkl = (4 pi/b^2) int (gamma.F.gamma)^2 dphi of one dislocation variant.

    C: 6x6 Voigt stiffness (GPa); lattice: (a, b, c, alpha, beta, gamma) in Angstrom and
    degrees; burgers, line: direction indices [uvw]; hkl: the reflection.  Dimensionless.
    """
    field = _field(C, lattice, burgers, line, n_angles)
    return field.contrast(reciprocal_vector(lattice, hkl))


def variants(lattice: Sequence[float], burgers: Sequence[float], line: Sequence[float],
             point_group: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Distinct Cartesian (b, line) pairs generated by the point group (sign pairs merged)."""
    b = direction_vector(lattice, burgers)
    t = direction_vector(lattice, line)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for op in point_group_operations(point_group):
        bv, tv = op @ b, op @ t
        if not any((np.allclose(bv, s * ob) and np.allclose(tv, s * ot)) or
                   (np.allclose(bv, s * ob) and np.allclose(tv, -s * ot))
                   for ob, ot in out for s in (1.0, -1.0)):
            out.append((bv, tv))
    return out


def average_contrast_factors(C: np.ndarray, lattice: Sequence[float], burgers: Sequence[float],
                             line: Sequence[float], hkls: Sequence[Sequence[float]],
                             point_group: str = "mmm",
                             n_angles: int = DEFAULT_ANGLES) -> np.ndarray:
    """Mean C_hkl over the symmetry-equivalent variants (equal populations), one per hkl.

    A powder averages over the variants of the point group: the variants R b, R l for R in
    the group; (b, l), (-b, -l), (b, -l) and (-b, l) give the same C and are counted once.
    """
    C4 = voigt_to_tensor(C)
    gs = [reciprocal_vector(lattice, hkl) for hkl in hkls]
    fields = [DislocationField.from_stroh(C4, b, t, n_angles)
              for b, t in variants(lattice, burgers, line, point_group)]
    return np.array([np.mean([f.contrast(g) for f in fields]) for g in gs])


def average_contrast_factor(C: np.ndarray, lattice: Sequence[float], burgers: Sequence[float],
                            line: Sequence[float], hkl: Sequence[float],
                            point_group: str = "mmm", n_angles: int = DEFAULT_ANGLES) -> float:
    """Mean C_hkl over the point-group variants of the dislocation (dimensionless)."""
    return float(average_contrast_factors(C, lattice, burgers, line, [hkl], point_group,
                                          n_angles)[0])


def isotropic_screw_contrast(cos_angle: float) -> float:
    """Isotropic screw: C = cos^2(alpha) sin^2(alpha), alpha the angle between g and the line."""
    c2 = cos_angle**2
    return float(c2 * (1 - c2))


def isotropic_edge_contrast(gamma_b: float, gamma_n: float, nu: float) -> float:
    r"""Isotropic edge (derived from the Volterra field), gamma_b = cos(g, b), gamma_n = cos(g, n).

    With :math:`A = -(3-2\nu)\gamma_b^2 + (1+2\nu)\gamma_n^2`, :math:`B = -(1-2\nu)(\gamma_b^2 +
    \gamma_n^2)`:  :math:`C = [A^2 + 2AB + 5B^2 + 16\gamma_b^2\gamma_n^2] / (32(1-\nu)^2)`,
    n the glide-plane normal (b x line).
    """
    A = -(3 - 2 * nu) * gamma_b**2 + (1 + 2 * nu) * gamma_n**2
    B = -(1 - 2 * nu) * (gamma_b**2 + gamma_n**2)
    return float((A**2 + 2 * A * B + 5 * B**2 + 16 * gamma_b**2 * gamma_n**2)
                 / (32 * (1 - nu) ** 2))
