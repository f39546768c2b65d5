"""M1's Newton paths (exact Hessian) equal the linear fast path and stop after one step."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from chemomech.correlative.displacement import measured_displacement
from chemomech.inverse.particle import particle_setup, split_for_particles
from chemomech.inverse.problem import M1Model
from chemomech.mechanics.mesh import mesh_from_mask
from chemomech.synth import ParticleSpec, simulate_particle, vegard_coefficients

TRUE_A, TRUE_C = vegard_coefficients(quadratic_a=0.004, quadratic_c=-0.002)


@pytest.fixture(scope="module")
def particles():
    """Two noisy twins at mean X 0.3 and 0.7 (a well-conditioned joint degree-2 fit)."""
    return [simulate_particle(ParticleSpec(
        f"p{k}", x, rotation_rad=0.5 * k + 0.2, length_nm=650, width_nm=420,
        noise_strain=1e-3, noise_composition=0.0, seed=20 + k,
        coefficients_a=tuple(TRUE_A), coefficients_c=tuple(TRUE_C)))
        for k, x in enumerate((0.3, 0.7))]


def _model(particles, comm):
    group, mine = split_for_particles(comm, len(particles))
    setups = []
    for k in mine:
        p = particles[k]
        pm = mesh_from_mask(p.mask, p.pixel_size_nm, group)
        setups.append(particle_setup(p.name, pm, p.X, p.rotation_rad, edge_exclusion_px=2,
                                     displacement=measured_displacement(p).u))
    return M1Model(setups, degree=2, comm=comm)


@pytest.mark.parametrize("tao_type, initial_hessian", [("nls", "identity"),
                                                       ("bqnls", "exact"),
                                                       ("blmvm", "exact")])
def test_newton_equals_linear_fast_path_in_one_step(particles, tao_type, initial_hessian):
    model = _model(particles, MPI.COMM_SELF)
    linear = model.fit("linear")
    fit = model.fit("tao", tao_type=tao_type, initial_hessian=initial_hessian, gatol=0.0,
                    gttol=1e-9, with_normal_matrix=False)
    assert fit.converged and fit.iterations == 1, fit.reason
    rel = np.abs(fit.coefficients - linear.coefficients).max() / np.abs(linear.coefficients).max()
    assert rel < 1e-10, (tao_type, rel)
    assert fit.cost == pytest.approx(linear.cost, rel=1e-12)


def test_identity_start_needs_many_quasi_newton_steps(particles):
    """The exact H0 is what makes BQNLS a Newton method (identity H0: many iterations)."""
    model = _model(particles, MPI.COMM_SELF)
    fit = model.fit("tao", tao_type="bqnls", gatol=0.0, gttol=1e-9, with_normal_matrix=False)
    assert fit.iterations > 2


@pytest.mark.mpi
def test_newton_on_two_ranks_equals_serial(particles):
    serial = _model(particles, MPI.COMM_SELF).fit("linear").coefficients
    fit = _model(particles, MPI.COMM_WORLD).fit("tao", tao_type="bqnls",
                                                initial_hessian="exact", gttol=1e-9)
    assert fit.iterations == 1
    assert np.abs(fit.coefficients - serial).max() < 1e-10 * np.abs(serial).max()
