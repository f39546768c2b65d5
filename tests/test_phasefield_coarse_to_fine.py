"""Coarse-to-fine relaxation (`steps.coarse_mesh_size_px`) and the composition-change step
limit (`steps.max_dc`): the transfer between non-matching meshes is exact for linear fields
and keeps the mass; the relaxed state and energy equal those of a plain relaxation on the
run mesh; the options are validated."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from mpi4py import MPI
from scipy import ndimage

from chemomech.exceptions import ConfigError
from chemomech.io.stack import read_stack
from chemomech.phasefield.config import PhaseFieldConfig, load_phasefield_config
from chemomech.phasefield.initial import interpolate_composition
from chemomech.phasefield.outputs import sample_state
from chemomech.phasefield.run import build_model, run_phasefield
from chemomech.phasefield.solver import PhaseFieldSolver

#: 300 x 200 nm platelet of 10 nm pixels, w = 60 nm: the 3 px coarse mesh has 2 elements per w.
SMALL = {"geometry": {"length_nm": 300.0, "width_nm": 200.0, "pixel_size_nm": 10.0},
         "free_energy": {"interface_width_nm": 60.0}, "elasticity": {"rotation_rad": 0.3},
         "mean_x": 0.45, "seed": 3, "steps": {"energy_tol": 1e-7},
         "outputs": {"xdmf_every": 0, "figures": False}}


def _config(**steps) -> PhaseFieldConfig:
    return PhaseFieldConfig.model_validate(SMALL | {"steps": SMALL["steps"] | steps})


def _transfer(comm):
    """A linear and a wavy c on the 3 px mesh, interpolated to the 1 px mesh."""
    config = _config(coarse_mesh_size_px=3.0)
    _, fine, _ = build_model(config, comm)
    coarse_config = config.model_copy(update={"geometry": config.geometry.model_copy(
        update={"mesh_size_px": 3.0})})
    _, coarse, _ = build_model(coarse_config, comm)
    V, dofs = coarse.W.sub(0).collapse()
    x = V.tabulate_dof_coordinates()
    results = []
    for field in (lambda x: 0.3 + 1e-3 * x[:, 0] - 4e-4 * x[:, 1],
                  lambda x: 0.5 + 0.4 * np.sin(x[:, 0] / 37.0) * np.cos(x[:, 1] / 23.0)):
        coarse.w.x.array[:] = 0.0
        coarse.w.x.array[dofs] = field(x)
        coarse.w.x.scatter_forward()
        interpolate_composition(fine, coarse)
        Vf, fine_dofs = fine.W.sub(0).collapse()
        xf = Vf.tabulate_dof_coordinates()
        results.append((fine.w.x.array[fine_dofs] - field(xf), fine.mass() / fine.volume,
                        coarse.mass() / coarse.volume))
        others = np.setdiff1d(np.arange(fine.w.x.array.size), fine_dofs)
        assert np.all(fine.w.x.array[others] == 0.0)  # mu and u zeroed
    return results


def test_transfer_is_exact_for_linear_fields_and_keeps_the_mean(comm=MPI.COMM_SELF):
    (linear, mean_f, mean_c), (wavy, wavy_f, wavy_c) = _transfer(comm)
    assert np.abs(linear).max() < 1e-12  # P1 on the same polygon: exact, no mean shift
    assert mean_f == pytest.approx(mean_c, rel=1e-13)
    assert wavy_f == pytest.approx(wavy_c, rel=1e-13)  # the shift restores the mean
    assert 1e-3 < np.abs(wavy).max() < 0.2  # a real interpolation error (h = 30 nm)


@pytest.mark.mpi
def test_transfer_between_differently_partitioned_meshes():
    test_transfer_is_exact_for_linear_fields_and_keeps_the_mean(MPI.COMM_WORLD)


def _domains(X: np.ndarray, mask: np.ndarray) -> tuple[int, int]:
    """Connected Li-rich and Li-poor regions of a pixel map."""
    return (ndimage.label(mask & (X > 0.5))[1], ndimage.label(mask & (X <= 0.5))[1])


def test_coarse_to_fine_reaches_the_state_of_the_plain_run(tmp_path):
    comm = MPI.COMM_SELF
    pm, forms, control = build_model(_config(), comm)
    plain = PhaseFieldSolver(forms, control).run()
    plain_X = sample_state(forms, pm)["X"]

    config = _config(coarse_mesh_size_px=3.0, max_dc=0.2).model_copy(
        update={"output": str(tmp_path)})
    summary = run_phasefield(config, comm)
    coarse = summary["coarse_stage"]
    assert plain.converged and summary["converged"] and coarse["converged"]
    assert coarse["num_dofs"] < 0.5 * summary["num_dofs"]
    # the same relaxed state: energy, domains, map
    E_plain = plain.steps[-1].energy["total"]
    assert summary["energy_final"]["total"] == pytest.approx(E_plain, rel=1e-7)
    assert abs(coarse["energy_final"]["total"] / E_plain - 1) > 1e-3  # coarse differs
    (p,) = read_stack(tmp_path / "particle.h5")
    assert _domains(p.X, p.mask) == _domains(plain_X, pm.mask)
    assert np.nanmax(np.abs(p.X - plain_X)) < 1e-3
    # the run mesh stage is short and keeps the mean exactly
    assert summary["steps"] < 0.5 * plain.summary()["steps"]
    assert summary["mean_X_domain"] == pytest.approx(0.45, abs=1e-10)


def test_next_dt_limits_the_composition_change():
    pm, forms, control = build_model(_config(max_dc=0.2), MPI.COMM_SELF)
    assert control.max_dc == 0.2
    solver = PhaseFieldSolver(forms, control)
    assert solver.next_dt(10.0, 3, 0.01) == pytest.approx(15.0)  # small change: grow 1.5
    assert solver.next_dt(10.0, 3, 0.4) == pytest.approx(5.0)  # 2 x max_dc: half the dt
    assert solver.next_dt(10.0, 8, 0.01) == pytest.approx(10.0)  # hard Newton: keep
    plain = PhaseFieldSolver(forms, dataclasses.replace(control, max_dc=math.inf))
    assert plain.next_dt(10.0, 3, 0.4) == pytest.approx(15.0)
    forms.w_n.x.array[:] = forms.w.x.array
    dofs = np.ravel(forms.W.sub(0).collapse()[1])
    forms.w.x.array[dofs[7]] += 0.3
    forms.w.x.array[forms.W.sub(1).collapse()[1]] += 5.0  # mu does not count
    assert solver._max_change() == pytest.approx(0.3)


@pytest.mark.parametrize(("steps", "extra", "key"), [
    ({"max_dc": 0.0}, {}, "steps.max_dc"),
    ({"coarse_mesh_size_px": 1.0}, {}, "steps.coarse_mesh_size_px"),
    ({"coarse_mesh_size_px": 0.0}, {}, "steps.coarse_mesh_size_px"),
    ({"coarse_mesh_size_px": 2.0}, {"dim": 3}, "steps.coarse_mesh_size_px"),
])
def test_invalid_coarse_mesh_is_rejected_naming_the_key(tmp_path, steps, extra, key):
    import yaml

    path = tmp_path / "pf.yaml"
    path.write_text(yaml.safe_dump({"steps": steps} | extra))
    with pytest.raises(ConfigError, match=key):
        load_phasefield_config(path)


def test_unresolved_interface_on_the_coarse_mesh_is_rejected_before_meshing():
    config = _config(coarse_mesh_size_px=4.0)  # 40 nm: 1.5 elements per 60 nm
    with pytest.raises(ConfigError, match="steps.coarse_mesh_size_px.*at most 3 px"):
        build_model(config, MPI.COMM_SELF)
