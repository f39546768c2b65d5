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
registration of X).  In the twin experiment (tests/test_uncertainty.py) the Gauss-Newton
band of the strain misfit covers the truth ~95 % of the time, that of the displacement misfit
only ~20 % (the estimates scatter ~7x more than the i.i.d. formula says).

For the displacement misfit use `integrated_noise_covariance`: i.i.d. noise on the measured
strain maps is propagated through the very integration that made d
(`chemomech.correlative.displacement.integrate_gradient`) and through the fit by Monte Carlo,
:math:`\hat a_k = (G^T G)^{-1} G^T P n_k`; the noise level is calibrated so that the expected
residual norm matches the observed one (model error therefore widens the band, the
conservative direction).  Cost: one integration per particle per draw.

Bands are pointwise (not simultaneous) at `level` (default 95 %), normal quantile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from mpi4py import MPI
from scipy import stats

from chemomech.exceptions import InputError
from chemomech.io.progress import progress
from chemomech.mechanics import legendre

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
    if getattr(fit, "transform", None) is None:
        return covariance(fit.normal_matrix, fit.cost, fit.num_observations, fit.num_nuisance)
    sigma2 = noise_variance(fit.cost, fit.num_observations, fit.num_parameters,
                            fit.num_nuisance)  # under a gauge: in the free coefficients
    return sigma2 * fit.normal_inverse(), sigma2


def _split(coefficients: Sequence[float], cov: np.ndarray) -> tuple:
    a = np.asarray(coefficients, dtype=float)
    if a.size % 2 or np.shape(cov) != (a.size, a.size):
        raise InputError(f"need 2(N+1) coefficients and a matching covariance, got {a.size} "
                         f"and {np.shape(cov)}", field="covariance")
    n = a.size // 2
    cov = np.asarray(cov, dtype=float)
    return n - 1, a[:n], a[n:], cov[:n, :n], cov[n:, n:]


def _bands(design_matrix, coefficients: Sequence[float], cov: np.ndarray,
           X: np.ndarray | None, level: float) -> dict[str, np.ndarray]:
    """Values V c and pointwise bands +- z sqrt(V C V^T) of f_a and f_c for a design V(X, N)."""
    X = np.linspace(0.0, 1.0, 101) if X is None else np.asarray(X, dtype=float)
    degree, ca, cc, Ca, Cc = _split(coefficients, cov)
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    V = design_matrix(X, degree)
    out = {"X": X}
    for d, coef, C in (("a", ca, Ca), ("c", cc, Cc)):
        value = V @ coef
        std = np.sqrt(np.maximum(np.einsum("xi,ij,xj->x", V, C, V), 0.0))
        out |= {d: value, f"{d}_lo": value - z * std, f"{d}_hi": value + z * std}
    return out


def eigenstrain_band(coefficients: Sequence[float], cov: np.ndarray, X: np.ndarray | None = None,
                     level: float = 0.95) -> dict[str, np.ndarray]:
    """f_a(X), f_c(X) (dimensionless) with pointwise `level` bands f +- z sqrt(V C V^T)."""
    return _bands(legendre.vandermonde, coefficients, cov, X, level)


def derivative_band(coefficients: Sequence[float], cov: np.ndarray,
                    X: np.ndarray | None = None, level: float = 0.95) -> dict[str, np.ndarray]:
    """df_a/dX, df_c/dX (chemical expansion coefficients, per unit X) with pointwise bands."""
    return _bands(legendre.vandermonde_derivative, coefficients, cov, X, level)


