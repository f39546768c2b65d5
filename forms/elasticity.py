r"""Anisotropic elasticity with a shifted-Legendre eigenstrain, as a plain UFL file (ffcx input).

    python3 -m ffcx forms/elasticity.py -o build/     # writes build/elasticity.{c,h}

Bilinear form :math:`a(u, v) = \int C:\varepsilon(u) : \varepsilon(v)\,dx` and eigenstrain load
:math:`L(v) = \int C:\varepsilon^*(X) : \varepsilon(v)\,dx` with
:math:`\varepsilon^* = R(\phi)\,\mathrm{diag}(f_a(X), f_c(X))\,R(\phi)^T`,
:math:`f_i(X) = \sum_{n \le N} a_{n,i} P_n(2X - 1)`.  The formulas are imported from
:mod:`chemomech.mechanics.forms`, so this file and the Python module cannot diverge; the stiffness
(image frame, GPa), the Legendre coefficients and the angle are runtime Constants, the
composition X a P1 Coefficient.  Degrees: ``DISPLACEMENT_DEGREE`` and ``LEGENDRE_DEGREE``.
"""

import basix.ufl
import ufl

from chemomech.mechanics.forms import eigenstrain, eigenstrain_load_form, elastic_energy_form

DISPLACEMENT_DEGREE = 1
LEGENDRE_DEGREE = 2

coordinate_element = basix.ufl.element("Lagrange", "triangle", 1, shape=(2,))
mesh = ufl.Mesh(coordinate_element)
element = basix.ufl.element("Lagrange", "triangle", DISPLACEMENT_DEGREE, shape=(2,))
V = ufl.FunctionSpace(mesh, element)
Q = ufl.FunctionSpace(mesh, basix.ufl.element("Lagrange", "triangle", 1))

u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
X = ufl.Coefficient(Q)  # Li fraction
C = ufl.Constant(mesh, shape=(2, 2, 2, 2))  # stiffness in the image frame (GPa)
coefficients_a = ufl.Constant(mesh, shape=(LEGENDRE_DEGREE + 1,))
coefficients_c = ufl.Constant(mesh, shape=(LEGENDRE_DEGREE + 1,))
angle = ufl.Constant(mesh)  # rotation_rad: image x to crystal a, counter-clockwise

eps_star = eigenstrain(X, [coefficients_a[n] for n in range(LEGENDRE_DEGREE + 1)],
                       [coefficients_c[n] for n in range(LEGENDRE_DEGREE + 1)], angle)
a = elastic_energy_form(u, v, C)
L = eigenstrain_load_form(eps_star, v, C)

forms = [a, L]
