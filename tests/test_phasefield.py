"""Phase-field model: analytic interface, conservation, energy decay, manufactured solution,
1 vs 2 ranks (the `mpi` test runs under mpirun -n 2 by `make test`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import ufl
from dolfinx import fem, mesh
from mpi4py import MPI

from chemomech.exceptions import InputError
from chemomech.mechanics.materials import Material
from chemomech.phasefield.initial import random_waves, set_initial_composition
from chemomech.phasefield.model import Elasticity, FreeEnergy, Kinetics, PhaseFieldForms, vegard_law
from chemomech.phasefield.solver import PhaseFieldSolver, StepControl

NO_ELASTICITY = Elasticity(enabled=False)


def test_binodal_and_width_of_the_regular_solution():
    fe = FreeEnergy.for_width(50.0)
    c_a, c_b = fe.binodal()
    a = fe.omega / fe.kT
    assert math.log(c_a / (1 - c_a)) == pytest.approx(a * (2 * c_a - 1), rel=1e-10)
    assert c_a + c_b == pytest.approx(1.0, abs=1e-14)
    assert fe.interface_width() == pytest.approx(50.0, rel=1e-12)
    # the slope width from the analytic profile x(c): dc/dx at c = 1/2 by finite differences
    dx = fe.profile_position(np.array([0.5 + 1e-4]))[0] - fe.profile_position(
        np.array([0.5 - 1e-4]))[0]
    assert (c_b - c_a) / (2e-4 / dx) == pytest.approx(50.0, rel=1e-6)
    # regularised density equals the exact one above log_delta, and is finite below 0
    c = np.array([0.01, 0.3, 0.99])
    exact = fe.omega * c * (1 - c) + fe.kT * (c * np.log(c) + (1 - c) * np.log(1 - c))
    assert fe.density(c) == pytest.approx(exact, rel=1e-13)
    assert np.all(np.isfinite(fe.density(np.array([-0.1, 1.1]))))


def _strip(comm, length=200.0, n=200):
    return mesh.create_rectangle(comm, [[0.0, 0.0], [length, 4.0]], [n, 2])


def _profile(forms):
    """(x, c) along the strip: nodal values averaged over the strip's node rows."""
    c, _, _ = forms.subfunctions()
    x = c.function_space.tabulate_dof_coordinates()[:, 0]
    xs = np.unique(np.round(x, 9))
    cs = np.array([c.x.array[np.isclose(x, xv)].mean() for xv in xs])
    return xs, cs


def test_thin_strip_interface_matches_the_analytic_profile():
    fe = FreeEnergy.for_width(20.0)
    forms = PhaseFieldForms(_strip(MPI.COMM_SELF), fe, NO_ELASTICITY)
    set_initial_composition(forms, 0.5, lambda x: 9.0 * np.tanh((x[0] - 100.0) / 10.0))
    history = PhaseFieldSolver(forms, StepControl(dt_initial=0.1, energy_tol=1e-10)).run()
    assert history.converged
    xs, cs = _profile(forms)
    c_a, c_b = fe.binodal()
    assert cs.min() == pytest.approx(c_a, abs=1e-6)
    assert cs.max() == pytest.approx(c_b, abs=1e-6)
    width = (c_b - c_a) / np.abs(np.diff(cs) / np.diff(xs)).max()
    assert width == pytest.approx(fe.interface_width(), rel=0.02)
    levels = np.linspace(0.05, 0.95, 19)
    x_num = np.interp(levels, cs, xs) - np.interp(0.5, cs, xs)
    assert np.abs(x_num - fe.profile_position(levels)).max() < 0.02 * fe.interface_width()


def _plate_forms(comm, elasticity=None, width=60.0):
    domain = mesh.create_rectangle(comm, [[0.0, 0.0], [300.0, 150.0]], [24, 12],
                                   mesh.CellType.triangle)
    forms = PhaseFieldForms(domain, FreeEnergy.for_width(width),
                            elasticity if elasticity is not None else Elasticity(
                                rotation_rad=0.4))
    set_initial_composition(forms, 0.45, random_waves(3, 150.0), amplitude=0.1)
    return forms


