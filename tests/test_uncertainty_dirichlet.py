"""The closed-form integrated-noise covariance with Dirichlet data (the noise also moves the
imposed boundary values) against its Monte Carlo oracle; the fill and interpolation matrices
of the boundary data against the functions they transpose."""

from __future__ import annotations

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
from chemomech.mechanics.fields import (
    bilinear_lookup,
    bilinear_weights,
    fill_linear,
    fill_linear_matrix,
)
from chemomech.mechanics.mesh import mesh_from_mask
from chemomech.synth import ParticleSpec, simulate_particle, vegard_coefficients

logger = logging.getLogger(__name__)

TRUE_A, TRUE_C = vegard_coefficients(quadratic_a=0.004, quadratic_c=-0.002)
NOISE = 1e-3


def _dirichlet(particle, comm, degree=2):
    pm = mesh_from_mask(particle.mask, particle.pixel_size_nm, comm)
    setup = particle_setup("twin", pm, particle.X, particle.rotation_rad, edge_exclusion_px=2,
                           displacement=measured_displacement(particle).u,
                           boundary_condition="dirichlet")
    model = M1Model([setup], degree=degree, comm=comm)  # gauge auto: f(1) = 0
    return pm, setup, model, model.fit("linear")


@pytest.fixture(scope="module")
def noisy():
    spec = ParticleSpec("twin", 0.5, rotation_rad=0.3, length_nm=700, width_nm=450,
                        noise_strain=NOISE, noise_composition=0.0, seed=5,
                        coefficients_a=tuple(TRUE_A), coefficients_c=tuple(TRUE_C))
    particle = simulate_particle(spec)
    return (particle, *_dirichlet(particle, MPI.COMM_SELF))


def test_fill_and_interpolation_matrices_are_the_functions():
    rng = np.random.default_rng(0)
    valid = np.zeros((30, 25), bool)
    valid[4:24, 5:20] = True
    valid[10:13, 8:11] = False  # a hole: filled from both sides
    valid[4, 5:9] = False  # a notch
    image = np.where(valid[..., None], rng.normal(size=(30, 25, 2)), 0.0)
    filled = fill_linear(image, valid)
    F = fill_linear_matrix(valid)
    for c in range(2):
        assert np.allclose(F @ image[..., c].ravel(), filled[..., c].ravel(), rtol=0,
                           atol=1e-14)
    points = rng.uniform(-5.0, 310.0, (60, 2))  # also outside the image: clamped
    W = bilinear_weights(points, valid.shape, 10.0)
    assert np.allclose(W @ filled[..., 0].ravel(), bilinear_lookup(filled[..., 0], points, 10.0),
                       rtol=0, atol=1e-13)


def test_dirichlet_noise_operator_is_the_sampler_and_its_adjoint_is_exact(noisy):
    particle, pm, setup, model, _ = noisy
    boundary = model.particles[0]
    op = IntegratedStrainNoise(particle, pm.pixel_indices(), setup.misfit, boundary)
    sampler = strain_noise_sampler(particle, pm.pixel_indices(), setup.misfit,
                                   boundary.boundary_response)
    valid = op.integrator.valid
    rng = np.random.default_rng(7)
    full = [rng.normal(0.0, 1.0, valid.shape) for _ in range(4)]
    xi = np.stack([f[valid] for f in full])[..., None]
    d = op.forward(xi)[:, 0]
    assert np.allclose(d, sampler(np.random.default_rng(7)), rtol=1e-12, atol=1e-12)
    interior_only = IntegratedStrainNoise(particle, pm.pixel_indices(), setup.misfit)
    assert not np.allclose(d, interior_only.forward(xi)[:, 0], atol=1e-3 * np.abs(d).max())
    rng = np.random.default_rng(8)
    xi = rng.normal(size=(4, op.num_noise // 4, 3))
    y = rng.normal(size=(d.size, 3))
    lhs = np.einsum("rm,rm->m", y, op.forward(xi))
    rhs = np.einsum("fnm,fnm->m", op.adjoint(y), xi)
    assert np.allclose(lhs, rhs, rtol=1e-10)


def test_dirichlet_exact_covariance_equals_monte_carlo(noisy):
    particle, pm, setup, model, fit = noisy
    boundary = model.particles[0]
    op = IntegratedStrainNoise(particle, pm.pixel_indices(), setup.misfit, boundary)
    cov, s2 = exact_integrated_noise_covariance(model, fit, {"twin": op}, n_probes=200)
    n_draws = 400
    sampler = strain_noise_sampler(particle, pm.pixel_indices(), setup.misfit,
                                   boundary.boundary_response)
    cov_mc, s2_mc = integrated_noise_covariance(model, fit, {"twin": sampler},
                                                n_draws=n_draws, seed=3)
    free = np.array([1, 2, 4, 5])  # the gauge fixes a_0 = -(a_1 + a_2): compare the free part
    unit, unit_mc = (cov / s2)[np.ix_(free, free)], (cov_mc / s2_mc)[np.ix_(free, free)]
    se = np.sqrt(2.0 / n_draws)
    ratio = np.diag(unit_mc) / np.diag(unit)
    logger.info("Dirichlet MC / exact unit variances %s (s.e. %.3f); sigma2 MC / exact %.4f",
                ratio, se, s2_mc / s2)
    assert np.all(np.abs(ratio - 1.0) < 4 * se)
    corr = unit / np.sqrt(np.outer(np.diag(unit), np.diag(unit)))
    corr_mc = unit_mc / np.sqrt(np.outer(np.diag(unit_mc), np.diag(unit_mc)))
    assert np.all(np.abs(corr_mc - corr) < 4 * (1 - corr**2) / np.sqrt(n_draws) + 1e-12)
    assert s2_mc == pytest.approx(s2, rel=0.05)
    f1 = np.r_[np.ones(3), np.zeros(3)]  # f_a(1): fixed by the gauge, zero variance
    assert abs(f1 @ cov @ f1) < 1e-12 * cov[1, 1]


@pytest.mark.mpi
def test_dirichlet_exact_covariance_is_rank_independent(noisy):
    particle = noisy[0]
    results = []
    for comm in (MPI.COMM_SELF, MPI.COMM_WORLD):
        pm, setup, model, fit = _dirichlet(particle, comm, degree=1)
        op = IntegratedStrainNoise(particle, pm.pixel_indices(), setup.misfit,
                                   model.particles[0])
        results.append(exact_integrated_noise_covariance(model, fit, {"twin": op}, seed=2))
    (cov_serial, s2_serial), (cov_dist, s2_dist) = results
    assert s2_dist == pytest.approx(s2_serial, rel=1e-8)
    assert np.allclose(cov_dist, cov_serial, rtol=1e-8, atol=1e-12 * np.abs(cov_serial).max())
