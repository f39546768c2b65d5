"""`chemomech phasefield`: config validation, the written outputs, and M1 on the result
recovers the law that generated it (the stack is read by `chemomech invert` directly)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from chemomech.cli import main
from chemomech.exceptions import ConfigError
from chemomech.io.stack import read_stack
from chemomech.mechanics import legendre
from chemomech.phasefield.config import load_phasefield_config

SMALL = {"geometry": {"length_nm": 440.0, "width_nm": 280.0, "pixel_size_nm": 20.0},
         "free_energy": {"interface_width_nm": 60.0},
         "elasticity": {"rotation_rad": 0.5},
         "steps": {"energy_tol": 1e-7}, "outputs": {"xdmf_every": 10}}


@pytest.mark.parametrize(("text", "key"), [
    ("mean_x: 0.5\nwidth: 3\n", "width"),
    ("geometry: {pores: -1}\n", "geometry.pores"),
    ("free_energy: {kappa: 10, interface_width_nm: 50}\n", "not both"),
    ("dim: 4\n", "dim"),
    ("geometry: {thickness_nm: 300}\n", "thickness_nm"),
    ("mean_x: 1.2\n", "mean_x"),
    ("kinetics: {theta: 0.2}\n", "kinetics.theta"),
    ("geometry: {mask_from: missing.h5}\n", "geometry.mask_from"),
    ("solver: {linear: cg}\n", "solver.linear"),
    ("solver: {ksp_rtol: 0}\n", "solver.ksp_rtol"),
])
def test_invalid_configs_are_rejected_naming_the_key(tmp_path, text, key):
    path = tmp_path / "pf.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key):
        load_phasefield_config(path)


def test_overrides_replace_the_file_values(tmp_path):
    path = tmp_path / "pf.yaml"
    path.write_text(yaml.safe_dump({"free_energy": {"interface_width_nm": 80.0},
                                    "output": "out"}))
    config = load_phasefield_config(path, **{"free_energy.kappa": 12.0, "geometry.pores": 2,
                                             "mean_x": 0.3})
    assert config.free_energy.kappa == 12.0 and config.free_energy.interface_width_nm is None
    assert config.geometry.pores == 2 and config.mean_x == 0.3
    assert config.output == str(tmp_path / "out")


@pytest.fixture(scope="module")
def relaxed(tmp_path_factory):
    """A small platelet relaxed by `chemomech phasefield` (config file + CLI flags)."""
    folder = tmp_path_factory.mktemp("pf")
    config = folder / "pf.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    out = folder / "out"
    assert main(["phasefield", str(config), "--output", str(out), "--mean-x", "0.4",
                 "--seed", "2"]) == 0
    return out


def test_cli_writes_a_stack_with_truth_xdmf_and_figures(relaxed):
    summary = json.loads((relaxed / "summary.json").read_text())
    assert summary["converged"] and summary["mean_X_domain"] == pytest.approx(0.4, abs=1e-10)
    assert summary["interface_width_nm"] == pytest.approx(60.0)
    (p,) = read_stack(relaxed / "particle.h5")
    inside = p.mask
    assert np.all(np.isfinite(p.X[inside])) and np.all(np.isnan(p.X[~inside]))
    c_a, c_b = summary["binodal"]
    assert np.nanmin(p.X) < 0.1 and np.nanmax(p.X) > 0.9  # phase separated
    assert np.nanmin(p.X) > c_a - 0.01 and np.nanmax(p.X) < c_b + 0.01
    assert p.strain_frame == "crystal" and p.rotation_rad == 0.5 and p.theta_sign == 1
    assert np.array_equal(p.truth["e_xx"], p.e_xx, equal_nan=True)  # no noise asked
    assert {"coefficients_a", "coefficients_c", "u_x", "mu", "free_energy"} <= set(p.truth)
    # the Li-poor phase is contracted along a (Vegard: -4.9 % at X = 0)
    poor, rich = inside & (p.X < 0.2), inside & (p.X > 0.8)
    assert np.mean(p.e_xx[poor]) < np.mean(p.e_xx[rich]) - 0.03
    assert (relaxed / "phasefield.xdmf").exists() and (relaxed / "phasefield.h5").exists()
    for name in ("energy", "final_state"):
        assert (relaxed / "figures" / f"{name}.png").stat().st_size > 5000
    assert yaml.safe_load((relaxed / "config.yaml").read_text())["mean_x"] == 0.4


def test_m1_on_the_phasefield_particle_recovers_its_law(relaxed, tmp_path):
    config = tmp_path / "invert.yaml"
    config.write_text(yaml.safe_dump({"data": str(relaxed / "particle.h5"), "model": "M1",
                                      "legendre_degree": 1, "output": str(tmp_path / "inv"),
                                      "optimiser": {"method": "linear"},
                                      "uncertainty": {"n_draws": 10}}))
    assert main(["invert", str(config)]) == 0
    summary = json.loads((tmp_path / "inv" / "summary.json").read_text())
    (p,) = read_stack(relaxed / "particle.h5")
    X = np.linspace(0.0, 1.0, 101)
    for axis in ("a", "c"):
        learnt = legendre.evaluate(summary["coefficients"][axis], X)
        truth = legendre.evaluate(p.truth[f"coefficients_{axis}"], X)
        assert np.abs(learnt - truth).max() < 0.002, axis


def test_generated_platelet_has_the_requested_pores():
    from scipy import ndimage

    from chemomech.phasefield.geometry import platelet_mask

    mask = platelet_mask(1200.0, 700.0, 16.6, pores=3, pore_radius_nm=60.0, seed=4)
    background, n = ndimage.label(~mask)
    assert n == 1 + 3  # the outside and three holes
    hole_area = (np.bincount(background.ravel())[2:] * 16.6**2)
    assert np.allclose(hole_area, np.pi * 60.0**2, rtol=0.15)
    assert np.array_equal(mask, platelet_mask(1200.0, 700.0, 16.6, pores=3,
                                              pore_radius_nm=60.0, seed=4))


def test_noise_goes_on_the_stored_maps_only():
    from mpi4py import MPI

    from chemomech.mechanics.mesh import mesh_from_mask
    from chemomech.phasefield.geometry import platelet_mask
    from chemomech.phasefield.initial import random_waves, set_initial_composition
    from chemomech.phasefield.model import Elasticity, FreeEnergy, PhaseFieldForms
    from chemomech.phasefield.outputs import particle_data, sample_state
    from chemomech.phasefield.solver import PhaseFieldSolver

    pm = mesh_from_mask(platelet_mask(600.0, 400.0, 20.0), 20.0, MPI.COMM_SELF,
                        mesh_size_px=2.0)
    forms = PhaseFieldForms(pm.mesh, FreeEnergy.for_width(80.0), Elasticity(rotation_rad=0.2))
    set_initial_composition(forms, 0.5, random_waves(0, 200.0), amplitude=0.2)
    solver = PhaseFieldSolver(forms)
    solver.initialise()
    maps = sample_state(forms, pm)
    p = particle_data("noisy", maps, pm, forms, solver.history, noise_strain=1e-3,
                      noise_composition=0.02, seed=5)
    inside = pm.mask
    assert np.std((p.e_xx - p.truth["e_xx"])[inside]) == pytest.approx(1e-3, rel=0.15)
    assert np.std((p.X - p.truth["X"])[inside]) == pytest.approx(0.02, rel=0.15)
    assert np.array_equal(p.truth["e_yy"], maps["e_yy"], equal_nan=True)


def test_cli_in_3d_writes_the_projected_stack(tmp_path):
    config = tmp_path / "pf3.yaml"
    config.write_text(yaml.safe_dump({
        "geometry": {"length_nm": 300.0, "width_nm": 200.0, "pixel_size_nm": 25.0,
                     "mesh_size_px": 2.0, "pore_radius_nm": 40.0},
        "free_energy": {"interface_width_nm": 60.0}, "steps": {"max_steps": 2},
        "outputs": {"xdmf_every": 1, "thickness_points": 4}}))
    out = tmp_path / "out"
    assert main(["phasefield", str(config), "--output", str(out), "--dim", "3",
                 "--thickness-nm", "60", "--pores", "1", "--seed", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dim"] == 3 and summary["steps"] == 2 and not summary["converged"]
    (p,) = read_stack(out / "particle.h5")
    inside = p.mask
    assert np.nanmax(p.thickness[inside]) == pytest.approx(60.0)
    assert np.nanmin(p.thickness[inside]) < 60.0 - 20.0  # the pore (r_z = 21 nm)
    assert p.truth["voids_nm"].shape == (1, 5) and p.truth["thickness_nm"] == 60.0
    assert np.all(np.isfinite(p.e_xx[inside])) and "coefficients_b" in p.truth
    assert (out / "phasefield.xdmf").exists()


def test_the_example_config_validates():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "phasefield.yaml"
    config = load_phasefield_config(path)
    assert config.free_energy.interface_width_nm == 120.0 and config.dim == 2
    assert config.steps.coarse_mesh_size_px == 3.0
    assert Path(config.output).is_absolute()
