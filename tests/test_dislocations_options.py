"""M2 with M1's options: Dirichlet boundary data (with the gauge), mixed stiffness C(X) and plane
strain with the b-eigenstrain: reduction to M1 at zero slip, the slip response on the
Dirichlet boundary, uniform X = pure phase, a Dirichlet twin, 1 vs 2 ranks (the Taylor tests
with these options are in test_dislocations.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from mpi4py import MPI

from chemomech.config import RunConfig
from chemomech.dislocations.run import build_m1_stage, m2_model, run_m2
from chemomech.pipeline import prepare
from chemomech.synth import ParticleSpec, simulate_particle

NOISE = 5e-4


def _twin(slip: float = 0.01):
    spec = ParticleSpec("twin", 0.5, rotation_rad=0.4, length_nm=1200, width_nm=800,
                        pixel_size_nm=25, slip_amplitude=slip, slip_width_nm=120,
                        noise_strain=NOISE, noise_composition=0.01, seed=3)
    return simulate_particle(spec, MPI.COMM_SELF)


@pytest.fixture(scope="module")
def twin():
    return _twin()


def _config(dislocations=None, **options):
    return RunConfig(data=["unused.h5"], model="M2", legendre_degree=1, edge_exclusion_px=1,
                     dislocations=dislocations or {}, **options)


def _prepared(particle, config, boundary: str = "truth"):
    """The prepared particle; under Dirichlet its boundary data are the twin's true material
    displacement ("truth") or the integrated measured lattice distortion ("integrated")."""
    prepared = prepare(particle, config)
    if config.boundary_condition == "dirichlet" and boundary == "truth":
        u = np.stack([particle.truth["u_x"], particle.truth["u_y"]], axis=-1)
        prepared = dataclasses.replace(prepared, displacement=u)
    return prepared


def _model(particle, comm, config):
    prepared = [_prepared(particle, config)]
    return m2_model(prepared, build_m1_stage(prepared, config, comm), config)


def _state(p):
    """A general state: coefficients and a smooth non-uniform slip (owned values)."""
    coords = p.Q.tabulate_dof_coordinates()[: p.n_owned, :2]
    g = 0.01 * np.sin(coords[:, 0] / 150.0) * np.cos(coords[:, 1] / 90.0) + 0.003
    return np.array([-0.02, 0.02, 0.01, -0.01]), g


DIRICHLET = {"boundary_condition": "dirichlet"}
PLANE_STRAIN = {"reduction": "plane_strain"}
MIXED = {"stiffness": "mixed"}


def test_m2_options_validate():
    config = _config(boundary_condition="dirichlet", stiffness="mixed",
                     reduction="plane_strain", fragmented_data="refuse")
    assert config.model == "M2" and config.gauge_object() == "auto"


@pytest.mark.mpi
@pytest.mark.parametrize("options", [DIRICHLET, PLANE_STRAIN, DIRICHLET | PLANE_STRAIN | MIXED],
                         ids=["dirichlet", "plane_strain", "dirichlet+plane_strain+mixed"])
def test_zero_slip_m2_is_m1(twin, options):
    """Lattice strain only (theta_weight 0), zero slip: J and dJ/da of M2 are M1's on its strain
    misfit (an independent observation operator), fixed load b_0 (Dirichlet lift, f_b)
    included."""
    config = _config({"theta_weight": 0.0, "regularisation": {"alpha": 1.0}}, **options)
    model = _model(twin, MPI.COMM_WORLD, config)
    p = model.particles[0]
    assert p.base.offset is not None  # the fixed load is there to be included
    a = np.array([-0.02, 0.02, 0.01, -0.01])
    J, grad_a, _ = model.cost_and_gradient(a, [np.zeros(p.n_owned)])
    J_m1, grad_m1 = model.m1.cost_and_gradient(a)
    assert J == pytest.approx(J_m1, rel=1e-10)
    assert np.allclose(grad_a, grad_m1, rtol=1e-10, atol=1e-12 * np.abs(grad_m1).max())


@pytest.mark.mpi
def test_slip_response_keeps_the_dirichlet_data(twin):
    """With Dirichlet data u = g on the constrained DOFs for any slip (K_s has zero rows
    there), a uniform slip leaves u unchanged (constant C: its interior load vanishes) and
    shifts the lattice strain by -sym(s n) gamma: the data see it (no null space)."""
    from chemomech.dislocations.lattice import lattice_components

    model = _model(twin, MPI.COMM_WORLD, _config(**DIRICHLET))
    p = model.particles[0]
    a, g = _state(p)
    gamma = model.gammas[0][0]
    gamma.x.array[: p.n_owned] = g
    gamma.x.scatter_forward()
    model.coefficients = a
    dofs = p.base.problem.bcs[0].dof_indices()[0]
    u = model.displacement(0)
    boundary = p.base.setup.u_boundary.x.array[dofs]
    assert np.abs(u.x.array[dofs] - boundary).max() < 1e-12 * np.abs(boundary).max()
    gamma.x.array[:] = 0.02
    u_uniform = model.displacement(0)
    gamma.x.array[:] = 0.0
    u_zero = model.displacement(0)
    assert np.abs(u_uniform.x.array - u_zero.x.array).max() < 1e-10 * np.abs(
        u_zero.x.array).max()
    gamma.x.array[:] = 0.02
    rows = p.misfit.observe(u_uniform, [gamma]) - p.misfit.observe(u_zero)
    n = p.misfit.n_local
    expected = -0.02 * lattice_components(p.tensors[0])
    weights = [1.0, 1.0, np.sqrt(2.0), np.sqrt(2.0)]
    for k in range(4):
        assert np.allclose(rows[k * n:(k + 1) * n], weights[k] * expected[k], atol=1e-12)
    assert np.abs(expected[:3]).max() > 1e-3  # a uniform slip has a lattice strain


@pytest.mark.parametrize("X, pure", [(1.0, "LiFePO4"), (0.0, "FePO4")])
def test_mixed_stiffness_at_uniform_x_is_the_pure_phase(twin, X, pure):
    particle = dataclasses.replace(twin, X=np.where(twin.mask, X, np.nan))
    values = {}
    for stiffness in ("mixed", pure):
        model = _model(particle, MPI.COMM_SELF, _config(stiffness=stiffness))
        a, g = _state(model.particles[0])
        values[stiffness] = model.cost_and_gradient(a, [g])
    (J, ga, gg), (J_pure, ga_pure, gg_pure) = values["mixed"], values[pure]
    assert J == pytest.approx(J_pure, rel=1e-10)
    assert np.allclose(ga, ga_pure, rtol=1e-9, atol=1e-12 * np.abs(ga_pure).max())
    assert np.allclose(gg[0], gg_pure[0], rtol=1e-9, atol=1e-12 * np.abs(gg_pure[0]).max())
    # and the two phases do differ (the comparison can fail)
    other = _model(particle, MPI.COMM_SELF, _config(
        stiffness="FePO4" if pure == "LiFePO4" else "LiFePO4"))
    assert other.cost_and_gradient(a, [g])[0] != pytest.approx(J, rel=1e-3)


def test_dirichlet_twin_recovers_slip_and_law(twin):
    """Boundary data = the twin's true material displacement: M2 recovers the slip field,
    the density and the law (the gauge f(1) = 0 holds for the twin's Vegard law)."""
    config = _config({"bands": True}, **DIRICHLET)
    prepared = _prepared(twin, config)
    out = run_m2([prepared], config, MPI.COMM_SELF)
    a_a, a_c = out.fit.coefficients_a, out.fit.coefficients_c
    assert abs(a_a.sum()) < 1e-12 and abs(a_c.sum()) < 1e-12  # f(1) = 0 exactly (the gauge)
    assert out.fit.gauge is not None and out.summary["fit"]["gauge"]["X"] == 1.0
    # the slope (the identified part) is recovered
    assert a_a[1] == pytest.approx(twin.truth["coefficients_a"][1], abs=5e-4)
    assert a_c[1] == pytest.approx(twin.truth["coefficients_c"][1], abs=5e-4)
    maps = out.images["twin"]
    meshed = maps["meshed_mask"] > 0
    gamma_truth = twin.truth["gamma"][meshed]
    assert np.corrcoef(maps["gamma_D"][meshed], gamma_truth)[0, 1] > 0.9
    # with Dirichlet data the slip's mean is determined (no zero-mean convention)
    assert np.mean(maps["gamma_D"][meshed]) == pytest.approx(np.mean(gamma_truth), rel=0.2)
    truth = twin.truth["gnd_density_um2"][meshed]
    assert out.mean_density_um2["twin"] == pytest.approx(truth.mean(), rel=0.2)
    # the band is taken in the free coefficients: zero variance of f(1)
    f1 = np.ones(2)
    cov = out.covariance
    assert abs(f1 @ cov[:2, :2] @ f1) < 1e-12 * cov[1, 1]
    assert cov[1, 1] > 0 and cov[3, 3] > 0


def test_integrated_boundary_data_carry_no_mean_slip(twin):
    """What the pipeline imposes under Dirichlet, the integrated measured *lattice* distortion,
    is not the material displacement where slip crosses the boundary: its mean gradient is the
    mean lattice distortion, so the fitted slip has (nearly) zero mean although the twin's is
    not, while the law is still recovered (docs/steps/dislocations.md)."""
    config = _config({"bands": False}, **DIRICHLET)
    out = run_m2([_prepared(twin, config, "integrated")], config, MPI.COMM_SELF)
    maps = out.images["twin"]
    meshed = maps["meshed_mask"] > 0
    mean_truth = np.mean(twin.truth["gamma"][meshed])
    assert abs(np.mean(maps["gamma_D"][meshed])) < 0.1 * mean_truth
    assert out.fit.coefficients_a[1] == pytest.approx(twin.truth["coefficients_a"][1],
                                                      abs=5e-4)
    assert out.fit.coefficients_c[1] == pytest.approx(twin.truth["coefficients_c"][1],
                                                      abs=5e-4)


def test_cg_fit_equals_blmvm_with_all_options(twin):
    """Dirichlet data (the gauge: cg works in the free coefficients), plane strain with the
    b-eigenstrain and C(X): M2 fitted by cg (exact Hessian actions) and by BLMVM agree."""
    options = DIRICHLET | PLANE_STRAIN | MIXED
    fits = []
    for tao_type in ("blmvm", "cg"):
        config = _config({"regularisation": {"alpha": 3.0}, "grtol": 1e-9, "bands": False,
                          "tao_type": tao_type}, **options)
        fits.append(run_m2([_prepared(twin, config)], config, MPI.COMM_SELF).fit)
    assert fits[1].cost == pytest.approx(fits[0].cost, rel=1e-8)
    assert np.allclose(fits[1].coefficients, fits[0].coefficients, rtol=0, atol=1e-6)
    assert abs(fits[1].coefficients_a.sum()) < 1e-12  # the gauge f(1) = 0 holds


@pytest.mark.mpi
@pytest.mark.mpi_only  # serial vs COMM_WORLD: meaningful on >= 2 ranks only
def test_dirichlet_one_and_two_ranks_agree():
    particle = _twin()
    config = _config({"regularisation": {"alpha": 3.0}, "grtol": 1e-9}, **DIRICHLET)
    prepared = _prepared(particle, config)
    serial = run_m2([prepared], config, MPI.COMM_SELF)
    parallel = run_m2([prepared], config, MPI.COMM_WORLD)
    assert parallel.fit.misfit == pytest.approx(serial.fit.misfit, rel=1e-5)
    assert np.allclose(parallel.fit.coefficients, serial.fit.coefficients, rtol=0, atol=1e-8)
    assert np.allclose(parallel.covariance, serial.covariance, rtol=1e-4,
                       atol=1e-4 * np.abs(serial.covariance).max())
    if MPI.COMM_WORLD.rank == 0:
        a = parallel.images["twin"]["gamma_D"]
        b = serial.images["twin"]["gamma_D"]
        assert np.nanmax(np.abs(a - b)) < 1e-5 * np.nanmax(np.abs(b))


def test_dirichlet_m2_refuses_fragmented_boundary_data(twin):
    """A NaN line across the particle splits its data into two integrated pieces: the
    Dirichlet data would jump between them, so M2 refuses, naming the key and the pixels."""
    from chemomech.exceptions import InputError

    i = int(np.flatnonzero(twin.mask.any(axis=1)).mean())
    cut = {k: np.where(np.arange(twin.mask.shape[0])[:, None] == i, np.nan, getattr(twin, k))
           for k in ("e_xx", "e_yy", "e_xy", "theta")}
    config = _config(**DIRICHLET)
    prepared = [prepare(dataclasses.replace(twin, **cut), config)]
    with pytest.raises(InputError, match="2 separate pieces") as err:
        build_m1_stage(prepared, config, MPI.COMM_SELF)
    assert err.value.field == "boundary_condition" and f"({i}, " in str(err.value)


def test_the_guide_quotes_bench_m2_options_json():
    """The LFP50_P2 table of docs/steps/dislocations.md is bench/results/m2_options.json."""
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    variants = json.loads((root / "bench/results/m2_options.json").read_text())["variants"]
    text = (root / "docs/steps/dislocations.md").read_text()
    rows = {"dirichlet": r"dirichlet", "mixed": r"\+ stiffness mixed",
            "plane_strain": r"\+ reduction plane_strain"}
    for name, label in rows.items():
        row = re.search(rf"^\| {label} \| ([\d.]+) / ([\d.]+) / ([\d.]+) \| ([-\d.]+) % \| "
                        rf"([\d.]+) \|", text, flags=re.MULTILINE)
        assert row, name
        v = variants[name]
        quoted = [float(x) for x in row.groups()]
        assert np.allclose(quoted[:3], [v["model_errors"][m] for m in ("M0", "M1", "M2")],
                           rtol=0, atol=5e-6), name
        assert quoted[3] == pytest.approx(v["m2_vs_m1_percent"], abs=0.05), name
        assert quoted[4] == pytest.approx(v["alpha"], abs=5e-4), name


def test_pipeline_runs_m2_with_all_options(tmp_path, twin):
    """`model: M2` with dirichlet + mixed + plane_strain through the pipeline: M2 reuses M1's
    Dirichlet model (its gauge holds for M2's law), the summary has M1's identifiability block
    and the M2 band, and fields.h5 decomposes measured = eigenstrain + elastic + residual."""
    import h5py

    from chemomech.io.stack import write_stack
    from chemomech.pipeline import run

    data = tmp_path / "twin.h5"
    write_stack(data, [twin])
    config = RunConfig(data=[data], model="M2", legendre_degree=1, edge_exclusion_px=1,
                       output=tmp_path / "out", boundary_condition="dirichlet",
                       stiffness="mixed", reduction="plane_strain",
                       dislocations={"regularisation": {"alpha": 3.0}})
    summary = run(config, MPI.COMM_SELF)
    a, c = summary["coefficients"]["a"], summary["coefficients"]["c"]
    assert abs(sum(a)) < 1e-12 and abs(sum(c)) < 1e-12  # f(1) = 0: M1's gauge
    assert summary["dislocations"]["fit"]["gauge"]["X"] == 1.0
    assert summary["identifiability"] and np.shape(summary["covariance"]) == (4, 4)
    assert summary["dislocations"]["band"]["method"].startswith("joint Gauss-Newton")
    assert summary["model_errors"]["M2"] < summary["model_errors"]["M1"]
    with h5py.File(tmp_path / "out" / "fields.h5") as f:
        g = {k: f["twin"][k][()] for k in f["twin"]}
    used = g["used"] > 0
    for comp in ("aa", "cc", "ac"):
        eig = g[f"eigenstrain_{comp}"] if comp != "ac" else 0.0
        total = eig + g[f"elastic_{comp}"] + g[f"residual_M2_{comp}"]
        assert np.allclose(total[used], g[f"measured_{comp}"][used], rtol=0, atol=1e-12)
