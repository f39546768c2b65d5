r"""The dislocation model M2: M1 plus plastic slip fields, with exact adjoint gradients.

Model (DESIGN §4, "Dislocations (M2)").  For each particle the eigenstrain is the M1
composition law plus one plastic slip per chosen in-plane slip system s
(`chemomech.slip`),

.. math::

    \varepsilon^* = R\,\mathrm{diag}(f_a(X), f_c(X))\,R^T
                    + \sum_s \gamma_s(x)\,\mathrm{sym}(\hat s\otimes\hat n)_\mathrm{img},

with :math:`\gamma_s` a P1 field on the particle mesh (one per particle and system: the number
of parameters scales with the image) and the Legendre coefficients shared by all particles.
The data misfit is M1's (`chemomech.misfit`); the slip fields are regularised by

* ``h1`` (default): :math:`R(\gamma) = \tfrac{\alpha}{2}\int|\nabla\gamma|^2\,dx`, or
* ``tv``: :math:`R(\gamma) = \alpha\int(|\nabla\gamma|^2 + \epsilon^2)^{1/2}\,dx` (smoothed),

so :math:`J = \sum_k J_k(u_k) + \sum_{k,s} R(\gamma_{k,s})` (units of the misfit: nm^2 for the
displacement misfit, so alpha is in nm^2; dimensionless for the strain misfit).

Adjoint.  The state is linear in all controls: :math:`u = A^+(\sum_k a_k b_k + \sum_s K_s
\gamma_s)` with the M1 basis loads :math:`b_k`, the factorised traction-free operator
(`chemomech.inverse`) and the slip-load matrices
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import dolfinx_adjoint as dxa
import numpy as np
import pyadjoint
import ufl
from dolfinx import fem, la
from dolfinx.fem import petsc as fem_petsc
from mpi4py import MPI
from petsc4py import PETSc
from pyadjoint import AdjFloat, Block, Control, ReducedFunctional

from chemomech.exceptions import InputError, SolverError
from chemomech.forms import eigenstrain_load_form
from chemomech.inverse import (
    GroupSumBlock,
    M1Model,
    ParticleSetup,
    PixelMisfitBlock,
    ReplicateBlock,
    split_coefficients,
)
from chemomech.materials import Material
from chemomech.slip import InPlaneSlipSystem, slip_system

logger = logging.getLogger(__name__)

RegularisationKind = Literal["h1", "tv"]
AlphaRule = Literal["discrepancy", "lcurve"]
M2_TAO_TYPES = ("blmvm", "bqnls")
#: A TAO line-search failure is accepted once |grad J| fell by this factor.
STALL_GRADIENT_REDUCTION = 1e-5
#: Typical slip amplitude and length (nm) that set the scale alpha_0 of the alpha scan.
TYPICAL_SLIP = 0.01
TYPICAL_SLIP_LENGTH_NM = 100.0
UM2_PER_NM2 = 1e6


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class Regularisation:
    """Slip regularisation: kind (h1 | tv), weight alpha (units of the misfit), TV smoothing eps
    (1/nm)."""

    kind: RegularisationKind = "h1"
    alpha: float = 1.0
    tv_epsilon_per_nm: float = 1e-6

    def __post_init__(self):
        if self.kind not in ("h1", "tv"):
            raise InputError(f"must be 'h1' or 'tv', got {self.kind!r}",
                             field="regularisation.kind")
        if not self.alpha >= 0:
            raise InputError(f"must be >= 0, got {self.alpha}", field="regularisation.alpha")
        if not self.tv_epsilon_per_nm > 0:
            raise InputError("must be > 0", field="regularisation.tv_epsilon_per_nm")


@dataclass(frozen=True, slots=True)
class M2Settings:
    """What `run_m2` reads from the config's ``dislocations`` block (defaults documented here).

    `slip_systems`: labels of `chemomech.slip.IN_PLANE_SYSTEMS` (default [D]); `kind`: h1 | tv;
    `alpha`: a number or "auto"; `rule`: discrepancy | lcurve (for auto); `noise_strain`:
    strain-noise std, "auto" (estimated from the maps) or "m1" (the M1 residual);
    `discrepancy_tau`: tau of the discrepancy rule; `alpha_decades`: the scan covers
    alpha_0 * 10^k, k = alpha_decades[0] .. alpha_decades[1] (descending); `noise_draws`:
    Monte Carlo draws for the displacement misfit's noise level; `tao_type`, `max_it`,
    `grtol`: the TAO settings of M2.
    """

    slip_systems: tuple[str, ...] = ("D",)
    kind: RegularisationKind = "h1"
    alpha: float | Literal["auto"] = "auto"
    rule: AlphaRule = "discrepancy"
    noise_strain: float | Literal["auto", "m1"] = "auto"
    discrepancy_tau: float = 1.0
    alpha_decades: tuple[int, int] = (2, -3)
    tv_epsilon_per_nm: float = 1e-6
    noise_draws: int = 4
    tao_type: str = "blmvm"
    max_it: int = 2000
    grtol: float = 1e-7

    @classmethod
    def from_config(cls, config) -> M2Settings:
        """From ``config.dislocations`` (a mapping or an object with these attributes; absent
        keys take the defaults); ``regularisation: {kind, alpha, rule, ...}`` may be nested."""
        block = getattr(config, "dislocations", None) if config is not None else None
        if block is None:
            return cls()
        raw = dict(block) if isinstance(block, Mapping) else (
            block.model_dump() if hasattr(block, "model_dump") else dict(vars(block)))
        nested = raw.pop("regularisation", None) or {}
        if not isinstance(nested, Mapping):
            nested = nested.model_dump() if hasattr(nested, "model_dump") else vars(nested)
        raw |= dict(nested)
        unknown = set(raw) - set(cls.__slots__)
        if unknown:
            raise InputError(f"unknown key(s) {sorted(unknown)}", field="dislocations")
        if "slip_systems" in raw:
            raw["slip_systems"] = tuple(raw["slip_systems"])
        if "alpha_decades" in raw:
            raw["alpha_decades"] = tuple(raw["alpha_decades"])
        settings = cls(**raw)
        for label in settings.slip_systems:
            slip_system(label)
        if settings.rule not in ("discrepancy", "lcurve"):
            raise InputError(f"must be 'discrepancy' or 'lcurve', got {settings.rule!r}",
                             field="regularisation.rule")
        if settings.tao_type not in M2_TAO_TYPES:
            raise InputError(f"must be one of {M2_TAO_TYPES}", field="dislocations.tao_type")
        return settings


# --------------------------------------------------------------------------- one particle


class _SlipParticle:
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


# --------------------------------------------------------------------------- tape blocks


class SlipSolveBlock(Block):
    r"""(a, gamma_s) -> u = A^+(\sum a_k b_k + \sum_s K_s gamma_s); adjoint b_k.lambda, K_s^T
    lambda."""

    def __init__(self, particle: _SlipParticle, coefficients: Sequence[AdjFloat],
                 gammas: Sequence[fem.Function]):
        super().__init__()
        self.particle = particle
        self.n_c = len(coefficients)
        for c in coefficients:
            self.add_dependency(c)
        for g in gammas:
            self.add_dependency(g)

    def __str__(self):
        return f"eigenstrain + slip solve ({self.particle.name})"

    def recompute_component(self, inputs, block_variable, idx, prepared):
        u = dxa.Function(self.particle.base.V, name="u")
        return self.particle.solve([float(a) for a in inputs[: self.n_c]],
                                   inputs[self.n_c:], u)

    def prepare_evaluate_adj(self, inputs, adj_inputs, relevant_dependencies):
        return self.particle.base.solve_adjoint(adj_inputs[0])

    def evaluate_adj_component(self, inputs, adj_inputs, block_variable, idx, prepared=None):
        if idx < self.n_c:
            return float(self.particle.base.loads[idx].dot(prepared.x.petsc_vec))
        return self.particle.slip_gradient(idx - self.n_c, prepared)

    def evaluate_tlm_component(self, inputs, tlm_inputs, block_variable, idx, prepared=None):
        if all(t is None for t in tlm_inputs):
            return None
        du = dxa.Function(self.particle.base.V, name="du")
        coefficients = [0.0 if t is None else float(t) for t in tlm_inputs[: self.n_c]]
        return self.particle.solve(coefficients, tlm_inputs[self.n_c:], du)


class RegularisationBlock(Block):
    """gamma -> R(gamma); adjoint dR/dgamma (UFL derivative), tangent dR . dgamma."""

    def __init__(self, particle: _SlipParticle, gamma: fem.Function):
        super().__init__()
        self.particle = particle
        self.add_dependency(gamma)

    def __str__(self):
        return f"slip regularisation ({self.particle.name})"

    def recompute_component(self, inputs, block_variable, idx, prepared):
        return self.particle.regularisation(inputs[0])

    def evaluate_adj_component(self, inputs, adj_inputs, block_variable, idx, prepared=None):
        scale = 1.0 if adj_inputs[0] is None else float(adj_inputs[0])
        return self.particle.regularisation_gradient(inputs[0], scale)

    def evaluate_tlm_component(self, inputs, tlm_inputs, block_variable, idx, prepared=None):
        if tlm_inputs[0] is None:
            return None
        return self.particle.regularisation_direction(inputs[0], tlm_inputs[0])


# --------------------------------------------------------------------------- the model


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
        self.particles = [_SlipParticle(p, self.systems, self.reg) for p in self.m1.particles]
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
        t_eval = [0.0]
        g0 = [None]
        world_rank = self.world.rank

        def objective_gradient(tao, x, g):
            t1 = time.perf_counter()
            a, gam = self._unpack(x.getArray(readonly=True), pairs, sqrt_w)
            J, ga, gg = self.cost_and_gradient(a, gam)
            head = [ga] if world_rank == 0 else []
            g.setArray(scale * np.concatenate(
                head + [d / w for d, w in zip(gg, sqrt_w, strict=True)] or [np.zeros(0)]))
            t_eval[0] += time.perf_counter() - t1
            return scale * J

        def monitor(tao):
            its, f, gnorm = tao.getSolutionStatus()[:3]
            if g0[0] is None:
                g0[0] = gnorm
            if world_rank == 0 and (its % 25 == 0 or its < 5):
                logger.info("M2 TAO %4d  J = %.10e  |grad J| = %.3e", its, f / scale,
                            gnorm / scale)

        pcomm = PETSc.Comm(self.world)
        tao = PETSc.TAO().create(pcomm)
        tao.setType(tao_type)
        tao.setOptionsPrefix("chemomech_m2_")
        x = PETSc.Vec().createMPI((n_local, PETSc.DECIDE), comm=pcomm)
        x.setArray(self._pack(self.coefficients, gam0, sqrt_w))
        g = x.duplicate()
        tao.setObjectiveGradient(objective_gradient, g)
        tao.setSolution(x)
        H0 = PETSc.Mat().createPython(((n_local, PETSc.DECIDE), (n_local, PETSc.DECIDE)),
                                      _InitialHessian(self, pairs, sqrt_w, scale), comm=pcomm)
        H0.setUp()
        if tao_type == "blmvm":
            tao.setLMVMH0(H0)
            h0_ksp = tao.getLMVMH0KSP()
        else:  # bqnls: the quasi-Newton matrix of the BNK solver
            lmvm = tao.getLMVMMat()
            lmvm.setLMVMJ0(H0)
            h0_ksp = lmvm.getLMVMJ0KSP()
        h0_ksp.setType("preonly")
        h0_ksp.getPC().setType("python")
        h0_ksp.getPC().setPythonContext(H0.getPythonContext())
        tao.setTolerances(gatol=gatol, grtol=grtol, gttol=0.0)
        tao.setMaximumIterations(max_it)
        tao.setMaximumFunctionEvaluations(4 * max_it)
        tao.setMonitor(monitor)
        tao.setFromOptions()  # PETSc options prefix chemomech_m2_
        tao.solve()
        reason = tao.getConvergedReason()
        z = tao.getSolution().getArray().copy()
        g_norm = tao.getSolutionStatus()[2]
        iterations = tao.getIterationNumber()
        tao.destroy()
        for obj in (x, g, H0):
            obj.destroy()
        a, gam = self._unpack(z, pairs, sqrt_w)
        self.coefficients = a
        for (i, s), arr in zip(pairs, gam, strict=True):
            f = self.gammas[i][s]
            f.x.array[: arr.size] = arr
            f.x.scatter_forward()
        g_ratio = g_norm / g0[0] if g0[0] else 0.0
        text = f"TAO {tao_type} reason {reason}, |g|/|g0| = {g_ratio:.1e}"
        if reason < 0 and not (reason == PETSc.TAO.ConvergedReason.DIVERGED_LS_FAILURE
                               and g_ratio <= STALL_GRADIENT_REDUCTION):
            if reason == PETSc.TAO.ConvergedReason.DIVERGED_MAXITS:
                logger.warning("M2 TAO stopped at max_it = %d (|g|/|g0| = %.1e)", max_it,
                               g_ratio)
            else:
                raise SolverError(f"M2 TAO {tao_type} did not converge: reason {reason} after "
                                  f"{iterations} iterations (|g|/|g0| = {g_ratio:.1e})")
        t_fit = time.perf_counter() - t0
        per_particle = self.misfits()
        misfit = float(sum(per_particle.values()))
        R, S = self.regularisation_total()
        a_a, a_c = split_coefficients(a, self.degree)
        timings = {"fit": t_fit, "tao_evaluations": t_eval[0],
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


# --------------------------------------------------------------------------- noise and alpha


def estimate_strain_noise(particle) -> float:
    r"""Std of white noise on the strain maps from second differences:
    :math:`\hat\sigma = 1.4826\,\mathrm{MAD}(e_{i-1} - 2e_i + e_{i+1}) / \sqrt 6`, median over
    e_xx, e_yy, e_xy, theta and both axes (dimensionless; robust to edges and smooth signal)."""
    estimates = []
    mask = np.asarray(particle.mask, bool)
    for key in ("e_xx", "e_yy", "e_xy", "theta"):
        e = np.where(mask, np.asarray(getattr(particle, key), float), np.nan)
        for axis in (0, 1):
            d = np.diff(e, n=2, axis=axis)
            d = d[np.isfinite(d)]
            if d.size > 10:
                mad = np.median(np.abs(d - np.median(d)))
                estimates.append(1.4826 * mad / np.sqrt(6.0))
    if not estimates:
        raise InputError(f"particle {particle.name!r}: no finite strain to estimate the noise",
                         field="e_xx")
    return float(np.median(estimates))


def noise_misfit(model: M2Model, sigma_strain: float, samplers: Mapping | None = None,
                 n_draws: int = 4, seed: int = 0) -> float:
    r"""Expected data misfit of pure strain noise of std `sigma_strain`, summed over particles.

    Strain misfit: :math:`E\,\tfrac12|W n|^2 = 2\sigma^2` per pixel (Frobenius norm of i.i.d.
    noise on e_aa, e_cc, e_ac).  Displacement misfit: Monte Carlo over `n_draws` draws of
    `samplers[name](rng)` (`chemomech.uncertainty.strain_noise_sampler`: unit noise integrated
    like the data), :math:`\tfrac12\sigma^2\,\overline{|P n|^2}`.
    """
    local = 0.0
    for p in model.particles:
        m = p.base.misfit
        if getattr(m, "Q", None) is None:  # strain misfit: 3 rows per pixel
            local += 0.5 * 4.0 * sigma_strain**2 * m.num_observations / 3.0
            continue
        if samplers is None or p.name not in samplers:
            raise InputError(f"the displacement misfit needs a noise sampler for {p.name!r}",
                             field="noise_strain")
        total = 0.0
        for k in range(n_draws):
            r = m.project(samplers[p.name](np.random.default_rng([seed, k])))
            total += m.comm.allreduce(float(r @ r))
        local += 0.5 * sigma_strain**2 * total / n_draws
    return model._world_sum(local)


@dataclass
class AlphaChoice:
    """The regularisation weight chosen by a rule and the scanned curve (misfit, seminorm)."""

    rule: str
    alpha: float
    target_misfit: float | None
    curve: list[dict[str, float]]
    noise_strain: float | None = None

    def summary(self) -> dict:
        """JSON-ready dictionary."""
        return {"rule": self.rule, "alpha": self.alpha, "target_misfit": self.target_misfit,
                "noise_strain": self.noise_strain, "curve": self.curve}


def alpha_scale(model: M2Model, misfit_m1: float) -> float:
    r"""alpha_0 that balances the M1 misfit with the regulariser of a typical slip field
    (gamma ~ `TYPICAL_SLIP` varying over `TYPICAL_SLIP_LENGTH_NM`) over the particles' area."""
    area = model._world_sum(sum(p.area_nm2 for p in model.particles))
    grad = TYPICAL_SLIP / TYPICAL_SLIP_LENGTH_NM
    size = 0.5 * grad**2 * area if model.reg.kind == "h1" else grad * area
    return max(misfit_m1, 1e-300) / size


