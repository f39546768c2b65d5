"""Uncertainty bands (formulas and coverage over repeated noise seeds) and degree selection.

The twins here come from the inversion's own discretisation (chemomech.synth) on purpose:
these tests check the noise model alone, so the data must be the exact discrete model plus
noise.  Coverage on independent twins (model error, composition errors) is in
tests/test_twins.py and bench/calibrated_bands.py.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from mpi4py import MPI

from chemomech.correlative.displacement import measured_displacement, measured_strain
from chemomech.exceptions import InputError
from chemomech.inverse.particle import particle_setup
from chemomech.inverse.problem import M1Model
from chemomech.inverse.selection import select_degree
from chemomech.inverse.uncertainty import (
    covariance,
    derivative_band,
    eigenstrain_band,
    integrated_noise_covariance,
    noise_variance,
    strain_noise_sampler,
)
from chemomech.mechanics import legendre
from chemomech.mechanics.mesh import mesh_from_mask
from chemomech.synth import ParticleSpec, simulate_particle, vegard_coefficients

logger = logging.getLogger(__name__)

TRUE_A, TRUE_C = vegard_coefficients(quadratic_a=0.004, quadratic_c=-0.002)
NOISE = 1e-3
X_CHECK = np.linspace(0.05, 0.95, 19)
STRAIN_FIELDS = ("e_xx", "e_yy", "e_xy", "theta")


def test_band_formulas():
    cov = np.diag([4e-6, 0.0, 1e-6, 0.0])  # degree 1: a_0,a  a_1,a  a_0,c  a_1,c
    coef = [0.01, 0.02, -0.01, 0.005]
    band = eigenstrain_band(coef, cov, np.array([0.0, 0.5, 1.0]))
    assert np.allclose(band["a"], [0.01 - 0.02, 0.01, 0.01 + 0.02])
    z = 1.959963984540054
    assert np.allclose(band["a_hi"] - band["a"], z * 2e-3)  # only a_0 uncertain: constant
    assert np.allclose(band["c"] - band["c_lo"], z * 1e-3)
    slope = derivative_band(coef, cov, np.array([0.2, 0.7]))
    assert np.allclose(slope["a"], 2 * 0.02) and np.allclose(slope["c"], 2 * 0.005)
    assert np.allclose(slope["a_hi"], slope["a"])  # the slope a_1 is certain
    wide = eigenstrain_band(coef, cov, level=0.5)
    assert np.all(wide["a_hi"] - wide["a_lo"] < band["a_hi"][0] - band["a_lo"][0])
    assert noise_variance(3.0, 10, 2, 2) == pytest.approx(1.0)
    C, s2 = covariance(np.diag([2.0, 8.0]), 3.0, 10, 2)
    assert s2 == pytest.approx(1.0) and np.allclose(C, np.diag([0.5, 0.125]))
    with pytest.raises(InputError):
        noise_variance(1.0, 4, 2, 2)
    with pytest.raises(InputError):
        eigenstrain_band([1.0, 2.0, 3.0], np.eye(3))


@pytest.fixture(scope="module")
def clean():
    spec = ParticleSpec("twin", 0.5, rotation_rad=0.3, length_nm=900, width_nm=550,
                        noise_strain=0.0, noise_composition=0.0, seed=3,
                        coefficients_a=tuple(TRUE_A), coefficients_c=tuple(TRUE_C))
    particle = simulate_particle(spec)
    pm = mesh_from_mask(particle.mask, particle.pixel_size_nm, MPI.COMM_SELF)
    return particle, pm


def _noisy(particle, seed):
    rng = np.random.default_rng(1000 + seed)
    return dataclasses.replace(particle, **{k: getattr(particle, k) + rng.normal(
        0.0, NOISE, particle.mask.shape) for k in STRAIN_FIELDS})


def _linear_model(particle, pm, misfit, degree=2):
    if misfit == "strain":
        e = measured_strain(particle)
        data = {"strain": np.stack([e["e_xx"], e["e_yy"], e["e_xy"]], axis=-1)}
    else:
        data = {"displacement": measured_displacement(particle).u}
    setup = particle_setup("twin", pm, particle.X, particle.rotation_rad, edge_exclusion_px=2,
                           **data)
    return M1Model([setup], degree=degree, comm=MPI.COMM_SELF)


def _data_rows(particle, pm, misfit, m):
    """The misfit's data vector for another noise realisation (same pixels, same order)."""
    ij = pm.pixel_indices()[m.point_indices]
    if misfit == "strain":
        e = measured_strain(particle)
        img = np.stack([e["e_xx"], e["e_yy"], np.sqrt(2.0) * e["e_xy"]], axis=-1)
    else:
        img = measured_displacement(particle).u
    return img[ij[:, 0], ij[:, 1]].ravel()


def _fraction_covered(coefficients, cov):
    band = eigenstrain_band(coefficients, cov, X_CHECK)
    fa, fc = legendre.evaluate(TRUE_A, X_CHECK), legendre.evaluate(TRUE_C, X_CHECK)
    inside = np.r_[(band["a_lo"] <= fa) & (fa <= band["a_hi"]),
                   (band["c_lo"] <= fc) & (fc <= band["c_hi"])]
    return float(inside.mean())


