"""Dislocation model M2: slip geometry, exact adjoint (Taylor rate 2 for the slip-field control),
twin recovery of a known slip field and GND density, alpha rules, 1 vs 2 ranks."""

from __future__ import annotations

import dolfinx
import numpy as np
import pyadjoint
import pytest
from mpi4py import MPI

from chemomech.analysis.report import plot_density_map
from chemomech.analysis.residual import m2_model_errors
from chemomech.analysis.slip_systems import compare_slip_systems
from chemomech.config import RunConfig
from chemomech.correlative.displacement import measured_displacement
from chemomech.dislocations.alpha import estimate_strain_noise, lcurve_corner
from chemomech.dislocations.model import M2Model
from chemomech.dislocations.run import run_m2
from chemomech.dislocations.settings import M2Settings, Regularisation
from chemomech.exceptions import InputError
from chemomech.inverse.problem import particle_setup
from chemomech.mechanics.mesh import mesh_from_mask
from chemomech.mechanics.slip import IN_PLANE_SYSTEMS, slip_system
from chemomech.pipeline import prepare
from chemomech.synth import ParticleSpec, _slip_tensor, simulate_particle

NOISE = 5e-4


def _twin(comm=MPI.COMM_SELF):
    spec = ParticleSpec("twin", 0.5, rotation_rad=0.4, length_nm=1200, width_nm=800,
                        pixel_size_nm=25, slip_amplitude=0.01, slip_width_nm=120,
                        noise_strain=NOISE, noise_composition=0.01, seed=3)
    return simulate_particle(spec, comm)


@pytest.fixture(scope="module")
def twin():
    return _twin()


@pytest.fixture(scope="module")
def twin_config():
    return RunConfig(data=["unused.h5"], legendre_degree=1, edge_exclusion_px=1)


def _model(particle, comm, kind="h1", alpha=1.0, systems=("D",)):
    pm = mesh_from_mask(particle.mask, particle.pixel_size_nm, comm)
    setup = particle_setup(particle.name, pm, particle.X, particle.rotation_rad,
                           displacement=measured_displacement(particle).u, edge_exclusion_px=1)
    return M2Model([setup], systems, degree=1, comm=comm,
                   regularisation=Regularisation(kind, alpha))


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


def test_settings_from_config():
    class Cfg:
        dislocations = {"slip_systems": ["D", "ac+"],
                        "regularisation": {"kind": "tv", "alpha": 2.0, "rule": "lcurve"}}
    s = M2Settings.from_config(Cfg())
    assert s.slip_systems == ("D", "ac+") and s.kind == "tv" and s.alpha == 2.0
    assert s.rule == "lcurve"
    Cfg.dislocations = {"regularisation": {"kind": "h1", "alhpa": 1.0}}
    with pytest.raises(InputError, match="alhpa"):
        M2Settings.from_config(Cfg())
    assert M2Settings.from_config(None) == M2Settings()


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


@pytest.mark.mpi
@pytest.mark.parametrize("kind", ["h1", "tv"])
def test_taylor_rate_two_for_the_slip_field(twin, kind):
    model = _model(twin, MPI.COMM_WORLD, kind=kind, alpha=1e3)
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
    model = _model(twin, MPI.COMM_WORLD, alpha=1e3)
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
    # with zero slip and alpha = 0 the coefficient gradient is M1's
    model.set_alpha(0.0)
    _, grad_a, _ = model.cost_and_gradient(a, [np.zeros(p.n_owned)])
    _, grad_m1 = model.m1.cost_and_gradient(a)
    assert np.allclose(grad_a, grad_m1, rtol=1e-10, atol=1e-12 * np.abs(grad_m1).max())


# ---------------------------------------------------------------------------- twin


def test_twin_recovers_slip_and_density(twin, twin_config, tmp_path):
    prepared = prepare(twin, twin_config)
    out = run_m2([prepared], twin_config, MPI.COMM_SELF, settings=M2Settings())
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
    # M2 explains more of the strain than M1 with the same pixels
    m2_error = m2_model_errors([prepared], out.images, twin_config.edge_exclusion_px)["twin"]
    assert m2_error < 0.8 * _m1_error(prepared, twin_config)
    assert out.summary["system"] == "D"
    assert out.summary["regularisation"]["rule"] == "discrepancy"
    path = plot_density_map(maps["density_total"], twin.X, meshed, twin.pixel_size_nm,
                            tmp_path / "density.png")
    assert path.stat().st_size > 1000