def lcurve_corner(misfits: Sequence[float], seminorms: Sequence[float]) -> int:
    """Index of the maximum curvature of the L-curve (log misfit, log seminorm), interior points."""
    x, y = np.log(np.asarray(misfits)), np.log(np.maximum(np.asarray(seminorms), 1e-300))
    n = len(x)
    if n < 3:
        return n - 1
    t = np.arange(n, dtype=float)
    dx, dy = np.gradient(x, t), np.gradient(y, t)
    ddx, ddy = np.gradient(dx, t), np.gradient(dy, t)
    kappa = (dx * ddy - dy * ddx) / np.maximum((dx**2 + dy**2) ** 1.5, 1e-300)
    return int(1 + np.argmax(np.abs(kappa[1:-1])))


def choose_alpha(model: M2Model, rule: AlphaRule = "discrepancy", *,
                 target_misfit: float | None = None, decades: tuple[int, int] = (2, -3),
                 alpha0: float | None = None, tau: float = 1.0, **fit_options
                 ) -> tuple[AlphaChoice, M2FitResult]:
    """Scan alpha = alpha0 * 10^k (k from decades[0] down to decades[1]), warm-started, and
    pick one by `rule`; the model is left fitted at the chosen alpha.  Returns (choice, fit)."""
    if rule == "discrepancy" and target_misfit is None:
        raise InputError("the discrepancy rule needs the noise misfit", field="noise_strain")
    if rule not in ("discrepancy", "lcurve"):
        raise InputError(f"unknown rule {rule!r}", field="regularisation.rule")
    if alpha0 is None:
        zero_slip = [[fem.Function(p.Q) for _ in model.systems] for p in model.particles]
        saved = model.gammas
        model.gammas = zero_slip
        alpha0 = alpha_scale(model, sum(model.misfits().values()))
        model.gammas = saved
    ks = np.arange(decades[0], decades[1] - 1, -1)
    curve, fits, states = [], [], []
    for k in ks:
        alpha = float(alpha0 * 10.0**k)
        fit = model.fit(alpha=alpha, **fit_options)
        curve.append({"alpha": alpha, "misfit": fit.misfit, "seminorm": fit.seminorm,
                      "iterations": fit.iterations, "time_s": fit.timings_s["fit"],
                      "mean_density_um2": float(np.mean(list(
                          model.mean_densities().values())))})
        fits.append(fit)
        states.append(_snapshot(model))
        if model.world.rank == 0:
            logger.info("alpha %.3e: misfit %.6g, seminorm %.4g (%d iterations)", alpha,
                        fit.misfit, fit.seminorm, fit.iterations)
        if rule == "discrepancy" and fit.misfit < tau * target_misfit:
            break  # smaller alphas only fit the noise
    if rule == "lcurve":
        best = lcurve_corner([c["misfit"] for c in curve], [c["seminorm"] for c in curve])
        _restore(model, states[best])
        return AlphaChoice(rule, curve[best]["alpha"], None, curve), fits[best]
    target = tau * target_misfit
    last = curve[-1]
    if last["misfit"] >= target:  # never reached: model error dominates, use the L-curve
        best = lcurve_corner([c["misfit"] for c in curve], [c["seminorm"] for c in curve])
        logger.warning("discrepancy: the misfit (%.4g at the smallest alpha) never fell to the "
                       "noise level %.4g (model error or correlated noise dominate); using "
                       "the L-curve corner alpha = %.3g", last["misfit"], target,
                       curve[best]["alpha"])
        _restore(model, states[best])
        return AlphaChoice("discrepancy not reached: lcurve", curve[best]["alpha"], target,
                           curve), fits[best]
    if len(curve) == 1:
        logger.warning("discrepancy: already the largest alpha fits below the noise level")
        return AlphaChoice(rule, last["alpha"], target, curve), fits[-1]
    # interpolate log alpha between the bracketing scan points, refit there (warm start)
    hi, lo = curve[-2], curve[-1]
    s = (np.log(hi["misfit"]) - np.log(target)) / (np.log(hi["misfit"]) - np.log(lo["misfit"]))
    alpha = float(np.exp(np.log(hi["alpha"]) + s * (np.log(lo["alpha"]) - np.log(hi["alpha"]))))
    _restore(model, states[-2])
    fit = model.fit(alpha=alpha, **fit_options)
    curve.append({"alpha": alpha, "misfit": fit.misfit, "seminorm": fit.seminorm,
                  "iterations": fit.iterations, "time_s": fit.timings_s["fit"],
                  "mean_density_um2": float(np.mean(list(model.mean_densities().values())))})
    return AlphaChoice(rule, alpha, target, curve), fit