def _coverage(clean, misfit, seeds, monte_carlo_draws=0):
    """Mean pointwise coverage of the 95 % band over noise seeds (linear fits)."""
    particle, pm = clean
    model = _linear_model(particle, pm, misfit)
    system = model.linear_system()[0]
    m = system.misfit
    G = m.project(system.columns)
    N = G.T @ G
    covered, sigmas = [], []
    for seed in seeds:
        Pd = m.project(_data_rows(_noisy(particle, seed), pm, misfit, m))
        a = np.linalg.solve(N, G.T @ Pd)
        cost = 0.5 * float(np.sum((G @ a - Pd) ** 2))
        n_nuisance = 0 if m.Q is None else 3
        if monte_carlo_draws:
            fit = dataclasses.make_dataclass("F", ["normal_matrix", "cost"])(N, cost)
            sampler = strain_noise_sampler(particle, pm.pixel_indices(), m)
            cov, s2 = integrated_noise_covariance(model, fit, {"twin": sampler},
                                                  n_draws=monte_carlo_draws, seed=seed)
        else:
            cov, s2 = covariance(N, cost, Pd.size, n_nuisance)
        covered.append(_fraction_covered(a, cov))
        sigmas.append(np.sqrt(s2))
    return float(np.mean(covered)), float(np.median(sigmas))


def test_strain_misfit_band_has_nominal_coverage(clean):
    coverage, sigma = _coverage(clean, "strain", range(40))
    logger.info("strain misfit, Gauss-Newton: coverage %.3f, sigma %.3g", coverage, sigma)
    assert 0.85 <= coverage <= 1.0
    assert sigma == pytest.approx(np.sqrt(4 / 3) * NOISE, rel=0.1)  # see LOPO test


def test_displacement_misfit_needs_integrated_noise_model(clean):
    naive, _ = _coverage(clean, "displacement", range(20))
    logger.info("displacement misfit, Gauss-Newton i.i.d.: coverage %.3f", naive)
    assert naive < 0.6  # documented limit: integrated noise is correlated
    coverage, sigma = _coverage(clean, "displacement", range(10), monte_carlo_draws=30)
    logger.info("displacement misfit, integrated-noise Monte Carlo: coverage %.3f, sigma %.3g",
                coverage, sigma)
    assert 0.8 <= coverage <= 1.0
    assert sigma == pytest.approx(NOISE, rel=0.3)  # the strain noise level is recovered


def test_degree_selection_finds_the_quadratic_law(clean):
    particle, pm = clean
    model = _linear_model(_noisy(particle, 0), pm, "displacement", degree=4)
    selection = select_degree(model, folds=5, block_px=6)
    errors = {row["degree"]: row["heldout"] for row in selection.table}
    assert selection.scheme == "spatial_blocks" and len(selection.table) == 5
    assert selection.chosen == 2
    assert errors[1] > 2 * errors[2] and errors[0] > 10 * errors[2]
    train = [row["train"] for row in selection.table]
    assert all(t1 <= t0 * (1 + 1e-9) for t0, t1 in zip(train, train[1:], strict=False))
    assert select_degree(model, max_degree=1, rule="min").chosen == 1
    with pytest.raises(InputError):
        select_degree(model, max_degree=5)


def test_leave_one_particle_out():
    specs = [ParticleSpec(f"p{k}", 0.5, rotation_rad=0.4 * k, length_nm=700, width_nm=450,
                          noise_strain=NOISE, noise_composition=0.0, seed=10 + k,
                          coefficients_a=tuple(TRUE_A), coefficients_c=tuple(TRUE_C))
             for k in range(2)]
    setups = []
    for spec in specs:
        p = simulate_particle(spec)
        pm = mesh_from_mask(p.mask, p.pixel_size_nm, MPI.COMM_SELF)
        e = measured_strain(p)
        setups.append(particle_setup(p.name, pm, p.X, p.rotation_rad, edge_exclusion_px=2,
                                     strain=np.stack([e["e_xx"], e["e_yy"], e["e_xy"]], -1)))
    model = M1Model(setups, degree=3, comm=MPI.COMM_SELF)
    selection = select_degree(model)
    assert selection.scheme == "leave_one_particle_out" and selection.folds == 2
    errors = [row["heldout"] for row in selection.table]
    assert errors[0] > errors[1] > errors[2]
    assert selection.chosen in (2, 3)
    # rotation keeps e_xx^2 + e_yy^2 + 2 e_xy^2: 4 sigma^2 per pixel over 3 rows
    assert errors[2] == pytest.approx(np.sqrt(4 / 3) * NOISE, rel=0.1)


@pytest.mark.mpi
@pytest.mark.mpi_only  # serial vs COMM_WORLD: meaningful on >= 2 ranks only
def test_integrated_noise_covariance_is_rank_independent(clean):
    particle, _ = clean
    noisy = _noisy(particle, 3)
    results = []
    for comm in (MPI.COMM_SELF, MPI.COMM_WORLD):
        pm = mesh_from_mask(noisy.mask, noisy.pixel_size_nm, comm)
        setup = particle_setup("twin", pm, noisy.X, noisy.rotation_rad, edge_exclusion_px=2,
                               displacement=measured_displacement(noisy).u)
        model = M1Model([setup], degree=1, comm=comm)
        fit = model.fit("linear")
        sampler = strain_noise_sampler(noisy, pm.pixel_indices(), setup.misfit)
        results.append(integrated_noise_covariance(model, fit, {"twin": sampler}, n_draws=8,
                                                   seed=11))
    (cov_serial, s2_serial), (cov_dist, s2_dist) = results
    assert s2_dist == pytest.approx(s2_serial, rel=1e-8)
    assert np.allclose(cov_dist, cov_serial, rtol=1e-8, atol=0)
    assert np.all(np.linalg.eigvalsh(cov_dist) > 0)
