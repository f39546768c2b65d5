r"""Variance method (Groma 1998; Borbely & Groma, Appl. Phys. Lett. 79 (2001) 1772).

Restricted moments of a peak I(q), q = s - s_centre (1/nm), normalised by its area:
:math:`M_k(q) = \int_{-q}^{q} q'^k I(q') dq' / \int I dq'`.  For dislocations (density
:math:`\rho`) and crystallites (area-weighted column length :math:`\varepsilon_F`), at large q

.. math::
    M_2(q) = \frac{q}{\pi^2 \varepsilon_F} - \frac{L}{4\pi^2 K^2 \varepsilon_F^2}
             + \frac{\Lambda\langle\rho\rangle}{2\pi^2}\ln\frac{q}{q_0},
    \qquad
    \frac{M_4(q)}{q^2} = \frac{q}{3\pi^2\varepsilon_F} + \frac{\Lambda\langle\rho\rangle}{4\pi^2}
             + \frac{3\Lambda^2\langle\rho^2\rangle}{4\pi^4 q^2}\ln^2\frac{q}{q_1},

with :math:`\Lambda = (\pi/2) g^2 b^2 C_{hkl}`.  A constant residual background b adds
:math:`(2/3)(b/I_0) q^3` to M2 and :math:`(2/5)(b/I_0) q^3` to M4/q^2, so both fits carry a
:math:`q^3` term.  The instrument's restricted moments are subtracted first
(:math:`M_2 \leftarrow M_2 - M_2^{inst}`, :math:`M_4 \leftarrow M_4 - 6 M_2 M_2^{inst} -
M_4^{inst}`, the moment rules of a convolution).  The M2 fit is linear in its four
coefficients (const, q, ln q, q^3) and gives :math:`\Lambda\rho = 2\pi^2 \times` the ln q
coefficient; its uncertainty comes from refitting Poisson-perturbed copies of the peak.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from chemomech.exceptions import InputError
from chemomech.xrd.peaks import InstrumentProfile, PeakWindow, hkl_label

logger = logging.getLogger(__name__)


def restricted_moments(q: np.ndarray, intensity: np.ndarray,
                       q_eval: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """M2(q), M4(q) at q_eval of the profile (q ascending, 1/nm), normalised by its area."""
    area = _trapz(intensity, q)
    if not area > 0:
        raise InputError("peak has no positive integrated intensity", field="intensity")
    cum2 = _cumtrapz(q**2 * intensity, q)
    cum4 = _cumtrapz(q**4 * intensity, q)
    m2 = (np.interp(q_eval, q, cum2) - np.interp(-q_eval, q, cum2)) / area
    m4 = (np.interp(q_eval, q, cum4) - np.interp(-q_eval, q, cum4)) / area
    return m2, m4


def _trapz(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoidal integral."""
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))