def _snapshot(model: M2Model):
    return (model.coefficients.copy(), [[g.x.array.copy() for g in gs] for gs in model.gammas],
            model.reg.alpha)


def _restore(model: M2Model, state) -> None:
    model.coefficients = state[0].copy()
    model.set_alpha(state[2])
    for gs, arrays in zip(model.gammas, state[1], strict=True):
        for g, arr in zip(gs, arrays, strict=True):
            g.x.array[:] = arr


# --------------------------------------------------------------------------- maps


def density_expression(gamma: fem.Function, system: InPlaneSlipSystem, rotation_rad: float):
    r"""UFL :math:`\rho = 10^6\,|\nabla\gamma\cdot\hat s| / |b|` (um^-2; gamma P1, mesh in nm)."""
    s = ufl.as_vector(system.slip_direction_image(rotation_rad).tolist())
    return UM2_PER_NM2 * abs(ufl.dot(ufl.grad(gamma), s)) / system.burgers_nm


def slip_maps(model: M2Model, particle: int, particle_mesh, shape: tuple[int, int]
              ) -> dict[str, np.ndarray]:
    """Images (group rank 0) of gamma_<s> and density_<s> (um^-2) at the meshed pixels, and
    density_total (sum over systems).  Collective on the particle's communicator."""
    from chemomech.fields import PixelSampler, sample_expression

    p = model.particles[particle]
    sampler = PixelSampler(p.Q, particle_mesh.pixel_points_nm())
    idx = particle_mesh.pixel_indices()
    out: dict[str, np.ndarray] = {}
    total = None
    for s, g in zip(model.systems, model.gammas[particle], strict=True):
        gv = sampler.gather(sampler(g))
        rho = sampler.gather(sample_expression(density_expression(g, s, p.rotation_rad),
                                               sampler).reshape(-1, 1))
        if gv is None:
            continue
        for key, values in ((f"gamma_{s.label}", gv[:, 0]), (f"density_{s.label}", rho[:, 0])):
            image = np.full(shape, np.nan)
            image[idx[:, 0], idx[:, 1]] = values
            out[key] = image
        total = out[f"density_{s.label}"] if total is None else total + out[
            f"density_{s.label}"]
    if total is not None:
        out["density_total"] = total
    return out


