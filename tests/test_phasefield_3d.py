"""3-D phase field: a thin plate tends to the 2-D plane-stress solution as thickness -> 0,
and the extruded platelet with pores meshes, relaxes and projects through the thickness."""

from __future__ import annotations

import basix.ufl
import numpy as np
import pytest
import ufl
from dolfinx import fem, mesh
from mpi4py import MPI

from chemomech.mechanics.materials import Material
from chemomech.phasefield.geometry import extruded_platelet_mesh, platelet_mask
from chemomech.phasefield.initial import set_initial_composition
from chemomech.phasefield.model import Elasticity, FreeEnergy, PhaseFieldForms
from chemomech.phasefield.outputs import _evaluate_points, sample_state_3d
from chemomech.phasefield.solver import PhaseFieldSolver, StepControl


def _extrude(triangles: mesh.Mesh, thickness: float) -> mesh.Mesh:
    """One layer of tetrahedra over a serial triangle mesh (3 per prism, split by sorted
    vertex numbers so neighbouring prisms conform): the 3-D P2 space contains every
    z-independent 2-D P2 field."""
    x = triangles.geometry.x[:, :2]
    n = len(x)
    points = np.vstack([np.column_stack([x, np.zeros(n)]),
                        np.column_stack([x, np.full(n, thickness)])])
    tets = []
    for a, b, c in np.sort(triangles.geometry.dofmaps[0], axis=1):
        tets += [(a, b, c, a + n), (b, c, a + n, b + n), (c, a + n, b + n, c + n)]
    element = basix.ufl.element("Lagrange", "tetrahedron", 1, shape=(3,))
    return mesh.create_mesh(MPI.COMM_SELF, np.array(tets, np.int64), element, points)


def _in_plane_strain(domain, points):
    """Relaxed in-plane strain (mean over z samples) and elastic energy per thickness for a
    fixed two-phase composition (the dt = 0 solve), P2 displacement."""
    forms = PhaseFieldForms(domain, FreeEnergy.for_width(40.0), Elasticity(rotation_rad=0.4),
                            u_degree=2)
    set_initial_composition(forms, 0.5, lambda x: 8.0 * np.tanh(
        (x[0] - 150.0 - 0.4 * (x[1] - 75.0)) / 30.0))
    PhaseFieldSolver(forms).initialise()
    _, _, u = forms.subfunctions()
    d = domain.geometry.dim
    G = fem.functionspace(domain, ("Discontinuous Lagrange", 1, (d, d)))
    strain = fem.Function(G)
    strain.interpolate(fem.Expression(ufl.sym(ufl.grad(u)), G.element.interpolation_points))
    if d == 2:
        return _evaluate_points(strain, points).reshape(-1, 2, 2), forms.energies()["elastic"]
    t = domain.geometry.x[:, 2].max()
    samples = [_evaluate_points(strain, points + [0.0, 0.0, z]).reshape(-1, 3, 3)[:, :2, :2]
               for z in (0.2 * t, 0.5 * t, 0.8 * t)]
    return np.mean(samples, axis=0), forms.energies()["elastic"] / t


def test_thin_plate_tends_to_plane_stress():
    triangles = mesh.create_rectangle(MPI.COMM_SELF, [[0.0, 0.0], [300.0, 150.0]], [20, 10])
    xs, ys = np.meshgrid(np.linspace(10, 290, 15), np.linspace(10, 140, 8), indexing="ij")
    points = np.column_stack([xs.ravel(), ys.ravel(), np.zeros(xs.size)])
    e2, energy2 = _in_plane_strain(triangles, points)
    errors, energies = [], []
    for t in (40.0, 5.0):
        e3, energy3 = _in_plane_strain(_extrude(triangles, t), points)
        errors.append(np.linalg.norm(e3 - e2) / np.linalg.norm(e2))
        energies.append(abs(energy3 / energy2 - 1.0))
    assert errors[1] < errors[0] / 4 and errors[1] < 2e-3, errors
    assert energies[1] < 0.01 and energies[1] < energies[0], energies


@pytest.fixture(scope="module")
def platelet():
    """A small extruded platelet (300 x 200 x 60 nm, 25 nm pixels) with one closed pore."""
    mask = platelet_mask(300.0, 200.0, 25.0)
    return extruded_platelet_mesh(mask, 25.0, 60.0, MPI.COMM_WORLD, mesh_size_px=2.0, pores=1,
                                  pore_radius_nm=40.0, seed=1)


