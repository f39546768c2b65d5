"""M1 inversion: twin experiments through the real pipeline, TAO vs the linear fast path, MPI."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

dolfinx = pytest.importorskip("dolfinx")

from chemomech.correlative.displacement import measured_displacement, measured_strain  # noqa: E402
from chemomech.exceptions import InputError  # noqa: E402
from chemomech.inverse.problem import M1Model, particle_setup, split_for_particles  # noqa: E402
from chemomech.mechanics import legendre  # noqa: E402
from chemomech.mechanics.materials import Material  # noqa: E402
from chemomech.mechanics.mesh import mesh_from_mask  # noqa: E402
from chemomech.synth import ParticleSpec, simulate_particle, vegard_coefficients  # noqa: E402

TRUE_A, TRUE_C = vegard_coefficients(quadratic_a=0.004, quadratic_c=-0.002)
TRUTH = np.r_[TRUE_A, TRUE_C]
X_GRID = np.linspace(0.0, 1.0, 101)


def _spec(name="twin", mean_X=0.5, rotation=0.3, noise=1e-3, seed=3, **kw):
    return ParticleSpec(name, mean_X, rotation_rad=rotation, length_nm=900, width_nm=550,
                        noise_strain=noise, noise_composition=0.0,
                        coefficients_a=tuple(TRUE_A), coefficients_c=tuple(TRUE_C),
                        seed=seed, **kw)


@pytest.fixture(scope="module")
def twin():
    """Noisy synthetic particle (strain noise 1e-3, clean X), identical on every rank."""
    return simulate_particle(_spec())


def _truth_setup(particle, comm, name=None):
    """Setup with the model's own displacement as data (exact recovery expected)."""
    pm = mesh_from_mask(particle.mask, particle.pixel_size_nm, comm)
    u = np.stack([particle.truth["u_x"], particle.truth["u_y"]], axis=-1)
    return particle_setup(name or particle.name, pm, particle.X, particle.rotation_rad,
                          displacement=u + np.array([5.0, -3.0]), edge_exclusion_px=0)


def _pipeline_setup(particle, comm, misfit="displacement", degree=1):
    """Setup as the real pipeline builds it: integrate the noisy measured gradient."""
    pm = mesh_from_mask(particle.mask, particle.pixel_size_nm, comm)
    if misfit == "displacement":
        data = {"displacement": measured_displacement(particle).u}
    else:
        e = measured_strain(particle)
        data = {"strain": np.stack([e["e_xx"], e["e_yy"], e["e_xy"]], axis=-1)}
    return particle_setup(particle.name, pm, particle.X, particle.rotation_rad,
                          edge_exclusion_px=2, fe_degree=degree, **data)


def _law_error(coefficients) -> tuple[float, float]:
    """max |f - f_true| over X in [0, 1] as a fraction of the true eigenstrain range."""
    a, c = np.split(np.asarray(coefficients), 2)
    fa, fc = legendre.evaluate(TRUE_A, X_GRID), legendre.evaluate(TRUE_C, X_GRID)
    err_a = np.abs(legendre.evaluate(a, X_GRID) - fa).max() / np.ptp(fa)
    err_c = np.abs(legendre.evaluate(c, X_GRID) - fc).max() / np.ptp(fc)
    return float(err_a), float(err_c)


def test_noise_free_model_data_recovers_the_truth(twin):
    model = M1Model([_truth_setup(twin, MPI.COMM_SELF)], degree=2)
    fit = model.fit("linear")
    assert np.allclose(fit.coefficients, TRUTH, rtol=0, atol=1e-9 * np.abs(TRUTH).max())
    assert fit.cost < 1e-14 * fit.data_norm_sq
    # the forward map of the fitted law reproduces the data up to the rigid shift
    u = model.displacement(0, fit.coefficients)
    misfit = model.particles[0].misfit
    assert misfit.cost(u) == pytest.approx(fit.cost, abs=1e-12)


@pytest.mark.parametrize("misfit", ["displacement", "strain"])
def test_twin_recovers_law_within_two_percent(twin, misfit):
    model = M1Model([_pipeline_setup(twin, MPI.COMM_SELF, misfit)], degree=2)
    linear = model.fit("linear")
    err_a, err_c = _law_error(linear.coefficients)
    assert err_a < 0.02 and err_c < 0.02
    for tao_type in ("blmvm", "bqnls", "nls"):
        tao = model.fit("tao", tao_type=tao_type, with_normal_matrix=False)
        assert tao.iterations >= 1  # Newton (nls) takes one step on the quadratic
        rel = np.linalg.norm(tao.coefficients - linear.coefficients) / np.linalg.norm(TRUTH)
        assert rel < 1e-6, tao_type
        assert tao.cost == pytest.approx(linear.cost, rel=1e-8)


def test_bounds_are_respected(twin):
    model = M1Model([_pipeline_setup(twin, MPI.COMM_SELF)], degree=1)
    free = model.fit("linear")
    lower = np.full(4, -1.0)
    upper = np.full(4, 1.0)
    upper[0] = free.coefficients[0] + 0.005  # inactive bound
    upper[1] = free.coefficients[1] - 0.002  # active bound
    fit = model.fit("tao", tao_type="blmvm", bounds=(lower, upper))
    assert fit.coefficients[1] == pytest.approx(upper[1], abs=1e-12)
    assert fit.cost > free.cost


