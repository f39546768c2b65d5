"""Dislocation model M2: slip geometry, exact adjoint (Taylor rate 2 for the slip-field control),
twin recovery of a known slip field and GND density, alpha rules, 1 vs 2 ranks."""

from __future__ import annotations

import dolfinx
import numpy as np
import pyadjoint
import pytest
from mpi4py import MPI
from pydantic import ValidationError

from chemomech.analysis.report import plot_density_map
from chemomech.analysis.residual import m2_model_errors, model_error
from chemomech.analysis.slip_systems import compare_slip_systems
from chemomech.config import RunConfig
from chemomech.correlative.prepared import used_pixels
from chemomech.dislocations.alpha import estimate_strain_noise, lcurve_corner
from chemomech.dislocations.lattice import lattice_maps
from chemomech.dislocations.run import build_m1_stage, m2_model, run_m2
from chemomech.exceptions import InputError
from chemomech.mechanics.slip import IN_PLANE_SYSTEMS, slip_system
from chemomech.pipeline import prepare
from chemomech.synth import ParticleSpec, _slip_tensor, simulate_particle

NOISE = 5e-4


def _twin(comm=MPI.COMM_SELF, slip=0.01):
    spec = ParticleSpec("twin", 0.5, rotation_rad=0.4, length_nm=1200, width_nm=800,
                        pixel_size_nm=25, slip_amplitude=slip, slip_width_nm=120,
                        noise_strain=NOISE, noise_composition=0.01, seed=3)
    return simulate_particle(spec, comm)


@pytest.fixture(scope="module")
def twin():
    return _twin()


def _config(options: dict | None = None, **dislocations):
    return RunConfig(data=["unused.h5"], model="M2", legendre_degree=1, edge_exclusion_px=1,
                     dislocations=dislocations, **(options or {}))


@pytest.fixture(scope="module")
def twin_config():
    return _config()


def _uniform_block(nx: int, ny: int, h: float, phi: float):
    """A rectangular particle (2 px margin) at X = 0.5 with zero measured strain, and its mask."""
    from chemomech.io.stack import ParticleData

    mask = np.zeros((nx, ny), bool)
    mask[2:-2, 2:-2] = True
    zero = np.where(mask, 0.0, np.nan)
    return ParticleData("block", np.where(mask, 0.5, np.nan), zero, zero, zero, zero, mask,
                        h, phi, "crystal", 1, "LiFePO4", "test"), mask


def _model(particle, comm, kind="h1", alpha=1.0, systems=("D",), theta_weight=1.0,
           fe_degree=1, options: dict | None = None):
    config = _config(options, slip_systems=list(systems), theta_weight=theta_weight,
                     regularisation={"kind": kind, "alpha": alpha})
    config = config.model_copy(update={"mesh": config.mesh.model_copy(
        update={"fe_degree": fe_degree})})
    prepared = [prepare(particle, config)]
    return m2_model(prepared, build_m1_stage(prepared, config, comm), config)


# ---------------------------------------------------------------------------- geometry


def test_slip_system_table():
    lfp_c, lfp_a = 0.4692, 1.0332
    assert slip_system("D").burgers_nm == pytest.approx(lfp_c)
    assert slip_system("a").burgers_nm == pytest.approx(lfp_a)
    assert slip_system("ac+").burgers_nm == pytest.approx(np.hypot(lfp_a, lfp_c))
    for s in IN_PLANE_SYSTEMS.values():
        sv, nv = np.array(s.slip_direction), np.array(s.plane_normal)
        assert np.linalg.norm(sv) == pytest.approx(1.0)
        assert np.linalg.norm(nv) == pytest.approx(1.0)
        assert sv @ nv == pytest.approx(0.0, abs=1e-12)  # edge, glide: b in the plane
        T = s.schmid_tensor(0.7)
        assert np.trace(T) == pytest.approx(0.0, abs=1e-12)  # isochoric shear
        assert np.linalg.eigvalsh(T) == pytest.approx([-0.5, 0.5])
    # D is the system the synthetic twins slip on; "a" shears identically (indistinguishable)
    assert np.allclose(slip_system("D").schmid_tensor(0.3), _slip_tensor(0.3))
    assert np.allclose(slip_system("a").schmid_tensor(0.3), _slip_tensor(0.3))
    assert not np.allclose(slip_system("ac+").schmid_tensor(0.3), _slip_tensor(0.3))
    with pytest.raises(InputError, match="slip_systems"):
        slip_system("Q")


def test_dislocations_block_is_validated_naming_the_key():
    config = _config(slip_systems=["D", "ac+"],
                     regularisation={"kind": "tv", "alpha": 2.0, "rule": "lcurve"})
    block = config.dislocations
    assert block.slip_systems == ["D", "ac+"] and block.regularisation.kind == "tv"
    assert block.regularisation.alpha == 2.0 and block.regularisation.rule == "lcurve"
    assert RunConfig(data=["x.h5"]).dislocations.regularisation.alpha == "auto"
    bad = [({"regularisation": {"alhpa": 1.0}}, "alhpa"),
           ({"slip_systems": ["Q"]}, "slip_systems"),
           ({"slip_systems": []}, "slip_systems"),
           ({"regularisation": {"alpha": -1.0}}, "alpha"),
           ({"noise_strain": 0.0}, "noise_strain"),
           ({"theta_weight": -1.0}, "theta_weight"),
           ({"alpha_decades": [-3, 2]}, "alpha_decades"),
           ({"tao_type": "nls"}, "tao_type"),
           ({"tao_type": "cg", "regularisation": {"kind": "tv"}}, "tao_type"),
           ({"noise_draws": 4}, "noise_draws")]
    for block, key in bad:
        with pytest.raises(ValidationError, match=key):
            _config(**block)