def _m1_error(prepared, config):
    from chemomech.analysis.residual import model_error
    from chemomech.correlative.prepared import used_pixels
    from chemomech.mechanics.fields import model_maps
    from chemomech.mechanics.forms import epsilon

    pm = mesh_from_mask(prepared.data.mask, prepared.data.pixel_size_nm, MPI.COMM_SELF)
    setup = particle_setup("twin", pm, prepared.data.X, prepared.data.rotation_rad,
                           displacement=prepared.displacement, edge_exclusion_px=1)
    model = M2Model([setup], ("D",), degree=1, comm=MPI.COMM_SELF)
    fit = model.m1.fit(method="linear", with_normal_matrix=False)
    u = model.m1.displacement(0, fit.coefficients)
    maps = model_maps(u, epsilon(u), pm, pm.mask.shape)
    used = used_pixels(prepared.data.mask & (maps["meshed_mask"] > 0), prepared, 1)
    return model_error(*(prepared.strain_image[c] - maps[c] for c in ("e_xx", "e_yy", "e_xy")),
                       used)


def test_compare_systems_prefers_the_true_one(twin, twin_config):
    prepared = prepare(twin, twin_config)
    settings = M2Settings(alpha=3e3)
    table = compare_slip_systems([prepared], twin_config, MPI.COMM_SELF, ["ac+", "D"],
                                 settings=settings)
    assert [row["system"] for row in table] == ["D", "ac+"]
    assert table[0]["model_error"] < 0.9 * table[1]["model_error"]


@pytest.mark.mpi
@pytest.mark.mpi_only  # serial vs COMM_WORLD: meaningful on >= 2 ranks only
def test_one_and_two_ranks_agree(twin_config):
    world = MPI.COMM_WORLD
    particle = _twin()
    prepared = prepare(particle, twin_config)
    settings = M2Settings(alpha=3e3, grtol=1e-9)
    serial = run_m2([prepared], twin_config, MPI.COMM_SELF, settings=settings)
    parallel = run_m2([prepared], twin_config, world, settings=settings)
    assert parallel.fit.misfit == pytest.approx(serial.fit.misfit, rel=1e-5)
    assert np.allclose(parallel.fit.coefficients, serial.fit.coefficients, rtol=0, atol=1e-8)
    if world.rank == 0:
        assert parallel.mean_density_um2["twin"] == pytest.approx(
            serial.mean_density_um2["twin"], rel=1e-4)
        a = parallel.images["twin"]["gamma_D"]
        b = serial.images["twin"]["gamma_D"]
        assert np.nanmax(np.abs(a - b)) < 1e-5 * np.nanmax(np.abs(b))


def test_lcurve_rule_on_the_twin(twin, twin_config):
    prepared = prepare(twin, twin_config)
    out = run_m2([prepared], twin_config, MPI.COMM_SELF, settings=M2Settings(rule="lcurve"))
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


def test_blmvm_and_bqnls_agree(twin, twin_config):
    prepared = prepare(twin, twin_config)
    fits = [run_m2([prepared], twin_config, MPI.COMM_SELF,
                   settings=M2Settings(alpha=3e3, tao_type=t)).fit for t in ("blmvm", "bqnls")]
    assert fits[0].cost == pytest.approx(fits[1].cost, rel=1e-8)
    assert fits[0].iterations < 400 and fits[1].iterations < 400  # preconditioned (H0)


@pytest.mark.mpi
@pytest.mark.mpi_only  # serial vs COMM_WORLD: meaningful on >= 2 ranks only
def test_two_particles_joint_fit_is_rank_independent(twin_config):
    spec = {"length_nm": 900, "width_nm": 600, "pixel_size_nm": 25, "slip_amplitude": 0.01,
            "slip_width_nm": 120, "noise_strain": NOISE, "noise_composition": 0.01}
    particles = [simulate_particle(ParticleSpec("p0", 0.5, rotation_rad=0.4, seed=3, **spec)),
                 simulate_particle(ParticleSpec("p1", 0.4, rotation_rad=-1.1, seed=4, **spec))]
    prepared = [prepare(p, twin_config) for p in particles]
    settings = M2Settings(alpha=3e3, grtol=1e-9)
    serial = run_m2(prepared, twin_config, MPI.COMM_SELF, settings=settings)
    world = run_m2(prepared, twin_config, MPI.COMM_WORLD, settings=settings)
    assert set(world.fit.per_particle_misfit) == {"p0", "p1"}
    for name in ("p0", "p1"):
        assert world.fit.per_particle_misfit[name] == pytest.approx(
            serial.fit.per_particle_misfit[name], rel=1e-5)
    assert np.allclose(world.fit.coefficients, serial.fit.coefficients, rtol=0, atol=1e-8)
    if MPI.COMM_WORLD.rank == 0:
        for name in ("p0", "p1"):
            assert world.mean_density_um2[name] == pytest.approx(
                serial.mean_density_um2[name], rel=1e-4)


def test_initial_hessian_is_a_consistent_matrix(twin):
    """The LMVM H0 shell: apply (H0^-1) inverts mult (H0), and H0 is symmetric positive."""
    from petsc4py import PETSc

    from chemomech.dislocations.model import _InitialHessian

    model = _model(twin, MPI.COMM_SELF, alpha=3e3)
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
