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
conservative direction).  Cost: one integration per particle per draw.  The same covariance
in closed form, `exact_integrated_noise_covariance` (the noise part of the pipeline's
default, calibrated band), costs 2(N+1) adjoint integrations per particle and has no
sampling error in its shape; the Monte Carlo stays as its test oracle.

Bands are pointwise (not simultaneous) at `level` (default 95 %), normal quantile.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from mpi4py import MPI
from scipy import stats

from chemomech.correlative.frames import similarity
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


class IntegratedStrainNoise:
    r"""The linear map from strain-map noise to the displacement misfit's rows, and its adjoint.

    :math:`d = \mathcal{M}\xi`: unit i.i.d. noise :math:`\xi` on the stored maps (e_xx, e_yy,
    e_xy, theta) at the valid pixels -> gradient :math:`H = Q H_\mathrm{cr}(\xi) Q^T` ->
    least-squares integration (`chemomech.correlative.displacement.GradientIntegrator`,
    factorised once) -> displacement (nm) at `misfit`'s local rows (pixel-major,
    component-minor), exactly as `strain_noise_sampler` draws it.  `forward` and `adjoint`
    take batches (last axis); each costs one multi-RHS back-substitution per component.
    With Dirichlet data pass `boundary`, the particle's `chemomech.inverse.particle._Particle`:
    the noise also moves the imposed boundary values, so
    :math:`\mathcal{M}\xi = R\,U\xi - B A^{-1} b_0(U\xi)` (U the integrated displacement
    image) and the adjoint subtracts :math:`U^T` of `_Particle.boundary_response_adjoint`
    (one more back-substitution per column; both collective on the particle's communicator).
    `integrator`: the `GradientIntegrator` that integrated the data (`PreparedParticle`), used
    when its pixels and pixel size are these (else one is factorised here).
    """

    def __init__(self, particle, pixel_ij: np.ndarray, misfit, boundary=None,
                 integrator=None):
        from chemomech.correlative.displacement import GradientIntegrator
        from chemomech.correlative.frames import frame_matrix

        fields = ("e_xx", "e_yy", "e_xy", "theta")
        valid = particle.mask & np.all([np.isfinite(getattr(particle, k)) for k in fields],
                                       axis=0)
        same = integrator is not None and integrator.h == float(particle.pixel_size_nm) \
            and np.array_equal(integrator.valid, valid)
        self.integrator = integrator if same else GradientIntegrator(valid,
                                                                     particle.pixel_size_nm)
        rotation = 0.0 if particle.strain_frame == "image" else particle.rotation_rad
        self.Q = frame_matrix(rotation)
        self.s = particle.theta_sign
        index = np.full(valid.shape, -1, dtype=np.int64)
        index[valid] = np.arange(int(valid.sum()))
        ij = np.asarray(pixel_ij)[misfit.point_indices]
        self.rows = index[ij[:, 0], ij[:, 1]]
        if np.any(self.rows < 0):
            raise InputError("a misfit pixel has no valid strain data to integrate",
                             field="mask")
        self.num_noise = 4 * int(valid.sum())
        self.boundary = boundary
        self.valid = valid

    def _image(self, u_valid: np.ndarray) -> np.ndarray:
        """(nx, ny, 2) displacement image from values at the valid pixels (NaN elsewhere)."""
        image = np.full(self.valid.shape + (2,), np.nan)
        image[self.valid] = u_valid
        return image

    def forward(self, xi: np.ndarray) -> np.ndarray:
        """d (n_rows, m) from noise xi (4, n_valid, m) ordered e_xx, e_yy, e_xy, theta."""
        e_xx, e_yy, e_xy, theta = xi
        Hc = np.empty((xi.shape[1], 2, 2, xi.shape[2]))
        Hc[:, 0, 0], Hc[:, 1, 1] = e_xx, e_yy
        Hc[:, 0, 1], Hc[:, 1, 0] = e_xy + self.s * theta, e_xy - self.s * theta
        H = similarity(self.Q, Hc, axes=(1, 2))
        u_valid = self.integrator.integrate_valid(H)  # (n_valid, 2, m)
        u = u_valid[self.rows]  # (n_points, 2, m)
        d = u.reshape(-1, u.shape[-1])
        if self.boundary is not None:
            for k in range(d.shape[1]):
                d[:, k] -= self.boundary.boundary_response(self._image(u_valid[..., k]))
        return d

    def adjoint(self, y: np.ndarray) -> np.ndarray:
        """M^T y: (4, n_valid, m) for y (n_rows, m)."""
        m = y.shape[-1]
        U = np.zeros((self.num_noise // 4, 2, m))
        np.add.at(U, self.rows, y.reshape(-1, 2, m))
        if self.boundary is not None:  # this rank's part (summed by the caller, as the rows)
            for k in range(m):
                U[..., k] -= self.boundary.boundary_response_adjoint(y[:, k],
                                                                     self.valid)[self.valid]
        H = self.integrator.integrate_transpose(U)
        Hc = similarity(self.Q.T, H, axes=(1, 2))
        return np.stack([Hc[:, 0, 0], Hc[:, 1, 1], Hc[:, 0, 1] + Hc[:, 1, 0],
                         self.s * (Hc[:, 0, 1] - Hc[:, 1, 0])])


def exact_integrated_noise_covariance(model, fit, operators: Mapping[str, IntegratedStrainNoise],
                                      n_probes: int = 20, seed: int = 0
                                      ) -> tuple[np.ndarray, float]:
    r"""Covariance of the M1 coefficients under strain noise integrated to d, in closed form.

    With :math:`\hat a = N^{-1} \sum_k G_k^T P_k \mathcal{M}_k \xi_k` (N = G^T G, particles
    independent) the unit-noise covariance is exact:

    .. math:: C_1 = N^{-1} \Big(\sum_k W_k^T W_k\Big) N^{-1},\qquad
              W_k = \mathcal{M}_k^T G_k ,

    2(N+1) adjoint integrations per particle (`IntegratedStrainNoise.adjoint`), no sampling.
    The noise level is calibrated as in `integrated_noise_covariance`,
    :math:`\hat\sigma^2 = 2J / E|r_1|^2` with the expected unit-noise residual

    .. math:: E|r_1|^2 = \sum_k \operatorname{tr}(P_k \Sigma_k P_k)
              - \operatorname{tr}\Big(N^{-1}\sum_k W_k^T W_k\Big),\quad
              \Sigma_k = \mathcal{M}_k\mathcal{M}_k^T ;

    the second trace is exact, the first (a sum of pixel variances, which would need one
    integration per observed row) is a Hutchinson estimate :math:`\overline{|P\mathcal{M}\xi|^2}`
    over `n_probes` Gaussian probes (its relative standard error is logged; it sets only the
    scalar :math:`\hat\sigma^2`).  Returns :math:`\hat\sigma^2 C_1` and :math:`\hat\sigma^2`.
    Collective over the model's world; deterministic for a given seed and rank count.
    """
    if fit.normal_matrix is None:
        raise InputError("the fit has no normal matrix (fit(..., with_normal_matrix=True))")
    if n_probes < 2:
        raise InputError(f"need at least 2 probes, got {n_probes}", field="n_probes")
    world, group = model.world, model.group
    leader = group.rank == 0
    N_inv = (np.linalg.pinv(fit.normal_matrix, rcond=1e-14, hermitian=True)
             if getattr(fit, "transform", None) is None
             else fit.normal_inverse())  # T (T^T N T)^-1 T^T under a gauge
    p = N_inv.shape[0]
    WtW = np.zeros((p, p))
    probe_sq = np.zeros(n_probes)
    for s in model.linear_system():
        op = operators[s.name]
        G = s.misfit.project(s.columns)
        W = s.comm.allreduce(op.adjoint(G).reshape(op.num_noise, p))  # sum over row owners
        rng = np.random.default_rng([seed, zlib.crc32(s.name.encode())])
        xi = rng.normal(0.0, 1.0, (4, op.num_noise // 4, n_probes))  # same on every rank
        Pn = s.misfit.project(op.forward(xi))
        sq = s.comm.allreduce(np.sum(Pn * Pn, axis=0))
        if leader:
            WtW += W.T @ W
            probe_sq += sq
    WtW = world.allreduce(WtW, op=MPI.SUM)
    probe_sq = world.allreduce(probe_sq, op=MPI.SUM)
    trace_P_sigma = float(probe_sq.mean())
    residual_sq = trace_P_sigma - float(np.trace(N_inv @ WtW))
    sigma2 = 2.0 * fit.cost / residual_sq
    rel_se = float(probe_sq.std(ddof=1) / np.sqrt(n_probes) / trace_P_sigma)
    logger.info("integrated-noise covariance (exact, %d probes for the noise level: trace "
                "relative s.e. %.2g): strain noise sigma = %.3g", n_probes, rel_se,
                np.sqrt(sigma2))
    return sigma2 * (N_inv @ WtW @ N_inv), sigma2


# --------------------------------------------------------------------------- calibrated bands
# The Gauss-Newton band above assumes i.i.d. noise and an exact model.  On twins that this
# package did not make (chemomech.twins), the discretisation/model error (P1 on the pixel-mask
# mesh against the pixel-averaged truth of a smooth particle) is spatially correlated and
# several times the noise band, and errors in the composition (noise, blur, misregistration)
# bias and spread the fit.  The functions below account for both:
#   * `sandwich_covariance`: the cluster-robust (sandwich) covariance
#     N^-1 (sum_B s_B s_B^T) N^-1 over square pixel blocks B, s_B = G_B^T r_B the block score
#     of the projected residual r = P d - G a (CR1 factor g / (g - 1), g blocks); residuals
#     correlated within a block, whatever their cause, enter at their actual size;
#   * `noise_floor`: the sandwich, never below the Gauss-Newton covariance;
#   * `calibrated_fit`: the mesh-refinement estimate of the discretisation error (fit on the
#     mesh refined once; the change enters as delta delta^T);
#   * `errors_in_variables`: Monte Carlo over X draws (a parametric bootstrap: noise of the
#     stated std on a smoothed X, and a random registration offset of the stated std),
#     refitting each draw: the spread is the X-error covariance, the mean shift the noise
#     bias; a stated blur enters by the change of the fit when blurred once more;
#   * `calibrated_band`: the band with Student-t quantile on g - p degrees of freedom.


def block_index(points_nm: np.ndarray, block_nm: float) -> np.ndarray:
    """Integer block labels (n_points, 2) of square blocks of side `block_nm` (nm)."""
    if not block_nm > 0:
        raise InputError(f"block size must be positive, got {block_nm}", field="block_nm")
    return np.floor(np.asarray(points_nm, dtype=float) / block_nm).astype(np.int64)


def block_scores(G: np.ndarray, r: np.ndarray, points_nm: np.ndarray, components: int,
                 block_nm: float) -> dict[tuple[int, int], np.ndarray]:
    """Scores s_B = sum over the rows of block B of G_row r_row (rows point-major)."""
    labels = np.repeat(block_index(points_nm, block_nm), components, axis=0)
    keys, inverse = np.unique(labels, axis=0, return_inverse=True)
    contributions = G * np.asarray(r)[:, None]
    sums = np.zeros((len(keys), G.shape[1]))
    np.add.at(sums, inverse.ravel(), contributions)
    return {(int(k[0]), int(k[1])): s for k, s in zip(keys, sums, strict=True)}


def sandwich_covariance(model, fit, block_nm: float | Mapping[str, float]
                        ) -> tuple[np.ndarray, int]:
    r"""Cluster-robust covariance of the M1 coefficients, and the number of blocks g.

    :math:`C = \tfrac{g}{g-1} N^{-1} \left(\sum_B s_B s_B^T\right) N^{-1}`, blocks of
    side `block_nm` (nm; one value, or one per particle name) in each particle,
    :math:`s_B = G_B^T (P d' - G a)_B` (d' the data less the fixed load's response, the
    system of `M1Model.linear_system`); under a gauge N^-1 is `FitResult.normal_inverse`.
    Collective over the model's world.
    """
    if fit.normal_matrix is None:
        raise InputError("the fit has no normal matrix (fit(..., with_normal_matrix=True))")
    world, group = model.world, model.group
    a = np.asarray(fit.coefficients, dtype=float)
    N_inv = fit.normal_inverse()
    mine = []
    for s in model.linear_system():
        if s.points is None:
            raise InputError(f"particle {s.name!r}: the misfit has no pixel points")
        G = s.misfit.project(s.columns)
        r = s.misfit.project(s.data) - G @ a
        side = block_nm[s.name] if isinstance(block_nm, Mapping) else block_nm
        scores = block_scores(G, r, s.points, s.components, side)
        merged: dict = {}
        for part in s.comm.allgather(scores):
            for key, value in part.items():
                merged[key] = merged.get(key, 0.0) + value
        if group.rank == 0:
            mine.extend(merged.values())
    everything = [score for part in world.allgather(mine) for score in part]
    g = len(everything)
    if g <= fit.num_parameters:
        raise InputError(f"{g} blocks for {fit.num_parameters} coefficients: use smaller "
                         f"blocks", field="block_nm")
    S = np.array(everything)
    meat = S.T @ S * g / (g - 1.0)
    return N_inv @ meat @ N_inv, g


def noise_floor(sandwich: np.ndarray, gauss_newton: np.ndarray) -> np.ndarray:
    r"""The sandwich covariance, never below the i.i.d.-noise one in any direction.

    With :math:`W = C_{GN}^{-1/2} S C_{GN}^{-1/2} = Q \Lambda Q^T`, returns
    :math:`C_{GN}^{1/2} Q \max(\Lambda, 1) Q^T C_{GN}^{1/2}`: a sandwich estimated from a few
    dozen blocks may fall below the noise it contains; the noise level itself is known better.
    The square roots act on the range of :math:`C_{GN}` (eigenvalues above 1e-12 of the
    largest): directions a gauge fixes keep zero variance.
    """
    w, U = np.linalg.eigh(np.asarray(gauss_newton, dtype=float))
    keep = w > 1e-12 * max(w.max(), 0.0)
    U, w = U[:, keep], w[keep]
    half = U * np.sqrt(w)  # C_GN^(1/2) on its range (n x r)
    inv_half = U / np.sqrt(w)
    lam, Q = np.linalg.eigh(inv_half.T @ np.asarray(sandwich, dtype=float) @ inv_half)
    return half @ (Q * np.maximum(lam, 1.0)) @ Q.T @ half.T


def shifted_image(image: np.ndarray, shift_px: Sequence[float]) -> np.ndarray:
    """image(i + di, j + dj) by bilinear interpolation, NaN pixels filled by the nearest value."""
    from scipy import ndimage

    from chemomech.mechanics.mesh import fill_nearest

    i, j = np.meshgrid(np.arange(image.shape[0]) + float(shift_px[0]),
                       np.arange(image.shape[1]) + float(shift_px[1]), indexing="ij")
    return ndimage.map_coordinates(fill_nearest(image), [i, j], order=1, mode="nearest")


def errors_in_variables(refit: Callable, X: np.ndarray | Mapping[str, np.ndarray],
                        mask: np.ndarray | Mapping[str, np.ndarray], noise_composition: float,
                        registration_px: float, blur_px: float = 0.0, n_draws: int = 12,
                        seed: int = 0, bias_correction: bool = True) -> dict[str, np.ndarray]:
    r"""Monte Carlo over composition maps: coefficients and the covariance of X errors.

    `refit(X_images)` returns the coefficient vector; :math:`a_0 = \mathrm{refit}(X)`.  `X`
    and `mask` are one image each, or mappings particle name -> image (a joint fit: `refit`
    then receives a mapping; each particle draws its own errors from a generator keyed by
    (seed, name, draw), so the draws do not depend on which rank holds the particle).  X is
    extended beyond the mask by its nearest value before it is shifted or blurred.
      * Noise (parametric bootstrap): :math:`\hat X` = X smoothed (Gaussian, 1 px) stands for
        the noise-free map; refits of :math:`\mathrm{clip}(\hat X + e_k)`,
        :math:`e_k \sim N(0, \sigma_X^2)` per pixel, give the noise bias
        :math:`b_X = \bar a_e - a(\hat X)` (removed when `bias_correction`) and spread.
      * Registration: refits of :math:`\mathrm{clip}(\hat X(\cdot + \delta_k) + e_k)`,
        :math:`\delta_k \sim N(0, \sigma_r^2 I)` px per particle: their covariance (it
        contains the noise).
      * Blur: :math:`d_B = a(G_{\sigma_B} * X) - a_0`, the change when the map is blurred once
        more by the stated std (px), enters as :math:`d_B d_B^T` (not removed).
    Cost: up to 2 `n_draws` + 2 refits.  Returns ``coefficients`` (:math:`a_0 - b_X`),
    ``covariance``, ``bias``, ``draws``.
    """
    if min(noise_composition, registration_px, blur_px) < 0 or n_draws < 2:
        raise InputError("need noise_composition, registration_px, blur_px >= 0 and "
                         "n_draws >= 2", field="errors_in_variables")
    from scipy import ndimage

    from chemomech.mechanics.mesh import fill_nearest

    single = not isinstance(X, Mapping)
    images = {"": X} if single else dict(X)
    masks = {"": mask} if single else dict(mask)
    masks = {k: np.asarray(masks[k], dtype=bool) for k in images}

    def fit(maps: Mapping[str, np.ndarray]) -> np.ndarray:
        out = {k: np.where(masks[k], v, np.nan) for k, v in maps.items()}
        return np.asarray(refit(out[""] if single else out), dtype=float)

    a0 = fit(images)
    filled = {k: fill_nearest(v, masks[k]) for k, v in images.items()}
    smooth = ({k: ndimage.gaussian_filter(v, 1.0, mode="nearest") for k, v in filled.items()}
              if noise_composition else filled)

    def draw(k: int, shift: bool) -> dict[str, np.ndarray]:
        out = {}
        for name, image in smooth.items():
            rng = np.random.default_rng([seed, zlib.crc32(name.encode()), k, int(shift)])
            if shift:
                image = shifted_image(image, rng.normal(0.0, registration_px, 2))
            if noise_composition > 0:
                image = np.clip(image + rng.normal(0.0, noise_composition, image.shape),
                                0.0, 1.0)
            out[name] = image
        return out

    bias = np.zeros_like(a0)
    cov = np.zeros((a0.size, a0.size))
    draws = None
    if noise_composition > 0:
        draws = np.array([fit(draw(k, False)) for k in range(n_draws)])
        if bias_correction:
            bias = draws.mean(axis=0) - fit(smooth)
            cov += np.cov(draws, rowvar=False) / n_draws
    if registration_px > 0:
        draws = np.array([fit(draw(k, True)) for k in range(n_draws)])
    if draws is not None:
        cov += np.cov(draws, rowvar=False)
    if blur_px > 0:
        d = fit({k: ndimage.gaussian_filter(v, blur_px, mode="nearest")
                 for k, v in filled.items()}) - a0
        cov += np.outer(d, d)
    return {"coefficients": a0 - bias, "covariance": cov, "bias": bias,
            "draws": np.zeros((0, a0.size)) if draws is None else draws}


def discretisation_covariance(coefficients: Sequence[float], other: Sequence[float],
                              ratio: float, rate: float) -> tuple[np.ndarray, np.ndarray]:
    r"""Richardson estimate of the mesh error of `coefficients` (mesh h) from a fit on the mesh
    of size `ratio` h (`other`), for an error :math:`a_h - a_0 \approx C h^p`:

    .. math:: e_h = \frac{a_h - a_{rh}}{1 - r^p},\qquad C_\mathrm{disc} = e_h e_h^T .

    Returns (C_disc, e_h).  ratio 2 (a coarser mesh, cheap) or 1/2 (refined); rate p > 0.
    """
    if not (rate > 0 and ratio > 0 and ratio != 1):
        raise InputError(f"need rate > 0 and a mesh ratio != 1, got {rate}, {ratio}",
                         field="discretisation_rate")
    e = (np.asarray(coefficients, float) - np.asarray(other, float)) / (1.0 - ratio**rate)
    return np.outer(e, e), e


def student_t_factor(dof: int, level: float = 0.95) -> float:
    """(t_dof / z)^2 at `level`: the covariance factor that turns a normal-quantile band into
    a Student-t band on `dof` degrees of freedom."""
    if dof < 1:
        raise InputError(f"need at least one degree of freedom, got {dof}", field="dof")
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    t = float(stats.t.ppf(0.5 + level / 2.0, dof))
    return (t / z) ** 2


def calibrated_band(coefficients: Sequence[float], cov: np.ndarray, dof: int,
                    X: np.ndarray | None = None, level: float = 0.95,
                    derivative: bool = False) -> dict[str, np.ndarray]:
    """Pointwise band f +- t_dof sqrt(V C V^T) (Student t on `dof` degrees of freedom)."""
    factor = student_t_factor(dof, level)
    design = legendre.vandermonde_derivative if derivative else legendre.vandermonde
    return _bands(design, coefficients, np.asarray(cov, dtype=float) * factor, X, level)


def calibrated_fit(build_model: Callable[[np.ndarray, float], object], X: np.ndarray,
                   mask: np.ndarray, *, mesh_size_px: float = 1.0, block_nm: float,
                   noise_composition: float = 0.0, registration_px: float = 0.0,
                   blur_px: float = 0.0, n_draws: int = 12, seed: int = 0,
                   bias_correction: bool = True) -> dict:
    r"""Coefficients and a calibrated covariance: noise, discretisation and X errors.

    `build_model(X_image, mesh_size_px)` returns an M1Model (linear fits).  The fit is made on
    the mesh refined once (size/2) and the discretisation error estimated by the change
    :math:`\delta = a_{h/2} - a_h` (error ~ h: the fine fit's error ~ delta), entering as
    :math:`\delta\delta^T`; plus `sandwich_covariance` of the fine fit over blocks of
    `block_nm`, floored by the Gauss-Newton covariance (`noise_floor`); plus, when X carries
    noise, blur or a registration uncertainty, the `errors_in_variables` covariance and SIMEX
    biases (Monte Carlo on the coarse mesh).
    Returns ``coefficients``, ``covariance``, ``dof`` (blocks - p) and its parts.
    """
    coarse = build_model(X, mesh_size_px)
    fine = build_model(X, mesh_size_px / 2.0)
    fit_coarse, fit_fine = coarse.fit("linear"), fine.fit("linear")
    a = np.asarray(fit_fine.coefficients, dtype=float)
    delta = a - np.asarray(fit_coarse.coefficients, dtype=float)
    sandwich, g = sandwich_covariance(fine, fit_fine, block_nm)
    gauss_newton, _ = fit_covariance(fit_fine)
    parts = {"sandwich": noise_floor(sandwich, gauss_newton),
             "discretisation": np.outer(delta, delta)}
    bias = np.zeros_like(a)
    if noise_composition > 0 or registration_px > 0 or blur_px > 0:
        eiv = errors_in_variables(
            lambda Xk: build_model(Xk, mesh_size_px).fit("linear").coefficients, X, mask,
            noise_composition, registration_px, blur_px, n_draws=n_draws, seed=seed,
            bias_correction=bias_correction)
        parts["composition"] = eiv["covariance"]
        bias = eiv["bias"]
    return {"coefficients": a - bias, "covariance": sum(parts.values()), "dof": g - a.size,
            "bias": bias, "parts": parts}