def test_lcurve_corner_of_a_known_l():
    # misfit falls steeply as alpha decreases until the noise floor 1, seminorm then explodes
    alpha = 10.0 ** np.arange(4, -5, -1.0)
    misfit = 1.0 + alpha
    seminorm = 1.0 + 1.0 / alpha
    assert alpha[lcurve_corner(misfit, seminorm)] == pytest.approx(1.0)


def test_strain_noise_estimate():
    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(0, 1, 60), np.linspace(0, 1, 40), indexing="ij")

    class P:
        name = "p"
        mask = np.ones((60, 40), bool)
        e_xx = 0.01 * np.sin(3 * x) + rng.normal(0, 2e-3, x.shape)
        e_yy = 0.02 * x * y + rng.normal(0, 2e-3, x.shape)
        e_xy = rng.normal(0, 2e-3, x.shape)
        theta = 0.005 * np.cos(2 * y) + rng.normal(0, 2e-3, x.shape)
    assert estimate_strain_noise(P()) == pytest.approx(2e-3, rel=0.05)


# ---------------------------------------------------------------------------- adjoint


def _remainders(model, a, g, da, dg):
    J, ga, gg = model.cost_and_gradient(a, [g])
    dJ = ga @ da + model.world.allreduce(float(gg[0] @ dg))
    out = []
    for eps in (4e-2, 2e-2, 1e-2, 5e-3):
        Je = model.cost_and_gradient(a + eps * da, [g + eps * dg])[0]
        out.append(abs(Je - J - eps * dJ))
    return np.log2(np.array(out[:-1]) / np.array(out[1:]))


DIRICHLET_OPTIONS = {"boundary_condition": "dirichlet"}  # gauge auto: f(1) = 0
ALL_OPTIONS = DIRICHLET_OPTIONS | {"stiffness": "mixed", "reduction": "plane_strain"}


@pytest.mark.mpi
@pytest.mark.parametrize("kind, options", [("h1", None), ("tv", None),
                                           ("h1", DIRICHLET_OPTIONS), ("h1", ALL_OPTIONS)],
                         ids=["h1", "tv", "h1-dirichlet", "h1-dirichlet-mixed-plane_strain"])
def test_taylor_rate_two_for_the_slip_field(twin, kind, options):
    """Also with Dirichlet data (the fixed load b_0 in the forward, not in the tangent linear;
    slip loads zero on the boundary), C(X) and plane strain with f_b."""
    model = _model(twin, MPI.COMM_WORLD, kind=kind, alpha=3.0, options=options)
    p = model.particles[0]
    rng = np.random.default_rng(11 + MPI.COMM_WORLD.rank)
    a = np.array([-0.02, 0.02, 0.01, -0.01])
    coords = p.Q.tabulate_dof_coordinates()[: p.n_owned, :2]
    g = 0.01 * np.sin(coords[:, 0] / 150.0) * np.cos(coords[:, 1] / 90.0)
    da = MPI.COMM_WORLD.bcast(rng.normal(0, 5e-3, 4))
    dg = rng.normal(0, 5e-3, p.n_owned)
    rates = _remainders(model, a, g, da, dg)
    assert np.all(rates > 1.9), rates
    # slip-only direction: the K^T lambda and dR parts alone
    rates = _remainders(model, a, g, 0 * da, dg)
    assert np.all(rates > 1.9), rates


@pytest.mark.mpi
def test_pyadjoint_taylor_test_and_m1_consistency(twin):
    model = _model(twin, MPI.COMM_WORLD, alpha=3.0)
    p = model.particles[0]
    a = np.array([-0.02, 0.02, 0.01, -0.01])
    rf = model.reduced_functional()
    g = pyadjoint.overloaded_type.create_overloaded_object(dolfinx.fem.Function(p.Q))
    g.x.array[:] = 0.004
    hg = pyadjoint.overloaded_type.create_overloaded_object(dolfinx.fem.Function(p.Q))
    coords = p.Q.tabulate_dof_coordinates()[:, :2]
    hg.x.array[:] = 1e-3 * np.cos(coords[:, 0] / 200.0 + coords[:, 1] / 130.0)
    m = [pyadjoint.AdjFloat(v) for v in a] + [g]
    h = [pyadjoint.AdjFloat(v) for v in 1e-3 * np.array([1.0, -1.0, 0.5, 0.3])] + [hg]
    assert pyadjoint.taylor_test(rf, m, h) > 1.95
    # lattice strain only (theta_weight 0), zero slip: J and dJ/da are those of M1's strain
    # misfit (an independent observation operator, chemomech.inverse.misfit.StrainMisfit)
    strain_only = _model(twin, MPI.COMM_WORLD, alpha=0.0, theta_weight=0.0)
    J, grad_a, _ = strain_only.cost_and_gradient(a, [np.zeros(p.n_owned)])
    J_m1, grad_m1 = strain_only.m1.cost_and_gradient(a)
    assert J == pytest.approx(J_m1, rel=1e-10)
    assert np.allclose(grad_a, grad_m1, rtol=1e-10, atol=1e-12 * np.abs(grad_m1).max())


