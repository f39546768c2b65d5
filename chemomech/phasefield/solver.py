r"""Monolithic Newton (PETSc SNES) on the mixed (c, mu, u) system with adaptive time steps.

Each step solves the scaled theta-method residual of `chemomech.phasefield.model` for
:math:`w_{n+1} = (c, \mu, u)` by SNES Newton (basic line search) with a MUMPS LU of the
full Jacobian.  **Rigid modes** (traction-free u): the rigid motions of u (3 in 2-D, 6 in
3-D; zero in c, mu) span the null space of the Jacobian and the residual is orthogonal to
them, so they are attached to the Jacobian as a PETSc null space, MUMPS is told to detect the null
pivots (ICNTL(24) = 1, as `chemomech.mechanics.forward`), and they are projected out of the state
after each solve (u is reported orthogonal to the rigid modes).

**Time steps.** A step is rejected (dt halved, state restored) when Newton fails, the state
is not finite, or (``reject_energy_increase``) the free energy rises by more than a round-off
margin; an accepted step in at most ``newton_target`` iterations grows dt by ``grow`` up to
``dt_max``.  The first solve has dt = 0: it leaves c unchanged and makes mu and u
consistent with the initial c (theta < 1 needs mu_n).

**Stop.** Equilibrium is declared when the energy decrease of ``patience`` consecutive
accepted steps, :math:`(F_n - F_{n+1}) / (|\Omega|\,\Delta f_{max})`, is below
``energy_tol`` (|Omega| the particle area, Delta f_max the chemical barrier: F per unit of a
natural energy scale), or at ``max_steps`` / ``t_end`` (then ``converged`` is False).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
from petsc4py import PETSc

from chemomech.exceptions import InputError, SolverError
from chemomech.phasefield.model import PhaseFieldForms

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StepControl:
    """Adaptive time stepping and stop criteria (times in tau, see the module docstring)."""

    dt_initial: float = 1.0
    dt_max: float = math.inf
    dt_min: float = 1e-12
    grow: float = 1.5
    shrink: float = 0.5
    newton_target: int = 5
    max_steps: int = 2000
    t_end: float = math.inf
    energy_tol: float = 1e-7
    patience: int = 3
    reject_energy_increase: bool = True
    snes_rtol: float = 1e-10
    snes_atol: float = 1e-10
    snes_max_it: int = 15

    def __post_init__(self):
        checks = {"dt_initial": self.dt_initial > 0, "dt_max": self.dt_max >= self.dt_initial,
                  "dt_min": 0 < self.dt_min <= self.dt_initial, "grow": self.grow >= 1.0,
                  "shrink": 0 < self.shrink < 1, "newton_target": self.newton_target >= 1,
                  "max_steps": self.max_steps >= 1, "t_end": self.t_end > 0,
                  "energy_tol": self.energy_tol >= 0, "patience": self.patience >= 1,
                  "snes_max_it": self.snes_max_it >= 1}
        for key, ok in checks.items():
            if not ok:
                raise InputError(f"invalid value {getattr(self, key)!r}", field=key)


@dataclass
class StepRecord:
    """One accepted step: time, step, energies (GPa nm^2), mass (nm^2), iterations, wall time."""

    t: float
    dt: float
    energy: dict[str, float]
    mass: float
    newton_iterations: int
    linear_iterations: int
    wall_s: float


@dataclass
class RunHistory:
    """Accepted steps, rejected-step count and why the run stopped."""

    steps: list[StepRecord] = field(default_factory=list)
    rejected: int = 0
    converged: bool = False
    reason: str = ""

    def series(self, key: str) -> np.ndarray:
        """Array of a StepRecord attribute, or of an energy term ("energy.total")."""
        if key.startswith("energy."):
            return np.array([s.energy[key.split(".", 1)[1]] for s in self.steps])
        return np.array([getattr(s, key) for s in self.steps])

    def summary(self) -> dict:
        """JSON-ready totals: steps, iterations per step, time per step."""
        n = max(len(self.steps) - 1, 1)
        newton = self.series("newton_iterations")[1:]
        linear = self.series("linear_iterations")[1:]
        wall = self.series("wall_s")[1:]
        return {"steps": len(self.steps) - 1, "rejected": self.rejected,
                "converged": self.converged, "reason": self.reason,
                "t_final": float(self.steps[-1].t) if self.steps else 0.0,
                "newton_per_step": float(newton.sum() / n),
                "linear_per_step": float(linear.sum() / n),
                "wall_per_step_s": float(wall.sum() / n),
                "energy_initial": self.steps[0].energy if self.steps else {},
                "energy_final": self.steps[-1].energy if self.steps else {}}


def rigid_modes(W) -> PETSc.NullSpace:
    """Orthonormal null space of the rigid motions (3 in 2-D, 6 in 3-D) of the u component of
    the mixed space W (zero in c and mu)."""
    from dolfinx import fem, la

    Wu = W.sub(2)
    dim = W.mesh.geometry.dim
    comps = [Wu.sub(k).collapse() for k in range(dim)]
    x = comps[0][0].tabulate_dof_coordinates()
    rotations = [(0, 1)] if dim == 2 else [(0, 1), (1, 2), (2, 0)]
    modes = [fem.Function(W) for _ in range(dim + len(rotations))]
    for k, (_, dofs) in enumerate(comps):
        modes[k].x.array[dofs] = 1.0
    for m, (i, j) in enumerate(rotations):  # rotation in the (i, j) plane: u_i = -x_j, u_j = x_i
        modes[dim + m].x.array[comps[i][1]] = -x[:, j]
        modes[dim + m].x.array[comps[j][1]] = x[:, i]
    vectors = [m.x for m in modes]
    la.orthonormalize(vectors)
    return PETSc.NullSpace().create(vectors=[v.petsc_vec.copy() for v in vectors],
                                    comm=W.mesh.comm)


class PhaseFieldSolver:
    """SNES + adaptive theta-method stepping of a `PhaseFieldForms` system."""

    _count = 0

    def __init__(self, forms: PhaseFieldForms, control: StepControl | None = None):
        from dolfinx.fem.petsc import NonlinearProblem

        self.forms = forms
        self.control = ctl = control if control is not None else StepControl()
        PhaseFieldSolver._count += 1
        options = {"snes_type": "newtonls", "snes_linesearch_type": "basic",
                   "snes_rtol": ctl.snes_rtol, "snes_atol": self._atol(), "snes_stol": 0.0,
                   "snes_max_it": ctl.snes_max_it, "ksp_type": "preonly", "pc_type": "lu",
                   "pc_factor_mat_solver_type": "mumps", "mat_mumps_icntl_24": 1,
                   "mat_mumps_icntl_25": 0}
        self.problem = NonlinearProblem(
            forms.residual, forms.w, J=forms.jacobian, petsc_options=options,
            petsc_options_prefix=f"chemomech_phasefield_{PhaseFieldSolver._count}_")
        self.nullspace = rigid_modes(forms.W)
        self.problem.A.setNullSpace(self.nullspace)
        self.history = RunHistory()
        self.t = 0.0

    def _atol(self) -> float:
        r"""Absolute SNES tolerance: ``snes_atol`` as a composition error spread over the
        mesh, :math:`\|F\|_2 \approx \delta c\,h\sqrt{|\Omega|}` with h the mean cell size."""
        n_cells = self.forms.mesh.topology.index_map(self.forms.mesh.topology.dim).size_global
        area = self.forms.volume
        return self.control.snes_atol * area / math.sqrt(n_cells)

    def newton_solve(self) -> tuple[bool, int, int]:
        """One SNES solve from the current w; (converged, Newton its, linear its)."""
        snes = self.problem.solver
        try:
            self.problem.solve()
        except PETSc.Error as err:
            logger.debug("SNES raised %s", err)
            return False, snes.getIterationNumber(), snes.getLinearSolveIterations()
        ok = snes.getConvergedReason() > 0
        x = self.forms.w.x
        ok = ok and bool(self.forms.mesh.comm.allreduce(np.all(np.isfinite(x.array)),
                                                        op=_mpi_land()))
        if ok:
            self.nullspace.remove(x.petsc_vec)
            x.scatter_forward()
        return ok, snes.getIterationNumber(), snes.getLinearSolveIterations()

    def initialise(self) -> StepRecord:
        """The dt = 0 solve: mu and u consistent with the initial c (taken from ``w``)."""
        f = self.forms
        f.w_n.x.array[:] = f.w.x.array
        f.dt.value = 0.0
        started = time.perf_counter()
        ok, its, lin = self.newton_solve()
        if not ok:
            raise SolverError("the initial (dt = 0) solve for mu and u did not converge")
        f.w_n.x.array[:] = f.w.x.array
        record = StepRecord(self.t, 0.0, f.energies(), f.mass(), its, lin,
                            time.perf_counter() - started)
        self.history.steps.append(record)
        return record

    def run(self, callback=None) -> RunHistory:
        """Step to equilibrium (see the module docstring); `callback(solver, record)` after
        every accepted step.  Raises SolverError when dt falls below dt_min."""
        f, ctl = self.forms, self.control
        if not self.history.steps:
            self.initialise()
        scale = f.volume * f.free_energy.barrier()
        dt, quiet = ctl.dt_initial, 0
        E_prev = self.history.steps[-1].energy["total"]
        while True:
            n_steps = len(self.history.steps) - 1
            if n_steps >= ctl.max_steps:
                self.history.reason = f"max_steps = {ctl.max_steps} reached"
                break
            if self.t >= ctl.t_end * (1 - 1e-12):
                self.history.reason = f"t_end = {ctl.t_end} reached"
                break
            dt = min(dt, ctl.dt_max, ctl.t_end - self.t)
            f.dt.value = dt
            f.w.x.array[:] = f.w_n.x.array
            started = time.perf_counter()
            ok, its, lin = self.newton_solve()
            energy = f.energies() if ok else None
            margin = 1e-12 * (abs(E_prev) + scale)
            if ok and ctl.reject_energy_increase and energy["total"] > E_prev + margin:
                ok = False
                logger.debug("step rejected: energy rose by %.3g", energy["total"] - E_prev)
            if not ok:
                self.history.rejected += 1
                f.w.x.array[:] = f.w_n.x.array
                dt *= ctl.shrink
                if dt < ctl.dt_min:
                    raise SolverError(f"time step fell below dt_min = {ctl.dt_min} at t = "
                                      f"{self.t:.4g} (Newton failures or energy increase)")
                continue
            self.t += dt
            f.w_n.x.array[:] = f.w.x.array
            record = StepRecord(self.t, dt, energy, f.mass(), its, lin,
                                time.perf_counter() - started)
            self.history.steps.append(record)
            decrease = (E_prev - energy["total"]) / scale
            E_prev = energy["total"]
            quiet = quiet + 1 if decrease < ctl.energy_tol else 0
            if f.mesh.comm.rank == 0 and (n_steps % 10 == 0 or quiet):
                logger.info("step %d: t = %.4g, dt = %.3g, F = %.8g, dF/scale = %.3g, "
                            "%d Newton its", n_steps + 1, self.t, dt, energy["total"],
                            decrease, its)
            if callback is not None:
                callback(self, record)
            if quiet >= ctl.patience:
                self.history.converged = True
                self.history.reason = (f"energy decrease below {ctl.energy_tol} for "
                                       f"{ctl.patience} steps")
                break
            if its <= ctl.newton_target:
                dt *= ctl.grow
        logger.info("phase field stopped after %d steps (%d rejected), t = %.4g: %s",
                    len(self.history.steps) - 1, self.history.rejected, self.t,
                    self.history.reason)
        return self.history


def _mpi_land():
    from mpi4py import MPI

    return MPI.LAND
