"""The transpose of the Dirichlet boundary response (for the exact bands under Dirichlet data):
the fill and interpolation matrices against the functions they transpose, and the dot-product
test of `_Particle.boundary_response_adjoint` on 1 and 2 ranks."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from chemomech.correlative.displacement import measured_displacement
from chemomech.inverse.particle import particle_setup
from chemomech.inverse.problem import M1Model
from chemomech.mechanics.fields import (
    bilinear_lookup,
    bilinear_weights,
    fill_linear,
    fill_linear_matrix,
)
from chemomech.mechanics.mesh import mesh_from_mask
from chemomech.synth import ParticleSpec, simulate_particle


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


@pytest.mark.mpi
def test_boundary_response_adjoint_passes_the_dot_product_test():
    """sum over ranks of m . n = y . B A^-1 b_0(n) for random images n (NaN off the data's
    finite pixels, with a hole) and rows y."""
    comm = MPI.COMM_WORLD
    particle = simulate_particle(ParticleSpec("twin", 0.5, rotation_rad=0.3, length_nm=700,
                                              width_nm=450, n_voids=1, seed=5))
    u = measured_displacement(particle).u
    pm = mesh_from_mask(particle.mask, particle.pixel_size_nm, comm)
    setup = particle_setup("twin", pm, particle.X, particle.rotation_rad, displacement=u,
                           boundary_condition="dirichlet", edge_exclusion_px=1)
    p = M1Model([setup], degree=1, comm=comm).particles[0]
    valid = np.all(np.isfinite(u), axis=-1)
    for seed in (1, 2):
        n = np.where(valid[..., None], np.random.default_rng(seed).normal(size=u.shape), np.nan)
        rows = p.boundary_response(n)
        y = np.random.default_rng([seed, comm.rank]).normal(size=rows.shape)
        lhs = comm.allreduce(float(y @ rows))
        m = p.boundary_response_adjoint(y, valid)
        assert np.all(m[~valid] == 0.0)
        rhs = comm.allreduce(float(np.sum(m[valid] * n[valid])))
        assert rhs == pytest.approx(lhs, rel=1e-10)
