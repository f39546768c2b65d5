r"""The M1 inverse problem: learn the composition-eigenstrain law with exact adjoint gradients.

Model (DESIGN §4).  For each particle, :math:`u(a)` solves the traction-free problem
:math:`\int C:(\varepsilon(u) - \varepsilon^*(X; a)) : \varepsilon(v)\,dx = 0` with
:math:`\varepsilon^*(X; a) = R\,\mathrm{diag}(f_a(X), f_c(X))\,R^T`,
:math:`f_i(X) = \sum_{n=0}^N a_{n,i} P_n(2X - 1)`.  The control vector is
:math:`a = (a_{0,a} .. a_{N,a}, a_{0,c} .. a_{N,c})` (length 2(N+1)) shared by all particles,
and :math:`J(a) = \sum_k J_k(u_k(a))` with :math:`J_k` a `chemomech.inverse.misfit` misfit.

How it is taped (pyadjoint), and why.
  * Controls are pyadjoint ``AdjFloat`` s, one per coefficient, replicated on every rank.  A
    ``dolfinx_adjoint.Constant`` lives on one mesh (a Real space), but our coefficients are
    shared by particles on different meshes and sub-communicators, so mesh-free scalars are
    the natural control; a `ReplicateBlock` hands each rank a copy and its adjoint sums the
    particle groups' sensitivities over COMM_WORLD.
  * `EigenstrainSolveBlock` (coefficients -> u).  The load is linear in a, so the 2(N+1)
    basis loads :math:`b_k = L(v; \varepsilon^*(X; e_k))` are assembled once (dolfinx forms
    with a vector ``fem.Constant``) and the forward is :math:`u = A^+ \sum_k a_k b_k` with the
    stiffness matrix assembled and LU-factorised once per particle
    (`chemomech.mechanics.forward.ElasticityProblem`).  The singular traction-free system is
    solved with
    the rigid modes as PETSc null space, removed from the load and from the solution, i.e.
    :math:`u = \Pi A^- \Pi b = A^+ b` (Moore-Penrose, symmetric).  Its exact discrete adjoint
    is therefore one more back-substitution, :math:`\lambda = A^+ g`, and
    :math:`dJ/da_k = b_k\cdot\lambda`.  ``dolfinx_adjoint.LinearProblem`` re-assembles and
    re-factorises the matrix on every solve and has no null-space hook, hence the custom block.
  * `PixelMisfitBlock` (u -> J_k): forward :math:`\tfrac12|P(Bu - d)|^2`, adjoint
    :math:`B^T P (B u - d)` (a ``dolfinx_adjoint`` dual vector), tangent linear
    :math:`r\cdot B\dot u`.
  * `GroupSumBlock` sums the particle costs over the particle groups (COMM_WORLD).

Taylor tests of this tape converge at rate 2 (tests/test_taylor.py).

Every block also has its tangent-linear and second-order adjoint (Hessian) rules, so
``ReducedFunctional.hessian`` gives the exact Hessian action (used by TAO's NLS).

Optimisation: PETSc TAO (BLMVM, BQNLS, LMVM, or NLS with the second-order-adjoint
Hessian action; the pipeline's default is Newton: BQNLS with the exact Hessian
:math:`G^T G` as its initial quasi-Newton matrix, ``initial_hessian="exact"``, which stops after
one step with two evaluations) on COMM_SELF of world rank 0, the other ranks serving its
evaluations (every evaluation is collective; J and gradient are allreduced, so the
coefficients are the same on every rank and, to rounding, for every rank count).  The
objective is scaled by :math:`J(0)` so that tolerances are relative, and the line search
uses a curvature tolerance of 0.1 (`LINE_SEARCH_DEFAULTS`; PETSc options prefix
``chemomech_m1_``) so that BLMVM needs ~8 iterations instead of ~70.  The stopping rules
are those of the one TAO driver, `chemomech.inverse.optimise.minimise`.

Linear fast path: since u is linear in a, the normal equations :math:`(G^T G) a = G^T P d`
with :math:`G_{:,k} = P B A^+ b_k` give the exact minimiser in 2(N+1) back-substitutions
(`method="linear"`), and G^T G is the Gauss-Newton matrix used by `chemomech.inverse.uncertainty`.

Several particles are one joint problem: `split_for_particles` splits COMM_WORLD into particle
groups (one rank may hold several particles; several ranks may share one particle, which
DOLFINx then partitions).

Options, all affine in a so that every path above holds: stiffness constant ("average",
"LiFePO4", "FePO4") or C(X) ("mixed", `Material.ufl_tensor`); plane stress, or plane strain
with the b-eigenstrain f_b(X) as a fixed load; traction-free or Dirichlet data
(``ParticleSetup.u_boundary``: u = A^-1 (b_0 + sum_k a_k b_k) with the lifted data in b_0,
basis loads zero on the boundary, misfit without rigid modes).  Dirichlet with a constant
stiffness has the constant Legendre terms in its null space: the `Gauge`
(`chemomech.inverse.identifiability`) fixes them, both paths then work in the free
coefficients.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dolfinx_adjoint as dxa
import numpy as np
import pyadjoint
from dolfinx import fem
from mpi4py import MPI
from pyadjoint import AdjFloat, Control, ReducedFunctional

from chemomech.exceptions import InputError
from chemomech.inverse.blocks import (
    EigenstrainSolveBlock,
    GroupSumBlock,
    PixelMisfitBlock,
    replicated_controls,
)
from chemomech.inverse.identifiability import Gauge, identifiability
from chemomech.inverse.misfit import PixelMisfit
from chemomech.inverse.optimise import minimise, serve_on_rank0
from chemomech.inverse.particle import (
    ParticleSetup,
    _Particle,
    coefficient_count,
    split_coefficients,
)
from chemomech.mechanics.forward import SolverKind
from chemomech.mechanics.materials import Material

logger = logging.getLogger(__name__)

TAO_TYPES = ("blmvm", "bqnls", "lmvm", "nls")
#: Line-search defaults (PETSc options prefix chemomech_m1_tao_ls_): a curvature condition
#: tighter than the default 0.9 makes the line search near-exact on the quadratic M1
#: objective, so the quasi-Newton methods terminate in ~2(N+1) steps instead of ~70.
LINE_SEARCH_DEFAULTS = {"tao_ls_gtol": 0.1}
#: Newton (NLS): solve the Newton system to rounding (CG on the exact Hessian action of the
#: 2(N+1) coefficients ends in at most 2(N+1) steps), so that one Newton step is exact.
NEWTON_DEFAULTS = {"ksp_rtol": 1e-14, "ksp_atol": 0.0}


@dataclass
class FitResult:
    """Result of an M1 fit; coefficients of f_a, f_c in the shifted Legendre basis."""

    method: str
    degree: int
    coefficients_a: np.ndarray
    coefficients_c: np.ndarray
    cost: float
    iterations: int
    converged: bool
    num_observations: int
    num_nuisance: int
    per_particle_cost: dict[str, float]
    normal_matrix: np.ndarray | None = None
    normal_rhs: np.ndarray | None = None
    data_norm_sq: float | None = None
    reason: str = ""
    timings_s: dict[str, float] = field(default_factory=dict)
    gauge: Gauge | None = None
    transform: np.ndarray | None = None  # the gauge's T (a = T z + t), None without gauge

    @property
    def coefficients(self) -> np.ndarray:
        """The stacked control vector (a_{.,a}, a_{.,c})."""
        return np.concatenate([self.coefficients_a, self.coefficients_c])

    @property
    def num_parameters(self) -> int:
        """Free parameters: 2(N+1), or 2N when the gauge fixes the constants."""
        return self.coefficients.size if self.transform is None else self.transform.shape[1]

    def normal_inverse(self) -> np.ndarray:
        """(G^T G)^-1 in the coefficients, T (T^T G^T G T)^-1 T^T under the gauge
        (pseudo-inverses; the Gauss-Newton covariance per unit noise variance)."""
        if self.normal_matrix is None:
            raise InputError("the fit has no normal matrix (fit(..., with_normal_matrix=True))")
        N = self.normal_matrix
        if self.transform is None:
            return np.linalg.pinv(N, rcond=1e-14, hermitian=True)
        T = self.transform
        return T @ np.linalg.pinv(T.T @ N @ T, rcond=1e-14, hermitian=True) @ T.T

    def identifiability(self) -> dict:
        """The `identifiability` block (`chemomech.inverse.identifiability.identifiability`)."""
        if self.normal_matrix is None:
            raise InputError("the fit has no normal matrix (fit(..., with_normal_matrix=True))")
        return identifiability(self.normal_matrix, self.degree, self.transform, self.gauge)

    def summary(self) -> dict:
        """JSON-ready dictionary of the fit."""
        return {"method": self.method, "legendre_degree": self.degree,
                "coefficients": {"a": self.coefficients_a.tolist(),
                                 "c": self.coefficients_c.tolist()},
                "J": self.cost, "iterations": self.iterations, "converged": self.converged,
                "reason": self.reason, "num_observations": self.num_observations,
                "gauge": None if self.gauge is None else self.gauge.summary(),
                "per_particle_cost": self.per_particle_cost, "timings_s": self.timings_s}


@dataclass
class LinearSystem:
    """Per-particle linear least-squares pieces: raw columns G_raw = B u_k, data d - B u_0
    (u_0 the response to the fixed load: Dirichlet data, plane-strain f_b), nuisance Q.

    Local rows only (this rank's used pixels); `points` are the pixel centres (nm) of the
    rows (one per pixel, `components` rows per pixel).
    """

    name: str
    comm: MPI.Comm
    columns: np.ndarray
    data: np.ndarray
    nuisance: np.ndarray | None
    points: np.ndarray | None
    components: int
    misfit: PixelMisfit


class M1Model:
    """The joint M1 inversion over the particles held by this rank (see the module docstring).

    `setups`: this rank's particles (meshes on the group communicator from
    `split_for_particles`); `degree`: highest Legendre degree N; `comm`: the world;
    `gauge`: "auto" (the default `Gauge` f(1) = 0 when every particle has Dirichlet data,
    else none; `resolve_gauge`), None (refused if `has_null_space`), or a `Gauge` (refused
    unless every particle has Dirichlet data).
    """

    def __init__(self, setups: Sequence[ParticleSetup], degree: int = 2,
                 material: Material | None = None, comm: MPI.Comm = MPI.COMM_WORLD,
                 solver: SolverKind = "auto", gauge: Gauge | str | None = "auto"):
        if degree < 0:
            raise InputError(f"must be >= 0, got {degree}", field="legendre_degree")
        if not setups:
            raise InputError("every rank needs at least one particle (split_for_particles)")
        self.degree = degree
        self.world = comm
        self.material = material or Material()
        self.group = setups[0].mesh.comm
        for s in setups:
            if MPI.Comm.Compare(s.mesh.comm, self.group) not in (MPI.IDENT, MPI.CONGRUENT):
                raise InputError("the particles of one rank must share one communicator")
        local = [s.boundary_condition == "dirichlet" for s in setups] if self.group.rank == 0 \
            else []
        flags = [f for part in comm.allgather(local) for f in part]
        self.all_dirichlet = all(flags)
        self.gauge = resolve_gauge(gauge, self.all_dirichlet, self.material.stiffness)
        self._transform = None if self.gauge is None else self.gauge.transform(degree)
        t0 = time.perf_counter()
        self.particles = [_Particle(s, degree, self.material, solver) for s in setups]
        self.timings_s = {"setup": time.perf_counter() - t0,
                          "factorisation": sum(p.setup_time for p in self.particles),
                          "basis_loads": sum(p.load_time for p in self.particles)}
        self.num_coefficients = coefficient_count(degree)
        self._rf: ReducedFunctional | None = None
        self._system: list[LinearSystem] | None = None
        self._evaluations = 0
        self._last: tuple[np.ndarray, float, np.ndarray] | None = None  # (a, J, dJ/da)

    # -- forward ---------------------------------------------------------------------------
    def displacement(self, particle: int | str, coefficients: Sequence[float]) -> fem.Function:
        """u(a) of one of this rank's particles (by index or name), rigid modes removed (nm)."""
        p = self._particle(particle)
        return p.solve(np.asarray(coefficients, float), fem.Function(p.V, name="u"))

    def _particle(self, key: int | str) -> _Particle:
        if isinstance(key, str):
            for p in self.particles:
                if p.setup.name == key:
                    return p
            raise InputError(f"no particle named {key!r} on this rank")
        return self.particles[key]

    def boundary_response(self, particle: int | str) -> Callable[[np.ndarray], np.ndarray]:
        """n -> B A^-1 b_0(n) for one particle with Dirichlet data (`_Particle`), e.g. for
        `chemomech.inverse.uncertainty.strain_noise_sampler`."""
        return self._particle(particle).boundary_response

    def cost(self, coefficients: Sequence[float]) -> float:
        """J(a) = sum over all particles of the misfits (plain evaluation, no tape)."""
        local = sum(p.misfit.cost(p.solve(coefficients)) for p in self.particles)
        return self.world.allreduce(local if self.group.rank == 0 else 0.0, op=MPI.SUM)

    # -- adjoint path ----------------------------------------------------------------------
    def reduced_functional(self, coefficients: Sequence[float] | None = None
                           ) -> ReducedFunctional:
        """pyadjoint ReducedFunctional J(a) on a private tape (controls: AdjFloats)."""
        a0 = np.zeros(self.num_coefficients) if coefficients is None else \
            np.asarray(coefficients, float)
        tape = pyadjoint.Tape()
        with pyadjoint.set_working_tape(tape):
            controls, copies = replicated_controls(a0, tape, self.world, self.group)
            costs = []
            for p in self.particles:
                u = dxa.Function(p.V, name="u")
                p.solve(a0, u)
                solve_block = EigenstrainSolveBlock(p, copies)
                tape.add_block(solve_block)
                solve_block.add_output(u.create_block_variable())
                J_p = AdjFloat(p.misfit.cost(u))
                misfit_block = PixelMisfitBlock(p.misfit, u)
                tape.add_block(misfit_block)
                misfit_block.add_output(J_p.block_variable)
                costs.append(J_p)
            total = GroupSumBlock(costs, self.world, self.group)
            tape.add_block(total)
            J = AdjFloat(total._sum(costs))
            total.add_output(J.block_variable)
        self._rf = ReducedFunctional(J, [Control(c) for c in controls], tape=tape)
        self._last = None  # a new tape: nothing evaluated on it yet
        return self._rf

    def cost_and_gradient(self, coefficients: Sequence[float]) -> tuple[float, np.ndarray]:
        """J(a) and the exact adjoint gradient dJ/da (one forward + one adjoint per particle).

        A repeated call at the point of the last one (TAO starts where the objective scale
        J(a0) was evaluated) returns that evaluation: the tape is at that point already."""
        a = np.array([float(v) for v in coefficients])
        if self._last is not None and np.array_equal(self._last[0], a):
            return self._last[1], self._last[2].copy()
        rf = self._rf or self.reduced_functional(coefficients)
        J = float(rf([AdjFloat(v) for v in a]))
        dJ = rf.derivative()
        self._evaluations += 1
        g = np.array([float(d) for d in dJ])
        self._last = (a, J, g.copy())
        return J, g

    def hessian_action(self, direction: Sequence[float]) -> np.ndarray:
        """H h = d2J/da2 h by the second-order adjoint (tangent linear + adjoint solves).

        Evaluated at the last point of `cost_and_gradient` (H is constant: J is quadratic).
        """
        rf = self._rf or self.reduced_functional()
        if rf.functional.block_variable.adj_value is None:
            self.cost_and_gradient([float(c.tape_value()) for c in rf.controls])
        Hh = rf.hessian([AdjFloat(float(v)) for v in direction])
        return np.array([float(v) for v in Hh])

    # -- linear fast path ------------------------------------------------------------------
    def linear_system(self) -> list[LinearSystem]:
        """Raw basis responses B u_k, data and nuisance modes of this rank's particles (cached)."""
        if self._system is None:
            systems = []
            for p in self.particles:
                m = p.misfit
                cols = np.column_stack([m.observe(u) for u in p.basis_responses()])
                points = getattr(m, "points", None)
                components = m.d.size // max(1, len(points)) if points is not None else 1
                u0 = p.offset_response()
                data = m.d.copy() if u0 is None else m.d - m.observe(u0)
                systems.append(LinearSystem(p.setup.name, m.comm, cols, data, m.Q,
                                            points, components, m))
            self._system = systems
        return self._system

    def normal_equations(self, columns: Sequence[int] | None = None
                         ) -> tuple[np.ndarray, np.ndarray, float]:
        """(G^T G, G^T P d', |P d'|^2) summed over all particles, G = P B A^-1 [b_k],
        d' = d - B u_0."""
        idx = np.arange(self.num_coefficients) if columns is None else np.asarray(columns)
        n = len(idx)
        N, r, c = np.zeros((n, n)), np.zeros(n), 0.0
        for s in self.linear_system():
            G = s.misfit.project(s.columns[:, idx])
            Pd = s.misfit.project(s.data)
            part = s.comm.allreduce(np.concatenate([(G.T @ G).ravel(), G.T @ Pd, [Pd @ Pd]]))
            if s.comm.rank == 0:
                N += part[: n * n].reshape(n, n)
                r += part[n * n: n * n + n]
                c += part[-1]
        total = self.world.allreduce(np.concatenate([N.ravel(), r, [c]]), op=MPI.SUM)
        return total[: n * n].reshape(n, n), total[n * n: n * n + n], float(total[-1])

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, method: str = "tao", tao_type: str = "blmvm", gatol: float = 1e-12,
            grtol: float = 0.0, gttol: float = 1e-12, max_it: int = 500,
            bounds: tuple[Sequence[float], Sequence[float]] | None = None,
            initial: Sequence[float] | None = None, with_normal_matrix: bool = True,
            initial_hessian: str = "identity") -> FitResult:
        """Minimise J(a): adjoint gradients + PETSc TAO ("tao") or the normal equations ("linear").

        TAO tolerances apply to the objective scaled by J(0); `bounds` = (lower, upper) on a.
        `initial_hessian`: "identity" or "exact" (H0 = G^T G for blmvm/bqnls).
        `with_normal_matrix` also returns G^T G (2(N+1) extra back-substitutions on the TAO
        path) for the Gauss-Newton covariance.
        """
        t0 = time.perf_counter()
        if method == "linear":
            N, r, c = self.normal_equations()
            if self._transform is None:
                a = _solve_normal(N, r)
            else:
                T, t = self._transform
                a = T @ _solve_normal(T.T @ N @ T, T.T @ (r - N @ t)) + t
            J = float("nan")
            iterations, converged, reason = 0, True, "normal equations"
        elif method == "tao":
            a, J, iterations, converged, reason = self._fit_tao(
                tao_type, gatol, grtol, gttol, max_it, bounds, initial, initial_hessian)
            N = r = c = None
        else:
            raise InputError(f"method must be 'tao' or 'linear', got {method!r}",
                             field="method")
        t_fit = time.perf_counter() - t0
        if N is None and with_normal_matrix:
            N, r, c = self.normal_equations()
        a_a, a_c = split_coefficients(a, self.degree)
        n_obs = self.world.allreduce(
            sum(p.misfit.num_observations for p in self.particles)
            if self.group.rank == 0 else 0)
        n_nuisance = self.world.allreduce(
            sum(0 if p.misfit.Q is None else p.misfit.Q.shape[1] for p in self.particles)
            if self.group.rank == 0 else 0)
        per_particle = self.per_particle_cost(a)
        if method == "linear":  # evaluated, not from the normal equations (no cancellation)
            J = float(sum(per_particle.values()))
        result = FitResult(method, self.degree, a_a, a_c, J, iterations, converged, n_obs,
                           n_nuisance, per_particle, N, r, c, reason,
                           dict(self.timings_s, fit=t_fit), self.gauge,
                           None if self._transform is None else self._transform[0])
        logger.info("M1 %s fit: J = %.6g, %d iterations, %.3f s; a_a = %s, a_c = %s",
                    method, J, iterations, t_fit, np.array2string(a_a, precision=5),
                    np.array2string(a_c, precision=5))
        return result

    def per_particle_cost(self, coefficients: Sequence[float]) -> dict[str, float]:
        """{name: J_k(a)} for every particle of the world."""
        local = {p.setup.name: p.misfit.cost(p.solve(coefficients)) for p in self.particles}
        gathered = self.world.allgather(local if self.group.rank == 0 else {})
        return {k: v for d in gathered for k, v in d.items()}

    def _fit_tao(self, tao_type, gatol, grtol, gttol, max_it, bounds, initial,
                 initial_hessian="identity"):
        """TAO (`chemomech.inverse.optimise.minimise`) on world rank 0; the other ranks serve
        its evaluations (collective solves).  ``initial_hessian="exact"`` gives BLMVM/BQNLS
        the exact Hessian G^T G (from the normal equations, 2(N+1) back-substitutions) as H0,
        so that their first step is the Newton step."""
        if tao_type not in TAO_TYPES:
            raise InputError(f"tao_type must be one of {TAO_TYPES}, got {tao_type!r}",
                             field="tao_type")
        if tao_type in ("nls", "lmvm") and bounds is not None:
            raise InputError(f"tao_type {tao_type!r} takes no bounds (use blmvm or bqnls)",
                             field="tao_type")
        a0 = np.zeros(self.num_coefficients) if initial is None else np.asarray(initial, float)
        gradient, hessian, x0 = self.cost_and_gradient, self.hessian_action, a0
        if self._transform is not None:  # optimise the free coefficients z, a = T z + t
            if bounds is not None:
                raise InputError("bounds are not supported with a gauge", field="gauge")
            T, t = self._transform
            x0 = np.linalg.lstsq(T, a0 - t, rcond=None)[0]
            a0 = T @ x0 + t

            def gradient(z):
                J, g = self.cost_and_gradient(T @ np.asarray(z) + t)
                return J, T.T @ g

            def hessian(h):
                return T.T @ self.hessian_action(T @ np.asarray(h))
        self.reduced_functional(a0)
        J_ref, _ = self.cost_and_gradient(a0)
        scale = 1.0 / J_ref if J_ref > 0 else 1.0
        H0 = None
        if tao_type in ("blmvm", "bqnls") and initial_hessian == "exact":
            N = self.normal_equations()[0]  # the Hessian in a; in z it is T^T N T
            H0 = _ExactHessian(N if self._transform is None else T.T @ N @ T, scale)
        defaults = LINE_SEARCH_DEFAULTS | (NEWTON_DEFAULTS if tao_type == "nls" else {})

        def driver(calls):
            out = minimise(calls["gradient"], x0, tao_type=tao_type, prefix="chemomech_m1_",
                           J0=J_ref, gatol=gatol, grtol=grtol, gttol=gttol, max_it=max_it,
                           bounds=bounds,
                           hessian_action=calls["hessian"] if tao_type == "nls" else None,
                           initial_hessian=H0, option_defaults=defaults, label="M1 TAO")
            return out.x, out.J, out.iterations, out.converged, out.text, out.evaluation_time_s

        x, J, iterations, converged, text, t_eval = serve_on_rank0(
            self.world, {"gradient": gradient, "hessian": hessian}, driver)
        self.timings_s["tao_evaluations"] = t_eval
        a = x if self._transform is None else T @ np.asarray(x) + t
        return a, J, iterations, converged, text