def mean_density(density_image: np.ndarray, meshed_mask: np.ndarray) -> float:
    """Particle mean of a density map over the meshed pixels (um^-2)."""
    values = density_image[np.asarray(meshed_mask, bool) & np.isfinite(density_image)]
    return float(values.mean()) if values.size else float("nan")


def plot_density_map(density: np.ndarray, X: np.ndarray, mask: np.ndarray,
                     pixel_size_nm: float, path: str | Path, title: str = "") -> Path:
    """Density map (um^-2) with the phase boundary X = 0.5 (red dashed) overlaid (Fig. 3c)."""
    import matplotlib.pyplot as plt

    from chemomech.report import save_figure

    h_um = pixel_size_nm * 1e-3
    nx, ny = density.shape
    # as chemomech.report.plot_residual_maps: x = axis 0 to the right, y = axis 1 down
    extent = (0, nx * h_um, ny * h_um, 0)
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    shown = np.where(mask, density, np.nan)
    finite = shown[np.isfinite(shown)]
    vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
    image = ax.imshow(shown.T, extent=extent, cmap="magma", vmin=0, vmax=max(vmax, 1e-12))
    Xs = np.where(mask, X, np.nan)
    if np.nanmin(Xs) < 0.5 < np.nanmax(Xs):
        xx = (np.arange(nx) + 0.5) * h_um
        yy = (np.arange(ny) + 0.5) * h_um
        ax.contour(xx, yy, np.nan_to_num(Xs, nan=-1.0).T, levels=[0.5], colors="red",
                   linestyles="dashed", linewidths=1.0)
    fig.colorbar(image, ax=ax, label=r"GND density ($\mu$m$^{-2}$)")
    ax.set_xlabel(r"x ($\mu$m)")
    ax.set_ylabel(r"y ($\mu$m)")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_alpha_curve(choice: AlphaChoice, path: str | Path) -> Path:
    """L-curve of the alpha scan (misfit vs seminorm, log-log; alpha annotated), the chosen
    alpha circled and the discrepancy target (if any) as a vertical line."""
    import matplotlib.pyplot as plt

    from chemomech.report import save_figure

    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    pts = sorted(choice.curve, key=lambda c: -c["alpha"])
    ax.loglog([c["misfit"] for c in pts], [c["seminorm"] for c in pts], "o-", ms=4)
    for c in pts:
        ax.annotate(f"{c['alpha']:.2g}", (c["misfit"], c["seminorm"]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))
    best = min(choice.curve, key=lambda c: abs(np.log(c["alpha"] / choice.alpha)))
    ax.loglog([best["misfit"]], [best["seminorm"]], "o", mfc="none", mec="red", ms=12)
    if choice.target_misfit:
        ax.axvline(choice.target_misfit, color="0.5", ls="--", lw=1, label="noise level")
        ax.legend(fontsize=8)
    ax.set_xlabel("data misfit")
    ax.set_ylabel("regularisation seminorm")
    ax.set_title(f"alpha = {choice.alpha:.3g} ({choice.rule})", fontsize=9)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- pipeline stage