# ---------------------------------------------------------------------------- physics


def _set_gamma(model, values):
    g = model.gammas[0][0]
    g.interpolate(values)
    g.x.scatter_forward()
    return g


def test_uniform_slip_changes_no_measured_quantity(twin):
    """gamma = const: the body shears stress-free, lattice strain 0, lattice rotation uniform
    (a rigid rotation, which the misfit projects out): the misfit does not change (1e-10)."""
    model = _model(twin, MPI.COMM_SELF)
    p = model.particles[0]
    pm_shape = twin.mask.shape
    from chemomech.mechanics.mesh import mesh_from_mask

    pm = mesh_from_mask(twin.mask, twin.pixel_size_nm, MPI.COMM_SELF)
    model.coefficients = np.zeros(4)
    _set_gamma(model, lambda x: np.full(x.shape[1], 0.01))
    maps = lattice_maps(model.displacement(0), model.gammas[0], p.tensors, pm, pm_shape)
    meshed = maps["meshed_mask"] > 0
    for key in ("e_xx", "e_yy", "e_xy"):
        assert np.abs(maps[key][meshed]).max() < 1e-10
    assert np.ptp(maps["theta"][meshed]) < 1e-10
    assert np.abs(maps["plastic_xy"][meshed]).max() > 1e-3  # the slip is there
    # misfit at a general state is unchanged by adding a uniform slip
    a = np.array([-0.02, 0.02, 0.01, -0.01])
    coords = p.Q.tabulate_dof_coordinates()[: p.n_owned, :2]
    g = 0.01 * np.sin(coords[:, 0] / 150.0) * np.cos(coords[:, 1] / 90.0)
    J0 = model.cost_and_gradient(a, [g])[0]
    J1 = model.cost_and_gradient(a, [g + 0.02])[0]
    assert J1 == pytest.approx(J0, rel=1e-10)


def test_linear_slip_is_a_uniform_gnd_density_that_bends_the_lattice():
    """gamma = k (x . s): uniform edge GND density rho = k / |b|; the traction-free particle
    relaxes stress-free by bending the lattice: lattice strain 0 and |grad theta| = k (Nye),
    P2 displacements (the closed-form u is quadratic)."""
    from chemomech.dislocations.density import slip_maps
    from chemomech.mechanics.mesh import mesh_from_mask

    nx, ny, h, phi = 28, 18, 20.0, 0.4
    particle, mask = _uniform_block(nx, ny, h, phi)
    model = _model(particle, MPI.COMM_SELF, fe_degree=2)
    p = model.particles[0]
    system = slip_system("D")
    s = system.slip_direction_image(phi)
    k = 2e-4  # 1/nm: gamma up to ~0.1
    model.coefficients = np.zeros(4)
    _set_gamma(model, lambda x: k * (x[0] * s[0] + x[1] * s[1]))
    u = model.displacement(0)
    pm = mesh_from_mask(mask, h, MPI.COMM_SELF)
    maps = lattice_maps(u, model.gammas[0], p.tensors, pm, mask.shape)
    meshed = maps["meshed_mask"] > 0
    for key in ("e_xx", "e_yy", "e_xy"):
        assert np.abs(maps[key][meshed]).max() < 1e-10
    # stress-free: elastic energy of eps(u) - sym(beta_p) vanishes
    import ufl
    from dolfinx import fem

    from chemomech.mechanics.forms import epsilon, sigma

    el = epsilon(u) - model.gammas[0][0] * ufl.as_matrix(system.schmid_tensor(phi).tolist())
    energy = fem.assemble_scalar(fem.form(ufl.inner(sigma(el, p.base.problem.C), el) * ufl.dx))
    plastic = fem.assemble_scalar(fem.form(ufl.inner(
        sigma(ufl.sym(ufl.grad(u)), p.base.problem.C), ufl.sym(ufl.grad(u))) * ufl.dx))
    assert energy < 1e-18 * plastic
    # theta is linear with |grad theta| = k along s (Nye: the edge dislocations bend the lattice)
    idx = np.argwhere(meshed)
    A = np.c_[idx * h, np.ones(len(idx))]
    coef, *_ = np.linalg.lstsq(A, maps["theta"][meshed], rcond=None)
    assert np.abs(A @ coef - maps["theta"][meshed]).max() < 1e-10
    assert np.hypot(*coef[:2]) == pytest.approx(k, rel=1e-8)
    assert abs(coef[:2] @ s) == pytest.approx(k, rel=1e-8)
    density = slip_maps(model, 0, pm, mask.shape)["density_D"][meshed]
    assert density == pytest.approx(np.full(density.size, k / system.burgers_nm * 1e6), rel=1e-8)


