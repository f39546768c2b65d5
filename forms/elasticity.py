r"""Anisotropic elasticity with a shifted-Legendre eigenstrain, as a plain UFL file (ffcx input).

    python3 -m ffcx forms/elasticity.py -o build/     # writes build/elasticity.{c,h}

Standalone: no chemomech import, so that tests/test_forms_ffcx.py compares two independent
writings of the model.  Bilinear form :math:`a(u, v) = \int C_{ijkl}\,\varepsilon_{kl}(u)\,
\varepsilon_{ij}(v)\,dx` and eigenstrain load :math:`L(v) = \int C_{ijkl}\,\varepsilon^*_{kl}
\,\varepsilon_{ij}(v)\,dx`, the eigenstrain written out by components
(:math:`c = \cos\phi`, :math:`s = \sin\phi`, :math:`\phi` from image x to crystal a, ccw):
:math:`\varepsilon^*_{xx} = c^2 f_a + s^2 f_c`, :math:`\varepsilon^*_{yy} = s^2 f_a + c^2 f_c`,
:math:`\varepsilon^*_{xy} = c s (f_a - f_c)`, with
:math:`f_i(X) = a_{0,i} + a_{1,i}\,t + a_{2,i}\,(3t^2 - 1)/2`, :math:`t = 2X - 1`.
The stiffness (image frame, GPa), the Legendre coefficients and the angle are runtime
Constants, the composition X a P1 Coefficient.
"""

import basix.ufl
import ufl

DISPLACEMENT_DEGREE = 1

coordinate_element = basix.ufl.element("Lagrange", "triangle", 1, shape=(2,))
mesh = ufl.Mesh(coordinate_element)
element = basix.ufl.element("Lagrange", "triangle", DISPLACEMENT_DEGREE, shape=(2,))
V = ufl.FunctionSpace(mesh, element)
Q = ufl.FunctionSpace(mesh, basix.ufl.element("Lagrange", "triangle", 1))

u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
X = ufl.Coefficient(Q)  # Li fraction
C = ufl.Constant(mesh, shape=(2, 2, 2, 2))  # stiffness in the image frame (GPa)
coefficients_a = ufl.Constant(mesh, shape=(3,))  # Legendre a_0, a_1, a_2 of f_a
coefficients_c = ufl.Constant(mesh, shape=(3,))
angle = ufl.Constant(mesh)  # rotation_rad: image x to crystal a, counter-clockwise

t = 2 * X - 1
f_a = coefficients_a[0] + coefficients_a[1] * t + coefficients_a[2] * (3 * t * t - 1) / 2
f_c = coefficients_c[0] + coefficients_c[1] * t + coefficients_c[2] * (3 * t * t - 1) / 2
c, s = ufl.cos(angle), ufl.sin(angle)
eps_star = ufl.as_matrix([[c * c * f_a + s * s * f_c, c * s * (f_a - f_c)],
                          [c * s * (f_a - f_c), s * s * f_a + c * c * f_c]])


def strain(w):
    return 0.5 * (ufl.grad(w) + ufl.grad(w).T)


i, j, k, l = ufl.indices(4)
a = C[i, j, k, l] * strain(u)[k, l] * strain(v)[i, j] * ufl.dx
L = C[i, j, k, l] * eps_star[k, l] * strain(v)[i, j] * ufl.dx

forms = [a, L]