@dataclass
class M2Outcome:
    """What the M2 stage hands to the report (world rank 0 holds the gathered images)."""

    fit: M2FitResult
    alpha: AlphaChoice | None
    images: dict[str, dict[str, np.ndarray]]  # name -> u_x u_y e_xx e_yy e_xy meshed_mask,
    #                                            gamma_<s>, density_<s>, density_total
    mean_density_um2: dict[str, float]  # name -> particle mean of density_total
    model_error: dict[str, float]  # name -> M2 model error (rank 0)
    summary: dict  # the summary.json block "dislocations"
    timings_s: dict[str, float]


def _settings_value(config, key: str, default):
    return getattr(config, key, default) if config is not None else default


def _build_setups(prepared, config, comm):
    """Particle groups, meshes and M1 setups exactly as `chemomech.pipeline.run_m1` builds them."""
    from chemomech.inverse import particle_setup, split_for_particles
    from chemomech.mesh import mesh_from_mask

    mesh_cfg = _settings_value(config, "mesh", None)
    misfit = _settings_value(config, "misfit", "displacement")
    edge = _settings_value(config, "edge_exclusion_px", 2)
    group, mine = split_for_particles(comm, len(prepared))
    setups, meshes = [], []
    for k in mine:
        p = prepared[k]
        pm = mesh_from_mask(p.data.mask, p.data.pixel_size_nm, group,
                            mesh_size_px=getattr(mesh_cfg, "size_px", 1.0),
                            simplify_tol_px=getattr(mesh_cfg, "simplify_tol_px", 0.25),
                            min_island_px=getattr(mesh_cfg, "min_island_px", 50))
        meshes.append(pm)
        if misfit == "displacement":
            if p.displacement is None:
                raise InputError(f"particle {p.data.name!r} has no measured displacement",
                                 field="misfit")
            data = {"displacement": p.displacement}
        else:
            data = {"strain": np.stack([p.strain_image[c] for c in ("e_xx", "e_yy", "e_xy")],
                                       -1)}
        setups.append(particle_setup(p.data.name, pm, p.data.X, p.data.rotation_rad,
                                     edge_exclusion_px=edge,
                                     fe_degree=getattr(mesh_cfg, "fe_degree", 1), **data))
    return group, mine, setups, meshes


