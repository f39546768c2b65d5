"""The closed-form integrated-noise covariance against its Monte Carlo oracle, traction-free and
with Dirichlet data (where the noise also moves the imposed boundary values)."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from mpi4py import MPI

from chemomech.correlative.displacement import measured_displacement
from chemomech.inverse.particle import particle_setup
from chemomech.inverse.problem import M1Model
from chemomech.inverse.uncertainty import (
    IntegratedStrainNoise,
    exact_integrated_noise_covariance,
    integrated_noise_covariance,
    strain_noise_sampler,
)
from chemomech.mechanics.mesh import mesh_from_mask
from chemomech.synth import ParticleSpec, simulate_particle, vegard_coefficients

logger = logging.getLogger(__name__)

TRUE_A, TRUE_C = vegard_coefficients(quadratic_a=0.004, quadratic_c=-0.002)
NOISE = 1e-3
FIELDS = ("e_xx", "e_yy", "e_xy", "theta")


def _inversion(particle, comm, boundary_condition, degree=2):
    """(mesh, setup, M1Model, linear fit, its boundary particle or None); gauge auto."""
    pm = mesh_from_mask(particle.mask, particle.pixel_size_nm, comm)
    setup = particle_setup("twin", pm, particle.X, particle.rotation_rad, edge_exclusion_px=2,
                           displacement=measured_displacement(particle).u,
                           boundary_condition=boundary_condition)
    model = M1Model([setup], degree=degree, comm=comm)
    boundary = model.particles[0] if boundary_condition == "dirichlet" else None
    return pm, setup, model, model.fit("linear"), boundary


def _operators(particle, pm, setup, boundary):
    """The exact operator and the Monte Carlo sampler of one particle."""
    response = None if boundary is None else boundary.boundary_response
    return (IntegratedStrainNoise(particle, pm.pixel_indices(), setup.misfit, boundary),
            strain_noise_sampler(particle, pm.pixel_indices(), setup.misfit, response))


@pytest.fixture(scope="module")
def twin():
    """A small twin with a hole-free mask, rotated frame, strain noise NOISE."""
    spec = ParticleSpec("twin", 0.5, rotation_rad=0.3, length_nm=700, width_nm=450,
                        noise_strain=NOISE, noise_composition=0.0, seed=5,
                        coefficients_a=tuple(TRUE_A), coefficients_c=tuple(TRUE_C))
    return simulate_particle(spec)


@pytest.fixture(scope="module", params=["traction_free", "dirichlet"])
def noisy(twin, request):
    return (twin, *_inversion(twin, MPI.COMM_SELF, request.param))


def test_noise_operator_is_the_sampler_and_its_adjoint_is_exact(noisy):
    particle, pm, setup, _, _, boundary = noisy
    for p in (particle, dataclasses.replace(particle, theta_sign=-1)):
        op, sampler = _operators(p, pm, setup, boundary)
        valid = op.integrator.valid
        rng = np.random.default_rng(7)
        full = [rng.normal(0.0, 1.0, valid.shape) for _ in FIELDS]
        xi = np.stack([f[valid] for f in full])[..., None]
        d = op.forward(xi)[:, 0]
        assert np.allclose(d, sampler(np.random.default_rng(7)), rtol=1e-12, atol=1e-12)
        if boundary is not None:  # the boundary part is there
            interior = IntegratedStrainNoise(p, pm.pixel_indices(), setup.misfit).forward(xi)
            assert not np.allclose(d, interior[:, 0], atol=1e-3 * np.abs(d).max())
        # dot-product test <y, M xi> = <M^T y, xi> for random y, xi
        rng = np.random.default_rng(8)
        xi = rng.normal(size=(4, op.num_noise // 4, 3))
        y = rng.normal(size=(d.size, 3))
        lhs = np.einsum("rm,rm->m", y, op.forward(xi))
        rhs = np.einsum("fnm,fnm->m", op.adjoint(y), xi)
        assert np.allclose(lhs, rhs, rtol=1e-10)


def test_exact_covariance_equals_monte_carlo_within_its_sampling_error(noisy):
    particle, pm, setup, model, fit, boundary = noisy
    op, sampler = _operators(particle, pm, setup, boundary)
    cov, s2 = exact_integrated_noise_covariance(model, fit, {"twin": op}, n_probes=200)
    n_draws = 400
    cov_mc, s2_mc = integrated_noise_covariance(model, fit, {"twin": sampler},
                                                n_draws=n_draws, seed=3)
    # Dirichlet: the gauge fixes f(1) = a_0 + a_1 + a_2 = 0 (zero variance): compare the rest
    free = np.arange(6) if boundary is None else np.array([1, 2, 4, 5])
    if boundary is not None:
        f1 = np.r_[np.ones(3), np.zeros(3)]
        assert abs(f1 @ cov @ f1) < 1e-12 * cov[1, 1]
    # unit-noise covariances: the Monte Carlo variance estimate has relative s.e. sqrt(2/n)
    unit, unit_mc = (cov / s2)[np.ix_(free, free)], (cov_mc / s2_mc)[np.ix_(free, free)]
    se = np.sqrt(2.0 / n_draws)
    ratio = np.diag(unit_mc) / np.diag(unit)
    logger.info("MC / exact unit variances %s (s.e. %.3f); sigma2 MC / exact %.4f",
                ratio, se, s2_mc / s2)
    assert np.all(np.abs(ratio - 1.0) < 4 * se)
    # correlations: s.e. of a sample correlation (1 - rho^2) / sqrt(n)
    corr = unit / np.sqrt(np.outer(np.diag(unit), np.diag(unit)))
    corr_mc = unit_mc / np.sqrt(np.outer(np.diag(unit_mc), np.diag(unit_mc)))
    assert np.all(np.abs(corr_mc - corr) < 4 * (1 - corr**2) / np.sqrt(n_draws) + 1e-12)
    # the noise level: both estimate the same expected residual (MC and probe errors ~ 1 %)
    assert s2_mc == pytest.approx(s2, rel=0.05)
    assert np.sqrt(s2) == pytest.approx(NOISE, rel=0.3)  # the strain noise level is recovered
    assert np.all(np.linalg.eigvalsh(cov[np.ix_(free, free)]) > 0)
    # exact: independent of the probe seed except through the scalar noise level
    cov2, s2b = exact_integrated_noise_covariance(model, fit, {"twin": op}, n_probes=200,
                                                  seed=1)
    assert np.allclose(cov2 / s2b, cov / s2, rtol=1e-12, atol=1e-14 * np.abs(cov / s2).max())


@pytest.mark.mpi
@pytest.mark.parametrize("boundary_condition", ["traction_free", "dirichlet"])
def test_exact_covariance_is_rank_independent(twin, boundary_condition):
    results = []
    for comm in (MPI.COMM_SELF, MPI.COMM_WORLD):
        pm, setup, model, fit, boundary = _inversion(twin, comm, boundary_condition, degree=1)
        op = IntegratedStrainNoise(twin, pm.pixel_indices(), setup.misfit, boundary)
        results.append(exact_integrated_noise_covariance(model, fit, {"twin": op}, seed=2))
    (cov_serial, s2_serial), (cov_dist, s2_dist) = results
    assert s2_dist == pytest.approx(s2_serial, rel=1e-8)
    assert np.allclose(cov_dist, cov_serial, rtol=1e-8, atol=1e-12 * np.abs(cov_serial).max())


def test_config_selects_the_evaluation_and_rejects_unknown_ones():
    from pydantic import ValidationError

    from chemomech.config import RunConfig

    config = RunConfig(data=["x.h5"])
    assert (config.uncertainty.evaluation, config.uncertainty.n_probes) == ("exact", 20)
    assert config.optimiser.tao_type == "bqnls" and config.optimiser.initial_hessian == "exact"
    assert RunConfig(data=["x.h5"], uncertainty={"evaluation": "monte_carlo"}
                     ).uncertainty.evaluation == "monte_carlo"
    for bad in ({"evaluation": "sampled"}, {"n_probes": 1}):
        with pytest.raises(ValidationError, match="evaluation|n_probes"):
            RunConfig(data=["x.h5"], uncertainty=bad)
    with pytest.raises(ValidationError, match="initial_hessian"):
        RunConfig(data=["x.h5"], optimiser={"initial_hessian": "bfgs"})