def test_synth_slip_data_are_the_lattice_distortion():
    """`synth --slip` stores grad u - gamma s (x) n, the quantity M2 compares: M2's lattice maps
    with the true law and slip reproduce the clean maps (strain and rotation) to rounding."""
    from chemomech.correlative.frames import gradient_image
    from chemomech.mechanics.fields import image_to_function

    spec = ParticleSpec("clean", 0.5, rotation_rad=0.4, length_nm=900, width_nm=600,
                        pixel_size_nm=25, slip_amplitude=0.01, slip_width_nm=120,
                        noise_strain=0.0, noise_composition=0.0, seed=3)
    particle = simulate_particle(spec)
    config = _config()
    prepared = [prepare(particle, config)]
    stage = build_m1_stage(prepared, config, MPI.COMM_SELF)
    model = m2_model(prepared, stage, config)
    model.coefficients = np.r_[particle.truth["coefficients_a"][:2],
                               particle.truth["coefficients_c"][:2]]
    g = model.gammas[0][0]
    g.x.array[:] = image_to_function(np.nan_to_num(particle.truth["gamma"]),
                                     particle.pixel_size_nm, g.function_space,
                                     mask=particle.mask).x.array
    maps = lattice_maps(model.displacement(0), model.gammas[0], model.particles[0].tensors,
                        stage.meshes[0], particle.mask.shape)
    H = gradient_image(particle)
    meshed = maps["meshed_mask"] > 0
    measured = {"e_xx": H[..., 0, 0], "e_yy": H[..., 1, 1],
                "e_xy": 0.5 * (H[..., 0, 1] + H[..., 1, 0]),
                "theta": 0.5 * (H[..., 0, 1] - H[..., 1, 0])}
    for key, value in measured.items():
        assert np.abs(maps[key][meshed] - value[meshed]).max() < 1e-12
    # and not the total distortion grad u: the plastic part is there
    assert np.abs(maps["plastic_xy"][meshed]).max() > 3e-3


def test_slip_varying_across_the_glide_plane_is_invisible():
    """gamma = k (x . n): a compatible plastic distortion (glide planes sliding over each other,
    no GND: grad gamma . s = 0): no lattice strain, no lattice rotation change, zero density.
    Such fields are fixed by the regulariser alone (P2 displacements, exact)."""
    from chemomech.dislocations.density import slip_maps
    from chemomech.mechanics.mesh import mesh_from_mask

    nx, ny, h, phi = 24, 16, 20.0, -0.7
    particle, mask = _uniform_block(nx, ny, h, phi)
    model = _model(particle, MPI.COMM_SELF, fe_degree=2)
    from chemomech.correlative.frames import rotation_matrix

    n = rotation_matrix(phi) @ np.asarray(slip_system("D").plane_normal)
    model.coefficients = np.zeros(4)
    _set_gamma(model, lambda x: 2e-4 * (x[0] * n[0] + x[1] * n[1]))
    pm = mesh_from_mask(mask, h, MPI.COMM_SELF)
    maps = lattice_maps(model.displacement(0), model.gammas[0], model.particles[0].tensors, pm,
                        mask.shape)
    meshed = maps["meshed_mask"] > 0
    for key in ("e_xx", "e_yy", "e_xy"):
        assert np.abs(maps[key][meshed]).max() < 1e-10
    assert np.ptp(maps["theta"][meshed]) < 1e-10
    plastic = np.sqrt(maps["plastic_xx"] ** 2 + maps["plastic_yy"] ** 2
                      + 2 * maps["plastic_xy"] ** 2)[meshed]
    assert plastic.max() > 1e-2  # the slip is there
    assert np.abs(slip_maps(model, 0, pm, mask.shape)["density_D"][meshed]).max() < 1e-6


@pytest.mark.mpi
def test_taylor_rate_two_with_strain_only_and_two_systems(twin):
    model = _model(twin, MPI.COMM_WORLD, alpha=3.0, systems=("D", "ac+"), theta_weight=0.5)
    p = model.particles[0]
    rng = np.random.default_rng(3 + MPI.COMM_WORLD.rank)
    a = np.array([-0.02, 0.02, 0.01, -0.01])
    gs = [rng.normal(0, 5e-3, p.n_owned) for _ in range(2)]
    da = MPI.COMM_WORLD.bcast(rng.normal(0, 5e-3, 4))
    dgs = [rng.normal(0, 5e-3, p.n_owned) for _ in range(2)]
    J, ga, gg = model.cost_and_gradient(a, gs)
    dJ = ga @ da + MPI.COMM_WORLD.allreduce(float(sum(g @ d for g, d in zip(gg, dgs, strict=True))))
    rem = []
    for eps in (4e-2, 2e-2, 1e-2, 5e-3):
        moved = [g + eps * d for g, d in zip(gs, dgs, strict=True)]
        Je = model.cost_and_gradient(a + eps * da, moved)[0]
        rem.append(abs(Je - J - eps * dJ))
    rates = np.log2(np.array(rem[:-1]) / np.array(rem[1:]))
    assert np.all(rates > 1.9), rates


# ---------------------------------------------------------------------------- twin


