"""M1 inversion: twin experiments through the real pipeline, TAO vs the linear fast path, MPI."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from chemomech.correlative.displacement import measured_displacement, measured_strain
from chemomech.exceptions import InputError
from chemomech.inverse.identifiability import Gauge
from chemomech.inverse.particle import particle_setup, split_for_particles
from chemomech.inverse.problem import M1Model
from chemomech.mechanics import legendre
from chemomech.mechanics.materials import Material
from chemomech.mechanics.mesh import mesh_from_mask
from chemomech.synth import ParticleSpec, simulate_particle, vegard_coefficients
from chemomech.twins import TwinOptions, simulate_independent

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
    """Noisy synthetic particle (strain noise 1e-3, clean X), identical on every rank.

    Made by the inversion's own discretisation (chemomech.synth): the tests that use it need
    the exact discrete model (exact recovery, TAO = linear path, bounds, MPI equality)."""
    return simulate_particle(_spec())


@pytest.fixture(scope="module")
def independent_twin():
    """The same particle from the independent generator (chemomech.twins: smooth outline,
    P2 on h/2, pixel-averaged strain), strain noise 1e-3: no inverse crime."""
    return simulate_independent(_spec(), TwinOptions(supersample=2))


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
def test_independent_twin_recovers_law_within_one_percent(independent_twin, misfit):
    """Measured: 0.29 % / 0.35 % (f_a / f_c, displacement misfit), 0.08 % / 0.31 % (strain)."""
    model = M1Model([_pipeline_setup(independent_twin, MPI.COMM_SELF, misfit)], degree=2)
    linear = model.fit("linear")
    err_a, err_c = _law_error(linear.coefficients)
    assert err_a < 0.01 and err_c < 0.01
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
@pytest.mark.mpi_only  # serial vs COMM_WORLD: meaningful on >= 2 ranks only
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
    with pytest.raises(InputError, match="gauge"):  # traction-free: nothing to fix
        M1Model([setup], degree=1, gauge=Gauge())
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


# --------------------------------------------------------------------------- the study's options
# Twins below come from chemomech's own forward model (simulate_particle, or ElasticityProblem
# directly): they prove the inversion consistent with that discretisation, not the physics.

def _dirichlet_setup(particle, comm, u, degree=1, edge=2, **kw):
    pm = mesh_from_mask(particle.mask, particle.pixel_size_nm, comm)
    return particle_setup(particle.name, pm, particle.X, particle.rotation_rad,
                          displacement=u, edge_exclusion_px=edge, fe_degree=degree,
                          boundary_condition="dirichlet", **kw)


@pytest.fixture(scope="module")
def clean_twin():
    """Noise-free traction-free twin: its displacement is the boundary data of a known law."""
    return simulate_particle(_spec(name="clean", noise=0.0))


def _truth_u(particle):
    return np.stack([particle.truth["u_x"], particle.truth["u_y"]], axis=-1)


def _gauged_law_error(coefficients) -> tuple[float, float]:
    """max |(f - f(1)) - (f_true - f_true(1))| / range(f_true), a and c."""
    a, c = np.split(np.asarray(coefficients), 2)
    out = []
    for fit, true in ((a, TRUE_A), (c, TRUE_C)):
        f = legendre.evaluate(fit, X_GRID) - legendre.evaluate(fit, 1.0)
        g = legendre.evaluate(true, X_GRID) - legendre.evaluate(true, 1.0)
        out.append(float(np.abs(f - g).max() / np.ptp(g)))
    return out[0], out[1]


def test_dirichlet_twin_is_recovered_up_to_the_gauge(clean_twin):
    """Boundary data from the traction-free solution of the true law (a different boundary
    problem than the one inverted): the Dirichlet inversion recovers f - f(1); the
    constant parts are unidentified and fixed by the gauge f(1) = 0; TAO = fast path."""
    setup = _dirichlet_setup(clean_twin, MPI.COMM_SELF, _truth_u(clean_twin))
    assert setup.boundary_condition == "dirichlet" and setup.misfit.Q is None
    model = M1Model([setup], degree=2)
    assert model.gauge == Gauge()
    linear = model.fit("linear")
    tao = model.fit("tao")
    assert np.abs(tao.coefficients - linear.coefficients).max() < 1e-6 * np.abs(
        linear.coefficients).max()
    err_a, err_c = _gauged_law_error(linear.coefficients)
    assert err_a < 0.01 and err_c < 0.01  # limited by the bilinear boundary data
    assert legendre.evaluate(linear.coefficients_a, 1.0) == pytest.approx(0.0, abs=1e-15)
    ident = linear.identifiability()
    assert ident["unidentified"] == ["constant part of f_a", "constant part of f_c"]
    assert ident["condition_number"] > 1e12 and ident["condition_number_gauged"] < 1e4
    assert ident["warning"] is None  # the gauged problem is well conditioned


def test_fixing_the_gauge_changes_no_model_prediction(clean_twin):
    setup = _dirichlet_setup(clean_twin, MPI.COMM_SELF, _truth_u(clean_twin))
    fits, us = [], []
    for gauge in (Gauge(), Gauge(X=0.3, f_a=0.01, f_c=-0.02)):
        model = M1Model([setup], degree=2, gauge=gauge)
        fits.append(model.fit("linear"))
        us.append(model.displacement(0, fits[-1].coefficients).x.array.copy())
    fit = fits[1]
    assert legendre.evaluate(fit.coefficients_a, 0.3) == pytest.approx(0.01, abs=1e-14)
    assert legendre.evaluate(fit.coefficients_c, 0.3) == pytest.approx(-0.02, abs=1e-14)
    diff = fits[1].coefficients - fits[0].coefficients
    assert np.abs(diff[[1, 2, 4, 5]]).max() < 1e-10  # only the constants move
    assert abs(diff[0]) > 1e-3
    assert np.abs(us[1] - us[0]).max() < 1e-10 * np.abs(us[0]).max()
    assert fits[1].per_particle_cost["clean"] == pytest.approx(
        fits[0].per_particle_cost["clean"], rel=1e-10)
    with pytest.raises(InputError, match="undetermined"):
        M1Model([setup], degree=2, gauge=None)
    # C(X): a uniform eigenstrain loads the interior through grad C, so without a gauge the
    # constants are fitted (weakly); "auto" still fixes f(1) = 0 under Dirichlet data
    mixed = Material("mixed")
    assert M1Model([setup], degree=1, material=mixed).gauge == Gauge()
    free = M1Model([setup], degree=1, material=mixed, gauge=None).fit("linear")
    assert free.gauge is None and free.identifiability()["unidentified"] == []


def test_traction_free_identifiability_has_no_null_direction(twin):
    fit = M1Model([_pipeline_setup(twin, MPI.COMM_SELF)], degree=2).fit("linear")
    ident = fit.identifiability()
    assert ident["unidentified"] == [] and ident["gauge"] is None
    assert 1.0 < ident["condition_number"] < ident["threshold"] and ident["warning"] is None
    assert ident["singular_values_relative"][0] == 1.0


def _solve_twin(particle, material, law, comm=MPI.COMM_SELF):
    """Pixel displacement (nx, ny, 2) of `law` with `material` (traction-free)."""
    from dolfinx import fem

    from chemomech.mechanics.fields import PixelSampler, image_to_function
    from chemomech.mechanics.forms import eigenstrain, out_of_plane_load_form
    from chemomech.mechanics.forms import shifted_legendre_series as series
    from chemomech.mechanics.forward import ElasticityProblem

    pm = mesh_from_mask(particle.mask, particle.pixel_size_nm, comm)
    X = image_to_function(particle.X, pm.pixel_size_nm,
                          fem.functionspace(pm.mesh, ("Lagrange", 1)), "l2", mask=pm.mask)
    problem = ElasticityProblem(pm.mesh, material.ufl_tensor(particle.rotation_rad, X))
    a, c = np.split(np.asarray(law), 2)
    b = problem.load_vector(eigenstrain(X, a, c, particle.rotation_rad))
    B = material.b_coupling(particle.rotation_rad, X)
    if B is not None:
        b.axpy(1.0, problem.assemble_load(out_of_plane_load_form(
            series(X, material.b_coefficients), B, problem.test_function)))
    u = problem.solve_vector(b)
    sampler = PixelSampler(problem.V, pm.pixel_points_nm())
    values = sampler.gather(sampler(u))
    out = np.full(particle.mask.shape + (2,), np.nan)
    ij = pm.pixel_indices()
    out[ij[:, 0], ij[:, 1]] = values
    return out


def _fit_with(particle, u, material, degree=2):
    pm = mesh_from_mask(particle.mask, particle.pixel_size_nm, MPI.COMM_SELF)
    setup = particle_setup(particle.name, pm, particle.X, particle.rotation_rad,
                           displacement=u, edge_exclusion_px=0)
    return M1Model([setup], degree=degree, material=material).fit("linear")


@pytest.mark.parametrize("reduction", ["plane_stress", "plane_strain"])
def test_mixed_stiffness_at_uniform_composition_is_the_pure_phase(clean_twin, reduction):
    """Basis responses and (plane strain) the b-law response of C(X) at X = 1 and X = 0
    equal those of LiFePO4 and FePO4."""
    p = clean_twin
    for X, phase in ((1.0, "LiFePO4"), (0.0, "FePO4")):
        pm = mesh_from_mask(p.mask, p.pixel_size_nm, MPI.COMM_SELF)
        setup = particle_setup(p.name, pm, np.where(p.mask, X, np.nan), p.rotation_rad,
                               displacement=_truth_u(p), edge_exclusion_px=0)
        b_law = (0.01, -0.02) if reduction == "plane_strain" else None
        models = [M1Model([setup], degree=1, material=Material(s, reduction, b_law))
                  for s in ("mixed", phase)]
        systems = [m.linear_system()[0] for m in models]
        for key in ("columns", "data"):
            x, y = (getattr(s, key) for s in systems)
            assert np.abs(x - y).max() < 1e-10 * np.abs(y).max()
        if reduction == "plane_strain":  # the b-law load is there and matters
            assert np.abs(systems[1].data - setup.misfit.d).max() > 1.0


def test_mixed_stiffness_twin_is_recovered_and_the_average_is_biased(clean_twin):
    """A C(X) twin: recovered exactly with C(X); the average stiffness's bias is measured."""
    u = _solve_twin(clean_twin, Material("mixed"), TRUTH)
    exact = _fit_with(clean_twin, u, Material("mixed"))
    biased = _fit_with(clean_twin, u, Material("average"))
    assert max(_law_error(exact.coefficients)) < 1e-8
    bias = max(_law_error(biased.coefficients))
    print(f"average-stiffness bias on a C(X) twin: {bias:.4f} of the eigenstrain range")
    assert 1e-3 < bias < 0.2


