r"""The dislocation model M2: M1 plus plastic slip fields, with exact adjoint gradients.

Model (DESIGN §4, "Dislocations (M2)").  For each particle the eigenstrain is the M1
composition law plus one plastic slip per chosen in-plane slip system s
(`chemomech.mechanics.slip`),

.. math::

    \varepsilon^* = R\,\mathrm{diag}(f_a(X), f_c(X))\,R^T
                    + \sum_s \gamma_s(x)\,\mathrm{sym}(\hat s\otimes\hat n)_\mathrm{img},

with :math:`\gamma_s` a P1 field on the particle mesh (one per particle and system: the number
of parameters scales with the image) and the Legendre coefficients shared by all particles.
The data misfit is M1's (`chemomech.inverse.misfit`); the slip fields are regularised by

* ``h1`` (default): :math:`R(\gamma) = \tfrac{\alpha}{2}\int|\nabla\gamma|^2\,dx`, or
* ``tv``: :math:`R(\gamma) = \alpha\int(|\nabla\gamma|^2 + \epsilon^2)^{1/2}\,dx` (smoothed),

so :math:`J = \sum_k J_k(u_k) + \sum_{k,s} R(\gamma_{k,s})` (units of the misfit: nm^2 for the
displacement misfit, so alpha is in nm^2; dimensionless for the strain misfit).

Adjoint.  The state is linear in all controls: :math:`u = A^+(\sum_k a_k b_k + \sum_s K_s
\gamma_s)` with the M1 basis loads :math:`b_k`, the factorised traction-free operator
(`chemomech.inverse.problem`) and the slip-load matrices
:math:`(K_s)_{ij} = \int C:(\phi_j\,\mathrm{sym}(\hat s\otimes\hat n)):\varepsilon(v_i)\,dx`
(vector P_k rows, scalar P1 columns), assembled once.  `SlipSolveBlock` tapes this map: its
adjoint is one back-substitution :math:`\lambda = A^+ g`, then :math:`dJ/da_k = b_k\cdot
\lambda` and :math:`dJ/d\gamma_s = K_s^T\lambda` (a dolfinx dual vector for the
``dolfinx_adjoint.Function`` control).  `RegularisationBlock` tapes R with its UFL derivative.
The misfit block and the sums over particle groups are M1's.  Taylor tests give rate 2
(tests/test_dislocations.py).

Optimisation: PETSc TAO (BLMVM by default, or BQNLS) on the world communicator with a
distributed control vector: the Legendre coefficients on rank 0, then every rank's owned slip
DOFs.  The slip DOFs are seen through :math:`z_i = (m_i / |\Omega|)^{1/2}\gamma_i` (lumped
mass m_i, particle area :math:`|\Omega|`), so the Euclidean inner product TAO uses is the
mean-square L2 product of the fields (mesh independent) and a uniform slip has the size of a
coefficient.  The quasi-Newton initial Hessian (``TaoLMVMSetH0``) is
blockdiag(N, S_z): N the coefficients' normal matrix (exact), S_z the slip block
:math:`\alpha L + \beta M` (stiffness and mass of P1, LU-factorised once per alpha) with
:math:`\beta = 1^T H_\mathrm{data} 1 / |\Omega|` the data curvature of a uniform slip; this
takes BLMVM from > 2000 to 10-150 iterations.  The PETSc default line search is kept (with
this H0 the unit step is nearly always accepted: ~1 evaluation per iteration).  The objective
is scaled by J at the start; PETSc options prefix ``chemomech_m2_``; monitor on world rank 0.

Regularisation weight.  ``alpha`` fixed, or chosen from a scan over
:math:`\alpha_j = \alpha_0 10^{k}` (warm-started, large to small) by

* the discrepancy principle (default): the largest alpha whose misfit is at most
  tau * the expected misfit of pure noise (tau = 1); the noise is the strain-noise standard
  deviation (given, or estimated from the maps by `estimate_strain_noise`) propagated to the
  misfit (exactly for the strain misfit, by Monte Carlo through the integration for the
  displacement misfit), or the M1 fit's sigma^2 (``noise_strain: m1``; an upper bound: it
  contains the dislocation signal, so it favours large alpha).  When no scanned alpha reaches the
  noise level (model error, or spatially correlated noise that the white-noise estimate
  underrates, dominate the residual, as on the real particle LFP50_P2), the L-curve corner of
  the scan is used and the rule is reported as "discrepancy not reached: lcurve";
* the L-curve: the corner (maximum curvature) of (log misfit, log seminorm).

Outputs: geometrically necessary dislocation density
:math:`\rho = |\nabla\gamma_s\cdot\hat s| / |b|` (um^-2; mesh coordinates in nm, so
:math:`\rho[\mathrm{um}^{-2}] = 10^6\,\rho[\mathrm{nm}^{-2}]`) sampled at the pixel centres
(P1 gradient: exact per cell), its particle mean over the meshed pixels, the model maps (u,
strain) as M1 has them, model errors by the pipeline's definition, a comparison of candidate
systems (`compare_slip_systems`, Supplementary Fig. 14) and figures (`plot_density_map`,
Fig. 3c).  `run_m2` is the pipeline stage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import dolfinx_adjoint as dxa
import numpy as np
import pyadjoint
import ufl
from dolfinx import fem, la
from dolfinx.fem import petsc as fem_petsc
from mpi4py import MPI
from petsc4py import PETSc
from pyadjoint import AdjFloat, Control, ReducedFunctional

from chemomech.dislocations.density import density_expression
from chemomech.dislocations.settings import (
    M2_TAO_TYPES,
    TYPICAL_SLIP,
    TYPICAL_SLIP_LENGTH_NM,
    Regularisation,
)
from chemomech.exceptions import InputError
from chemomech.inverse.blocks import (
    GroupSumBlock,
    PixelMisfitBlock,
    RegularisationBlock,
    ReplicateBlock,
    SlipSolveBlock,
)
from chemomech.inverse.optimise import minimise
from chemomech.inverse.problem import M1Model, ParticleSetup, split_coefficients
from chemomech.mechanics.forms import eigenstrain_load_form
from chemomech.mechanics.materials import Material
from chemomech.mechanics.slip import InPlaneSlipSystem, slip_system

logger = logging.getLogger(__name__)


class SlipParticle:
    """Slip-load matrices K_s, slip spaces and regularisation forms of one particle."""

    def __init__(self, base, systems: Sequence[InPlaneSlipSystem], reg: Regularisation):
        self.base = base  # chemomech.inverse._Particle: factorised operator + basis loads
        self.name = base.setup.name
        self.rotation_rad = base.setup.rotation_rad
        mesh = base.setup.mesh
        self.Q = fem.functionspace(mesh, ("Lagrange", 1))
        self.systems = list(systems)
        v = ufl.TestFunction(base.V)
        q = ufl.TrialFunction(self.Q)
        self.K = []
        for s in self.systems:
            schmid = ufl.as_matrix(s.schmid_tensor(self.rotation_rad).tolist())
            K = fem_petsc.assemble_matrix(fem.form(
                eigenstrain_load_form(q * schmid, v, base.problem.C)))
            K.assemble()
            self.K.append(K)
        self.n_owned = self.Q.dofmap.index_map.size_local
        mass = fem_petsc.assemble_vector(fem.form(ufl.TestFunction(self.Q) * ufl.dx))
        mass.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        self.area_nm2 = self.comm.allreduce(float(mass.array.sum()))
        self.weights = mass.array[: self.n_owned].copy() / self.area_nm2  # sum_i w_i = 1
        mass.destroy()
        # regularisation forms on a work function g (value, derivative, directional derivative)
        self.alpha = fem.Constant(mesh, float(reg.alpha))
        self.g = fem.Function(self.Q, name="gamma_work")
        self.dg = fem.Function(self.Q, name="gamma_direction")
        grad_sq = ufl.inner(ufl.grad(self.g), ufl.grad(self.g))
        if reg.kind == "h1":
            R = 0.5 * self.alpha * grad_sq * ufl.dx
            self.seminorm_form = fem.form(0.5 * grad_sq * ufl.dx)
        else:
            eps = fem.Constant(mesh, float(reg.tv_epsilon_per_nm))
            R = self.alpha * ufl.sqrt(grad_sq + eps**2) * ufl.dx
            self.seminorm_form = fem.form(ufl.sqrt(grad_sq + eps**2) * ufl.dx)
        self.R = fem.form(R)
        self.dR = fem.form(ufl.derivative(R, self.g, ufl.TestFunction(self.Q)))
        self.dR_dir = fem.form(ufl.derivative(R, self.g, self.dg))
        self._work = self.K[0].createVecRight() if self.K else None
        # H1-type preconditioner S = alpha_eff L + beta M of the slip block (set by M2Model)
        self.pc_alpha = fem.Constant(mesh, 1.0)
        self.pc_beta = fem.Constant(mesh, 1.0)
        u_, w_ = ufl.TrialFunction(self.Q), ufl.TestFunction(self.Q)
        self._pc_form = fem.form(self.pc_alpha * ufl.inner(ufl.grad(u_), ufl.grad(w_)) * ufl.dx
                                 + self.pc_beta * u_ * w_ * ufl.dx)
        self._pc_ksp: list[PETSc.KSP | None] = [None] * len(self.systems)
        self._pc_rhs = self._work.duplicate() if self._work is not None else None
        self._pc_sol = self._work.duplicate() if self._work is not None else None

    @property
    def comm(self) -> MPI.Comm:
        return self.base.setup.mesh.comm

    def solve(self, coefficients: Sequence[float], gammas: Sequence,
              u: fem.Function | None = None) -> fem.Function:
        r"""u = A^+(\sum_k a_k b_k + \sum_s K_s \gamma_s); `gammas` Functions on Q (or None)."""
        rhs = self.base._rhs
        rhs.zeroEntries()
        rhs.maxpy([float(c) for c in coefficients], self.base.loads)
        for K, g in zip(self.K, gammas, strict=True):
            if g is not None:
                K.multAdd(g.x.petsc_vec, rhs, rhs)
        return self.base.problem.solve_vector(rhs, u or fem.Function(self.base.V, name="u"))

    def slip_gradient(self, k: int, lam: fem.Function) -> la.Vector:
        """K_s^T lambda as a ghost-consistent dolfinx vector on Q (dual of gamma_s)."""
        self.K[k].multTranspose(lam.x.petsc_vec, self._work)
        out = dxa.Function(self.Q).x  # a dolfinx_adjoint dual vector (supports +=)
        out.array[: self.n_owned] = self._work.array
        out.scatter_forward()
        return out

    def set_preconditioner(self, k: int, alpha: float, beta: float) -> None:
        """Assemble and factorise S_k = alpha L + beta M (P1 stiffness and mass; MUMPS LU) for
        system k."""
        self.pc_alpha.value = float(alpha)
        self.pc_beta.value = float(beta)
        S = fem_petsc.assemble_matrix(self._pc_form)
        S.assemble()
        if self._pc_ksp[k] is None:
            ksp = PETSc.KSP().create(self.comm)
            ksp.setType("preonly")
            ksp.getPC().setType("lu")
            ksp.getPC().setFactorSolverType("mumps")
            self._pc_ksp[k] = ksp
        self._pc_ksp[k].setOperators(S)
        self._pc_ksp[k].setUp()
        S.destroy()

    def apply_operator(self, k: int, x: np.ndarray) -> np.ndarray:
        """S_k x for owned values x (collective on the particle's communicator)."""
        self._pc_rhs.array[:] = x
        self._pc_ksp[k].getOperators()[0].mult(self._pc_rhs, self._pc_sol)
        return self._pc_sol.array.copy()

    def apply_preconditioner(self, k: int, r: np.ndarray) -> np.ndarray:
        """S_k^-1 r for owned values r (collective on the particle's communicator)."""
        self._pc_rhs.array[:] = r
        self._pc_ksp[k].solve(self._pc_rhs, self._pc_sol)
        return self._pc_sol.array.copy()

    def _load(self, gamma) -> None:
        self.g.x.array[:] = gamma.x.array
        self.g.x.scatter_forward()

    def regularisation(self, gamma) -> float:
        """R(gamma), summed over the particle's communicator."""
        self._load(gamma)
        return self.comm.allreduce(fem.assemble_scalar(self.R))

    def seminorm(self, gamma) -> float:
        """R(gamma) / alpha: 1/2 int |grad gamma|^2 (h1, nm^0) or int |grad gamma|_eps (tv, nm)."""
        self._load(gamma)
        return self.comm.allreduce(fem.assemble_scalar(self.seminorm_form))

    def regularisation_gradient(self, gamma, scale: float = 1.0) -> la.Vector:
        """scale * dR/dgamma as a ghost-consistent dolfinx vector."""
        self._load(gamma)
        b = fem.assemble_vector(self.dR)
        b.scatter_reverse(la.InsertMode.add)
        out = dxa.Function(self.Q).x  # a dolfinx_adjoint dual vector (supports +=)
        out.array[:] = scale * b.array
        out.scatter_forward()
        return out

    def regularisation_direction(self, gamma, direction) -> float:
        """dR/dgamma . direction."""
        self._load(gamma)
        self.dg.x.array[:] = direction.x.array
        self.dg.x.scatter_forward()
        return self.comm.allreduce(fem.assemble_scalar(self.dR_dir))


@dataclass
class M2FitResult:
    """Result of an M2 fit (Legendre coefficients of f_a, f_c; slip fields live in the model)."""

    degree: int
    systems: tuple[str, ...]
    regularisation: Regularisation
    coefficients_a: np.ndarray
    coefficients_c: np.ndarray
    cost: float  # J = misfit + regularisation
    misfit: float
    regularisation_value: float
    seminorm: float
    iterations: int
    reason: str
    per_particle_misfit: dict[str, float]
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def coefficients(self) -> np.ndarray:
        """The stacked control vector (a_{.,a}, a_{.,c})."""
        return np.concatenate([self.coefficients_a, self.coefficients_c])

    def summary(self) -> dict:
        """JSON-ready dictionary of the fit."""
        return {"legendre_degree": self.degree, "slip_systems": list(self.systems),
                "regularisation": {"kind": self.regularisation.kind,
                                   "alpha": self.regularisation.alpha},
                "coefficients": {"a": self.coefficients_a.tolist(),
                                 "c": self.coefficients_c.tolist()},
                "J": self.cost, "misfit": self.misfit,
                "regularisation_value": self.regularisation_value,
                "seminorm": self.seminorm, "iterations": self.iterations,
                "reason": self.reason, "per_particle_misfit": self.per_particle_misfit,
                "timings_s": self.timings_s}


class M2Model:
    """Joint M2 inversion over this rank's particles: shared Legendre law + slip fields.

    `setups`, `degree`, `material`, `comm`, `solver`: as `chemomech.inverse.M1Model` (whose
    factorised operators and basis loads it reuses); `systems`: slip-system labels;
    `regularisation`: the slip regulariser (its alpha can be changed with `set_alpha`).
    """

    def __init__(self, setups: Sequence[ParticleSetup], systems: Sequence[str] = ("D",),
                 degree: int = 2, material: Material | None = None,
                 comm: MPI.Comm = MPI.COMM_WORLD, solver="auto",
                 regularisation: Regularisation | None = None):
        if not systems:
            raise InputError("give at least one slip system", field="slip_systems")
        t0 = time.perf_counter()
        self.m1 = M1Model(setups, degree=degree, material=material, comm=comm, solver=solver)
        self.degree, self.world, self.group = degree, comm, self.m1.group
        self.systems = [slip_system(s) for s in systems]
        self.reg = regularisation or Regularisation()
        self.particles = [SlipParticle(p, self.systems, self.reg) for p in self.m1.particles]
        self.num_coefficients = self.m1.num_coefficients
        self.coefficients = np.zeros(self.num_coefficients)
        self.gammas = [[fem.Function(p.Q, name=f"gamma_{s.label}") for s in self.systems]
                       for p in self.particles]
        self._rf: ReducedFunctional | None = None
        self._values: list | None = None
        self.timings_s = dict(self.m1.timings_s, m2_setup=time.perf_counter() - t0)
        self._curv = None
        self._pc_coefficients = None
        self._evaluations = 0

    # -- state -------------------------------------------------------------------------------
    def set_alpha(self, alpha: float) -> None:
        """Change the regularisation weight (no re-assembly, the tape stays valid)."""
        self.reg = Regularisation(self.reg.kind, float(alpha), self.reg.tv_epsilon_per_nm)
        for p in self.particles:
            p.alpha.value = float(alpha)

    def gamma(self, particle: int | str, system: int | str = 0) -> fem.Function:
        """The current slip field of one of this rank's particles and systems (P1)."""
        k = particle if isinstance(particle, int) else \
            [p.name for p in self.particles].index(particle)
        s = system if isinstance(system, int) else [q.label for q in self.systems].index(system)
        return self.gammas[k][s]

    def displacement(self, particle: int | str) -> fem.Function:
        """u of one of this rank's particles for the current coefficients and slip (nm)."""
        k = particle if isinstance(particle, int) else \
            [p.name for p in self.particles].index(particle)
        return self.particles[k].solve(self.coefficients, self.gammas[k])

    def misfits(self) -> dict[str, float]:
        """{name: J_k} data misfit of every particle of the world at the current state."""
        local = {p.name: p.base.misfit.cost(p.solve(self.coefficients, g))
                 for p, g in zip(self.particles, self.gammas, strict=True)}
        gathered = self.world.allgather(local if self.group.rank == 0 else {})
        return {k: v for d in gathered for k, v in d.items()}

    def mean_densities(self) -> dict[str, float]:
        """{name: particle mean of the total GND density, int rho dx / |Omega| (um^-2)} for every
        particle of the world (mesh integral of the FE field; the maps' pixel mean is close)."""
        if getattr(self, "_density_forms", None) is None:
            self._density_forms = [
                [fem.form(density_expression(g, s, p.rotation_rad) * ufl.dx)
                 for s, g in zip(self.systems, gs, strict=True)]
                for p, gs in zip(self.particles, self.gammas, strict=True)]
        local = {}
        for p, forms in zip(self.particles, self._density_forms, strict=True):
            total = sum(p.comm.allreduce(fem.assemble_scalar(f)) for f in forms)
            local[p.name] = total / p.area_nm2
        gathered = self.world.allgather(local if self.group.rank == 0 else {})
        return {k: v for d in gathered for k, v in d.items()}

    def _world_sum(self, local: float) -> float:
        return self.world.allreduce(local if self.group.rank == 0 else 0.0, op=MPI.SUM)

    def regularisation_total(self) -> tuple[float, float]:
        """(sum R, sum R/alpha) over all particles and systems at the current slip."""
        R = sum(p.regularisation(g) for p, gs in zip(self.particles, self.gammas, strict=True)
                for g in gs)
        S = sum(p.seminorm(g) for p, gs in zip(self.particles, self.gammas, strict=True)
                for g in gs)
        return self._world_sum(R), self._world_sum(S)

    # -- tape ----------------------------------------------------------------------------------
    def reduced_functional(self) -> ReducedFunctional:
        """pyadjoint ReducedFunctional J(a, gamma) on a private tape.

        Controls: the 2(N+1) coefficients (AdjFloats, replicated) followed by this rank's slip
        fields (dolfinx_adjoint Functions, particle-major, system-minor).
        """
        tape = pyadjoint.Tape()
        with pyadjoint.set_working_tape(tape):
            a0 = self.coefficients
            controls = [AdjFloat(float(v)) for v in a0]
            replicate = ReplicateBlock(controls, self.world, self.group)
            tape.add_block(replicate)
            copies = [AdjFloat(float(v)) for v in a0]
            for c in copies:
                replicate.add_output(c.block_variable)
            gamma_controls, costs = [], []
            for p, gs in zip(self.particles, self.gammas, strict=True):
                gam = []
                for g in gs:
                    gc = dxa.Function(p.Q, name=g.name)
                    gc.x.array[:] = g.x.array
                    gam.append(gc)
                gamma_controls += gam
                u = dxa.Function(p.base.V, name="u")
                p.solve(a0, gam, u)
                solve_block = SlipSolveBlock(p, copies, gam)
                tape.add_block(solve_block)
                solve_block.add_output(u.create_block_variable())
                J_p = AdjFloat(p.base.misfit.cost(u))
                misfit_block = PixelMisfitBlock(p.base.misfit, u)
                tape.add_block(misfit_block)
                misfit_block.add_output(J_p.block_variable)
                for gc in gam:
                    R = AdjFloat(p.regularisation(gc))
                    reg_block = RegularisationBlock(p, gc)
                    tape.add_block(reg_block)
                    reg_block.add_output(R.block_variable)
                    J_p = J_p + R  # taped AdjFloat sum
                costs.append(J_p)
            total = GroupSumBlock(costs, self.world, self.group)
            tape.add_block(total)
            J = AdjFloat(total._sum(costs))
            total.add_output(J.block_variable)
        self._rf = ReducedFunctional(J, [Control(c) for c in controls + gamma_controls],
                                     tape=tape)
        self._values = [dxa.Function(gc.function_space) for gc in gamma_controls]
        return self._rf

    def cost_and_gradient(self, coefficients: Sequence[float],
                          gamma_owned: Sequence[np.ndarray]) -> tuple[float, np.ndarray,
                                                                      list[np.ndarray]]:
        """J, dJ/da (replicated) and dJ/dgamma (owned entries, dual: K^T lambda + dR) by the
        adjoint; `gamma_owned` owned values of this rank's slip fields (particle-major)."""
        rf = self._rf or self.reduced_functional()
        for f, arr in zip(self._values, gamma_owned, strict=True):
            f.x.array[: len(arr)] = arr
            f.x.scatter_forward()
        J = float(rf([AdjFloat(float(v)) for v in coefficients] + self._values))
        dJ = rf.derivative()
        self._evaluations += 1
        n_c = self.num_coefficients
        grad_a = np.array([float(d) for d in dJ[:n_c]])
        grad_g = []
        for d, arr in zip(dJ[n_c:], gamma_owned, strict=True):
            vec = d.x.array if hasattr(d, "x") else d.array
            grad_g.append(np.array(vec[: len(arr)]))
        return J, grad_a, grad_g

    # -- fitting --------------------------------------------------------------------------------
    def _layout(self) -> tuple[list, list[np.ndarray], int]:
        """(per-control (particle, system) pairs, sqrt weights, local TAO size)."""
        pairs = [(i, s) for i in range(len(self.particles)) for s in range(len(self.systems))]
        sqrt_w = [np.sqrt(self.particles[i].weights) for i, _ in pairs]
        n_local = (self.num_coefficients if self.world.rank == 0 else 0) + \
            sum(w.size for w in sqrt_w)
        return pairs, sqrt_w, n_local

    def _unpack(self, z: np.ndarray, pairs, sqrt_w) -> tuple[np.ndarray, list[np.ndarray]]:
        n_c = self.num_coefficients
        head = z[:n_c] if self.world.rank == 0 else None
        a = np.asarray(self.world.bcast(head, root=0), float)
        off = n_c if self.world.rank == 0 else 0
        gam = []
        for w in sqrt_w:
            gam.append(z[off: off + w.size] / w)
            off += w.size
        return a, gam

    def _pack(self, a: np.ndarray, gam: Sequence[np.ndarray], sqrt_w) -> np.ndarray:
        parts = [a] if self.world.rank == 0 else []
        parts += [g * w for g, w in zip(gam, sqrt_w, strict=True)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def fit(self, alpha: float | None = None, tao_type: str = "blmvm", gatol: float = 0.0,
            grtol: float = 1e-7, max_it: int = 2000, initial: Sequence[float] | None = None
            ) -> M2FitResult:
        """Minimise J(a, gamma) with adjoint gradients and PETSc TAO, warm-started from the
        current state (or `initial` coefficients); `alpha` sets the weight first."""
        if tao_type not in M2_TAO_TYPES:
            raise InputError(f"must be one of {M2_TAO_TYPES}, got {tao_type!r}",
                             field="tao_type")
        if alpha is not None:
            self.set_alpha(alpha)
        if initial is not None:
            self.coefficients = np.asarray(initial, float).copy()
        t0 = time.perf_counter()
        pairs, sqrt_w, n_local = self._layout()
        gam0 = [self.gammas[i][s].x.array[: self.particles[i].n_owned].copy() for i, s in pairs]
        J0, _, _ = self.cost_and_gradient(self.coefficients, gam0)
        scale = 1.0 / J0 if J0 > 0 else 1.0
        self._update_preconditioner(pairs)
        self._evaluations = 0
        world_rank = self.world.rank

        def objective_gradient(z):
            a, gam = self._unpack(z, pairs, sqrt_w)
            J, ga, gg = self.cost_and_gradient(a, gam)
            head = [ga] if world_rank == 0 else []
            return J, np.concatenate(
                head + [d / w for d, w in zip(gg, sqrt_w, strict=True)] or [np.zeros(0)])

        out = minimise(objective_gradient, self._pack(self.coefficients, gam0, sqrt_w),
                       comm=self.world, tao_type=tao_type, prefix="chemomech_m2_", J0=J0,
                       gatol=gatol, grtol=grtol, max_it=max_it, max_evaluations=4 * max_it,
                       initial_hessian=_InitialHessian(self, pairs, sqrt_w, scale),
                       label="M2 TAO", log_every=25)
        iterations, text = out.iterations, out.text
        a, gam = self._unpack(out.x, pairs, sqrt_w)
        self.coefficients = a
        for (i, s), arr in zip(pairs, gam, strict=True):
            f = self.gammas[i][s]
            f.x.array[: arr.size] = arr
            f.x.scatter_forward()
        t_fit = time.perf_counter() - t0
        per_particle = self.misfits()
        misfit = float(sum(per_particle.values()))
        R, S = self.regularisation_total()
        a_a, a_c = split_coefficients(a, self.degree)
        timings = {"fit": t_fit, "tao_evaluations": out.evaluation_time_s,
                   "evaluations": float(self._evaluations)}
        result = M2FitResult(self.degree, tuple(s.label for s in self.systems), self.reg,
                             a_a, a_c, misfit + R, misfit, R, S, iterations, text,
                             per_particle, timings)
        logger.info("M2 fit (%s, alpha %.3g): misfit %.6g, R %.3g, %d iterations, %.2f s",
                    self.reg.kind, self.reg.alpha, misfit, R, iterations, t_fit)
        return result

    def _curvatures(self, pairs) -> tuple[np.ndarray, list[float]]:
        """Data-misfit curvature: N (coefficient block, normal equations) and, per (particle,
        system), 1^T H 1 / area for a uniform slip (gradient differences: J is quadratic in
        the state)."""
        if self._curv is None:
            N, _, _ = self.m1.normal_equations()
            zero = np.zeros(self.num_coefficients)
            owned = [self.particles[i].n_owned for i, _ in pairs]
            _, _, g0 = self._misfit_gradient(zero, [np.zeros(n) for n in owned])
            beta = []
            for s in range(len(self.systems)):
                gam = [np.full(n, 1.0 if sy == s else 0.0)
                       for n, (_, sy) in zip(owned, pairs, strict=True)]
                _, _, g1 = self._misfit_gradient(zero, gam)
                for c, (i, sy) in enumerate(pairs):
                    if sy == s:
                        p = self.particles[i]
                        curv = p.comm.allreduce(float(np.sum(g1[c] - g0[c])))
                        beta.append((c, max(curv, 1e-300) / p.area_nm2))
            self._curv = (N, [b for _, b in sorted(beta)])
        return self._curv

    def _misfit_gradient(self, coefficients, gam):
        """cost_and_gradient with the regularisation switched off."""
        alpha = self.reg.alpha
        self.set_alpha(0.0)
        try:
            return self.cost_and_gradient(coefficients, gam)
        finally:
            self.set_alpha(alpha)

    def _update_preconditioner(self, pairs) -> None:
        """Factorise S = alpha_eff L + beta M per (particle, system) for the current alpha."""
        N, beta = self._curvatures(pairs)
        self._pc_coefficients = N
        alpha = self.reg.alpha if self.reg.kind == "h1" else \
            self.reg.alpha / (TYPICAL_SLIP / TYPICAL_SLIP_LENGTH_NM)
        for (i, s), b in zip(pairs, beta, strict=True):
            self.particles[i].set_preconditioner(s, alpha, b)

    def forward_solve_time(self, repeats: int = 3) -> float:
        """Mean wall time (s) of one forward solve of this rank's particles (max over ranks)."""
        t0 = time.perf_counter()
        for _ in range(repeats):
            for p, gs in zip(self.particles, self.gammas, strict=True):
                p.solve(self.coefficients, gs)
        return self.world.allreduce((time.perf_counter() - t0) / repeats, op=MPI.MAX)


class _InitialHessian:
    """PETSc shell context of the LMVM initial Hessian H0 = blockdiag(N, S_z) (scaled):
    N the coefficients' normal matrix, S_z = W^-1/2 (alpha L + beta M) W^-1/2 per slip field.
    Used as the H0 matrix and as the PC of its KSP (apply = H0^-1)."""

    def __init__(self, model: M2Model, pairs, sqrt_w, scale: float):
        self.model, self.pairs, self.sqrt_w, self.scale = model, pairs, sqrt_w, scale
        self.rank0 = model.world.rank == 0
        self.n_c = model.num_coefficients if self.rank0 else 0

    def mult(self, mat, x, y):
        r = x.getArray(readonly=True)
        out = np.empty_like(r)
        if self.rank0:
            out[: self.n_c] = self.scale * self.model._pc_coefficients @ r[: self.n_c]
        off = self.n_c
        for (i, s), w in zip(self.pairs, self.sqrt_w, strict=True):
            p = self.model.particles[i]
            out[off: off + w.size] = self.scale * p.apply_operator(s, r[off: off + w.size] / w) \
                / w
            off += w.size
        y.setArray(out)

    def apply(self, pc, x, y):
        r = x.getArray(readonly=True)
        out = np.empty_like(r)
        if self.rank0:
            out[: self.n_c] = np.linalg.solve(self.scale * self.model._pc_coefficients,
                                              r[: self.n_c])
        off = self.n_c
        for (i, s), w in zip(self.pairs, self.sqrt_w, strict=True):
            p = self.model.particles[i]
            out[off: off + w.size] = w * p.apply_preconditioner(s, w * r[off: off + w.size]) \
                / self.scale
            off += w.size
        y.setArray(out)
