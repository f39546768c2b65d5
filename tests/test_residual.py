"""Residual strain measures and the M0 regression on fields with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from chemomech.analysis.residual import frobenius, incompatibility, incompatibility_rms, model_error
from chemomech.inverse.regression import fit_m0
from chemomech.mechanics import legendre


def _grid(n=61, h_nm=10.0):
    x, y = np.meshgrid(np.arange(n) * h_nm * 1e-3, np.arange(n) * h_nm * 1e-3, indexing="ij")
    mask = (x - x.mean()) ** 2 + (y - y.mean()) ** 2 < (0.4 * x.max()) ** 2
    return x, y, mask, h_nm


def test_compatible_strain_has_zero_incompatibility():
    """e = sym grad u for u = 1e-3 (x^2 y^2, x^3 y) (um): the three terms cancel."""
    x, y, mask, h = _grid()
    e_xx, e_yy, e_xy = 2e-3 * x * y**2, 1e-3 * x**3, 2.5e-3 * x**2 * y
    inc = incompatibility(e_xx, e_yy, e_xy, mask, h)
    d_yy_exx = incompatibility(e_xx, 0 * x, 0 * x, mask, h)  # = 4e-3 x, one term alone
    assert np.nanmax(np.abs(d_yy_exx)) > 1e-3
    # central differences are exact for these cubic fields: the sum cancels to round-off
    assert np.nanmax(np.abs(inc)) < 1e-9
    assert np.isnan(inc[~mask]).all()


def test_known_incompatible_field():
    """e_xx = k y^2 (um) gives inc = 2 k everywhere inside."""
    x, y, mask, h = _grid()
    k = 3e-3
    zero = np.zeros_like(x)
    assert incompatibility_rms(k * y**2, zero, zero, mask, h) == pytest.approx(2 * k, rel=1e-9)


def test_frobenius_and_model_error():
    assert frobenius(np.array(3.0), np.array(0.0), np.array(2.0)) == pytest.approx(np.sqrt(17))
    e = np.array([[1.0, np.nan], [2.0, 4.0]])
    used = np.array([[True, True], [False, True]])
    assert model_error(e, 0 * e, 0 * e, used) == pytest.approx(2.5)


def test_m0_recovers_a_cubic_law_and_its_uncertainty():
    rng = np.random.default_rng(1)
    X = rng.uniform(0, 1, 20000)
    truth_a, truth_c = [0.01, -0.025, 0.004, -0.002], [-0.01, 0.01, 0.0, 0.001]
    noise = 1e-3
    e_aa = legendre.evaluate(truth_a, X) + noise * rng.standard_normal(X.size)
    e_cc = legendre.evaluate(truth_c, X) + noise * rng.standard_normal(X.size)
    fit = fit_m0(X, e_aa, e_cc, degree=3)
    sd = np.sqrt(np.diag(fit.covariance))
    z = (np.r_[fit.coefficients_a, fit.coefficients_c] - np.r_[truth_a, truth_c]) / sd
    assert np.all(np.abs(z) < 4.5)
    assert sd[0] == pytest.approx(noise / np.sqrt(X.size), rel=0.05)


def test_m0_on_a_uniform_composition_is_refused_below_degree_zero_and_exact_at_zero():
    """X the same at every pixel: only the constant of the law is determined (V^T V was
    inverted regardless: LinAlgError); degree 0 gives the mean strains."""
    from chemomech.exceptions import InputError

    rng = np.random.default_rng(2)
    X = np.full(500, 0.5)
    e_aa, e_cc = -0.02 + 1e-3 * rng.standard_normal(500), 0.01 + 1e-3 * rng.standard_normal(500)
    with pytest.raises(InputError, match=r"1 distinct value.*degree-3.*m0_degree"):
        fit_m0(X, e_aa, e_cc, degree=3)
    fit = fit_m0(X, e_aa, e_cc, degree=0)
    assert fit.coefficients_a[0] == pytest.approx(e_aa.mean(), rel=1e-12)
    assert fit.coefficients_c[0] == pytest.approx(e_cc.mean(), rel=1e-12)
