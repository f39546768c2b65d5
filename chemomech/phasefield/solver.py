r"""Monolithic Newton (PETSc SNES) on the mixed (c, mu, u) system with adaptive time steps.

Each step solves the scaled theta-method residual of `chemomech.phasefield.model` for
:math:`w_{n+1} = (c, \mu, u)` by SNES Newton (basic line search).  **Linear solvers**
(``linear``): "lu", a MUMPS LU of the full Jacobian; "fieldsplit", FGMRES (relative
tolerance ``ksp_rtol``) preconditioned by a multiplicative fieldsplit of the (c, mu) block,
solved by MUMPS LU (P1 x P1: a few per cent of the 3-D DOFs with P2 u), and the u block,
one GAMG V-cycle with the rigid modes as near-null space (and null space).  The u block is
node-blocked (its index set has block size d: the d components of a node are adjacent in
the mixed dofmap), so GAMG aggregates nodes, not scalar DOFs (at 125 k DOFs in 3-D this
cut the peak memory of the first solve from 1.10 to 0.66 GB per rank,
bench/results/phasefield_3d_memory.json); the u block is the elasticity operator, constant
for a constant stiffness, so its GAMG preconditioner is built once and reused across Newton
iterations and steps (lagged for C(c); FGMRES corrects it).  ASM/ILU(1) on the
(c, mu) block instead needed ~180 FGMRES iterations per Newton step on a 300 x 150 nm test
plate (against ~15) and failed steps, so it is not offered.

**Rigid modes** (traction-free u): the rigid motions of u (3 in 2-D, 6 in 3-D; zero in c,
mu) span the null space of the Jacobian and the residual is orthogonal to
them, so they are attached to the Jacobian as a PETSc null space, MUMPS is told to detect the null
pivots (ICNTL(24) = 1, as `chemomech.mechanics.forward`), and they are projected out of the state
after each solve (u is reported orthogonal to the rigid modes).

**Time steps.** A step is rejected (dt halved, state restored) when Newton fails, the state
is not finite, or (``reject_energy_increase``) the free energy rises by more than a round-off
margin; an accepted step in at most ``newton_target`` iterations grows dt by ``grow`` up to
``dt_max``; with a finite ``max_dc`` the next dt is also at most dt max_dc / max|c - c_n| of
the last step (`PhaseFieldSolver.next_dt`).  The first solve has dt = 0: it leaves c
unchanged and makes mu and u consistent with the initial c (theta < 1 needs mu_n).

**Stop.** Equilibrium is declared when the energy decrease of ``patience`` consecutive
accepted steps, :math:`(F_n - F_{n+1}) / (|\Omega|\,\Delta f_{max})`, is below
``energy_tol`` (|Omega| the particle area, Delta f_max the chemical barrier: F per unit of a
natural energy scale), or at ``max_steps`` / ``t_end`` (then ``converged`` is False).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
from petsc4py import PETSc

from chemomech.exceptions import InputError, SolverError
from chemomech.io.progress import format_seconds
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
    ksp_rtol: float = 1e-9
    ksp_max_it: int = 500
    max_dc: float = math.inf

    def __post_init__(self):
        checks = {"dt_initial": self.dt_initial > 0, "dt_max": self.dt_max >= self.dt_initial,
                  "dt_min": 0 < self.dt_min <= self.dt_initial, "grow": self.grow >= 1.0,
                  "shrink": 0 < self.shrink < 1, "newton_target": self.newton_target >= 1,
                  "max_steps": self.max_steps >= 1, "t_end": self.t_end > 0,
                  "energy_tol": self.energy_tol >= 0, "patience": self.patience >= 1,
                  "snes_max_it": self.snes_max_it >= 1,
                  "ksp_rtol": 0 < self.ksp_rtol < 1, "ksp_max_it": self.ksp_max_it >= 1,
                  "max_dc": self.max_dc > 0}
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
    rejections: dict[str, int] = field(default_factory=dict)
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


#: Linear solvers of the Newton systems (module docstring).
LINEAR_SOLVERS = ("lu", "fieldsplit")
#: MUMPS on a matrix with the rigid modes as null space: detect the null pivots.
MUMPS_NULL_PIVOTS = {"mat_mumps_icntl_24": 1, "mat_mumps_icntl_25": 0}


#: GAMG on the u block (fieldsplit).  The u block of the Jacobian, the elasticity operator,
#: does not depend on the state for a constant stiffness, so the whole preconditioner is
#: built once and reused (``ksp_reuse_preconditioner``; a lagged preconditioner for C(c)).
GAMG_U_OPTIONS = {"ksp_reuse_preconditioner": True, "pc_gamg_threshold": 0.01,
                  "mg_levels_ksp_type": "chebyshev", "mg_levels_pc_type": "jacobi",
                  "pc_gamg_coarse_eq_limit": 1000}


class PhaseFieldSolver:
    """SNES + adaptive theta-method stepping of a `PhaseFieldForms` system."""

    _count = 0

    def __init__(self, forms: PhaseFieldForms, control: StepControl | None = None,
                 linear: str = "lu"):
        from dolfinx.fem.petsc import NonlinearProblem

        self.forms = forms
        self.control = ctl = control if control is not None else StepControl()
        PhaseFieldSolver._count += 1
        options = {"snes_type": "newtonls", "snes_linesearch_type": "basic",
                   "snes_rtol": ctl.snes_rtol, "snes_atol": self._atol(), "snes_stol": 0.0,
                   "snes_max_it": ctl.snes_max_it}
        if linear not in LINEAR_SOLVERS:
            raise InputError(f"must be one of {LINEAR_SOLVERS}, got {linear!r}",
                             field="linear_solver")
        self.linear = linear
        if linear == "lu":
            options |= {"ksp_type": "preonly", "pc_type": "lu",
                        "pc_factor_mat_solver_type": "mumps", **MUMPS_NULL_PIVOTS}
        else:
            options |= {"ksp_type": "fgmres", "ksp_rtol": ctl.ksp_rtol, "ksp_atol": 0.0,
                        "ksp_max_it": ctl.ksp_max_it, "ksp_gmres_restart": 100,
                        "pc_type": "fieldsplit", "pc_fieldsplit_type": "multiplicative"}
        self.problem = NonlinearProblem(
            forms.residual, forms.w, J=forms.jacobian, petsc_options=options,
            petsc_options_prefix=f"chemomech_phasefield_{PhaseFieldSolver._count}_")
        self.nullspace = rigid_modes(forms.W)
        self.problem.A.setNullSpace(self.nullspace)
        if linear != "lu":
            self._setup_fieldsplit()
        self.history = RunHistory()
        self.t = 0.0

    def _setup_fieldsplit(self) -> None:
        """Split the Jacobian into the (c, mu) block and the u block (see the module
        docstring), attach the rigid modes of u to the u block as its (near-)null space and
        set the sub-solvers up once on the Jacobian of the current state."""
        from dolfinx.fem.petsc import assemble_matrix

        W = self.forms.W
        imap = W.dofmap.index_map
        n_owned, bs = imap.size_local, W.dofmap.index_map_bs
        offset = imap.local_range[0] * bs

        def owned(blocks):
            dofs = np.sort(np.concatenate([W.sub(k).collapse()[1] for k in blocks]))
            dofs = dofs[dofs < n_owned * bs]
            return PETSc.IS().createGeneral((offset + dofs).astype(PETSc.IntType),
                                            comm=W.mesh.comm)

        is_cmu, is_u = owned((0, 1)), owned((2,))
        is_u.setBlockSize(W.mesh.geometry.dim)  # (u_x, u_y, u_z) of a node are adjacent
        sub_modes = []
        for mode in self.nullspace.getVecs():
            sub = mode.getSubVector(is_u)
            sub_modes.append(sub.copy())
            mode.restoreSubVector(is_u, sub)
        self._u_nullspace = PETSc.NullSpace().create(vectors=sub_modes, comm=W.mesh.comm)
        is_u.compose("nearnullspace", self._u_nullspace)
        is_u.compose("nullspace", self._u_nullspace)
        self._splits = (is_cmu, is_u)
        ksp = self.problem.solver.getKSP()
        pc = ksp.getPC()
        pc.setFieldSplitIS(("cmu", is_cmu), ("u", is_u))
        prefix = ksp.getOptionsPrefix()
        cmu = {"ksp_type": "preonly", "pc_type": "lu", "pc_factor_mat_solver_type": "mumps"}
        u = {"ksp_type": "preonly", "pc_type": "gamg", **GAMG_U_OPTIONS}
        sub = {f"fieldsplit_cmu_{k}": v for k, v in cmu.items()} | {
            f"fieldsplit_u_{k}": v for k, v in u.items()}
        db = PETSc.Options()
        for key, value in sub.items():
            db[prefix + key] = value
        try:
            A = self.problem.A
            A.zeroEntries()
            assemble_matrix(A, self.problem.J)
            A.assemble()
            ksp.setOperators(A)
            ksp.setFromOptions()
            pc.setUp()
        finally:
            for key in sub:
                del db[prefix + key]

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

    def _max_change(self) -> float:
        """max |c - c_n| over the mesh (collective)."""
        from mpi4py import MPI

        dofs = self._c_dofs
        local = np.abs(self.forms.w.x.array[dofs] - self.forms.w_n.x.array[dofs])
        return self.forms.mesh.comm.allreduce(float(local.max(initial=0.0)), op=MPI.MAX)

    @functools.cached_property
    def _c_dofs(self) -> np.ndarray:
        """Indices of c in the mixed state (owned and ghost)."""
        return np.ravel(self.forms.W.sub(0).collapse()[1])

    def next_dt(self, dt: float, newton_its: int, change: float) -> float:
        r"""The step after an accepted one of `dt`: ``grow`` x dt if Newton took at most
        ``newton_target`` iterations, else dt; with a finite ``max_dc`` also at most
        :math:`dt\,\Delta c_{max}/\max|c - c_n|` (the composition change per step kept near
        ``max_dc``, shrinking dt before a fast event such as a domain pinch-off)."""
        ctl = self.control
        factor = ctl.grow if newton_its <= ctl.newton_target else 1.0
        if change > 0 and math.isfinite(ctl.max_dc):
            factor = min(factor, ctl.max_dc / change)
        return max(dt * factor, ctl.dt_min)

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
        report = StepReport(ctl, f.mesh.comm.rank == 0)
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
            why = "newton" if not ok else ""
            energy = f.energies() if ok else None
            margin = 1e-12 * (abs(E_prev) + scale)
            if ok and ctl.reject_energy_increase and energy["total"] > E_prev + margin:
                ok, why = False, "energy"
            if not ok:
                logger.debug("step rejected (%s) at dt = %.3g", why, dt)
                self.history.rejections[why] = self.history.rejections.get(why, 0) + 1
                self.history.rejected += 1
                f.w.x.array[:] = f.w_n.x.array
                dt *= ctl.shrink
                if dt < ctl.dt_min:
                    raise SolverError(f"time step fell below dt_min = {ctl.dt_min} at t = "
                                      f"{self.t:.4g} (Newton failures or energy increase)")
                continue
            self.t += dt
            change = self._max_change() if math.isfinite(ctl.max_dc) else 0.0
            f.w_n.x.array[:] = f.w.x.array
            record = StepRecord(self.t, dt, energy, f.mass(), its, lin,
                                time.perf_counter() - started)
            self.history.steps.append(record)
            decrease = (E_prev - energy["total"]) / scale
            E_prev = energy["total"]
            quiet = quiet + 1 if decrease < ctl.energy_tol else 0
            report.update(n_steps + 1, self.t, dt, energy["total"], decrease, its, lin)
            if callback is not None:
                callback(self, record)
            if quiet >= ctl.patience:
                self.history.converged = True
                self.history.reason = (f"energy decrease below {ctl.energy_tol} for "
                                       f"{ctl.patience} steps")
                break
            dt = self.next_dt(dt, its, change)
        logger.info("phase field stopped after %d steps (%d rejected), t = %.4g: %s",
                    len(self.history.steps) - 1, self.history.rejected, self.t,
                    self.history.reason)
        return self.history


class StepReport:
    r"""Progress of a relaxation on rank 0: a log line every `interval_s` seconds (and at
    the first steps) with step, t, dt, F, the scaled energy decrease per step against
    ``energy_tol``, iterations, and an ETA-like indicator.

    The indicator measures progress in decades of the energy decrease,
    :math:`p = \log(d_1/d_k) / \log(d_1/\mathrm{tol})` (d_1 the largest decrease so far, d_k
    the smallest since), and extrapolates the wall time linearly, ETA = elapsed (1 - p)/p;
    with a step or time limit the larger of that fraction and k/max_steps, t/t_end is
    used.  Coarsening has plateaus (a domain vanishing speeds the decrease up again), so it
    is an indicator, not a forecast."""

    def __init__(self, control: StepControl, active: bool, interval_s: float = 10.0):
        self.control, self.active, self.interval_s = control, active, interval_s
        self.start = self._last = time.monotonic()
        self.first = self.best = None

    def fraction(self, step: int, t: float) -> float:
        """Progress in [0, 1] (see the class docstring)."""
        ctl = self.control
        p = max(step / ctl.max_steps, t / ctl.t_end if math.isfinite(ctl.t_end) else 0.0)
        if self.first is not None and ctl.energy_tol > 0 and self.first > ctl.energy_tol:
            d = max(self.best, ctl.energy_tol)
            p = max(p, math.log(self.first / d) / math.log(self.first / ctl.energy_tol))
        return min(max(p, 0.0), 1.0)

    def update(self, step: int, t: float, dt: float, energy: float, decrease: float,
               newton: int, linear: int) -> None:
        """Record an accepted step; log it if due."""
        if decrease > 0:
            if self.first is None or decrease > self.first:
                self.first = self.best = decrease
            self.best = min(self.best, decrease)
        now = time.monotonic()
        if not self.active or (step > 3 and now - self._last < self.interval_s):
            return
        self._last = now
        p, elapsed = self.fraction(step, t), now - self.start
        eta = f"ETA ~{format_seconds(elapsed * (1 - p) / p)}" if p > 0 else "ETA unknown"
        logger.info("step %d: t = %.4g, dt = %.3g, F = %.8g, dF/scale = %.2g (stop < %.2g), "
                    "%d Newton / %d linear its, %s elapsed, progress %.0f %%, %s", step, t,
                    dt, energy, decrease, self.control.energy_tol, newton, linear,
                    format_seconds(elapsed), 100 * p, eta)


def _mpi_land():
    from mpi4py import MPI

    return MPI.LAND
