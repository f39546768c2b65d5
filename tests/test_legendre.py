"""Shifted Legendre series: values, derivatives, and agreement with the UFL forms."""

from __future__ import annotations

import numpy as np
import pytest

from chemomech.mechanics import legendre
from chemomech.mechanics.forms import shifted_legendre_series


def test_known_polynomials_and_derivatives():
    X = np.linspace(0, 1, 7)
    V = legendre.vandermonde(X, 2)
    t = 2 * X - 1
    assert np.allclose(V, np.stack([np.ones_like(t), t, 1.5 * t**2 - 0.5], axis=-1))
    D = legendre.vandermonde_derivative(X, 2)
    assert np.allclose(D, np.stack([0 * t, 2 + 0 * t, 6 * t], axis=-1))


def test_series_matches_forms_recursion_and_finite_differences():
    coeffs = [0.01, -0.02, 0.003, -0.001]
    X = np.linspace(0.05, 0.95, 11)
    assert np.allclose(legendre.evaluate(coeffs, X), shifted_legendre_series(X, coeffs))
    h = 1e-6
    fd = (legendre.evaluate(coeffs, X + h) - legendre.evaluate(coeffs, X - h)) / (2 * h)
    assert np.allclose(legendre.derivative(coeffs, X), fd, atol=1e-8)


def test_vegard_line():
    a = legendre.from_linear(-0.0495, 0.0)
    assert legendre.evaluate(a, 0.0) == pytest.approx(-0.0495)
    assert legendre.evaluate(a, 1.0) == pytest.approx(0.0, abs=1e-15)
