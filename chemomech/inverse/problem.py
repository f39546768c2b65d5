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

Optimisation: PETSc TAO (BLMVM default; BQNLS, LMVM, or NLS with the second-order-adjoint
Hessian action) on COMM_SELF of world rank 0, the other ranks serving its evaluations (every
evaluation is collective; J and gradient are allreduced, so the coefficients are the same on
every rank and, to rounding, for every rank count).  The objective is scaled by :math:`J(0)` so that
tolerances are relative, and the line search uses a curvature tolerance of 0.1
(`LINE_SEARCH_DEFAULTS`; PETSc options prefix ``chemomech_m1_``) so that BLMVM needs ~8
iterations instead of ~70.  The stopping rules are those of the one TAO
driver, `chemomech.inverse.optimise.minimise`.

Linear fast path: since u is linear in a, the normal equations :math:`(G^T G) a = G^T P d`
with :math:`G_{:,k} = P B A^+ b_k` give the exact minimiser in 2(N+1) back-substitutions
(`method="linear"`), and G^T G is the Gauss-Newton matrix used by `chemomech.inverse.uncertainty`.

Several particles are one joint problem: `split_for_particles` splits COMM_WORLD into particle
groups (one rank may hold several particles; several ranks may share one particle, which
DOLFINx then partitions).  Stiffness: constant tensors ("average", "LiFePO4", "FePO4");
only the traction-free boundary condition is supported here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import dolfinx_adjoint as dxa
import numpy as np
import pyadjoint
from dolfinx import fem
from mpi4py import MPI
from petsc4py import PETSc
from pyadjoint import AdjFloat, Control, ReducedFunctional

from chemomech.exceptions import InputError
from chemomech.inverse.blocks import (
    EigenstrainSolveBlock,
    GroupSumBlock,
    PixelMisfitBlock,
    ReplicateBlock,
)
from chemomech.inverse.misfit import PixelMisfit
from chemomech.inverse.optimise import minimise, serve_on_rank0
from chemomech.mechanics.forms import eigenstrain, stiffness_tensor
from chemomech.mechanics.forward import ElasticityProblem, SolverKind
from chemomech.mechanics.materials import Material

logger = logging.getLogger(__name__)

TAO_TYPES = ("blmvm", "bqnls", "lmvm", "nls")
#: Line-search defaults (PETSc options prefix chemomech_m1_tao_ls_): a curvature condition
#: tighter than the default 0.9 makes the line search near-exact on the quadratic M1
#: objective, so the quasi-Newton methods terminate in ~2(N+1) steps instead of ~70.
LINE_SEARCH_DEFAULTS = {"tao_ls_gtol": 0.1}


def split_for_particles(comm: MPI.Comm, n_particles: int) -> tuple[MPI.Comm, list[int]]:
    """Split `comm` into particle groups: (this rank's sub-communicator, its particle indices).

    With n_particles >= size every rank is its own group and holds particles
    rank, rank + size, ...; otherwise the ranks form n_particles contiguous groups, one
    particle each, and DOLFINx partitions that particle over the group.
    """
    if n_particles < 1:
        raise InputError(f"need at least one particle, got {n_particles}")
    size, rank = comm.size, comm.rank
    if n_particles >= size:
        color, mine = rank, list(range(rank, n_particles, size))
    else:
        color = rank * n_particles // size
        mine = [color]
    return comm.Split(color=color, key=rank), mine


@dataclass
class ParticleSetup:
    """One particle of the joint inversion.

    `X`: Li fraction as a scalar fem.Function on the particle mesh (nm); `rotation_rad`:
    angle from image x to crystal a (ccw); `misfit`: its data misfit, built on a vector
    Lagrange space of degree `fe_degree` on the same mesh.
    """

    name: str
    X: fem.Function
    rotation_rad: float
    misfit: PixelMisfit
    fe_degree: int = 1

    @property
    def mesh(self):
        """The particle mesh (coordinates in nm)."""
        return self.X.function_space.mesh