def test_twin_recovers_slip_and_density(twin, twin_config, tmp_path):
    prepared = prepare(twin, twin_config)
    out = run_m2([prepared], twin_config, MPI.COMM_SELF)
    maps = out.images["twin"]
    meshed = maps["meshed_mask"] > 0
    truth = twin.truth["gnd_density_um2"][meshed]
    model = maps["density_D"][meshed]
    # the noise level is estimated from the maps (smooth signal, white noise: ~20 % high)
    assert out.alpha.noise_strain == pytest.approx(NOISE, rel=0.3)
    assert out.alpha.rule == "discrepancy"
    assert out.fit.misfit <= 1.0001 * out.alpha.target_misfit
    assert out.mean_density_um2["twin"] == pytest.approx(truth.mean(), rel=0.2)
    assert np.corrcoef(model, truth)[0, 1] > 0.7
    gamma_truth = twin.truth["gamma"][meshed]
    assert np.corrcoef(maps["gamma_D"][meshed], gamma_truth)[0, 1] > 0.9
    # the composition law is still recovered (Vegard, degree 1)
    assert np.allclose(out.fit.coefficients_a, twin.truth["coefficients_a"][:2], atol=5e-4)
    assert np.allclose(out.fit.coefficients_c, twin.truth["coefficients_c"][:2], atol=5e-4)
    # M2 explains the slip signal that M1 leaves: of M1's error above the noise floor (the
    # mean Frobenius norm of the noise itself, same pixels) M2 removes more than two thirds
    m2_error = m2_model_errors([prepared], out.images, twin_config.edge_exclusion_px)["twin"]
    used = used_pixels(prepared.data.mask & meshed, prepared, twin_config.edge_exclusion_px)
    floor = model_error(*(getattr(twin, c) - twin.truth[c] for c in ("e_xx", "e_yy", "e_xy")),
                        used)
    m1_error = _m1_error(prepared, twin_config)
    assert floor < m2_error < floor + (m1_error - floor) / 3
    assert out.summary["system"] == "D"
    assert out.summary["regularisation"]["rule"] == "discrepancy"
    path = plot_density_map(maps["density_total"], twin.X, meshed, twin.pixel_size_nm,
                            tmp_path / "density.png")
    assert path.stat().st_size > 1000


def _m1_error(prepared, config):
    from chemomech.inverse.particle import particle_setup
    from chemomech.inverse.problem import M1Model
    from chemomech.mechanics.fields import model_maps
    from chemomech.mechanics.forms import epsilon
    from chemomech.mechanics.mesh import mesh_from_mask

    pm = mesh_from_mask(prepared.data.mask, prepared.data.pixel_size_nm, MPI.COMM_SELF)
    setup = particle_setup("twin", pm, prepared.data.X, prepared.data.rotation_rad,
                           displacement=prepared.displacement, edge_exclusion_px=1)
    model = M1Model([setup], degree=1, comm=MPI.COMM_SELF)
    fit = model.fit(method="linear", with_normal_matrix=False)
    u = model.displacement(0, fit.coefficients)
    maps = model_maps(u, epsilon(u), pm, pm.mask.shape)
    used = used_pixels(prepared.data.mask & (maps["meshed_mask"] > 0), prepared, 1)
    return model_error(*(prepared.strain_image[c] - maps[c] for c in ("e_xx", "e_yy", "e_xy")),
                       used)


def test_noise_from_the_m1_residual_is_an_upper_bound(twin):
    """noise_strain: m1 takes the M1 law's lattice residual as noise: it contains the slip
    signal, so it exceeds the true noise and the discrepancy rule stops at the first alpha."""
    prepared = prepare(twin, _config())
    out = run_m2([prepared], _config(noise_strain="m1", bands=False), MPI.COMM_SELF)
    assert out.alpha.noise_strain > 1.2 * NOISE
    assert out.alpha.rule == "discrepancy" and len(out.alpha.curve) == 1


def test_compare_systems_prefers_the_true_one(twin, twin_config):
    prepared = prepare(twin, twin_config)
    table = compare_slip_systems([prepared], _config(regularisation={"alpha": 3.0}),
                                 MPI.COMM_SELF, ["ac+", "a", "D"])
    assert table[0]["system"] == "D"
    # "a" = [100](001) has D's plastic strain but the opposite plastic rotation: the lattice
    # rotation tells them apart (the misfit on lattice strain alone could not)
    by_system = {row["system"]: row for row in table}
    assert by_system["D"]["misfit"] < 0.9 * by_system["a"]["misfit"]
    assert by_system["D"]["model_error"] < 0.9 * by_system["ac+"]["model_error"]


@pytest.mark.mpi
@pytest.mark.mpi_only  # serial vs COMM_WORLD: meaningful on >= 2 ranks only
def test_one_and_two_ranks_agree(twin_config):
    world = MPI.COMM_WORLD
    particle = _twin()
    prepared = prepare(particle, twin_config)
    config = _config(regularisation={"alpha": 3.0}, grtol=1e-9)
    serial = run_m2([prepared], config, MPI.COMM_SELF)
    parallel = run_m2([prepared], config, world)
    assert parallel.fit.misfit == pytest.approx(serial.fit.misfit, rel=1e-5)
    assert np.allclose(parallel.fit.coefficients, serial.fit.coefficients, rtol=0, atol=1e-8)
    assert np.allclose(parallel.covariance, serial.covariance, rtol=1e-4,
                       atol=1e-4 * np.abs(serial.covariance).max())
    if world.rank == 0:
        assert parallel.mean_density_um2["twin"] == pytest.approx(
            serial.mean_density_um2["twin"], rel=1e-4)
        a = parallel.images["twin"]["gamma_D"]
        b = serial.images["twin"]["gamma_D"]
        assert np.nanmax(np.abs(a - b)) < 1e-5 * np.nanmax(np.abs(b))


