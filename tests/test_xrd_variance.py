"""Restricted moments and the variance method on analytic and forward-modelled profiles."""

from __future__ import annotations

import numpy as np
import pytest

from chemomech.exceptions import InputError
from chemomech.xrd.peaks import InstrumentProfile, PeakWindow, allowed_reflections, fit_instrument
from chemomech.xrd.synthetic import (
    GaussianInstrument,
    line_profile,
    line_profile_fft,
    synthetic_standard,
    wilkens_f,
)
from chemomech.xrd.variance import analyse_peak, fit_m2, restricted_moments


def test_restricted_moments_of_gaussian_and_lorentzian():
    """Gaussian: M2 -> sigma^2, M4 -> 3 sigma^4; Lorentzian (HWHM g):
    M2(q) = (2 g / pi)(q - g arctan(q / g))."""
    q = np.linspace(-2.0, 2.0, 40001)
    sigma = 0.05
    gauss = np.exp(-0.5 * (q / sigma) ** 2)
    m2, m4 = restricted_moments(q, gauss, np.array([0.5, 1.0]))
    assert m2 == pytest.approx([sigma**2] * 2, rel=1e-6)
    assert m4 == pytest.approx([3 * sigma**4] * 2, rel=1e-5)
    g = 0.01
    lorentz = g / np.pi / (q**2 + g**2)
    qe = np.array([0.1, 0.5, 1.5])
    m2, _ = restricted_moments(q, lorentz, qe)
    inside = 2 / np.pi * np.arctan(2.0 / g)          # the window holds this fraction of the area
    assert m2 * inside == pytest.approx(2 * g / np.pi * (qe - g * np.arctan(qe / g)), rel=1e-4)


def test_wilkens_function_limits_and_continuity():
    """f*(eta) ~ -ln eta + 7/4 - ln 2 for small eta, continuous at eta = 1, ~ 512/(90 pi eta)."""
    small = np.array([1e-4, 1e-3 * 0.999, 1e-3 * 1.001, 1e-2])
    assert wilkens_f(small) == pytest.approx(-np.log(small) + 1.75 - np.log(2.0), rel=1e-4)
    assert wilkens_f(np.array([1 - 1e-9]))[0] == pytest.approx(wilkens_f(np.array([1.0]))[0],
                                                               rel=1e-6)
    assert wilkens_f(np.array([1e3]))[0] == pytest.approx(512 / (90 * np.pi * 1e3), rel=1e-2)


def test_profile_has_unit_area_and_the_krivoglaz_wilkens_tail():
    """Unit area; far tail P(q) -> Lambda rho / (4 pi^2 q^3) when size/instrument are sharp."""
    lam_rho = 2e-3
    q, P = line_profile_fft(lam_rho, 1e6, 50.0, 1e-4, q_max=3.0)
    assert 2 * np.trapezoid(P, q) == pytest.approx(1.0, abs=2e-3)
    qt = np.array([1.5, 2.0])
    tail = np.interp(qt, q, P) * 4 * np.pi**2 * qt**3 / lam_rho
    assert tail == pytest.approx([1.0, 1.0], abs=0.06)
    assert np.allclose(line_profile(q[:200], lam_rho, 2000.0, 50.0, 1e-4, dL=1.0 / 24.0),
                       line_profile_fft(lam_rho, 2000.0, 50.0, 1e-4, q_max=3.0)[1][:200],
                       rtol=1e-5, atol=1e-9)


def _peak(lam_rho, size=1000.0, Re=60.0, s=3.0, window=0.6):
    """A noise-free background-free peak window (counts per unit s)."""
    inst = GaussianInstrument()
    q = np.linspace(-window, window, 2401)
    P = 1e8 * line_profile(q, lam_rho, size, Re, inst.fwhm(s))
    return PeakWindow(hkl=(1, 1, 1), s_expected=s, centre=s, q=q, intensity=P,
                      sigma=np.sqrt(np.maximum(P, 10.0)) / 1e-3, area=float(P.sum()),
                      background=(0.0, 0.0))