def test_mass_conserved_and_energy_decreasing_without_rejection():
    forms = _plate_forms(MPI.COMM_SELF)
    control = StepControl(dt_initial=20.0, grow=1.3, max_steps=40, energy_tol=0.0,
                          reject_energy_increase=False)
    history = PhaseFieldSolver(forms, control).run()
    assert len(history.steps) == 41 and history.rejected == 0
    mass = history.series("mass")
    assert np.abs(mass - mass[0]).max() <= 1e-10 * mass[0]
    energy = history.series("energy.total")
    assert energy[-1] < 0.9 * energy[0]  # the run really coarsens
    assert np.all(np.diff(energy) <= 1e-12 * abs(energy[0]))
    assert history.steps[-1].energy["elastic"] > 0


def test_uniform_composition_is_stress_free_and_rigid_modes_are_removed():
    forms = _plate_forms(MPI.COMM_SELF)
    set_initial_composition(forms, 0.3, lambda x: 0.0 * x[0], amplitude=0.0)
    solver = PhaseFieldSolver(forms)
    record = solver.initialise()
    assert record.energy["elastic"] < 1e-20
    c, _, u = forms.subfunctions()
    grad_u = fem.Function(fem.functionspace(forms.mesh, ("DG", 0, (2, 2))))
    grad_u.interpolate(fem.Expression(ufl.sym(ufl.grad(u)),
                                      grad_u.function_space.element.interpolation_points))
    el = forms.elasticity
    a, cc = vegard_law()
    R = np.array([[math.cos(0.4), -math.sin(0.4)], [math.sin(0.4), math.cos(0.4)]])
    f = [a[0] + a[1] * (2 * 0.3 - 1), cc[0] + cc[1] * (2 * 0.3 - 1)]
    expected = R @ np.diag(f) @ R.T
    assert el.rotation_rad == 0.4
    assert np.allclose(grad_u.x.array.reshape(-1, 2, 2), expected, atol=1e-12)
    for mode in solver.nullspace.getVecs():
        assert abs(mode.dot(forms.w.x.petsc_vec)) < 1e-10


# ------------------------------------------------------------------ manufactured solution


