r"""Gauss-Newton uncertainty of the M1 coefficients and pointwise bands of the law.

Noise model: the observations (displacement components, or strain components for the strain
misfit) carry independent Gaussian errors of one variance :math:`\sigma^2`, estimated from the
residual of the fit, :math:`\hat\sigma^2 = 2 J / (n_\mathrm{obs} - n_\mathrm{nuisance} - p)`
(:math:`J = \tfrac12|r|^2`; nuisance = the 3 rigid modes per particle of the displacement
misfit; p = 2(N+1)).  Since M1 is linear in the coefficients the Gauss-Newton covariance
:math:`\hat\sigma^2 (G^T G)^{-1}` (G the projected Jacobian, `M1Model.normal_equations`) is
exact under that model.

Limits, stated plainly: the displacement is *integrated* from the measured gradient, so its
noise is spatially correlated (a random-walk-like field, variance growing with distance from
where the integration constant is fixed) and the i.i.d. assumption understates the
uncertainty; so do model errors (coherency relaxation the model misses, dislocations, the
registration of X).  Bands from the strain misfit, whose pixel noise is closer to i.i.d., are
the more trustworthy; the twin experiment in tests/test_uncertainty.py measures the coverage
of both.  Bands are pointwise (not simultaneous) at `level` (default 95 %), normal quantile.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import stats

from chemomech import legendre
from chemomech.exceptions import InputError

logger = logging.getLogger(__name__)


def noise_variance(cost: float, num_observations: int, num_parameters: int,
                   num_nuisance: int = 0) -> float:
    """sigma^2 = 2 J / (n_obs - n_nuisance - p) (units of the observations squared)."""
    dof = num_observations - num_nuisance - num_parameters
    if dof <= 0:
        raise InputError(f"no residual degrees of freedom ({num_observations} observations, "
                         f"{num_parameters} parameters, {num_nuisance} nuisance)")
    return 2.0 * float(cost) / dof


def covariance(normal_matrix: np.ndarray, cost: float, num_observations: int,
               num_nuisance: int = 0) -> tuple[np.ndarray, float]:
    """Gauss-Newton covariance sigma^2 (G^T G)^-1 of the coefficients, and sigma^2."""
    N = np.asarray(normal_matrix, dtype=float)
    sigma2 = noise_variance(cost, num_observations, N.shape[0], num_nuisance)
    return sigma2 * np.linalg.pinv(N, rcond=1e-14, hermitian=True), sigma2


def fit_covariance(fit) -> tuple[np.ndarray, float]:
    """`covariance` of a `chemomech.inverse.FitResult` (needs its normal matrix)."""
    if fit.normal_matrix is None:
        raise InputError("the fit has no normal matrix (fit(..., with_normal_matrix=True))")
    return covariance(fit.normal_matrix, fit.cost, fit.num_observations, fit.num_nuisance)


def _split(coefficients: Sequence[float], cov: np.ndarray) -> tuple:
    a = np.asarray(coefficients, dtype=float)
    if a.size % 2 or np.shape(cov) != (a.size, a.size):
        raise InputError(f"need 2(N+1) coefficients and a matching covariance, got {a.size} "
                         f"and {np.shape(cov)}", field="covariance")
    n = a.size // 2
    cov = np.asarray(cov, dtype=float)
    return n - 1, a[:n], a[n:], cov[:n, :n], cov[n:, n:]


def _band(design: np.ndarray, coef: np.ndarray, cov: np.ndarray, z: float):
    value = design @ coef
    std = np.sqrt(np.maximum(np.einsum("xi,ij,xj->x", design, cov, design), 0.0))
    return value, value - z * std, value + z * std


def eigenstrain_band(coefficients: Sequence[float], cov: np.ndarray, X: np.ndarray | None = None,
                     level: float = 0.95) -> dict[str, np.ndarray]:
    """f_a(X), f_c(X) (dimensionless) with pointwise `level` bands f +- z sqrt(V C V^T)."""
    X = np.linspace(0.0, 1.0, 101) if X is None else np.asarray(X, dtype=float)
    degree, ca, cc, Ca, Cc = _split(coefficients, cov)
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    V = legendre.vandermonde(X, degree)
    a, a_lo, a_hi = _band(V, ca, Ca, z)
    c, c_lo, c_hi = _band(V, cc, Cc, z)
    return {"X": X, "a": a, "c": c, "a_lo": a_lo, "a_hi": a_hi, "c_lo": c_lo, "c_hi": c_hi}


def derivative_band(coefficients: Sequence[float], cov: np.ndarray,
                    X: np.ndarray | None = None, level: float = 0.95) -> dict[str, np.ndarray]:
    """df_a/dX, df_c/dX (chemical expansion coefficients, per unit X) with pointwise bands."""
    X = np.linspace(0.0, 1.0, 101) if X is None else np.asarray(X, dtype=float)
    degree, ca, cc, Ca, Cc = _split(coefficients, cov)
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    D = legendre.vandermonde_derivative(X, degree)
    a, a_lo, a_hi = _band(D, ca, Ca, z)
    c, c_lo, c_hi = _band(D, cc, Cc, z)
    return {"X": X, "a": a, "c": c, "a_lo": a_lo, "a_hi": a_hi, "c_lo": c_lo, "c_hi": c_hi}


def band_to_lists(band: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """The band with plain lists (for summary.json)."""
    return {k: np.asarray(v, dtype=float).tolist() for k, v in band.items()}