def test_lcurve_rule_on_the_twin(twin, twin_config):
    prepared = prepare(twin, twin_config)
    out = run_m2([prepared], _config(regularisation={"rule": "lcurve"}, alpha_decades=(2, -2),
                                     bands=False),
                 MPI.COMM_SELF)
    curve = out.alpha.curve
    corner = lcurve_corner([c["misfit"] for c in curve], [c["seminorm"] for c in curve])
    assert out.alpha.alpha == curve[corner]["alpha"] == out.fit.regularisation.alpha
    assert out.summary["regularisation"]["alpha"] == out.alpha.alpha
    assert out.fit.misfit == pytest.approx(curve[corner]["misfit"], rel=1e-6)
    meshed = out.images["twin"]["meshed_mask"] > 0
    truth = twin.truth["gnd_density_um2"][meshed]
    assert out.mean_density_um2["twin"] == pytest.approx(truth.mean(), rel=0.2)
    # the mesh-integral particle mean recorded along the scan agrees with the pixel mean
    assert curve[corner]["mean_density_um2"] == pytest.approx(out.mean_density_um2["twin"],
                                                              rel=0.1)


def test_blmvm_bqnls_and_cg_agree(twin, twin_config):
    """The three fit methods reach the same minimum; cg (exact Hessian actions and steps on
    the quadratic h1 objective) needs no more iterations than BLMVM; cg refuses tv."""
    prepared = prepare(twin, twin_config)
    fits = [run_m2([prepared], _config(regularisation={"alpha": 3.0}, tao_type=t, bands=False),
                   MPI.COMM_SELF).fit for t in ("blmvm", "bqnls", "cg")]
    assert fits[0].cost == pytest.approx(fits[1].cost, rel=1e-8)
    assert fits[2].cost == pytest.approx(fits[0].cost, rel=1e-8)
    assert np.allclose(fits[2].coefficients, fits[0].coefficients, rtol=0, atol=1e-6)
    assert all(f.iterations < 400 for f in fits)  # preconditioned (H0)
    assert fits[2].iterations <= fits[0].iterations
    assert fits[2].reason.startswith("CG reason")
    short = _model(twin, MPI.COMM_SELF, alpha=3.0).fit(tao_type="cg", max_it=3)
    assert short.iterations == 3 and short.reason.startswith("CG reason -2")
    assert short.cost > fits[2].cost
    model = _model(twin, MPI.COMM_SELF, kind="tv", alpha=1e-3)
    with pytest.raises(InputError, match="h1") as err:
        model.fit(tao_type="cg")
    assert err.value.field == "tao_type"


@pytest.mark.mpi
@pytest.mark.mpi_only  # serial vs COMM_WORLD: meaningful on >= 2 ranks only
@pytest.mark.parametrize("tao_type", ["blmvm", "cg"])
def test_two_particles_joint_fit_is_rank_independent(twin_config, tao_type):
    spec = {"length_nm": 900, "width_nm": 600, "pixel_size_nm": 25, "slip_amplitude": 0.01,
            "slip_width_nm": 120, "noise_strain": NOISE, "noise_composition": 0.01}
    particles = [simulate_particle(ParticleSpec("p0", 0.5, rotation_rad=0.4, seed=3, **spec)),
                 simulate_particle(ParticleSpec("p1", 0.4, rotation_rad=-1.1, seed=4, **spec))]
    prepared = [prepare(p, twin_config) for p in particles]
    config = _config(regularisation={"alpha": 3.0}, grtol=1e-9, tao_type=tao_type)
    serial = run_m2(prepared, config, MPI.COMM_SELF)
    world = run_m2(prepared, config, MPI.COMM_WORLD)
    assert set(world.fit.per_particle_misfit) == {"p0", "p1"}
    for name in ("p0", "p1"):
        assert world.fit.per_particle_misfit[name] == pytest.approx(
            serial.fit.per_particle_misfit[name], rel=1e-5)
    assert np.allclose(world.fit.coefficients, serial.fit.coefficients, rtol=0, atol=1e-8)
    assert np.allclose(world.covariance, serial.covariance, rtol=1e-4,
                       atol=1e-4 * np.abs(serial.covariance).max())
    if MPI.COMM_WORLD.rank == 0:
        for name in ("p0", "p1"):
            assert world.mean_density_um2[name] == pytest.approx(
                serial.mean_density_um2[name], rel=1e-4)


def test_initial_hessian_is_a_consistent_matrix(twin):
    """The LMVM H0 shell: apply (H0^-1) inverts mult (H0), and H0 is symmetric positive."""
    from petsc4py import PETSc

    from chemomech.dislocations.model import _InitialHessian

    model = _model(twin, MPI.COMM_SELF, alpha=3.0)
    pairs, sqrt_w, n = model._layout()
    model._update_preconditioner(pairs)
    H0 = _InitialHessian(model, pairs, sqrt_w, scale=0.01)
    rng = np.random.default_rng(5)
    x = PETSc.Vec().createSeq(n)
    y, z = x.duplicate(), x.duplicate()
    x.setArray(rng.normal(size=n))
    H0.mult(None, x, y)
    H0.apply(None, y, z)
    assert np.allclose(z.getArray(), x.getArray(), rtol=1e-8, atol=1e-10)
    v = x.duplicate()
    v.setArray(rng.normal(size=n))
    Hv = v.duplicate()
    H0.mult(None, v, Hv)
    assert x.dot(Hv) == pytest.approx(v.dot(y), rel=1e-8)
    assert x.dot(y) > 0


