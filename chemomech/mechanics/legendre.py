r"""Shifted Legendre series on [0, 1], the parameterisation of the eigenstrain law.

:math:`f(X) = \sum_{n=0}^{N} a_n P_n(2X - 1)`, evaluated with numpy.polynomial.legendre.
The UFL twin is chemomech.mechanics.forms.shifted_legendre_series.
"""

from __future__ import annotations

import numpy as np
from numpy.polynomial import legendre as npleg


def vandermonde(X: np.ndarray, degree: int) -> np.ndarray:
    """Matrix V[..., n] = P_n(2X - 1), n = 0..degree (shape X.shape + (degree + 1,))."""
    return npleg.legvander(2.0 * np.asarray(X, dtype=float) - 1.0, degree)


def vandermonde_derivative(X: np.ndarray, degree: int) -> np.ndarray:
    """Matrix D[..., n] = d/dX P_n(2X - 1) = 2 P_n'(2X - 1)."""
    t = 2.0 * np.asarray(X, dtype=float) - 1.0
    columns = [2.0 * npleg.legval(t, npleg.legder(np.eye(degree + 1)[n]))
               for n in range(degree + 1)]
    return np.stack(columns, axis=-1)


def evaluate(coefficients, X: np.ndarray) -> np.ndarray:
    """f(X) = sum_n a_n P_n(2X - 1)."""
    return npleg.legval(2.0 * np.asarray(X, dtype=float) - 1.0, np.asarray(coefficients, float))


def derivative(coefficients, X: np.ndarray) -> np.ndarray:
    """df/dX = 2 sum_n a_n P_n'(2X - 1), the chemical expansion coefficient."""
    c = npleg.legder(np.asarray(coefficients, dtype=float))
    return 2.0 * npleg.legval(2.0 * np.asarray(X, dtype=float) - 1.0, c)


def from_linear(value_at_0: float, value_at_1: float) -> list[float]:
    """Coefficients (a_0, a_1) of the straight line through f(0) and f(1) (Vegard's law)."""
    return [(value_at_0 + value_at_1) / 2.0, (value_at_1 - value_at_0) / 2.0]