def _instrument():
    g = GaussianInstrument()
    return InstrumentProfile(U=g.U, V=g.V, W=g.W)


def test_asymptotic_variance_method_in_its_regime():
    """Groma's M2 asymptote recovers Lambda rho within 5 % when Lambda rho << q_lo^2."""
    peak = _peak(2e-4)
    res = analyse_peak(peak, _instrument(), (0.15, 0.55), method="asymptotic")
    assert res.lambda_rho == pytest.approx(2e-4, rel=0.05)
    assert res.column_length_nm == pytest.approx(1000.0 / 1.5, rel=0.3)   # eps_F = 2D/3


def test_wilkens_fit_removes_the_asymptotic_bias():
    """At Lambda rho = 4e-3 the asymptote is >15 % high; the full-profile M2 fit is within 2 %."""
    peak = _peak(4e-3, size=500.0)
    asym = analyse_peak(peak, _instrument(), (0.15, 0.55), method="asymptotic", n_noise=3)
    full = analyse_peak(peak, _instrument(), (0.15, 0.55), method="wilkens", n_noise=3)
    assert asym.lambda_rho / 4e-3 > 1.15
    assert full.lambda_rho == pytest.approx(4e-3, rel=0.02)


def test_residual_background_is_absorbed_by_the_q3_term():
    """A constant left under the peak biases the plain fit, not the fit with the q^3 term."""
    peak = _peak(5e-4)
    biased = PeakWindow(**{**peak.__dict__, "intensity": peak.intensity + 2e5})
    plain = analyse_peak(biased, _instrument(), (0.15, 0.55), method="asymptotic", n_noise=3)
    with_bg = analyse_peak(biased, _instrument(), (0.15, 0.55), method="asymptotic",
                           background_term=True, n_noise=3)
    clean = analyse_peak(peak, _instrument(), (0.15, 0.55), method="asymptotic", n_noise=3)
    assert abs(plain.lambda_rho / clean.lambda_rho - 1) > 0.5
    assert with_bg.lambda_rho == pytest.approx(clean.lambda_rho, rel=0.05)


def test_m2_fit_recovers_exact_coefficients():
    q = np.geomspace(0.1, 0.6, 50)
    m2 = 1e-4 + 2e-4 * q + 3e-5 * np.log(q) - 1e-5 * q**3
    assert fit_m2(q, m2, background_term=True) == pytest.approx([1e-4, 2e-4, 3e-5, -1e-5])


def test_instrument_from_lab6_standard():
    """U, V, W fitted to a synthetic LaB6 pattern reproduce w(s) within 3 %."""
    lam = 0.7293
    cubic = (4.156826,) * 3 + (90.0,) * 3
    tt = np.arange(8.0, 40.0, 0.002)
    truth = GaussianInstrument(U=2e-6, V=0.0, W=3e-5)
    std = synthetic_standard(cubic, allowed_reflections(cubic, 1.0, "Pm-3m"),
                             wavelength_angstrom=lam, two_theta=tt, instrument=truth)
    inst = fit_instrument(std, cubic, "Pm-3m")
    for s in (3.0, 5.0, 8.0):
        assert inst.fwhm(s) == pytest.approx(truth.fwhm(s), rel=0.03)
    assert inst.eta(5.0) < 0.05                           # Gaussian standard


def test_missing_instrument_and_bad_range_are_clear_errors():
    peak = _peak(5e-4)
    with pytest.raises(InputError, match="no instrument profile"):
        analyse_peak(peak, None, (0.15, 0.55))
    with pytest.raises(InputError, match="fit range"):
        analyse_peak(peak, _instrument(), (0.15, 0.9))
    with pytest.raises(InputError, match="method"):
        analyse_peak(peak, _instrument(), (0.15, 0.55), method="fourier")
    ok = analyse_peak(peak, None, (0.15, 0.55), allow_uncorrected=True, n_noise=3)
    assert ok.lambda_rho > 0