# ---------------------------------------------------------------------------- bands, outputs


@pytest.mark.mpi
def test_block_slip_jacobian_and_its_transpose_are_adjoint():
    """<J_g D, V> = <D, J_g^T V> column by column for the multi-RHS products (two systems;
    on 2 ranks the ghost exchange of every column enters), and a column of the block product
    equals the product of that column alone."""
    spec = ParticleSpec("small", 0.5, rotation_rad=0.4, length_nm=700, width_nm=450,
                        pixel_size_nm=25, slip_amplitude=0.01, slip_width_nm=100,
                        noise_strain=NOISE, noise_composition=0.01, seed=5)
    model = _model(simulate_particle(spec, MPI.COMM_WORLD), MPI.COMM_WORLD,
                   systems=("D", "ac+"))
    p = model.particles[0]
    rng = np.random.default_rng(11 + p.comm.rank)
    D = [rng.normal(size=(p.n_owned, 3)) for _ in p.systems]
    rows = p.slip_jacobian_columns(D)
    V = p.misfit.project(rng.normal(size=rows.shape))
    back = p.slip_jacobian_transpose_columns(V)
    lhs = p.comm.allreduce(np.einsum("ij,ij->j", rows, V))
    rhs = p.comm.allreduce(sum(np.einsum("ij,ij->j", d, b)
                               for d, b in zip(D, back, strict=True)))
    assert np.all(np.abs(lhs) > 1e-3 * np.abs(rows).max())
    assert np.allclose(lhs, rhs, rtol=1e-10)
    single = p.slip_jacobian([d[:, 1] for d in D])
    assert np.allclose(single, rows[:, 1], rtol=0, atol=1e-12 * np.abs(rows).max())


def test_m2_band_is_the_dense_joint_gauss_newton_marginal():
    """Cov(a) of the matrix-free block-CG path equals sigma^2 [H^-1]_aa of the dense joint
    (a, gamma) Gauss-Newton matrix built column by column, and so does one CG per column (the
    unbatched path, batch 1), which needs more iterations; the a-gamma correlation widens the
    band."""
    import scipy.linalg
    import ufl
    from dolfinx import fem
    from dolfinx.fem import petsc as fem_petsc

    from chemomech.dislocations.bands import m2_covariance

    spec = ParticleSpec("small", 0.5, rotation_rad=0.4, length_nm=700, width_nm=450,
                        pixel_size_nm=25, slip_amplitude=0.01, slip_width_nm=100,
                        noise_strain=NOISE, noise_composition=0.01, seed=5)
    model = _model(simulate_particle(spec), MPI.COMM_SELF, alpha=3.0)
    model.fit()
    cov, sigma2, info = m2_covariance(model, rtol=1e-10)
    columns, sigma2_columns, info_columns = m2_covariance(model, rtol=1e-10, method="columns",
                                                          batch=1)
    assert info["cg_method"] == "block" and info_columns["cg_method"] == "columns"
    assert sigma2_columns == pytest.approx(sigma2, rel=1e-12)
    p = model.particles[0]
    n = p.n_owned
    Ja = model.coefficient_columns()[0]
    Jg = np.stack([p.slip_jacobian([np.eye(n)[j]]) for j in range(n)], axis=1)
    q, w = ufl.TrialFunction(p.Q), ufl.TestFunction(p.Q)
    L = fem_petsc.assemble_matrix(fem.form(3.0 * ufl.inner(ufl.grad(q), ufl.grad(w)) * ufl.dx))
    L.assemble()
    L = L.convert("dense").getDenseArray()
    H = np.block([[Ja.T @ Ja, Ja.T @ Jg], [Jg.T @ Ja, Jg.T @ Jg + L]])
    k = Ja.shape[1]
    # H is singular along the uniform slip (no measured quantity sees it): pseudo-inverse
    dense = sigma2 * scipy.linalg.pinvh(H, atol=1e-12 * np.abs(H).max())[:k, :k]
    assert np.allclose(cov, dense, rtol=1e-6, atol=1e-6 * np.abs(dense).max())
    assert np.allclose(columns, dense, rtol=1e-6, atol=1e-6 * np.abs(dense).max())
    conditional = sigma2 * np.linalg.inv(Ja.T @ Ja)
    assert np.all(np.diag(cov) > np.diag(conditional))
    assert max(info_columns["cg_iterations"]) < 200
    # one Krylov space for all columns: fewer iterations than any single column's CG
    assert max(info["cg_iterations"]) < min(info_columns["cg_iterations"])
    assert info["hessian_products"] == max(info["cg_iterations"])