def _noise_target(model: M2Model, settings: M2Settings, prepared, mine, meshes,
                  m1_sigma2: float | None, misfit_kind: str) -> tuple[float, float | None]:
    """(target misfit, strain-noise std or None) of the discrepancy rule."""
    from chemomech.uncertainty import strain_noise_sampler

    if settings.noise_strain == "m1":
        if m1_sigma2 is None:
            raise InputError("noise_strain: m1 needs the M1 result", field="noise_strain")
        n_obs = model._world_sum(sum(p.base.misfit.num_observations for p in model.particles))
        n_nuis = model._world_sum(sum(0 if p.base.misfit.Q is None else p.base.misfit.Q.shape[1]
                                      for p in model.particles))
        return 0.5 * m1_sigma2 * (n_obs - n_nuis - model.num_coefficients), None
    if settings.noise_strain == "auto":
        local = [estimate_strain_noise(prepared[k].data) for k in mine]
        estimates = [e for part in model.world.allgather(local) for e in part]
        sigma = float(np.median(estimates))
    else:
        sigma = float(settings.noise_strain)
    samplers = None
    if misfit_kind == "displacement":
        samplers = {p.name: strain_noise_sampler(prepared[k].data, pm.pixel_indices(),
                                                 p.base.misfit)
                    for p, k, pm in zip(model.particles, mine, meshes, strict=True)}
    return noise_misfit(model, sigma, samplers, settings.noise_draws), sigma


