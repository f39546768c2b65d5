r"""The dislocation model M2: M1 plus plastic slip fields, with exact adjoint gradients.

Model (DESIGN §4, "Dislocations (M2)").  For each particle the plastic distortion is one slip
field per chosen in-plane slip system s (`chemomech.mechanics.slip`),
:math:`\beta_p = \sum_s \gamma_s(x)\,\hat s\otimes\hat n` (image frame), and the state solves

.. math::

    \int C:(\varepsilon(u) - \varepsilon^*(X; a) - \mathrm{sym}\,\beta_p):\varepsilon(v)\,dx = 0,
    \qquad \varepsilon^* = R\,\mathrm{diag}(f_a(X), f_c(X))\,R^T,

traction-free or with Dirichlet data (below), with :math:`\gamma_s` a P1 field on the particle
mesh (one per particle and system: the number of parameters scales with the image) and the
Legendre coefficients shared by all particles.  What the data see is the lattice distortion
:math:`\nabla u - \beta_p` (`chemomech.dislocations.lattice`): the misfit is `LatticeMisfit` on
the lattice strain :math:`\varepsilon(u) - \mathrm{sym}\,\beta_p` and rotation
:math:`\mathrm{skew}(\nabla u - \beta_p)`, so on a traction-free particle a uniform slip
changes no measured quantity (gamma is defined up to a constant, reported with zero particle
mean).  The slip fields are regularised by

* ``h1`` (default): :math:`R(\gamma) = \tfrac{\alpha}{2}\int|\nabla\gamma|^2\,dx`, or
* ``tv``: :math:`R(\gamma) = \alpha\int(|\nabla\gamma|^2 + \epsilon^2)^{1/2}\,dx` (smoothed),

so :math:`J = \sum_k J_k(u_k, \gamma_k) + \sum_{k,s} R(\gamma_{k,s})` (J dimensionless, so
alpha is dimensionless for h1 and in 1/nm for tv; mesh coordinates in nm).

Adjoint.  The state is affine in all controls: :math:`u = A^+(b_0 + \sum_k a_k b_k + \sum_s
K_s\gamma_s)` with M1's fixed load :math:`b_0` (zero traction-free in plane stress), basis
loads :math:`b_k` and factorised operator (the M1 model's particles are reused, not rebuilt)
and the slip-load matrices :math:`K_s` (`chemomech.dislocations.particle`).
`SlipSolveBlock` tapes this map (adjoint: one back-substitution :math:`\lambda = A^+ g`, then
:math:`b_k\cdot\lambda` and :math:`K_s^T\lambda`; tangent linear without :math:`b_0`),
`LatticeMisfitBlock` the misfit (which depends on u *and* on gamma),
`RegularisationBlock` R.  Taylor tests give rate 2 (tests/test_dislocations.py).

Optimisation: PETSc TAO (BLMVM by default, or BQNLS) on the world communicator with a
distributed control vector: the Legendre coefficients on rank 0, then every rank's owned slip
DOFs, seen through :math:`z_i = (m_i / |\Omega|)^{1/2}\gamma_i` (lumped mass m_i, particle
area :math:`|\Omega|`) so that TAO's Euclidean product is the mean-square L2 product of the
fields.  The quasi-Newton initial Hessian is blockdiag(N, S_z): N the coefficients' normal
matrix of the lattice misfit (exact) and per slip field :math:`\alpha L + \beta M` (P1 stiffness
and mass, LU-factorised once per alpha), :math:`\beta = |G_s 1|^2/|\Omega|` the direct data
curvature of the slip.  The objective is scaled by J at the start; PETSc options prefix
``chemomech_m2_``; the stopping rules are those of `chemomech.inverse.optimise.minimise`.

Options: M1's, all affine in the controls.  C is the particle's stiffness (C(X) for
``stiffness: mixed``; the plane-strain reduction with the b-eigenstrain f_b(X) in M1's fixed
load :math:`b_0`); with ``boundary_condition: dirichlet`` the measured displacement is
imposed on the boundary (lifted into :math:`b_0`, so :math:`u = A^{-1}(b_0 + \sum_k a_k b_k +
\sum_s K_s\gamma_s)` with :math:`K_s` zero on the constrained rows), the misfit keeps the
uniform rotation, a uniform slip is no longer invisible (it shifts the lattice strain while
the boundary holds u) and the constant Legendre terms are fixed by M1's `Gauge`: TAO works in
the free coefficients :math:`z`, :math:`a = T z + t`.  Caveat: the boundary data are the
integrated *lattice* distortion, which equals the material displacement only where no slip
crosses the boundary (its curl is the Nye tensor); M2 takes them as the material displacement.

Regularisation weight: `chemomech.dislocations.alpha`.  Outputs: GND density
(`chemomech.dislocations.density`), lattice maps (`chemomech.dislocations.lattice`), the stage
`chemomech.dislocations.run.run_m2`.
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
from dolfinx import fem
from mpi4py import MPI
from pyadjoint import AdjFloat, Control, ReducedFunctional

from chemomech.dislocations.density import density_expression
from chemomech.dislocations.lattice import LatticeData
from chemomech.dislocations.particle import SlipParticle
from chemomech.dislocations.settings import (
    M2_TAO_TYPES,
    TYPICAL_SLIP,
    TYPICAL_SLIP_LENGTH_NM,
    Regularisation,
)
from chemomech.exceptions import InputError, SolverError
from chemomech.inverse.blocks import (
    GroupSumBlock,
    LatticeMisfitBlock,
    RegularisationBlock,
    SlipSolveBlock,
    replicated_controls,
)
from chemomech.inverse.identifiability import Gauge
from chemomech.inverse.optimise import TaoOutcome, minimise
from chemomech.inverse.particle import split_coefficients
from chemomech.inverse.problem import M1Model
from chemomech.mechanics.slip import slip_system

logger = logging.getLogger(__name__)


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
    gauge: Gauge | None = None  # M1's gauge (Dirichlet data), None without

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
                "gauge": None if self.gauge is None else self.gauge.summary(),
                "timings_s": self.timings_s}


class M2Model:
    """Joint M2 inversion over this rank's particles: shared Legendre law + slip fields.

    `m1`: the `chemomech.inverse.problem.M1Model` of these particles (its factorised operators,
    basis loads, degree and communicators are reused); `data`: the measured lattice
    distortion of each of its particles (`chemomech.dislocations.lattice.lattice_data`, same
    order); `systems`: slip-system labels; `regularisation`: the slip regulariser (alpha can
    be changed with `set_alpha`); `theta_weight`: weight of the lattice rotation in the misfit.
    """

    def __init__(self, m1: M1Model, data: Sequence[LatticeData],
                 systems: Sequence[str] = ("D",), regularisation: Regularisation | None = None,
                 theta_weight: float = 1.0):
        if not systems:
            raise InputError("give at least one slip system", field="slip_systems")
        if len(data) != len(m1.particles):
            raise InputError(f"{len(data)} lattice data for {len(m1.particles)} particles")
        t0 = time.perf_counter()
        self.m1 = m1
        self.degree, self.world, self.group = m1.degree, m1.world, m1.group
        self.systems = [slip_system(s) for s in systems]
        self.reg = regularisation or Regularisation()
        self.theta_weight = float(theta_weight)
        self.particles = [SlipParticle(p, self.systems, self.reg, d, theta_weight)
                          for p, d in zip(m1.particles, data, strict=True)]
        self.num_coefficients = m1.num_coefficients
        self.coefficients = np.zeros(self.num_coefficients)
        self.gammas = [[fem.Function(p.Q, name=f"gamma_{s.label}") for s in self.systems]
                       for p in self.particles]
        self._rf: ReducedFunctional | None = None
        self._values: list | None = None
        self.timings_s = {"m2_setup": time.perf_counter() - t0}
        self._curv = None
        self._pc_coefficients = None
        self._evaluations = 0

    # -- state -------------------------------------------------------------------------------
    def gauge_transform(self) -> tuple[np.ndarray, np.ndarray]:
        """(T, t) with a = T z + t for the free coefficients z: M1's gauge (Dirichlet data with
        `chemomech.inverse.identifiability.Gauge`), or the identity without one."""
        if self.m1._transform is None:
            return np.eye(self.num_coefficients), np.zeros(self.num_coefficients)
        return self.m1._transform

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
        local = {p.name: p.misfit.cost(p.solve(self.coefficients, g), g)
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
            controls, copies = replicated_controls(a0, tape, self.world, self.group)
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
                J_p = AdjFloat(p.misfit.cost(u, gam))
                misfit_block = LatticeMisfitBlock(p.misfit, u, gam)
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
        n_free = self.gauge_transform()[0].shape[1]
        n_local = (n_free if self.world.rank == 0 else 0) + sum(w.size for w in sqrt_w)
        return pairs, sqrt_w, n_local

    def _unpack(self, z: np.ndarray, pairs, sqrt_w) -> tuple[np.ndarray, list[np.ndarray]]:
        """TAO vector -> (a = T z_a + t, slip values)."""
        T, t = self.gauge_transform()
        n_free = T.shape[1]
        head = z[:n_free] if self.world.rank == 0 else None
        a = T @ np.asarray(self.world.bcast(head, root=0), float) + t
        off = n_free if self.world.rank == 0 else 0
        gam = []
        for w in sqrt_w:
            gam.append(z[off: off + w.size] / w)
            off += w.size
        return a, gam

    def _free(self, a: np.ndarray) -> np.ndarray:
        """The free coefficients z of a (least squares: a is projected onto the gauge; a itself
        without a gauge)."""
        if self.m1._transform is None:
            return np.asarray(a, float).copy()
        T, t = self.gauge_transform()
        return np.linalg.lstsq(T, np.asarray(a, float) - t, rcond=None)[0]

    def _pack(self, a: np.ndarray, gam: Sequence[np.ndarray], sqrt_w) -> np.ndarray:
        parts = [self._free(a)] if self.world.rank == 0 else []
        parts += [g * w for g, w in zip(gam, sqrt_w, strict=True)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def fit(self, alpha: float | None = None, tao_type: str = "blmvm", gatol: float = 0.0,
            grtol: float = 1e-7, max_it: int = 2000, initial: Sequence[float] | None = None,
            stagnation_rtol: float = 1e-9, stagnation_window: int = 10) -> M2FitResult:
        """Minimise J(a, gamma) with adjoint gradients and PETSc TAO, warm-started from the
        current state (or `initial` coefficients); `alpha` sets the weight first.  Under a
        gauge (M1's, Dirichlet data) TAO works in the free coefficients z, a = T z + t, so the
        unidentified constants are no search direction.  The fit stops as converged by
        stagnation once J fell by less than `stagnation_rtol` J over `stagnation_window`
        iterations (0: never; `chemomech.inverse.optimise.minimise`)."""
        if tao_type not in M2_TAO_TYPES:
            raise InputError(f"must be one of {M2_TAO_TYPES}, got {tao_type!r}",
                             field="tao_type")
        if tao_type == "cg" and self.reg.kind != "h1":
            raise InputError("cg needs the quadratic h1 regularisation (tv is not quadratic: "
                             "use blmvm or bqnls)", field="tao_type")
        if alpha is not None:
            self.set_alpha(alpha)
        if initial is not None:
            self.coefficients = np.asarray(initial, float).copy()
        T, t = self.gauge_transform()
        self.coefficients = T @ self._free(self.coefficients) + t
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
            head = [T.T @ ga] if world_rank == 0 else []
            return J, np.concatenate(
                head + [d / w for d, w in zip(gg, sqrt_w, strict=True)] or [np.zeros(0)])

        x0 = self._pack(self.coefficients, gam0, sqrt_w)
        if tao_type == "cg":
            out = self._fit_cg(objective_gradient, x0, pairs, sqrt_w, gatol=gatol,
                               grtol=grtol, max_it=max_it, stagnation_rtol=stagnation_rtol,
                               stagnation_window=stagnation_window)
        else:
            out = minimise(objective_gradient, x0, comm=self.world, tao_type=tao_type,
                           prefix="chemomech_m2_", J0=J0, gatol=gatol, grtol=grtol,
                           max_it=max_it, max_evaluations=4 * max_it,
                           initial_hessian=_InitialHessian(self, pairs, sqrt_w, scale),
                           label="M2 TAO", log_every=25, stagnation_rtol=stagnation_rtol,
                           stagnation_window=stagnation_window)
        iterations, text = out.iterations, out.text
        a, gam = self._unpack(out.x, pairs, sqrt_w)
        self.coefficients = a
        for (i, s), arr in zip(pairs, gam, strict=True):
            p = self.particles[i]
            f = self.gammas[i][s]
            # traction-free: a uniform slip changes no measured quantity; report zero particle
            # mean (with Dirichlet data it changes the lattice strain: the data fix it)
            mean = 0.0 if p.dirichlet else p.comm.allreduce(float(p.weights @ arr))
            f.x.array[: arr.size] = arr - mean
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
                             per_particle, timings, self.m1.gauge)
        logger.info("M2 fit (%s, alpha %.3g): misfit %.6g, R %.3g, %d iterations, %.2f s",
                    self.reg.kind, self.reg.alpha, misfit, R, iterations, t_fit)
        return result

    def _fit_cg(self, objective_gradient, x0: np.ndarray, pairs, sqrt_w, *, gatol: float,
                grtol: float, max_it: int, stagnation_rtol: float, stagnation_window: int
                ) -> TaoOutcome:
        r"""Minimise the quadratic h1 objective by preconditioned conjugate gradients in TAO's
        variables: one adjoint gradient at x0, then per iteration one exact Hessian action
        (`_hessian_action`: one forward and one adjoint back-substitution) and one
        application of the LMVM initial Hessian's inverse H0^-1 as the preconditioner; the
        step length is exact (no line search) and J is updated exactly,
        :math:`J_{k+1} = J_k - \tfrac12 \alpha_k r_k\cdot z_k`.  Stops when |g| <= gatol or
        |g| <= grtol |J| (TAO's tests on the recursively updated gradient), by stagnation as
        `minimise` does, or at max_it."""
        comm = self.world
        t0 = time.perf_counter()
        J, g = objective_gradient(x0)
        t_eval = time.perf_counter() - t0
        pc = _InitialHessian(self, pairs, sqrt_w, 1.0)
        reg = [[self.particles[i].regularisation_hessian(g_) for g_ in self.gammas[i]]
               for i in range(len(self.particles))]

        def dot(u, v):
            return comm.allreduce(float(u @ v))

        def precondition(r):
            out = _ArrayVec(np.empty_like(r))
            pc.apply(None, _ArrayVec(r), out)
            return out.array

        x, r = x0.copy(), -np.asarray(g, float)
        z = precondition(r)
        rz = dot(r, z)
        g0 = np.sqrt(dot(r, r))
        p = z.copy()
        history, reason, it, stagnated = {0: J}, 0, 0, False
        while True:
            g_norm = np.sqrt(dot(r, r))
            if g_norm <= gatol or g_norm <= grtol * abs(J):
                reason = 3 if g_norm <= gatol else 4  # TAO's CONVERGED_GATOL / _GRTOL
                break
            before = history.get(it - stagnation_window)
            if stagnation_rtol > 0 and before is not None and \
                    before - J <= stagnation_rtol * abs(J):
                reason, stagnated = 8, True  # TAO CONVERGED_USER
                break
            if it >= max_it:
                reason = -2  # DIVERGED_MAXITS
                logger.warning("M2 CG stopped at max_it = %d (|g|/|g0| = %.1e)", max_it,
                               g_norm / g0 if g0 else 0.0)
                break
            w = self._hessian_action(p, pairs, sqrt_w, reg)
            curvature = dot(p, w)
            if not curvature > 0:
                raise SolverError(f"M2 CG: non-positive curvature {curvature:.3e} (the h1 "
                                  "objective is convex: a broken Hessian action)")
            step = rz / curvature
            x += step * p
            r -= step * w
            J -= 0.5 * step * rz
            z = precondition(r)
            rz, rz_old = dot(r, z), rz
            p = z + (rz / rz_old) * p
            it += 1
            history[it] = J
            if comm.rank == 0 and it % 25 == 0:
                logger.info("M2 CG %4d  J = %.10e  |grad J| = %.3e", it, J, g_norm)
        for mats in reg:
            for m in mats:
                m.destroy()
        ratio = g_norm / g0 if g0 else 0.0
        text = f"CG reason {reason}, |g|/|g0| = {ratio:.1e}"
        if stagnated:
            text += (f" (stagnation: J fell by < {stagnation_rtol:.0e} J over "
                     f"{stagnation_window} iterations: converged)")
        return TaoOutcome(x, J, it, 1, reason, ratio, reason > 0, text, t_eval)

    def _hessian_action(self, v: np.ndarray, pairs, sqrt_w, reg) -> np.ndarray:
        """H v of J in TAO's variables for the h1 objective (exact: the misfit is linear in
        (a, gamma)): the direction (da = T v_a, dgamma = v_gamma / sqrt(w)), its misfit rows
        J_a da + J_gamma dgamma per particle, then T^T J_a^T rows and (J_gamma^T rows + R''
        dgamma) / sqrt(w); `reg` the R'' matrices per particle and system."""
        T = self.gauge_transform()[0]
        a, gam = self._unpack(v, pairs, sqrt_w)
        da = a - self.gauge_transform()[1]
        by_particle = {}
        for (i, s), g in zip(pairs, gam, strict=True):
            by_particle.setdefault(i, [None] * len(self.systems))[s] = g
        grad_a = np.zeros(self.num_coefficients)
        grad_g = {}
        for i, (p, Ja) in enumerate(zip(self.particles, self._coefficient_jacobian(),
                                        strict=True)):
            d = [x[:, None] for x in by_particle[i]]
            rows = p.slip_jacobian_columns(d)[:, 0] + Ja @ da
            part = p.comm.allreduce(Ja.T @ rows)
            grad_a += part if self.group.rank == 0 else 0.0
            back = p.slip_jacobian_transpose_columns(rows[:, None])
            for s, (b, dk) in enumerate(zip(back, d, strict=True)):
                x, y = reg[i][s].createVecs()
                x.array[:] = dk[:, 0]
                reg[i][s].mult(x, y)
                grad_g[i, s] = b[:, 0] + y.array
                x.destroy()
                y.destroy()
        grad_a = self.world.allreduce(grad_a)
        head = [T.T @ grad_a] if self.world.rank == 0 else []
        return np.concatenate(head + [grad_g[i, s] / w for (i, s), w in
                                      zip(pairs, sqrt_w, strict=True)] or [np.zeros(0)])

    def _coefficient_jacobian(self) -> list[np.ndarray]:
        """`coefficient_columns`, computed once per model (the basis responses do not change)."""
        if getattr(self, "_jacobian_a", None) is None:
            self._jacobian_a = self.coefficient_columns()
        return self._jacobian_a

    def coefficient_columns(self) -> list[np.ndarray]:
        """Per particle of this rank, the projected misfit rows P B u_k of the 2(N+1) basis
        responses u_k = A^+ b_k (local rows x coefficients): the coefficients' Jacobian."""
        out = []
        for p in self.particles:
            cols = [p.misfit.project(p.misfit.observe(u)) for u in p.base.basis_responses()]
            out.append(np.stack(cols, axis=1))
        return out

    def _curvatures(self, pairs) -> tuple[np.ndarray, list[float]]:
        """Data-misfit curvature: N = sum_k G_k^T G_k of the coefficients (exact) and, per
        (particle, system), |G_s 1|^2 / area, the direct sampling curvature of the slip."""
        if self._curv is None:
            n = self.num_coefficients
            local = np.zeros((n, n))
            for p, G in zip(self.particles, self.coefficient_columns(), strict=True):
                part = p.comm.allreduce(G.T @ G)
                local += part if self.group.rank == 0 else 0.0
            N = self.world.allreduce(local)
            beta = [max(self.particles[i].misfit.uniform_slip_curvature(s), 1e-300)
                    / self.particles[i].area_nm2 for i, s in pairs]
            self._curv = (N, beta)
        return self._curv

    def _update_preconditioner(self, pairs) -> None:
        """Factorise S = alpha_eff L + beta M per (particle, system) for the current alpha."""
        N, beta = self._curvatures(pairs)
        T = self.gauge_transform()[0]
        self._pc_coefficients = T.T @ N @ T  # the coefficient block in the free z
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


class _ArrayVec:
    """The part of a PETSc Vec that `_InitialHessian` uses (getArray, setArray) on a numpy
    array, to apply H0^-1 outside TAO."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def getArray(self, readonly: bool = False) -> np.ndarray:
        return self.array

    def setArray(self, values: np.ndarray) -> None:
        self.array[:] = values


class _InitialHessian:
    """PETSc shell context of the LMVM initial Hessian H0 = blockdiag(N, S_z) (scaled):
    N the coefficients' normal matrix (in the free coefficients under a gauge, T^T N T),
    S_z = W^-1/2 (alpha L + beta M) W^-1/2 per slip field.  Used as the H0 matrix and as the PC
    of its KSP (apply = H0^-1)."""

    def __init__(self, model: M2Model, pairs, sqrt_w, scale: float):
        self.model, self.pairs, self.sqrt_w, self.scale = model, pairs, sqrt_w, scale
        self.rank0 = model.world.rank == 0
        self.n_c = model.gauge_transform()[0].shape[1] if self.rank0 else 0

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
