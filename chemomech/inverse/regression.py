r"""Direct regression M0: per pixel :math:`e_{aa} \approx f_a(X)`, :math:`e_{cc} \approx f_c(X)`.

No mechanics: ordinary least squares of the measured crystal-frame normal strains on the
shifted Legendre basis of the pixel composition (degree 3 = four parameters per direction,
as in the study). It is the baseline the physics-constrained model M1 is judged against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chemomech.exceptions import InputError
from chemomech.mechanics import legendre


@dataclass(frozen=True)
class RegressionFit:
    """Coefficients and Gauss-Markov covariances of the M0 fit (one block per direction)."""

    degree: int
    coefficients_a: np.ndarray
    coefficients_c: np.ndarray
    covariance: np.ndarray  # (2(N+1))^2, block diagonal: [a..., c...]
    n_pixels: int

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(f_a(X), f_c(X)) of the fitted law."""
        return (legendre.evaluate(self.coefficients_a, X),
                legendre.evaluate(self.coefficients_c, X))


def _ols(V: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares y ~ V b with covariance sigma^2 (V^T V)^-1, sigma^2 = |r|^2 / (n - p)."""
    coeffs, *_ = np.linalg.lstsq(V, y, rcond=None)
    r = y - V @ coeffs
    dof = max(len(y) - V.shape[1], 1)
    return coeffs, (r @ r / dof) * np.linalg.inv(V.T @ V)


def fit_m0(X: np.ndarray, e_aa: np.ndarray, e_cc: np.ndarray, degree: int = 3) -> RegressionFit:
    """Fit f_a, f_c of the given degree to pixel values (arrays of any shape; NaN ignored)."""
    X, e_aa, e_cc = (np.asarray(v, dtype=float).ravel() for v in (X, e_aa, e_cc))
    if not X.shape == e_aa.shape == e_cc.shape:
        raise InputError("X, e_aa and e_cc must have the same number of pixels", field="X")
    valid = np.isfinite(X) & np.isfinite(e_aa) & np.isfinite(e_cc)
    if valid.sum() <= degree + 1:
        raise InputError(f"M0 needs more than {degree + 1} valid pixels, got {valid.sum()}",
                         field="X")
    V = legendre.vandermonde(X[valid], degree)
    distinct = np.unique(X[valid]).size
    if distinct <= degree:  # V^T V singular: the law of this degree is not determined
        raise InputError(f"the composition of the used pixels takes {distinct} distinct "
                         f"value(s) in [{X[valid].min():.3g}, {X[valid].max():.3g}]: a "
                         f"degree-{degree} regression needs at least {degree + 1}; lower the "
                         "degree (m0_degree)", field="X")
    coeffs_a, cov_a = _ols(V, e_aa[valid])
    coeffs_c, cov_c = _ols(V, e_cc[valid])
    n = degree + 1
    covariance = np.zeros((2 * n, 2 * n))
    covariance[:n, :n], covariance[n:, n:] = cov_a, cov_c
    return RegressionFit(degree, coeffs_a, coeffs_c, covariance, int(valid.sum()))