def test_zero_tolerances_stop_at_rounding_level(twin):
    """With no tolerance TAO runs until J no longer changes in floating point: accepted."""
    model = M1Model([_pipeline_setup(twin, MPI.COMM_SELF)], degree=2)
    linear = model.fit("linear")
    for tao_type in ("blmvm", "lmvm"):
        fit = model.fit("tao", tao_type=tao_type, gatol=0.0, grtol=0.0, gttol=0.0)
        assert "rounding" in fit.reason and fit.converged
        rel = np.linalg.norm(fit.coefficients - linear.coefficients) / np.linalg.norm(TRUTH)
        assert rel < 1e-9


@pytest.mark.mpi
@pytest.mark.parametrize("method", ["linear", "tao"])
def test_distributed_fit_equals_serial(twin, method):
    world = MPI.COMM_WORLD
    serial = M1Model([_pipeline_setup(twin, MPI.COMM_SELF)], degree=2, comm=MPI.COMM_SELF)
    distributed = M1Model([_pipeline_setup(twin, world)], degree=2, comm=world)
    a_serial = serial.fit(method).coefficients
    a_dist = distributed.fit(method).coefficients
    assert np.allclose(a_dist, a_serial, rtol=1e-8, atol=1e-8 * np.abs(a_serial).max())
    assert np.allclose(world.allgather(a_dist)[0], a_dist, rtol=0, atol=0)


@pytest.mark.mpi
def test_two_particles_joint_fit_over_sub_communicators():
    world = MPI.COMM_WORLD
    specs = [_spec("p0", 0.5, 0.3, noise=0.0), _spec("p1", 0.35, -1.2, noise=0.0, seed=5)]
    particles = [simulate_particle(s) for s in specs]
    group, mine = split_for_particles(world, len(particles))
    assert world.allreduce(len(mine) if group.rank == 0 else 0) == len(particles)
    model = M1Model([_truth_setup(particles[i], group) for i in mine], degree=2, comm=world)
    joint = model.fit("tao")
    assert np.allclose(joint.coefficients, TRUTH, rtol=0, atol=1e-7 * np.abs(TRUTH).max())
    assert sorted(joint.per_particle_cost) == ["p0", "p1"]
    # the same joint problem held entirely on one rank
    serial = M1Model([_truth_setup(p, MPI.COMM_SELF) for p in particles], degree=2,
                     comm=MPI.COMM_SELF)
    linear = serial.fit("linear")
    assert np.allclose(joint.coefficients, linear.coefficients, rtol=0,
                       atol=1e-6 * np.abs(TRUTH).max())
    assert np.allclose(model.fit("linear").coefficients, linear.coefficients, rtol=1e-8,
                       atol=1e-10)


def test_split_for_particles_covers_every_particle():
    world = MPI.COMM_WORLD
    for n in (1, 2, 5):
        group, mine = split_for_particles(world, n)
        everyone = world.allgather(mine if group.rank == 0 else [])
        assert sorted(i for part in everyone for i in part) == list(range(n))
        group.Free()
    with pytest.raises(InputError):
        split_for_particles(world, 0)


def test_bad_options_are_rejected(twin):
    setup = _truth_setup(twin, MPI.COMM_SELF)
    with pytest.raises(InputError, match="constant stiffness"):
        M1Model([setup], degree=1, material=Material(stiffness="mixed"))
    model = M1Model([setup], degree=1)
    with pytest.raises(InputError, match="method"):
        model.fit("newton")
    with pytest.raises(InputError, match="tao_type"):
        model.fit("tao", tao_type="cg")


@pytest.mark.mpi
def test_real_particle_tao_equals_fast_path_and_law_is_vegard_like(real_particle_path):
    from chemomech.io.readers import read_reference_mat

    particle = read_reference_mat(real_particle_path)
    pm = mesh_from_mask(particle.mask, particle.pixel_size_nm, MPI.COMM_WORLD, mesh_size_px=2.0)
    setup = particle_setup(particle.name, pm, particle.X, particle.rotation_rad,
                           displacement=measured_displacement(particle).u, edge_exclusion_px=2)
    model = M1Model([setup], degree=2)
    linear = model.fit("linear")
    tao = model.fit("tao", with_normal_matrix=False)
    rel = np.linalg.norm(tao.coefficients - linear.coefficients) / np.linalg.norm(
        linear.coefficients)
    assert rel < 1e-6
    a, c = linear.coefficients_a, linear.coefficients_c
    # chemical misfit f(0) - f(1) of FePO4 relative to LiFePO4: about -4.9 % along a and
    # +2.0 % along c by Vegard (lattice parameters); the fitted law must have these signs
    # and magnitudes within a factor of ~2
    misfit_a = legendre.evaluate(a, 0.0) - legendre.evaluate(a, 1.0)
    misfit_c = legendre.evaluate(c, 0.0) - legendre.evaluate(c, 1.0)
    assert -0.08 < misfit_a < -0.025
    assert 0.005 < misfit_c < 0.04