class _ExactHessian:
    """PETSc shell context of the LMVM initial Hessian H0 = scale * G^T G (the exact Hessian
    of the scaled quadratic objective): `mult` H0 x, `apply` H0^-1 x."""

    def __init__(self, normal_matrix: np.ndarray, scale: float):
        self.H = scale * np.asarray(normal_matrix, float)
        self.H_inv = np.linalg.pinv(self.H, rcond=1e-14, hermitian=True)

    def mult(self, mat, x, y):
        y.setArray(self.H @ x.getArray(readonly=True))

    def apply(self, pc, x, y):
        y.setArray(self.H_inv @ x.getArray(readonly=True))


def has_null_space(all_dirichlet: bool, stiffness: str) -> bool:
    """True when the constant parts of f_a, f_c have no effect: every particle has Dirichlet
    data and the stiffness is constant (with C(X) a uniform eigenstrain still loads the
    interior through grad C, weakly)."""
    return all_dirichlet and stiffness != "mixed"


def resolve_gauge(gauge: Gauge | str | None, all_dirichlet: bool, stiffness: str
                  ) -> Gauge | None:
    """The gauge to use: "auto" -> `Gauge()` (f(1) = 0) when every particle has Dirichlet
    data, else None; a given `Gauge` is refused when some particle is traction-free (the data
    then fix the constants); None is refused when the configuration has a null space.

    With C(X) and Dirichlet data the constants are identifiable only through the stiffness
    contrast; on LFP50_P2 that fit gives f_c(1) = -0.15 (a 15 % strain of the reference
    phase), so "auto" fixes them there too; ``gauge=None`` fits them."""
    null = has_null_space(all_dirichlet, stiffness)
    if isinstance(gauge, str):
        if gauge != "auto":
            raise InputError(f"must be 'auto', None or a Gauge, got {gauge!r}", field="gauge")
        return Gauge() if all_dirichlet else None
    if gauge is not None and not all_dirichlet:
        raise InputError("a gauge applies only with boundary_condition dirichlet: with a "
                         "traction-free boundary the constant parts of f_a and f_c are "
                         "determined by the data", field="gauge")
    if gauge is None and null:
        raise InputError("boundary_condition dirichlet with a constant stiffness leaves the "
                         "constant parts of f_a and f_c undetermined: give a gauge "
                         "(default f(1) = 0)", field="gauge")
    return gauge


def _solve_normal(N: np.ndarray, r: np.ndarray) -> np.ndarray:
    """a = N^-1 r (least squares with a warning when N is numerically singular)."""
    cond = np.linalg.cond(N)
    if cond > 1e13:
        logger.warning("normal matrix ill-conditioned (cond %.2e): is the composition range "
                       "too narrow for this Legendre degree?", cond)
        return np.linalg.lstsq(N, r, rcond=1e-13)[0]
    return np.linalg.solve(N, r)