def particle_setup(name: str, particle_mesh, X_image: np.ndarray, rotation_rad: float, *,
                   displacement: np.ndarray | None = None, strain: np.ndarray | None = None,
                   edge_exclusion_px: int = 2, fe_degree: int = 1,
                   X_method: str = "l2") -> ParticleSetup:
    """A `ParticleSetup` from a `chemomech.mechanics.mesh.ParticleMesh` and images on its
    pixel grid.

    `X_image` (nx, ny) Li fraction; exactly one of `displacement` (nx, ny, 2) nm, image frame
    (displacement misfit) or `strain` (nx, ny, 3) = (e_xx, e_yy, e_xy) image frame (strain
    misfit).  Pixels of the meshed mask within `edge_exclusion_px` of its edge and pixels with
    non-finite data are left out.  X is carried onto P1 by
    `chemomech.mechanics.fields.image_to_function`.
    """
    from chemomech.inverse.misfit import DisplacementMisfit, StrainMisfit
    from chemomech.io.stack import interior_pixels
    from chemomech.mechanics.fields import PixelSampler, image_to_function

    if (displacement is None) == (strain is None):
        raise InputError("give exactly one of displacement and strain", field="misfit")
    mesh, h = particle_mesh.mesh, particle_mesh.pixel_size_nm
    X = image_to_function(X_image, h, fem.functionspace(mesh, ("Lagrange", 1)), X_method,
                          mask=particle_mesh.mask, name="X")
    V = fem.functionspace(mesh, ("Lagrange", fe_degree, (2,)))
    idx = particle_mesh.pixel_indices()
    sampler = PixelSampler(V, idx * h)
    used = interior_pixels(particle_mesh.mask, edge_exclusion_px)[idx[:, 0], idx[:, 1]]
    if displacement is not None:
        d = np.asarray(displacement, float)[idx[:, 0], idx[:, 1]]
        used &= np.all(np.isfinite(d), axis=1)
        misfit = DisplacementMisfit.from_sampler(sampler, np.nan_to_num(d), used, name=name)
    else:
        e = np.asarray(strain, float)[idx[:, 0], idx[:, 1]]
        used &= np.all(np.isfinite(e), axis=1)
        misfit = StrainMisfit.from_sampler(sampler, np.nan_to_num(e), used, name=name)
    return ParticleSetup(name, X, rotation_rad, misfit, fe_degree=fe_degree)


def coefficient_count(degree: int) -> int:
    """Length 2(N+1) of the control vector (a_{0..N,a}, a_{0..N,c})."""
    return 2 * (degree + 1)


def split_coefficients(coefficients: Sequence[float], degree: int) -> tuple[np.ndarray, ...]:
    """(a_{.,a}, a_{.,c}) from the stacked control vector."""
    a = np.asarray(coefficients, dtype=float)
    return a[: degree + 1].copy(), a[degree + 1:].copy()