def test_plane_strain_b_law_twin_is_recovered_and_ignoring_it_biases(clean_twin):
    """Plane strain with the Vegard f_b: recovered with the b-law; the plane-stress-like fit
    (f_b absent) absorbs -Q^-1 B f_b into f_a, f_c."""
    material = Material(reduction="plane_strain")
    assert material.b_coefficients == pytest.approx((-0.018136, 0.018136), abs=1e-6)
    u = _solve_twin(clean_twin, material, TRUTH)
    exact = _fit_with(clean_twin, u, material)
    assert max(_law_error(exact.coefficients)) < 1e-8
    ignored = _fit_with(clean_twin, u, Material(reduction="plane_strain", b_law=(0.0,)))
    assert max(_law_error(ignored.coefficients)) > 0.05


def test_fragmented_data_get_rigid_modes_per_piece(clean_twin):
    """A NaN stripe splits the data; the pieces are integrated with arbitrary offsets (and
    a rotation): per-piece rigid modes recover the law, one set of modes does not; the
    refuse policy and Dirichlet name the splitting pixels."""
    p = clean_twin
    u = _truth_u(p).copy()
    cols = np.flatnonzero(p.mask.any(axis=0))
    cut = cols[len(cols) // 2]
    u[:, cut - 1: cut + 1] = np.nan
    right = np.zeros(p.mask.shape, bool)
    right[:, cut + 1:] = True
    xy = np.stack(np.meshgrid(np.arange(u.shape[0]), np.arange(u.shape[1]), indexing="ij"), -1)
    u[right] += np.array([7.0, -4.0]) + 1e-3 * (xy[right] @ np.array([[0, -1], [1, 0]]))
    pm = mesh_from_mask(p.mask, p.pixel_size_nm, MPI.COMM_SELF)
    per_piece = particle_setup(p.name, pm, p.X, p.rotation_rad, displacement=u,
                               edge_exclusion_px=0)
    assert per_piece.pieces == 2 and per_piece.misfit.Q.shape[1] == 6
    fit = M1Model([per_piece], degree=2).fit("linear")
    assert max(_law_error(fit.coefficients)) < 0.01
    single = _truth_setup(p, MPI.COMM_SELF)  # one set of rigid modes over the offset data
    from chemomech.inverse.misfit import DisplacementMisfit
    from chemomech.mechanics.fields import PixelSampler

    idx = pm.pixel_indices()
    d = u[idx[:, 0], idx[:, 1]]
    used = np.all(np.isfinite(d), axis=1)
    sampler = PixelSampler(single.misfit.V, idx * p.pixel_size_nm)
    single.misfit = DisplacementMisfit.from_sampler(sampler, np.nan_to_num(d), used)
    bad = M1Model([single], degree=2).fit("linear")
    assert max(_law_error(bad.coefficients)) > 10 * max(_law_error(fit.coefficients))
    for kw, key in (({"fragmented_data": "refuse"}, "fragmented_data"),
                    ({"boundary_condition": "dirichlet"}, "boundary_condition")):
        with pytest.raises(InputError, match="2 separate pieces") as err:
            particle_setup(p.name, pm, p.X, p.rotation_rad, displacement=u, **kw)
        assert err.value.field == key and f", {cut - 1})" in str(err.value)


def test_dirichlet_without_boundary_data_is_refused(clean_twin):
    from chemomech.io.stack import interior_pixels

    u = _truth_u(clean_twin).copy()
    u[~interior_pixels(clean_twin.mask, 1)] = np.nan
    with pytest.raises(InputError, match="boundary pixels are NaN") as err:
        _dirichlet_setup(clean_twin, MPI.COMM_SELF, u)
    assert err.value.field == "boundary_condition"


@pytest.mark.mpi
@pytest.mark.parametrize("method", ["linear", "tao"])
def test_distributed_dirichlet_fit_equals_serial(clean_twin, method):
    u = _truth_u(clean_twin)
    serial = M1Model([_dirichlet_setup(clean_twin, MPI.COMM_SELF, u)], degree=2,
                     comm=MPI.COMM_SELF).fit(method)
    dist = M1Model([_dirichlet_setup(clean_twin, MPI.COMM_WORLD, u)], degree=2).fit(method)
    assert np.allclose(dist.coefficients, serial.coefficients, rtol=1e-7, atol=1e-12)


def test_pipeline_refuses_bad_dirichlet_data_before_meshing(clean_twin):
    """check_inversion_data runs right after reading (before M0 and meshing)."""
    from chemomech.config import RunConfig
    from chemomech.correlative.prepared import prepare_particle
    from chemomech.io.stack import interior_pixels
    from chemomech.pipeline import check_inversion_data

    prepared = prepare_particle(clean_twin, check_frame=False)
    config = RunConfig(data=["x.h5"], boundary_condition="dirichlet")
    check_inversion_data([prepared], config)  # good data pass
    prepared.displacement[~interior_pixels(clean_twin.mask, 1)] = np.nan
    with pytest.raises(InputError, match="boundary pixels are NaN"):
        check_inversion_data([prepared], config)


def test_real_particle_dirichlet_n1_reproduces_the_study_setting(real_particle_path, tmp_path):
    """LFP50_P2, N = 1, the study's boundary condition (Dirichlet), through the pipeline:
    the chemical misfits and the model error relative to M0 (README, docs/steps/study.md)."""
    import json

    from chemomech.config import RunConfig
    from chemomech.pipeline import run

    config = RunConfig(data=[real_particle_path], legendre_degree=1,
                       boundary_condition="dirichlet", output=tmp_path,
                       optimiser={"method": "linear"}, uncertainty={"method": "gauss_newton"})
    summary = run(config, MPI.COMM_SELF)
    at = summary["eigenstrain_at"]
    assert at["1.0"]["a"] == 0.0 and at["1.0"]["c"] == 0.0  # the gauge
    assert at["0.0"]["a"] - at["1.0"]["a"] == pytest.approx(-0.0484, abs=1e-3)
    assert at["0.0"]["c"] - at["1.0"]["c"] == pytest.approx(0.0171, abs=1e-3)
    errors = summary["model_errors"]
    assert 100 * (errors["M1"] / errors["M0"] - 1) == pytest.approx(-25.4, abs=1.0)
    ident = json.loads((tmp_path / "summary.json").read_text())["identifiability"]
    assert ident["unidentified"] == ["constant part of f_a", "constant part of f_c"]
    assert ident["condition_number_gauged"] < 10 and ident["warning"] is None
    band = summary["eigenstrain_curve"]
    assert band["a_hi"][-1] - band["a_lo"][-1] < 1e-12  # f(1) fixed: zero width at X = 1
    assert band["a_hi"][0] - band["a_lo"][0] > 0


def test_degree_selection_under_the_gauge_skips_degree_zero(clean_twin):
    from chemomech.inverse.selection import select_degree

    u = _truth_u(clean_twin)
    model = M1Model([_dirichlet_setup(clean_twin, MPI.COMM_SELF, u)], degree=3)
    selection = select_degree(model, 3)
    assert [row["degree"] for row in selection.table] == [1, 2, 3]
    heldout = {row["degree"]: row["heldout"] for row in selection.table}
    assert heldout[2] < 0.5 * heldout[1]  # the true law is quadratic
    assert selection.chosen >= 2


def test_boundary_response_reproduces_affine_data_and_restores_the_data(clean_twin):
    """Noise on the measured displacement moves the Dirichlet data too; the response to an
    affine image imposed on the boundary is that affine field (exact elastic extension)."""
    u = _truth_u(clean_twin)
    setup = _dirichlet_setup(clean_twin, MPI.COMM_SELF, u)
    model = M1Model([setup], degree=1)
    a = np.array([0.0, -0.02, 0.0, 0.01])
    before = model.cost(a)
    h = clean_twin.pixel_size_nm
    i, j = np.meshgrid(*map(np.arange, clean_twin.mask.shape), indexing="ij")
    G = np.array([[0.01, -0.02], [0.015, 0.004]])
    image = np.stack([i * h, j * h], -1) @ G.T + np.array([3.0, -1.0])
    response = model.boundary_response(0)(np.where(clean_twin.mask[..., None], image, np.nan))
    pts = setup.misfit.points
    expected = (pts @ G.T + np.array([3.0, -1.0])).ravel()
    assert np.abs(response - expected).max() < 1e-9 * np.abs(expected).max()
    assert model.cost(a) == before  # the Dirichlet data were restored


@pytest.mark.parametrize("boundary", ["traction_free", "dirichlet"])
def test_forward_solve_from_the_cached_responses_is_a_back_substitution(clean_twin, boundary):
    """u(a) as the combination u_0 + sum_k a_k u_k of the responses computed once equals one
    back-substitution of the assembled load b_0 + sum_k a_k b_k (with Dirichlet data: the
    lifted fixed load), and its tangent-linear (homogeneous) part too."""
    from chemomech.inverse.particle import _Particle
    from chemomech.mechanics.materials import Material

    if boundary == "dirichlet":
        setup = _dirichlet_setup(clean_twin, MPI.COMM_SELF, _truth_u(clean_twin))
    else:
        setup = _pipeline_setup(clean_twin, MPI.COMM_SELF)
    p = _Particle(setup, 2, Material(), "lu")
    a = np.array([-0.02, 0.025, 1e-3, 0.01, -0.01, 2e-4])
    for homogeneous in (False, True):
        u = p.solve(a, homogeneous=homogeneous).x.array
        rhs = p.loads[0].duplicate()
        rhs.maxpy(list(a), p.loads)
        if p.offset is not None and not homogeneous:
            rhs.axpy(1.0, p.offset)
        ref = p.problem.solve_vector(rhs).x.array
        assert np.abs(u - ref).max() < 1e-10 * np.abs(ref).max()
    assert (p.offset is None) == (boundary == "traction_free")