def test_m2_run_writes_consistent_fields(tmp_path, monkeypatch):
    """fields.h5 of an M2 run, pixel by pixel in M2's lattice convention: measured = eigenstrain
    + elastic + residual; lattice = measured - residual is M2's (not M1's); the elastic strain
    has zero mean (traction-free, uniform stiffness); the summary carries the M2 band; M2
    reuses M1's mesh and factorised model (one mesh, one M1Model per run)."""
    import h5py

    import chemomech.inverse.problem
    import chemomech.mechanics.mesh
    from chemomech.io.stack import write_stack
    from chemomech.pipeline import run

    data = tmp_path / "twin.h5"
    write_stack(data, [_twin()])
    config = RunConfig(data=[data], model="M2", legendre_degree=1, edge_exclusion_px=1,
                       output=tmp_path / "out", dislocations={"regularisation": {"alpha": 3.0}})
    calls = {"mesh": 0, "M1Model": 0}
    mesh_from_mask = chemomech.mechanics.mesh.mesh_from_mask
    m1_init = chemomech.inverse.problem.M1Model.__init__

    def counted_mesh(*args, **kwargs):
        calls["mesh"] += 1
        return mesh_from_mask(*args, **kwargs)

    def counted_init(self, *args, **kwargs):
        calls["M1Model"] += 1
        m1_init(self, *args, **kwargs)

    monkeypatch.setattr(chemomech.mechanics.mesh, "mesh_from_mask", counted_mesh)
    monkeypatch.setattr(chemomech.inverse.problem.M1Model, "__init__", counted_init)
    summary = run(config, MPI.COMM_SELF)
    assert calls == {"mesh": 1, "M1Model": 1}
    assert summary["dislocations"]["band"]["method"].startswith("joint Gauss-Newton")
    assert "a_lo" in summary["eigenstrain_curve"]
    assert np.shape(summary["covariance"]) == (4, 4)
    with h5py.File(tmp_path / "out" / "fields.h5") as f:
        g = {k: f["twin"][k][()] for k in f["twin"]}
    used = g["used"] > 0
    for c in ("aa", "cc", "ac"):
        eig = g[f"eigenstrain_{c}"] if c != "ac" else 0.0
        total = eig + g[f"elastic_{c}"] + g[f"residual_M2_{c}"]
        assert np.allclose(total[used], g[f"measured_{c}"][used], rtol=0, atol=1e-12)
        assert np.allclose((g[f"measured_{c}"] - g[f"residual_M2_{c}"])[used],
                           g[f"lattice_{c}"][used], rtol=0, atol=1e-12)
        assert not np.allclose(g[f"residual_M2_{c}"][used], g[f"residual_M1_{c}"][used])
        inside = np.isfinite(g[f"elastic_{c}"]) & (g["mask"] > 0)
        elastic = g[f"elastic_{c}"][inside]
        assert abs(elastic.mean()) < 0.05 * elastic.std()
    assert np.nanmax(np.abs(g["plastic_ac"])) > 1e-3
    assert summary["model_errors"]["M2"] < summary["model_errors"]["M1"]


def _offset(particle, de_ac):
    import dataclasses

    return dataclasses.replace(particle, e_xy=np.where(particle.mask, particle.e_xy + de_ac,
                                                       particle.e_xy))


def test_m2_does_not_absorb_a_uniform_shear_offset(real_particle_path):
    """LFP50_P2 + 0.01 on e_ac everywhere: no slip field makes a uniform lattice shear (mean
    lattice strain = mean eigenstrain), so M2's model error rises at least 0.6 times as much
    as M1's, and about as much as M0's (which fits only e_aa, e_cc and cannot absorb it).
    alpha = 20, a decade above the L-curve corner (bench/results/m2.json holds the same check
    at the corner, alpha = 1.87: rises M0 0.0114, M1 0.0168, M2 0.0112)."""
    from chemomech.dislocations.run import M1Stage
    from chemomech.io.readers import read_particles
    from chemomech.pipeline import _residuals, fit_direct_regression, run_m1

    config = RunConfig(data=[real_particle_path], model="M2", optimiser={"method": "linear"},
                       uncertainty={"method": "gauss_newton"},
                       dislocations={"regularisation": {"alpha": 20.0}, "bands": False,
                                     "grtol": 1e-5})
    base = read_particles([real_particle_path])[0]
    errors = {}
    for shift in (0.0, 0.01):
        prepared = [prepare(_offset(base, shift), config)]
        m0 = fit_direct_regression(prepared, config.m0_degree, config.edge_exclusion_px)
        m1 = run_m1(prepared, config, MPI.COMM_SELF)
        stage = M1Stage(m1.particle_indices, m1.meshes, m1.model, m1.fit.coefficients)
        m2 = run_m2(prepared, config, MPI.COMM_SELF, m1=stage)
        residual, used = _residuals(prepared[0], m0, {"M1": m1, "M2": m2},
                                    config.edge_exclusion_px)
        for name, r in residual.items():
            errors.setdefault(name, []).append(model_error(r["e_xx"], r["e_yy"], r["e_xy"],
                                                           used))
    rise = {name: e[1] - e[0] for name, e in errors.items()}
    assert rise["M1"] > 0.005
    assert rise["M2"] >= 0.6 * rise["M1"], rise
    assert rise["M2"] >= 0.9 * rise["M0"], rise