def run_m2(prepared: Sequence, config, comm: MPI.Comm = MPI.COMM_WORLD, m1_result=None,
           settings: M2Settings | None = None) -> M2Outcome:
    """The M2 stage of the pipeline: mesh, fit M2 (alpha by the configured rule), gather the
    model and density maps to world rank 0 and summarise (`M2Outcome`).

    `prepared`: `chemomech.pipeline.PreparedParticle` s; `config`: a `RunConfig` (reads
    legendre_degree, misfit, mesh, edge_exclusion_px, stiffness, reduction, solver and the
    ``dislocations`` block, see `M2Settings`); `m1_result`: the `M1Outcome` (warm start, degree
    for ``auto`` and sigma^2 for ``noise_strain: m1``), or None (M1 by its linear fast path).
    """
    from chemomech.forms import epsilon
    from chemomech.pipeline import model_maps, used_pixels
    from chemomech.residual import model_error

    t0 = time.perf_counter()
    settings = settings or M2Settings.from_config(config)
    group, mine, setups, meshes = _build_setups(prepared, config, comm)
    t_mesh = time.perf_counter() - t0
    degree = _settings_value(config, "legendre_degree", 2)
    if degree == "auto":
        if m1_result is None:
            raise InputError("legendre_degree: auto needs the M1 result", field="legendre_degree")
        degree = m1_result.fit.degree
    material = Material(stiffness=_settings_value(config, "stiffness", "average"),
                        reduction=_settings_value(config, "reduction", "plane_stress"))
    reg = Regularisation(settings.kind, 1.0 if settings.alpha == "auto" else float(
        settings.alpha), settings.tv_epsilon_per_nm)
    model = M2Model(setups, settings.slip_systems, degree=degree, material=material, comm=comm,
                    solver=_settings_value(config, "solver", "auto"), regularisation=reg)
    if m1_result is not None and m1_result.fit.degree == degree:
        initial = m1_result.fit.coefficients
        sigma2 = m1_result.sigma2
    else:
        initial = model.m1.fit(method="linear", with_normal_matrix=False).coefficients
        sigma2 = None
    model.coefficients = np.asarray(initial, float).copy()
    fit_options = {"tao_type": settings.tao_type, "max_it": settings.max_it,
                   "grtol": settings.grtol}
    misfit_kind = _settings_value(config, "misfit", "displacement")
    choice = None
    if settings.alpha == "auto":
        target, sigma = (None, None)
        if settings.rule == "discrepancy":
            target, sigma = _noise_target(model, settings, prepared, mine, meshes, sigma2,
                                          misfit_kind)
        choice, fit = choose_alpha(model, settings.rule, target_misfit=target,
                                   decades=settings.alpha_decades, tau=settings.discrepancy_tau,
                                   **fit_options)
        choice.noise_strain = sigma
    else:
        fit = model.fit(**fit_options)
    t_fit = time.perf_counter() - t0 - t_mesh
    t_forward = model.forward_solve_time()

    images: dict[str, dict[str, np.ndarray]] = {}
    for i, (k, pm) in enumerate(zip(mine, meshes, strict=True)):
        p = prepared[k]
        u = model.displacement(i)
        maps = model_maps(u, epsilon(u), pm, p.data.mask.shape)
        maps |= slip_maps(model, i, pm, p.data.mask.shape)
        if group.rank == 0:
            images[p.data.name] = maps
    gathered = comm.gather(images if group.rank == 0 else {}, root=0)
    images = {k: v for d in (gathered or []) for k, v in d.items()}
    densities, errors = {}, {}
    edge = _settings_value(config, "edge_exclusion_px", 2)
    for p in prepared if comm.rank == 0 else []:
        maps = images[p.data.name]
        densities[p.data.name] = mean_density(maps["density_total"], maps["meshed_mask"])
        used = used_pixels(p.data.mask & (maps["meshed_mask"] > 0), p, edge)
        errors[p.data.name] = model_error(*(p.strain_image[c] - maps[c]
                                            for c in ("e_xx", "e_yy", "e_xy")), used)
    mean_all = float(np.mean(list(densities.values()))) if densities else float("nan")
    labels = [s.label for s in model.systems]
    summary = {"system": labels[0] if len(labels) == 1 else labels,
               "systems": {s.label: s.notation() for s in model.systems},
               "mean_density_um2": mean_all,
               "per_particle_mean_density_um2": densities,
               "regularisation": {"kind": settings.kind, "alpha": model.reg.alpha,
                                  "rule": choice.rule if choice else "fixed"},
               "fit": fit.summary()}
    if choice is not None:
        summary["regularisation"] |= {"target_misfit": choice.target_misfit,
                                      "noise_strain": choice.noise_strain,
                                      "curve": choice.curve}
    iterations = sum(c["iterations"] for c in choice.curve) if choice else fit.iterations
    timings = {"m2_mesh": t_mesh, "m2_fit": t_fit, "m2_forward_solve": t_forward,
               "m2_iterations": float(iterations), "m2_total": time.perf_counter() - t0}
    if comm.rank == 0:
        logger.info("M2 (%s): alpha %.3g (%s), mean density %.4g um^-2", ", ".join(labels),
                    model.reg.alpha, summary["regularisation"]["rule"], mean_all)
    return M2Outcome(fit, choice, images, densities, errors, summary, timings)