class _Particle:
    """Factorised forward operator and basis loads of one particle."""

    def __init__(self, setup: ParticleSetup, degree: int, material: Material,
                 solver: SolverKind):
        if material.stiffness == "mixed":
            raise InputError("M1Model supports constant stiffness only", field="stiffness")
        self.setup = setup
        self.misfit = setup.misfit
        mesh = setup.mesh
        n_c = coefficient_count(degree)
        t0 = time.perf_counter()
        C = stiffness_tensor(material.image_tensor(setup.rotation_rad))
        self.problem = ElasticityProblem(mesh, C, degree=setup.fe_degree, solver=solver)
        self.V = self.problem.V
        Vm = self.misfit.V
        if (Vm.dofmap.index_map.size_local != self.V.dofmap.index_map.size_local
                or Vm.dofmap.index_map_bs != self.V.dofmap.index_map_bs
                or Vm.mesh is not mesh):
            raise InputError(f"particle {setup.name!r}: the misfit space is not a vector "
                             f"Lagrange space of degree {setup.fe_degree} on the particle mesh",
                             field="misfit")
        self.setup_time = time.perf_counter() - t0
        t0 = time.perf_counter()
        unit = fem.Constant(mesh, np.zeros(n_c))
        eps_star = eigenstrain(setup.X, [unit[n] for n in range(degree + 1)],
                               [unit[degree + 1 + n] for n in range(degree + 1)],
                               setup.rotation_rad)
        self.loads: list[PETSc.Vec] = []
        for k in range(n_c):
            unit.value[:] = 0.0
            unit.value[k] = 1.0
            self.loads.append(self.problem.load_vector(eps_star))
        self.load_time = time.perf_counter() - t0
        self._rhs = self.loads[0].duplicate()

    @property
    def comm(self) -> MPI.Comm:
        return self.setup.mesh.comm

    def solve(self, coefficients: Sequence[float], u: fem.Function | None = None
              ) -> fem.Function:
        """u = A^+ sum_k a_k b_k (one back-substitution)."""
        self._rhs.zeroEntries()
        self._rhs.maxpy([float(c) for c in coefficients], self.loads)
        return self.problem.solve_vector(self._rhs, u)

    def solve_adjoint(self, g) -> fem.Function:
        """lambda = A^+ g for a ghost-consistent dual vector g (dolfinx la vector)."""
        n_owned = self.V.dofmap.index_map.size_local * self.V.dofmap.index_map_bs
        self._rhs.array_w[:] = g.array[:n_owned]
        return self.problem.solve_vector(self._rhs, fem.Function(self.V))

    def basis_responses(self) -> list[fem.Function]:
        """u_k = A^+ b_k for every basis load."""
        out = []
        for b in self.loads:
            self._rhs.zeroEntries()
            self._rhs.axpy(1.0, b)
            out.append(self.problem.solve_vector(self._rhs, fem.Function(self.V)))
        return out


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

    @property
    def coefficients(self) -> np.ndarray:
        """The stacked control vector (a_{.,a}, a_{.,c})."""
        return np.concatenate([self.coefficients_a, self.coefficients_c])

    def summary(self) -> dict:
        """JSON-ready dictionary of the fit."""
        return {"method": self.method, "legendre_degree": self.degree,
                "coefficients": {"a": self.coefficients_a.tolist(),
                                 "c": self.coefficients_c.tolist()},
                "J": self.cost, "iterations": self.iterations, "converged": self.converged,
                "reason": self.reason, "num_observations": self.num_observations,
                "per_particle_cost": self.per_particle_cost, "timings_s": self.timings_s}