def band_to_lists(band: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """The band with plain lists (for summary.json)."""
    return {k: np.asarray(v, dtype=float).tolist() for k, v in band.items()}


def strain_noise_sampler(particle, pixel_ij: np.ndarray, misfit,
                         boundary_response: Callable[[np.ndarray], np.ndarray] | None = None
                         ) -> Callable[[np.random.Generator], np.ndarray]:
    """Draws of unit-variance i.i.d. noise on the stored strain maps (e_xx, e_yy, e_xy, theta of
    `particle`, a `chemomech.io.stack.ParticleData`), integrated to displacement like the data and
    returned at `misfit`'s local rows; `pixel_ij` (n_points, 2) are the image indices of the
    misfit's point list (`ParticleMesh.pixel_indices()`).  The integration is factorised once.
    With Dirichlet data the same noise also moves the boundary values: pass
    `boundary_response` (the observed response B u_0(n) to a displacement image n imposed on
    the boundary, `M1Model.boundary_response`), which is subtracted from the draw."""
    from chemomech.correlative.displacement import GradientIntegrator
    from chemomech.correlative.frames import gradient_crystal, rotate_tensor_field

    ij = np.asarray(pixel_ij)[misfit.point_indices]
    fields = ("e_xx", "e_yy", "e_xy", "theta")
    valid = particle.mask & np.all([np.isfinite(getattr(particle, k)) for k in fields], axis=0)
    integrate = GradientIntegrator(valid, particle.pixel_size_nm)
    rotation = 0.0 if particle.strain_frame == "image" else particle.rotation_rad

    def draw(rng: np.random.Generator) -> np.ndarray:
        noise = [rng.normal(0.0, 1.0, valid.shape) for _ in fields]
        H = rotate_tensor_field(gradient_crystal(*noise, particle.theta_sign), rotation)
        u, _ = integrate(H)
        draw_rows = u[ij[:, 0], ij[:, 1]].ravel()
        return draw_rows if boundary_response is None else draw_rows - boundary_response(u)

    return draw


def integrated_noise_covariance(model, fit, samplers: Mapping[str, Callable],
                                n_draws: int = 100, seed: int = 0) -> tuple[np.ndarray, float]:
    r"""Monte Carlo covariance of the M1 coefficients under strain noise integrated to d.

    `samplers[name](rng)` returns a unit-variance noise draw at that particle's local rows
    (`strain_noise_sampler`).  Returns :math:`\hat\sigma^2 C_1` and :math:`\hat\sigma^2`, with
    :math:`C_1 = \overline{\hat a_k \hat a_k^T}` and
    :math:`\hat\sigma^2 = 2J / \overline{|P n_k - G \hat a_k|^2}` (per unit noise variance).
    Collective over the model's world; deterministic for a given seed and rank count.
    """
    if fit.normal_matrix is None:
        raise InputError("the fit has no normal matrix (fit(..., with_normal_matrix=True))")
    world, group = model.world, model.group
    leader = group.rank == 0
    systems = model.linear_system()
    names = sorted({n for part in world.allgather([s.name for s in systems] if leader else [])
                    for n in part})
    N_inv = (np.linalg.pinv(fit.normal_matrix, rcond=1e-14, hermitian=True)
             if getattr(fit, "transform", None) is None
             else fit.normal_inverse())  # T (T^T N T)^-1 T^T under a gauge
    projected = [s.misfit.project(s.columns) for s in systems]
    p = N_inv.shape[0]
    moments = np.zeros((p, p))
    residual_sq = 0.0
    for k in progress(range(n_draws), "integrated-noise draws", rank=world.rank, log=logger):
        g = np.zeros(p)
        draws = []
        for s, G in zip(systems, projected, strict=True):
            rng = np.random.default_rng([seed, k, names.index(s.name)])
            Pn = s.misfit.project(samplers[s.name](rng))
            draws.append(Pn)
            part = s.comm.allreduce(G.T @ Pn)
            g += part if leader else 0.0
        a = N_inv @ world.allreduce(g, op=MPI.SUM)
        moments += np.outer(a, a)
        local = 0.0
        for s, G, Pn in zip(systems, projected, draws, strict=True):
            r = Pn - G @ a
            part = s.comm.allreduce(float(r @ r))
            local += part if leader else 0.0
        residual_sq += world.allreduce(local, op=MPI.SUM)
    unit_cov = moments / n_draws
    sigma2 = 2.0 * fit.cost / (residual_sq / n_draws)
    logger.info("integrated-noise covariance: %d draws, strain noise sigma = %.3g", n_draws,
                np.sqrt(sigma2))
    return sigma2 * unit_cov, sigma2
