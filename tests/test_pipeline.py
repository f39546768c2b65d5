"""End to end: stack -> M0 + M1 -> summary.json, fields and figures (DESIGN §3 keys)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from chemomech.cli import main
from chemomech.config import RunConfig
from chemomech.demo import truth_error
from chemomech.pipeline import run
from chemomech.synth import make_default_dataset
from chemomech.twins import TwinOptions

STABLE_KEYS = {"model", "legendre_degree", "reference", "coefficients", "covariance",
               "eigenstrain_curve", "model_error", "residual_incompatibility_rms",
               "per_particle", "timings_s", "versions"}


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Three small twin particles (FP, LxFP, LFP) with strain noise 1e-3, shared by the tests;
    made by the independent generator (chemomech.twins), not the inversion's discretisation."""
    path = tmp_path_factory.mktemp("twins") / "twins.h5"
    make_default_dataset(path, seed=3, n_particles=3, comm=MPI.COMM_SELF, length_nm=1200.0,
                         width_nm=700.0, pixel_size_nm=25.0,
                         independent=TwinOptions(supersample=2))
    return path


def test_m1_pipeline_recovers_the_twin_law_and_writes_every_output(twins, tmp_path):
    out = tmp_path / "m1"
    config = RunConfig(data=[twins], model="M1", legendre_degree=2, output=out,
                       optimiser={"verify_gradient": True})
    summary = run(config, MPI.COMM_SELF)
    assert STABLE_KEYS <= set(summary)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["coefficients"] == summary["coefficients"]
    n = 3
    assert len(summary["coefficients"]["a"]) == n and np.shape(summary["covariance"]) == (6, 6)
    curve = summary["eigenstrain_curve"]
    assert np.all(np.array(curve["a_lo"]) <= np.array(curve["a"]))
    assert np.all(np.array(curve["a"]) <= np.array(curve["a_hi"]))
    # twin: the learnt law is within 2 % of the eigenstrain range of the truth
    with h5py.File(twins) as f:
        names = set(f["particles"])
        truth = f["particles"][next(iter(f["particles"]))]["truth"]
        truth_a, truth_c = truth["coefficients_a"][...], truth["coefficients_c"][...]
    errors = truth_error(summary, truth_a, truth_c)
    assert errors["a"] < 0.02 and errors["c"] < 0.02, errors
    # the physics-constrained model explains the twin strain better than direct regression
    assert summary["model_errors"]["M1"] < summary["model_errors"]["M0"]
    assert set(summary["per_particle"]) == names and len(names) == 3  # every particle of the stack
    for name in ("eigenstrain", "chemical_expansion", "model_error"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 5000
    with h5py.File(out / "fields.h5") as f:
        group = f[next(iter(summary["per_particle"]))]
        assert {"X", "u_x", "residual_M1_aa", "elastic_aa", "eigenstrain_cc"} <= set(group)
    assert (out / "fields.xdmf").exists() and (out / "config.yaml").exists()
    assert "M1 tao fit" in (out / "log.txt").read_text()
    assert summary["gradient_check"]["min_rate"] == pytest.approx(2.0, abs=0.05)
    assert summary["fit"]["covariance_method"] == "calibrated"  # auto, for M1
    assert {"noise", "sandwich", "discretisation"} == set(summary["uncertainty"]["parts"])
    ident = on_disk["identifiability"]  # every run: the scaled Gauss-Newton spectrum
    assert ident["model"] == "M1" and ident["unidentified"] == [] and ident["gauge"] is None
    assert len(ident["singular_values_relative"]) == 6
    assert ident["condition_number"] < ident["threshold"]


def test_m0_only_and_cli_errors(twins, tmp_path, caplog):
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {twins}\nmodel: M0\nlegendre_degree: 3\noutput: out\n")
    assert main(["invert", str(config)]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["model"] == "M0" and len(summary["coefficients"]["a"]) == 4
    assert "M1" not in summary["model_errors"]
    assert summary["identifiability"]["model"] == "M0"
    assert len(summary["identifiability"]["singular_values_relative"]) == 8
    config.write_text(f"data: {twins}\nmodel: M1\nlegendre_degre: 2\n")
    assert main(["invert", str(config)]) == 2
    assert "legendre_degre" in caplog.text
    config.write_text(f"data: {twins}\nparticles: [nope]\n")
    assert main(["invert", str(config)]) == 2
    assert "nope" in caplog.text


def test_m2_pipeline_writes_dislocations(tmp_path):
    """M2 on a slipped two-phase twin: the summary gains the `dislocations` block (DESIGN §3)
    and the model error falls from M1 to M2; density maps land in fields.h5 and figures."""
    data = tmp_path / "slip.h5"
    make_default_dataset(data, seed=5, n_particles=1, comm=MPI.COMM_SELF, length_nm=1200.0,
                         width_nm=700.0, pixel_size_nm=25.0, slip_amplitude=0.02)
    out = tmp_path / "m2"
    config = RunConfig(data=[data], model="M2", legendre_degree=1, output=out,
                       dislocations={"regularisation": {"alpha": 1.0}})
    summary = run(config, MPI.COMM_SELF)
    block = summary["dislocations"]
    assert block["system"] == "D" and block["regularisation"]["rule"] == "fixed"
    assert block["mean_density_um2"] > 0
    errors = summary["model_errors"]
    assert errors["M2"] < errors["M1"]
    name = next(iter(summary["per_particle"]))
    assert (out / "figures" / f"density_{name}.png").exists()
    with h5py.File(out / "fields.h5") as f:
        assert {"density_total", "residual_M2_aa"} <= set(f[name])


@pytest.mark.mpi
@pytest.mark.mpi_only  # serial vs COMM_WORLD: meaningful on >= 2 ranks only
def test_pipeline_gives_the_serial_answer_on_all_ranks(tmp_path):
    """The whole run (particles dealt to rank groups) equals a serial run: coefficients to 1e-8
    relative, model errors to 1e-8."""
    from pathlib import Path

    comm = MPI.COMM_WORLD
    base = Path(comm.bcast(str(tmp_path) if comm.rank == 0 else None, root=0))
    data = base / "twins.h5"
    make_default_dataset(data, seed=4, n_particles=3, comm=comm, length_nm=1000.0,
                         width_nm=600.0, pixel_size_nm=25.0)
    config = RunConfig(data=[data], model="M1", legendre_degree=2, output=base / "world",
                       uncertainty={"n_draws": 10})
    world = run(config, comm)
    serial = None
    if comm.rank == 0:
        serial = run(config.model_copy(update={"output": base / "self"}), MPI.COMM_SELF)
        a = np.r_[world["coefficients"]["a"], world["coefficients"]["c"]]
        b = np.r_[serial["coefficients"]["a"], serial["coefficients"]["c"]]
        assert np.abs(a - b).max() <= 1e-8 * np.abs(b).max()
        for model in ("M0", "M1"):
            assert world["model_errors"][model] == pytest.approx(
                serial["model_errors"][model], rel=1e-8)
    comm.barrier()


def _small_stack(path, X=None, n_pixels_side=20):
    """One elliptic particle with a mild strain, for the refusal tests (never meshed)."""
    from chemomech.io.stack import ParticleData, write_stack

    shape = (n_pixels_side + 4, n_pixels_side + 4)
    i, j = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    c = (shape[0] - 1) / 2
    mask = (i - c) ** 2 + (j - c) ** 2 < (n_pixels_side / 2) ** 2
    ramp = np.clip(i / (shape[0] - 1), 0, 1)
    X = ramp if X is None else X
    zero = np.zeros(shape)
    write_stack(path, ParticleData(name="p", X=X, e_xx=-0.02 * (1 - ramp), e_yy=zero,
                                   e_xy=zero, theta=zero, mask=mask, pixel_size_nm=20.0))
    return path


def test_refusals_name_the_key_and_leave_no_run(tmp_path, caplog):
    """A particle smaller than mesh.min_island_px (the mesher's error did not name the key),
    one emptied by edge_exclusion_px (refused before the integration; was "M0 needs more than
    4 valid pixels"), and a uniform X with the default M0 degree 3 (was: LinAlgError from the
    M0 regression)."""
    stack = _small_stack(tmp_path / "s.h5")
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {stack}\nmesh: {{min_island_px: 1000}}\noutput: out\n")
    with pytest.warns(UserWarning, match="dropped 1 island"):
        assert main(["invert", str(config)]) == 2
    assert "particle 'p' (" in caplog.text and "at least 1000 px" in caplog.text
    assert "mesh.min_island_px" in caplog.text
    assert not (tmp_path / "out").exists()
    config.write_text(f"data: {stack}\nmodel: M0\nedge_exclusion_px: 30\noutput: out\n")
    assert main(["invert", str(config)]) == 2  # was "M0 needs more than 4 valid pixels"
    assert "edge_exclusion_px = 30 leaves none of its" in caplog.text
    uniform = _small_stack(tmp_path / "u.h5", X=np.full((24, 24), 0.5))
    config.write_text(f"data: {uniform}\nlegendre_degree: 0\noutput: out\n")
    assert main(["invert", str(config)]) == 2
    assert "1 distinct value" in caplog.text and "m0_degree" in caplog.text
    assert "Traceback" not in caplog.text and not (tmp_path / "out").exists()


def _rotated_90(p):
    """The particle turned by +90 degrees in the image plane: (x, y) -> (-y, x), so maps
    A'[m-1-j, i] = A[i, j] (np.rot90), the crystal a axis turns with it (rotation + pi/2) and
    image-frame strain components transform as a tensor (crystal-frame ones do not)."""
    from dataclasses import fields

    from chemomech.io.stack import ParticleData

    values = {f.name: getattr(p, f.name) for f in fields(p)} | {"truth": {}}
    for key in ("X", "e_xx", "e_yy", "e_xy", "theta", "mask", "thickness", "dark_field"):
        if values[key] is not None:
            values[key] = np.rot90(values[key])
    if p.strain_frame == "image":
        values["e_xx"], values["e_yy"] = values["e_yy"], values["e_xx"]
        values["e_xy"] = -values["e_xy"]
    values["rotation_rad"] = p.rotation_rad + np.pi / 2
    return ParticleData(**values)


def test_the_law_is_invariant_under_rotation_pixel_size_and_repetition(twins, tmp_path):
    """Physics probes: the law is a material property.  Turning the particles by 90 degrees
    changes only the mesh (agreement to the discretisation, 2e-3 of the range of f); the
    strain is dimensionless, so doubling the pixel size changes nothing (rounding); giving
    every particle twice doubles the normal equations, the same minimiser (rounding)."""
    from dataclasses import replace

    from chemomech.io.stack import read_stack, write_stack
    from chemomech.mechanics import legendre

    particles = read_stack(twins)[:2]
    X = np.linspace(0, 1, 101)

    def law(label, ps):
        path = write_stack(tmp_path / f"{label}.h5", ps)
        config = RunConfig(data=[path], legendre_degree=1, output=tmp_path / label,
                           optimiser={"method": "linear"}, uncertainty={"method": "gauss_newton"},
                           frame={"check": False})
        c = run(config, MPI.COMM_SELF)["coefficients"]
        return np.array([legendre.evaluate(c[d], X) for d in ("a", "c")])

    base = law("base", particles)
    span = np.ptp(base, axis=1)[:, None]
    rotated = law("rotated", [_rotated_90(p) for p in particles])
    assert np.abs(rotated - base).max(axis=1) / span[:, 0] == pytest.approx([0, 0], abs=2e-3)
    scaled = law("scaled", [replace(p, pixel_size_nm=2 * p.pixel_size_nm) for p in particles])
    np.testing.assert_allclose(scaled, base, rtol=0, atol=1e-9 * span.max())
    twice = law("twice", particles + [replace(p, name=p.name + "_again") for p in particles])
    np.testing.assert_allclose(twice, base, rtol=0, atol=1e-9 * span.max())