@dataclass
class LinearSystem:
    """Per-particle linear least-squares pieces: raw columns G_raw = B u_k, data d, nuisance Q.

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
    `split_for_particles`); `degree`: highest Legendre degree N; `comm`: the world.
    """

    def __init__(self, setups: Sequence[ParticleSetup], degree: int = 2,
                 material: Material | None = None, comm: MPI.Comm = MPI.COMM_WORLD,
                 solver: SolverKind = "auto"):
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
        t0 = time.perf_counter()
        self.particles = [_Particle(s, degree, self.material, solver) for s in setups]
        self.timings_s = {"setup": time.perf_counter() - t0,
                          "factorisation": sum(p.setup_time for p in self.particles),
                          "basis_loads": sum(p.load_time for p in self.particles)}
        self.num_coefficients = coefficient_count(degree)
        self._rf: ReducedFunctional | None = None
        self._system: list[LinearSystem] | None = None
        self._evaluations = 0

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
            controls = [AdjFloat(float(v)) for v in a0]
            replicate = ReplicateBlock(controls, self.world, self.group)
            tape.add_block(replicate)
            copies = [AdjFloat(float(v)) for v in a0]
            for c in copies:
                replicate.add_output(c.block_variable)
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
        return self._rf

    def cost_and_gradient(self, coefficients: Sequence[float]) -> tuple[float, np.ndarray]:
        """J(a) and the exact adjoint gradient dJ/da (one forward + one adjoint per particle)."""
        rf = self._rf or self.reduced_functional(coefficients)
        J = float(rf([AdjFloat(float(v)) for v in coefficients]))
        dJ = rf.derivative()
        self._evaluations += 1
        return J, np.array([float(d) for d in dJ])

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
                systems.append(LinearSystem(p.setup.name, m.comm, cols, m.d.copy(), m.Q,
                                            points, components, m))
            self._system = systems
        return self._system

    def normal_equations(self, columns: Sequence[int] | None = None
                         ) -> tuple[np.ndarray, np.ndarray, float]:
        """(G^T G, G^T P d, |P d|^2) summed over all particles, G = P B A^+ [b_k]."""
        idx = np.arange(self.num_coefficients) if columns is None else np.asarray(columns)
        n = len(idx)
        N, r, c = np.zeros((n, n)), np.zeros(n), 0.0
        for s in self.linear_system():
            G = s.misfit.project(s.columns[:, idx])
            Pd = s.misfit.weighted_data()
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
            initial: Sequence[float] | None = None, with_normal_matrix: bool = True
            ) -> FitResult:
        """Minimise J(a): adjoint gradients + PETSc TAO ("tao") or the normal equations ("linear").

        TAO tolerances apply to the objective scaled by J(0); `bounds` = (lower, upper) on a.
        `with_normal_matrix` also returns G^T G (2(N+1) extra back-substitutions on the TAO
        path) for the Gauss-Newton covariance.
        """
        t0 = time.perf_counter()
        if method == "linear":
            N, r, c = self.normal_equations()
            a = _solve_normal(N, r)
            J = float("nan")
            iterations, converged, reason = 0, True, "normal equations"
        elif method == "tao":
            a, J, iterations, converged, reason = self._fit_tao(
                tao_type, gatol, grtol, gttol, max_it, bounds, initial)
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
                           dict(self.timings_s, fit=t_fit))
        logger.info("M1 %s fit: J = %.6g, %d iterations, %.3f s; a_a = %s, a_c = %s",
                    method, J, iterations, t_fit, np.array2string(a_a, precision=5),
                    np.array2string(a_c, precision=5))
        return result

    def per_particle_cost(self, coefficients: Sequence[float]) -> dict[str, float]:
        """{name: J_k(a)} for every particle of the world."""
        local = {p.setup.name: p.misfit.cost(p.solve(coefficients)) for p in self.particles}
        gathered = self.world.allgather(local if self.group.rank == 0 else {})
        return {k: v for d in gathered for k, v in d.items()}

    def _fit_tao(self, tao_type, gatol, grtol, gttol, max_it, bounds, initial):
        """TAO (`chemomech.inverse.optimise.minimise`) on world rank 0; the other ranks serve
        its evaluations (collective solves)."""
        if tao_type not in TAO_TYPES:
            raise InputError(f"tao_type must be one of {TAO_TYPES}, got {tao_type!r}",
                             field="tao_type")
        if tao_type in ("nls", "lmvm") and bounds is not None:
            raise InputError(f"tao_type {tao_type!r} takes no bounds (use blmvm or bqnls)",
                             field="tao_type")
        a0 = np.zeros(self.num_coefficients) if initial is None else np.asarray(initial, float)
        self.reduced_functional(a0)
        J_ref, _ = self.cost_and_gradient(a0)

        def driver(calls):
            out = minimise(calls["gradient"], a0, tao_type=tao_type, prefix="chemomech_m1_",
                           J0=J_ref, gatol=gatol, grtol=grtol, gttol=gttol, max_it=max_it,
                           bounds=bounds,
                           hessian_action=calls["hessian"] if tao_type == "nls" else None,
                           option_defaults=LINE_SEARCH_DEFAULTS, label="M1 TAO")
            return out.x, out.J, out.iterations, out.converged, out.text, out.evaluation_time_s

        a, J, iterations, converged, text, t_eval = serve_on_rank0(
            self.world, {"gradient": self.cost_and_gradient, "hessian": self.hessian_action},
            driver)
        self.timings_s["tao_evaluations"] = t_eval
        return a, J, iterations, converged, text


def _solve_normal(N: np.ndarray, r: np.ndarray) -> np.ndarray:
    """a = N^-1 r (least squares with a warning when N is numerically singular)."""
    cond = np.linalg.cond(N)
    if cond > 1e13:
        logger.warning("normal matrix ill-conditioned (cond %.2e): is the composition range "
                       "too narrow for this Legendre degree?", cond)
        return np.linalg.lstsq(N, r, rcond=1e-13)[0]
    return np.linalg.solve(N, r)
