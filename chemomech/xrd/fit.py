r"""Dislocation densities per slip system by non-negative least squares over reflections.

Per reflection r the variance method gives :math:`\Lambda_r\rho` (1/nm^2); dividing by
:math:`(\pi/2) g_r^2` leaves :math:`y_r = \sum_s |b_s|^2 \bar C_{r,s}\,\rho_s`, linear in the
densities.  With the design matrix :math:`A_{rs} = |b_s|^2 \bar C_{r,s}` (nm^2) we solve
:math:`\min_{\rho \ge 0} \sum_r ((A\rho - y)_r/\sigma_r)^2` with `scipy.optimize.nnls`.
"Data explained" is :math:`1 - \sum_r w_r (y_r - (A\rho)_r)^2 / \sum_r w_r y_r^2`.
Uncertainties: parametric bootstrap (y drawn from N(y, sigma), refitted).

The averaged contrast factors of an mmm crystal are quartic forms with only six independent
terms (gamma_1^4, gamma_2^4, gamma_3^4, gamma_1^2 gamma_2^2, ...), so at most six systems are
distinguishable; with more candidates NNLS returns one sparse solution among many.  The rank
is reported and `best_combinations` ranks every small subset by the data it explains.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from chemomech.exceptions import InputError

logger = logging.getLogger(__name__)

#: 1 nm^-2 = 1e6 um^-2.
UM2_PER_NM2 = 1.0e6


def reduced_broadening(lambda_rho: np.ndarray, s: np.ndarray) -> np.ndarray:
    """y = Lambda rho / ((pi/2) g^2), dimensionless (= sum_s b_s^2 C_s rho_s), g = s in 1/nm."""
    return np.asarray(lambda_rho) / (0.5 * np.pi * np.asarray(s) ** 2)


@dataclass(frozen=True)
class DensityFit:
    """NNLS result: densities (1/um^2) per system, bootstrap spread, fit quality."""

    labels: tuple[str, ...]
    densities: np.ndarray
    sigma: np.ndarray
    ci95: np.ndarray
    data_explained: float
    rank: int
    y: np.ndarray
    y_sigma: np.ndarray
    y_fit: np.ndarray

    @property
    def total(self) -> float:
        """Total density sum_s rho_s (1/um^2)."""
        return float(self.densities.sum())

    def summary(self) -> dict:
        """JSON-ready numbers."""
        labels = list(self.labels)
        return {"systems": labels,
                "densities_per_um2": {k: float(v) for k, v in
                                      zip(labels, self.densities, strict=True)},
                "sigma_per_um2": {k: float(v) for k, v in zip(labels, self.sigma, strict=True)},
                "ci95_per_um2": {k: [float(v[0]), float(v[1])] for k, v in
                                 zip(labels, self.ci95, strict=True)},
                "total_density_per_um2": self.total,
                "data_explained": self.data_explained, "design_rank": self.rank}


def _weighted_nnls(A: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """argmin_{x >= 0} || sqrt(w) (A x - y) ||."""
    sw = np.sqrt(w)
    x, _ = nnls(A * sw[:, None], y * sw, maxiter=50 * A.shape[1])
    return x


def data_explained(A: np.ndarray, y: np.ndarray, w: np.ndarray, x: np.ndarray) -> float:
    """1 - sum w (y - A x)^2 / sum w y^2 (a fraction, 1 = all of it)."""
    return float(1.0 - np.sum(w * (y - A @ x) ** 2) / np.sum(w * y**2))


def fit_densities(design_nm2: np.ndarray, y: np.ndarray, y_sigma: np.ndarray,
                  labels: Sequence[str], *, n_bootstrap: int = 500,
                  seed: int = 0) -> DensityFit:
    """Weighted NNLS densities (1/um^2) with parametric-bootstrap sigma and 95 % intervals."""
    A = np.asarray(design_nm2, dtype=float) / UM2_PER_NM2      # per 1/um^2
    y, y_sigma = np.asarray(y, dtype=float), np.asarray(y_sigma, dtype=float)
    n_refl, n_sys = A.shape
    if len(labels) != n_sys or y.shape != (n_refl,) or y_sigma.shape != (n_refl,):
        raise InputError("design matrix, y, sigma and labels do not agree in size",
                         field="systems")
    if n_refl < n_sys:
        raise InputError(f"{n_refl} reflections cannot determine {n_sys} slip-system "
                         "densities: give at least as many reflections as systems, or "
                         "fewer candidate systems", field="reflections")
    if np.any(y_sigma <= 0):
        raise InputError("broadening uncertainties must be positive", field="sigma")
    rank = int(np.linalg.matrix_rank(A / np.linalg.norm(A, axis=0), tol=1e-8))
    if rank < n_sys:
        logger.warning("contrast factors of the %d candidate systems span only %d dimensions: "
                       "densities are not unique (NNLS returns a sparse solution)", n_sys, rank)
    w = 1.0 / y_sigma**2
    x = _weighted_nnls(A, y, w)
    rng = np.random.default_rng(seed)
    boots = np.array([_weighted_nnls(A, y + rng.normal(0.0, y_sigma), w)
                      for _ in range(n_bootstrap)]) if n_bootstrap > 1 else x[None, :]
    sigma = boots.std(axis=0, ddof=1) if n_bootstrap > 1 else np.zeros(n_sys)
    ci = np.percentile(boots, [2.5, 97.5], axis=0).T
    fit = DensityFit(labels=tuple(labels), densities=x, sigma=sigma, ci95=ci,
                     data_explained=data_explained(A, y, w, x), rank=rank, y=y,
                     y_sigma=y_sigma, y_fit=A @ x)
    logger.info("NNLS over %d systems, %d reflections: total %.4g 1/um^2, %.1f %% explained",
                n_sys, n_refl, fit.total, 100 * fit.data_explained)
    return fit


def best_combinations(design_nm2: np.ndarray, y: np.ndarray, y_sigma: np.ndarray,
                      labels: Sequence[str], max_systems: int = 3,
                      top: int = 5) -> list[dict]:
    """Every subset of <= max_systems systems fitted by NNLS, best `top` by data explained."""
    A = np.asarray(design_nm2, dtype=float) / UM2_PER_NM2
    w = 1.0 / np.asarray(y_sigma, dtype=float) ** 2
    rows = []
    for k in range(1, min(max_systems, A.shape[0], A.shape[1]) + 1):
        for combo in itertools.combinations(range(A.shape[1]), k):
            x = _weighted_nnls(A[:, combo], y, w)
            if np.any(x <= 0):
                continue                      # a member unused: the smaller subset covers it
            rows.append({"systems": [labels[i] for i in combo],
                         "densities_per_um2": [float(v) for v in x],
                         "data_explained": data_explained(A[:, combo], y, w, x)})
    rows.sort(key=lambda r: -r["data_explained"])
    return rows[:top]


def effective_density(y: np.ndarray, reference_burgers_nm: float) -> np.ndarray:
    """rho*_r = y_r / b_ref^2 = sum_s rho_s C_rs (b_s/b_ref)^2 in 1/um^2 (Fig. 4's quantity)."""
    return np.asarray(y) / reference_burgers_nm**2 * UM2_PER_NM2
