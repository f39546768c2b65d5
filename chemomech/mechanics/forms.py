r"""UFL building blocks of the chemo-mechanical model (plain UFL: importable in notebooks).

Small strain :math:`\varepsilon(u) = \mathrm{sym}\,\nabla u`, stress
:math:`\sigma = C : (\varepsilon(u) - \varepsilon^*(X))` with the anisotropic stiffness
rotated to the image frame, and the shifted-Legendre eigenstrain
:math:`\varepsilon^* = R\,\mathrm{diag}(f_a(X), f_c(X))\,R^T`,
:math:`f_i(X) = \sum_n a_{n,i} P_n(2X - 1)`.  In plane strain the out-of-plane eigenstrain
:math:`f_b(X)` adds :math:`-B f_b` to the in-plane stress, :math:`B_{ij} = C_{ij\,bb}`
(`chemomech.mechanics.materials.Material.b_coupling`).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import ufl


def epsilon(u):
    r""":math:`\varepsilon(u) = \tfrac12(\nabla u + \nabla u^T)` (dimensionless)."""
    return ufl.sym(ufl.grad(u))


def stiffness_tensor(C: np.ndarray):
    """A constant 2x2x2x2 stiffness (numpy, image frame) as a UFL tensor."""
    return ufl.as_tensor(np.asarray(C, dtype=float).tolist())


def sigma(strain, C):
    r""":math:`\sigma_{ij} = C_{ijkl}\,\varepsilon_{kl}` (units of C); C a UFL 4th-order tensor."""
    i, j, k, l = ufl.indices(4)
    return ufl.as_tensor(C[i, j, k, l] * strain[k, l], (i, j))


def legendre(t, degree: int) -> list:
    r"""Legendre polynomials :math:`P_0..P_N` of t by Bonnet's recursion (UFL or numpy)."""
    P = [1.0 + 0.0 * t, t]
    for n in range(1, degree):
        P.append(((2 * n + 1) * t * P[n] - n * P[n - 1]) / (n + 1))
    return P[: degree + 1]


def shifted_legendre_series(X, coefficients: Sequence):
    r""":math:`f(X) = \sum_n a_n P_n(2X - 1)` for UFL or numpy X and coefficients."""
    P = legendre(2 * X - 1, len(coefficients) - 1)
    return sum(a * p for a, p in zip(coefficients, P, strict=True))


def rotation(angle_rad):
    """UFL rotation R with v_image = R v_crystal (angle from image x to crystal a, ccw).

    `angle_rad` is a number or a UFL scalar (e.g. a Constant).
    """
    if isinstance(angle_rad, numbers.Real):
        c, s = float(np.cos(angle_rad)), float(np.sin(angle_rad))
    else:
        c, s = ufl.cos(angle_rad), ufl.sin(angle_rad)
    return ufl.as_matrix([[c, -s], [s, c]])


def eigenstrain(X, coefficients_a: Sequence, coefficients_c: Sequence, angle_rad):
    r"""Image-frame eigenstrain :math:`R\,\mathrm{diag}(f_a(X), f_c(X))\,R^T`."""
    R = rotation(angle_rad)
    f_a = shifted_legendre_series(X, coefficients_a)
    f_c = shifted_legendre_series(X, coefficients_c)
    return R * ufl.as_matrix([[f_a, 0], [0, f_c]]) * R.T


def elastic_energy_form(u, v, C):
    r"""Bilinear form :math:`a(u, v) = \int \sigma(\varepsilon(u)) : \varepsilon(v)\,dx`."""
    return ufl.inner(sigma(epsilon(u), C), epsilon(v)) * ufl.dx


def eigenstrain_load_form(eps_star, v, C):
    r"""Linear form :math:`L(v) = \int C:\varepsilon^* : \varepsilon(v)\,dx`."""
    return ufl.inner(sigma(eps_star, C), epsilon(v)) * ufl.dx


def _matrix(B):
    """A 2x2 numpy array or UFL expression as UFL."""
    return ufl.as_matrix(np.asarray(B, dtype=float).tolist()) if isinstance(B, np.ndarray) else B


def out_of_plane_load_form(f_b, B, v):
    r"""Plane-strain load of the b-eigenstrain :math:`L_b(v) = \int f_b(X)\,B : \varepsilon(v)\,dx`
    (B = C_{ij bb}, image frame, numpy or UFL)."""
    dx = ufl.dx(domain=ufl.domain.extract_unique_domain(v))  # f_b, B may be constants
    return f_b * ufl.inner(_matrix(B), epsilon(v)) * dx


def in_plane_stress(u, eps_star, C, f_b=None, B=None):
    r"""In-plane stress :math:`\sigma = C:(\varepsilon(u) - \varepsilon^*) - B f_b` (units of C);
    the last term only in plane strain (B and f_b given)."""
    s = sigma(epsilon(u) - eps_star, C)
    return s if B is None else s - f_b * _matrix(B)