@pytest.mark.mpi
def test_uniform_platelet_projects_to_the_eigenstrain(platelet):
    angle = 0.5
    forms = PhaseFieldForms(platelet.mesh, FreeEnergy.for_width(60.0), Elasticity(
        rotation_rad=angle), u_degree=1)
    set_initial_composition(forms, 0.3, lambda x: 0.0 * x[0], amplitude=0.0)
    record = PhaseFieldSolver(forms).initialise()
    assert record.energy["elastic"] < 1e-16 * forms.volume
    maps = sample_state_3d(forms, platelet.mask, 25.0, 60.0, n_z=4)
    el = forms.elasticity
    inside = platelet.mask
    f_a = el.coefficients_a[0] + el.coefficients_a[1] * (2 * 0.3 - 1)
    f_c = el.coefficients_c[0] + el.coefficients_c[1] * (2 * 0.3 - 1)
    assert np.allclose(maps["e_xx"][inside], f_a, atol=1e-10)
    assert np.allclose(maps["e_yy"][inside], f_c, atol=1e-10)
    assert np.allclose(maps["e_xy"][inside], 0.0, atol=1e-10)
    assert np.ptp(maps["theta"][inside]) < 1e-10  # a rigid rotation only (gauge)
    assert np.allclose(maps["X"][inside], 0.3, atol=1e-12)


@pytest.mark.mpi
def test_platelet_with_a_pore_relaxes_conserving_mass(platelet):
    forms = PhaseFieldForms(platelet.mesh, FreeEnergy.for_width(60.0),
                            Elasticity(rotation_rad=0.5), u_degree=1)
    set_initial_composition(forms, 0.5, lambda x: np.cos(x[0] / 40.0) * np.sin(x[1] / 50.0),
                            amplitude=0.1)
    history = PhaseFieldSolver(forms, StepControl(dt_initial=50.0, max_steps=3,
                                                  reject_energy_increase=False)).run()
    mass = history.series("mass")
    assert np.abs(mass - mass[0]).max() <= 1e-10 * mass[0]
    energy = history.series("energy.total")
    assert np.all(np.diff(energy) < 0)
    maps = sample_state_3d(forms, platelet.mask, 25.0, 60.0, n_z=8)
    (x, y, z, r, r_z), = platelet.voids
    assert r_z == pytest.approx(0.35 * 60.0)
    i, j = round(x / 25.0), round(y / 25.0)
    assert maps["thickness"][i, j] == pytest.approx(60.0 - 2 * r_z, abs=8.0)  # 8 Gauss points
    rim = platelet.mask & (maps["thickness"] > 59.9)
    assert rim.sum() > 0.5 * platelet.mask.sum()
    assert np.all(np.isfinite(maps["e_xx"][platelet.mask]))


def _platelet_run(platelet, linear: str, stiffness: str) -> tuple[np.ndarray, PhaseFieldSolver]:
    forms = PhaseFieldForms(platelet.mesh, FreeEnergy.for_width(60.0),
                            Elasticity(Material(stiffness), rotation_rad=0.5), u_degree=2)
    set_initial_composition(forms, 0.5, lambda x: np.cos(x[0] / 40.0) * np.sin(x[1] / 50.0),
                            amplitude=0.1)
    solver = PhaseFieldSolver(forms, StepControl(dt_initial=50.0, grow=1.0, max_steps=2,
                                                 energy_tol=0.0), linear=linear)
    history = solver.run()
    return np.array([*history.series("energy.total"), forms.mass()]), solver


@pytest.mark.mpi
@pytest.mark.parametrize("stiffness", ["average", "mixed"])
def test_3d_fieldsplit_gives_the_lu_solution(platelet, stiffness):
    """P2 platelet with a pore: FGMRES + fieldsplit (GAMG on the u block with node blocks of
    3, its set-up reused across Newton iterations and steps: exact for a constant stiffness,
    lagged for C(c), "mixed") follows the MUMPS LU steps."""
    lu, lu_solver = _platelet_run(platelet, "lu", stiffness)
    fs, fs_solver = _platelet_run(platelet, "fieldsplit", stiffness)
    assert fs == pytest.approx(lu, rel=1e-9)
    state = lu_solver.forms.w.x.array
    assert np.abs(fs_solver.forms.w.x.array - state).max() < 1e-7 * np.abs(state).max()
    assert fs_solver.history.series("linear_iterations")[1:].min() > 2
    _, ksp_u = fs_solver.problem.solver.getKSP().getPC().getFieldSplitSubKSP()
    assert ksp_u.getOperators()[0].getBlockSize() == 3