def _mms_errors(n: int) -> tuple[float, float, float]:
    """L2 errors of c and mu, and the L2 error of eps(u), on an n x n mesh of [0, L]^2."""
    L = 100.0
    domain = mesh.create_unit_square(MPI.COMM_SELF, n, n, mesh.CellType.triangle)
    domain.geometry.x[:, :2] *= L
    x = ufl.SpatialCoordinate(domain)
    k = math.pi / L
    c_e = 0.5 + 0.3 * ufl.cos(k * x[0]) * ufl.cos(k * x[1]) + 0.05 * ufl.sin(2 * k * x[0])
    mu_e = 0.02 * ufl.cos(2 * k * x[0]) + 0.01 * ufl.sin(k * x[1] + 0.3)
    u_e = ufl.as_vector([0.5 * ufl.sin(k * x[1]) + 0.2 * ufl.cos(k * x[0]),
                         0.3 * ufl.sin(k * x[0] * x[1] / L)])
    fe = FreeEnergy(kappa=100.0)
    angle = 0.3
    el = Elasticity(Material(), angle)
    kin = Kinetics(diffusivity=1.0)
    C = el.material.ufl_tensor(angle)
    a, cc = el.coefficients_a, el.coefficients_c
    R = ufl.as_matrix([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    i, j, p, q = ufl.indices(4)

    def eps_star(c):  # Vegard: f(X) = a0 + a1 (2X - 1), by hand
        return R * ufl.diag(ufl.as_vector([a[0] + a[1] * (2 * c - 1),
                                           cc[0] + cc[1] * (2 * c - 1)])) * R.T

    d_eps_star = R * ufl.diag(ufl.as_vector([2 * a[1], 2 * cc[1]])) * R.T
    strain_e = ufl.sym(ufl.grad(u_e)) - eps_star(c_e)
    sigma_e = ufl.as_tensor(C[i, j, p, q] * strain_e[p, q], (i, j))
    # strong forms of the three equations evaluated on the exact fields (by hand)
    M = kin.diffusivity / fe.kT * c_e * (1 - c_e)
    s_c = -ufl.div(M * ufl.grad(mu_e))
    df = fe.omega * (1 - 2 * c_e) + fe.kT * ufl.ln(c_e / (1 - c_e))
    s_mu = mu_e - df + fe.kappa * ufl.div(ufl.grad(c_e)) + ufl.inner(sigma_e, d_eps_star)
    body = -ufl.div(sigma_e)
    nrm = ufl.FacetNormal(domain)
    dt = 10.0  # c_n = I_h c_e: the stationary solution up to O(h^2)
    e0, C0 = fe.kT, el.stiffness_scale()

    def sources(q_, r_, v_):
        return (-dt * (s_c * q_ * ufl.dx + ufl.inner(M * ufl.grad(mu_e), nrm) * q_ * ufl.ds)
                - (1 / e0) * (s_mu * r_ * ufl.dx
                              - fe.kappa * ufl.inner(ufl.grad(c_e), nrm) * r_ * ufl.ds)
                - (1 / C0) * (ufl.inner(body, v_) * ufl.dx
                              + ufl.inner(sigma_e * nrm, v_) * ufl.ds))

    forms = PhaseFieldForms(domain, fe, el, kin, sources=sources)
    V0, dofs0 = forms.W.sub(0).collapse()
    V1, dofs1 = forms.W.sub(1).collapse()
    V2, dofs2 = forms.W.sub(2).collapse()
    for V, dofs, expr in ((V0, dofs0, c_e), (V1, dofs1, mu_e), (V2, dofs2, u_e)):
        g = fem.Function(V)
        g.interpolate(fem.Expression(expr, V.element.interpolation_points))
        forms.w.x.array[dofs] = g.x.array
    solver = PhaseFieldSolver(forms, StepControl(dt_initial=dt, max_steps=1))
    forms.w_n.x.array[:] = forms.w.x.array
    forms.dt.value = dt
    ok, _, _ = solver.newton_solve()
    assert ok
    c, mu, u = ufl.split(forms.w)

    def l2(e):
        return math.sqrt(fem.assemble_scalar(fem.form(ufl.inner(e, e) * ufl.dx(degree=6))))

    return (l2(c - c_e), l2(mu - mu_e),
            l2(ufl.sym(ufl.grad(u)) - ufl.sym(ufl.grad(u_e))))


def test_manufactured_solution_converges_at_the_p1_rates():
    errors = np.array([_mms_errors(n) for n in (8, 16, 32)])
    rates = np.log2(errors[:-1] / errors[1:])
    assert np.all(rates[-1, :2] > 1.85), rates  # c, mu in L2: h^2
    assert rates[-1, 2] > 0.9, rates  # eps(u): h^1
    assert np.all(errors[-1] < errors[0])


# ------------------------------------------------------------------ parallel


def _short_run(comm) -> np.ndarray:
    forms = _plate_forms(comm)
    control = StepControl(dt_initial=50.0, grow=1.0, max_steps=6, energy_tol=0.0)
    history = PhaseFieldSolver(forms, control).run()
    c, _, _ = ufl.split(forms.w)
    c2 = comm.allreduce(fem.assemble_scalar(fem.form(c * c * ufl.dx)))
    return np.array([*history.series("energy.total"), c2])


@pytest.mark.mpi
def test_two_ranks_agree_with_one():
    distributed = _short_run(MPI.COMM_WORLD)
    serial = _short_run(MPI.COMM_SELF)
    assert distributed[0] != distributed[-2]  # the state evolved
    assert distributed == pytest.approx(serial, rel=1e-8)


def _run_with(comm, linear: str) -> tuple[np.ndarray, PhaseFieldSolver]:
    forms = _plate_forms(comm)
    control = StepControl(dt_initial=50.0, grow=1.0, max_steps=4, energy_tol=0.0)
    solver = PhaseFieldSolver(forms, control, linear=linear)
    history = solver.run()
    return np.array([*history.series("energy.total"), forms.mass()]), solver


@pytest.mark.mpi
def test_fieldsplit_gives_the_lu_solution():
    """FGMRES + fieldsplit (LU on (c, mu), GAMG on u) and MUMPS LU: the same states (the
    Newton and FGMRES tolerances are 1e-10 and 1e-9), the iterative solver really iterating."""
    lu, lu_solver = _run_with(MPI.COMM_WORLD, "lu")
    fs, fs_solver = _run_with(MPI.COMM_WORLD, "fieldsplit")
    assert fs == pytest.approx(lu, rel=1e-9)
    state = lu_solver.forms.w.x.array
    assert np.abs(fs_solver.forms.w.x.array - state).max() < 1e-7 * np.abs(state).max()
    assert fs_solver.history.series("linear_iterations")[1:].min() > \
        lu_solver.history.series("linear_iterations")[1:].max()
    with pytest.raises(InputError, match="linear_solver"):
        PhaseFieldSolver(lu_solver.forms, linear="cg")


def test_crank_nicolson_reaches_the_same_interface():
    fe = FreeEnergy.for_width(20.0)
    forms = PhaseFieldForms(_strip(MPI.COMM_SELF), fe, NO_ELASTICITY, Kinetics(theta=0.5))
    set_initial_composition(forms, 0.5, lambda x: 9.0 * np.tanh((x[0] - 100.0) / 10.0))
    history = PhaseFieldSolver(forms, StepControl(dt_initial=0.1, energy_tol=1e-10)).run()
    assert history.converged
    xs, cs = _profile(forms)
    c_a, c_b = fe.binodal()
    width = (c_b - c_a) / np.abs(np.diff(cs) / np.diff(xs)).max()
    assert width == pytest.approx(fe.interface_width(), rel=0.02)


@pytest.mark.parametrize("stiffness", ["mixed", "LiFePO4"])
def test_other_stiffness_choices_relax_with_decreasing_energy(stiffness):
    elasticity = Elasticity(Material(stiffness), rotation_rad=0.4)
    forms = _plate_forms(MPI.COMM_SELF, elasticity)
    control = StepControl(dt_initial=20.0, max_steps=5, energy_tol=0.0,
                          reject_energy_increase=False)
    history = PhaseFieldSolver(forms, control).run()
    energy = history.series("energy.total")
    assert np.all(np.diff(energy) < 0) and history.steps[-1].energy["elastic"] > 0


def test_step_report_logs_progress_in_decades_of_the_energy_decrease(caplog):
    from chemomech.phasefield.solver import StepReport

    report = StepReport(StepControl(energy_tol=1e-8, max_steps=1000), active=True)
    with caplog.at_level("INFO", logger="chemomech.phasefield.solver"):
        report.update(1, 10.0, 10.0, 5.0, 1e-4, 3, 3)  # small first decrease (small dt)
        report.update(2, 30.0, 20.0, 4.0, 1e-2, 4, 4)  # the largest: the reference
        report.update(3, 60.0, 30.0, 3.9, 1e-5, 2, 2)
    assert report.fraction(3, 60.0) == pytest.approx(0.5)  # 3 of 6 decades to 1e-8
    assert report.fraction(999, 60.0) == pytest.approx(0.999)  # the step limit dominates
    line = caplog.records[-1].getMessage()
    assert "step 3: t = 60" in line and "F = 3.9" in line and "progress 50 %" in line
    assert "ETA ~" in line
    quiet = StepReport(StepControl(), active=False)
    caplog.clear()
    quiet.update(1, 1.0, 1.0, 1.0, 1e-3, 1, 1)
    assert not caplog.records  # other ranks stay silent