def compare_slip_systems(prepared: Sequence, config, comm: MPI.Comm = MPI.COMM_WORLD,
                         systems: Sequence[str] | None = None, m1_result=None,
                         settings: M2Settings | None = None) -> list[dict]:
    """Fit M2 with each candidate system alone at one common alpha and tabulate (Suppl.
    Fig. 14): rows {system, notation, alpha, rule, misfit, model_error (mean over particles),
    mean_density_um2}, sorted by model error (the same list on every rank).

    With ``alpha: auto`` the weight is chosen by the configured rule for the first system
    (default order: D, a, ac+, ac-) and then used for all: equal regularisation of the slip
    fields, so that the model errors compare the systems and not the alpha choices.
    """
    from chemomech.slip import IN_PLANE_SYSTEMS

    base = settings or M2Settings.from_config(config)
    labels = list(systems or IN_PLANE_SYSTEMS)
    rows, alpha, rule = [], base.alpha, None
    for label in labels:
        s = M2Settings(**{k: getattr(base, k) for k in M2Settings.__slots__} |
                       {"slip_systems": (label,), "alpha": alpha})
        out = run_m2(prepared, config, comm, m1_result=m1_result, settings=s)
        if alpha == "auto":
            alpha, rule = out.fit.regularisation.alpha, out.summary["regularisation"]["rule"]
            rule = f"{rule} ({label})"
        row = None
        if comm.rank == 0:
            error = float(np.mean(list(out.model_error.values())))
            row = {"system": label, "notation": slip_system(label).notation(),
                   "alpha": out.fit.regularisation.alpha, "rule": rule or "fixed",
                   "misfit": out.fit.misfit, "model_error": error,
                   "mean_density_um2": out.summary["mean_density_um2"]}
        rows.append(comm.bcast(row, root=0))
    return sorted(rows, key=lambda r: r["model_error"])
