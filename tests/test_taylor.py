"""Taylor tests of the taped reduced functional J(a): first-order remainder at rate 2.

Also: the adjoint gradient equals the gradient of the normal equations, N a - G^T P d,
assembled independently from the basis responses (the discrete adjoint is exact).
"""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI
from pyadjoint import AdjFloat, taylor_test

from chemomech.correlative.displacement import measured_displacement, measured_strain
from chemomech.inverse.identifiability import Gauge
from chemomech.inverse.particle import particle_setup, split_for_particles
from chemomech.inverse.problem import M1Model
from chemomech.inverse.verify import verify_gradient
from chemomech.mechanics.materials import Material
from chemomech.mechanics.mesh import mesh_from_mask
from chemomech.synth import ParticleSpec, simulate_particle, vegard_coefficients

TRUE_A, TRUE_C = vegard_coefficients(0.004, -0.002)


def _particle(name, rotation, seed):
    return simulate_particle(ParticleSpec(name, 0.5, rotation_rad=rotation, length_nm=600,
                                          width_nm=400, noise_strain=1e-3, seed=seed,
                                          coefficients_a=tuple(TRUE_A),
                                          coefficients_c=tuple(TRUE_C)))


@pytest.fixture(scope="module")
def particles():
    return [_particle("t0", 0.3, 1), _particle("t1", -0.9, 2)]


def _setup(p, comm, misfit, fe_degree=1, **kw):
    pm = mesh_from_mask(p.mask, p.pixel_size_nm, comm)
    if misfit == "displacement":
        data = {"displacement": measured_displacement(p).u}
    else:
        e = measured_strain(p)
        data = {"strain": np.stack([e["e_xx"], e["e_yy"], e["e_xy"]], axis=-1),
                "boundary_displacement": measured_displacement(p).u}
    return particle_setup(p.name, pm, p.X, p.rotation_rad, edge_exclusion_px=1,
                          fe_degree=fe_degree, **data, **kw)


def _check(model: M1Model):
    rng = np.random.default_rng(7)
    a = np.r_[TRUE_A, TRUE_C] * 0.6
    h = 0.01 * rng.standard_normal(a.size)
    h = MPI.COMM_WORLD.bcast(h)
    rf = model.reduced_functional(a)
    rate = taylor_test(rf, [AdjFloat(v) for v in a], [AdjFloat(v) for v in h])
    assert rate > 1.98
    J, grad = model.cost_and_gradient(a)
    N, r, c = model.normal_equations()
    assert J == pytest.approx(0.5 * (a @ N @ a - 2 * a @ r + c), rel=1e-8)
    assert np.allclose(grad, N @ a - r, rtol=0, atol=1e-9 * np.abs(N @ a - r).max())
    # second-order adjoint: the Hessian action is the Gauss-Newton matrix (J is quadratic)
    Hh = model.hessian_action(h)
    assert np.allclose(Hh, N @ h, rtol=0, atol=1e-9 * np.abs(N @ h).max())


@pytest.mark.mpi
@pytest.mark.parametrize("misfit,fe_degree", [("displacement", 1), ("displacement", 2),
                                              ("strain", 1)])
def test_taylor_one_particle(particles, misfit, fe_degree):
    setup = _setup(particles[0], MPI.COMM_WORLD, misfit, fe_degree)
    _check(M1Model([setup], degree=2))


@pytest.mark.mpi
def test_taylor_two_particles_on_sub_communicators(particles):
    group, mine = split_for_particles(MPI.COMM_WORLD, len(particles))
    setups = [_setup(particles[i], group, "displacement") for i in mine]
    _check(M1Model(setups, degree=2, comm=MPI.COMM_WORLD))


@pytest.mark.mpi
@pytest.mark.parametrize("misfit,bc,stiffness,reduction", [
    ("displacement", "dirichlet", "average", "plane_stress"),
    ("strain", "dirichlet", "average", "plane_stress"),
    ("displacement", "traction_free", "mixed", "plane_strain"),
    ("displacement", "dirichlet", "mixed", "plane_strain")])
def test_taylor_study_options(particles, misfit, bc, stiffness, reduction):
    """Dirichlet data, C(X) and the plane-strain b-law make u affine in a (a fixed load
    b_0): the adjoint gradient, Hessian and normal equations must include it."""
    setup = _setup(particles[0], MPI.COMM_WORLD, misfit, boundary_condition=bc)
    model = M1Model([setup], degree=2, material=Material(stiffness, reduction),
                    gauge=Gauge() if bc == "dirichlet" else None)
    assert (model.particles[0].offset is not None) == (bc == "dirichlet"
                                                        or reduction == "plane_strain")
    _check(model)
    assert verify_gradient(model)["min_rate"] > 1.98


def test_verify_gradient_reports_rate_two(particles):
    setup = _setup(particles[1], MPI.COMM_SELF, "strain")
    check = verify_gradient(M1Model([setup], degree=1, comm=MPI.COMM_SELF))
    assert len(check["rates"]) == 3 and check["min_rate"] > 1.98
    assert check["residuals"][0] > 0.0