def _cumtrapz(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Cumulative trapezoidal integral from x[0]."""
    return np.concatenate([[0.0], np.cumsum(0.5 * (y[1:] + y[:-1]) * np.diff(x))])


@dataclass(frozen=True)
class VarianceResult:
    """Per-reflection result: Lambda*rho (1/nm^2) from M2 and from M4, and the size term."""

    hkl: tuple[int, int, int]
    s: float
    lambda_rho: float
    lambda_rho_sigma: float
    lambda_rho_m4: float
    column_length_nm: float
    q_range: tuple[float, float]
    q: np.ndarray
    m2: np.ndarray
    m2_fit: np.ndarray
    m4_over_q2: np.ndarray

    @property
    def label(self) -> str:
        """The reflection as '211'."""
        return hkl_label(self.hkl)

    def summary(self) -> dict:
        """JSON-ready numbers of this reflection."""
        return {"hkl": list(self.hkl), "s_per_nm": self.s, "lambda_rho_per_nm2": self.lambda_rho,
                "lambda_rho_sigma": self.lambda_rho_sigma,
                "lambda_rho_m4_per_nm2": self.lambda_rho_m4,
                "column_length_nm": self.column_length_nm, "q_range_per_nm": list(self.q_range)}


def _m2_design(q: np.ndarray, background_term: bool = False,
               second_order: bool = False) -> np.ndarray:
    """Columns 1, q, ln q [, q^3 (residual background)] [, ln^2(q)/q^2] of the M2 model."""
    cols = [np.ones_like(q), q, np.log(q)]
    if background_term:
        cols.append(q**3)
    if second_order:
        cols.append(np.log(q) ** 2 / q**2)
    return np.column_stack(cols)


def fit_m2(q: np.ndarray, m2: np.ndarray, background_term: bool = False,
           second_order: bool = False) -> np.ndarray:
    """Least squares of M2(q): (const, 1/(pi^2 eps_F), Lambda rho/(2 pi^2), [extra terms])."""
    coef, *_ = np.linalg.lstsq(_m2_design(q, background_term, second_order), m2, rcond=None)
    return coef


def _wilkens_m2(x: np.ndarray, q_eval: np.ndarray, limits: tuple[float, float],
                instrument: tuple[float, float]) -> np.ndarray:
    """M2(q) of the Krivoglaz-Wilkens x spheres x instrument profile plus a residual constant.

    x = (ln Lambda rho, ln R_e, ln D, c): c is the residual background per unit area.
    """
    from chemomech.xrd.synthetic import line_profile_fft

    q_lo_lim, q_hi_lim = limits
    q, P = line_profile_fft(np.exp(x[0]), np.exp(x[2]), np.exp(x[1]), instrument[0],
                            instrument[1], q_max=q_hi_lim * 1.05, n=1 << 14)
    cum0 = _cumtrapz(P, q)
    cum2 = _cumtrapz(q**2 * P, q)
    area = np.interp(q_lo_lim, q, cum0) + np.interp(q_hi_lim, q, cum0) \
        + x[3] * (q_lo_lim + q_hi_lim)
    return (2.0 * np.interp(q_eval, q, cum2) + (2.0 / 3.0) * x[3] * q_eval**3) / area


def fit_wilkens(q_eval: np.ndarray, m2: np.ndarray, limits: tuple[float, float],
                instrument: tuple[float, float], x0: np.ndarray) -> np.ndarray:
    """Least-squares (ln Lambda rho, ln R_e, ln D, c) of M2(q) with the full profile model."""
    from scipy.optimize import least_squares

    scale = np.abs(m2).max()
    sol = least_squares(lambda x: (_wilkens_m2(x, q_eval, limits, instrument) - m2) / scale,
                        x0, bounds=([np.log(1e-9), 0.0, np.log(5.0), -np.inf],
                                    [0.0, np.log(1e4), np.log(3000.0), np.inf]),
                        x_scale=[1.0, 1.0, 1.0, 1e-3], max_nfev=300)
    return sol.x


def analyse_peak(peak: PeakWindow, instrument: InstrumentProfile | None,
                 q_range: tuple[float, float], *, background_term: bool = False,
                 second_order: bool = False, method: str = "asymptotic",
                 n_points: int = 80, n_noise: int = 30, seed: int = 0,
                 allow_uncorrected: bool = False) -> VarianceResult:
    """Fit the M2 (and M4/q^2) asymptotics of one peak over q_range (1/nm).

    background_term adds the q^3 term of a residual constant background; second_order adds
    ln^2(q)/q^2, the next term of the dislocation asymptotics (cf. the M4 expression).
    method "wilkens" then refines Lambda*rho by fitting M2(q) with the full
    Krivoglaz-Wilkens x spheres x instrument profile (R_e, D and a residual background
    free), which removes the asymptotic bias at large Lambda*rho/q^2.  Uncertainty: the
    spread of refits of Poisson-perturbed copies (n_noise for the asymptote, up to 8 for
    "wilkens", floored at 20 % of the asymptote's relative spread).
    """
    if method not in ("asymptotic", "wilkens"):
        raise InputError(f"method must be 'asymptotic' or 'wilkens', got {method!r}",
                         field="method")
    if instrument is None and not allow_uncorrected:
        raise InputError("no instrument profile: give a line-profile standard (LaB6) or "
                         "set allow_uncorrected", field="instrument")
    q_lo, q_hi = q_range
    q_max = min(-peak.q[0], peak.q[-1])
    if not 0 < q_lo < q_hi <= q_max:
        raise InputError(f"fit range {q_range} must satisfy 0 < q_lo < q_hi <= {q_max:.4g} "
                         f"(the window of {hkl_label(peak.hkl)})", field="fit_range")
    q_eval = np.geomspace(q_lo, q_hi, n_points)
    if instrument is not None:
        m2_inst, m4_inst = instrument.restricted_moments(peak.centre, q_eval)
    else:
        m2_inst = m4_inst = np.zeros_like(q_eval)

    def corrected(intensity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m2, m4 = restricted_moments(peak.q, intensity, q_eval)
        m2c = m2 - m2_inst
        return m2c, m4 - 6.0 * m2c * m2_inst - m4_inst

    m2, m4 = corrected(peak.intensity)
    opts = dict(background_term=background_term, second_order=second_order)
    coef = fit_m2(q_eval, m2, **opts)
    rng = np.random.default_rng(seed)
    draws = [fit_m2(q_eval, corrected(peak.intensity + rng.normal(0.0, peak.sigma))[0],
                    **opts)[2] for _ in range(n_noise)]
    upper = q_eval >= np.sqrt(q_lo * q_hi)          # M4/q^2: upper half, 1/q^2 term small
    c4, *_ = np.linalg.lstsq(np.column_stack([np.ones(upper.sum()), q_eval[upper],
                                              q_eval[upper] ** 3]),
                             m4[upper] / q_eval[upper] ** 2, rcond=None)
    eps_f = 1.0 / (np.pi**2 * coef[1]) if coef[1] > 0 else float("inf")
    lambda_rho = float(2 * np.pi**2 * coef[2])
    lambda_rho_sigma = float(2 * np.pi**2 * np.std(draws, ddof=1))
    m2_fit = _m2_design(q_eval, **opts) @ coef
    if method == "wilkens":
        if instrument is None:
            raise InputError("method 'wilkens' needs the instrument profile", field="method")
        inst = (instrument.fwhm(peak.centre), instrument.eta(peak.centre))
        limits = (-float(peak.q[0]), float(peak.q[-1]))
        m2_raw, _ = restricted_moments(peak.q, peak.intensity, q_eval)
        size0 = 1.5 * eps_f if np.isfinite(eps_f) and 5 < 1.5 * eps_f < 3000 else 300.0
        x0 = np.array([np.log(max(lambda_rho, 1e-7)), np.log(50.0), np.log(size0), 0.0])
        x = fit_wilkens(q_eval, m2_raw, limits, inst, x0)
        rel = lambda_rho_sigma / max(abs(lambda_rho), 1e-12)
        xs = [fit_wilkens(q_eval, restricted_moments(
            peak.q, peak.intensity + rng.normal(0.0, peak.sigma), q_eval)[0], limits, inst, x)[0]
            for _ in range(min(n_noise, 8))]
        lambda_rho = float(np.exp(x[0]))
        lambda_rho_sigma = float(max(np.std(np.exp(xs), ddof=1), 0.2 * rel * lambda_rho))
        eps_f = float(np.exp(x[2]) / 1.5)
        m2_fit = _wilkens_m2(x, q_eval, limits, inst) - m2_inst
    result = VarianceResult(hkl=peak.hkl, s=peak.centre, lambda_rho=lambda_rho,
                            lambda_rho_sigma=lambda_rho_sigma,
                            lambda_rho_m4=float(4 * np.pi**2 * c4[0]), column_length_nm=eps_f,
                            q_range=(float(q_lo), float(q_hi)), q=q_eval, m2=m2,
                            m2_fit=m2_fit, m4_over_q2=m4 / q_eval**2)
    logger.debug("%s: Lambda rho = %.4g +- %.2g 1/nm^2 (M4: %.4g), eps_F = %.4g nm",
                 result.label, result.lambda_rho, result.lambda_rho_sigma,
                 result.lambda_rho_m4, eps_f)
    return result
