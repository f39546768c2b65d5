"""One particle of M2: slip-load matrices, the lattice misfit, the slip regulariser and the
H1-type preconditioner of its slip block (built on M1's factorised particle)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import dolfinx_adjoint as dxa
import numpy as np
import ufl
from dolfinx import fem, la
from dolfinx.fem import petsc as fem_petsc
from mpi4py import MPI
from petsc4py import PETSc

from chemomech.dislocations.lattice import LatticeData, LatticeMisfit, distortion_tensor
from chemomech.dislocations.settings import Regularisation
from chemomech.mechanics.forms import eigenstrain_load_form
from chemomech.mechanics.forward import solve_columns
from chemomech.mechanics.slip import InPlaneSlipSystem

logger = logging.getLogger(__name__)


def _ghosted(work: fem.Function, owned: np.ndarray) -> np.ndarray:
    """Columns of owned values (owned DOFs x m) with their ghost values appended (local DOFs
    x m, the layout of `work.x.array`), one forward scatter per column."""
    n = owned.shape[0]
    out = np.empty((work.x.array.size, owned.shape[1]))
    for j in range(owned.shape[1]):
        work.x.array[:n] = owned[:, j]
        work.x.scatter_forward()
        out[:, j] = work.x.array
    return out


def _owned_sum(work: fem.Function, local: np.ndarray) -> np.ndarray:
    """Columns of local contributions (local DOFs x m) summed onto their owners (owned DOFs x
    m), one reverse scatter per column."""
    n = work.x.index_map.size_local * work.x.block_size
    out = np.empty((n, local.shape[1]))
    for j in range(local.shape[1]):
        work.x.array[:] = local[:, j]
        work.x.scatter_reverse(la.InsertMode.add)
        out[:, j] = work.x.array[:n]
    return out


class SlipParticle:
    r"""Slip-load matrices K_s, slip space, lattice misfit and regularisation forms of one
    particle.

    `base`: M1's particle (`chemomech.inverse.particle._Particle`: factorised operator, basis
    loads and fixed load b_0, reused as they are); `data`: its measured lattice distortion; the
    slip loads are
    :math:`(K_s)_{ij} = \int C:(\phi_j\,\mathrm{sym}(\hat s\otimes\hat n)):\varepsilon(v_i)\,dx`
    with the particle's stiffness C (C(X) for ``stiffness: mixed``, the plane-strain reduction)
    and, with Dirichlet data, rows zero on the constrained DOFs (the slip response satisfies
    homogeneous boundary conditions, as the basis responses do).  With Dirichlet data the
    lattice misfit keeps the uniform rotation (the boundary data fix it, as they fix M1's rigid
    modes).
    """

    def __init__(self, base, systems: Sequence[InPlaneSlipSystem], reg: Regularisation,
                 data: LatticeData, theta_weight: float = 1.0):
        self.base = base
        self.name = base.setup.name
        self.rotation_rad = base.setup.rotation_rad
        mesh = base.setup.mesh
        self.Q = fem.functionspace(mesh, ("Lagrange", 1))
        self.systems = list(systems)
        v = ufl.TestFunction(base.V)
        q = ufl.TrialFunction(self.Q)
        self.dirichlet = base.setup.u_boundary is not None
        self.K = []
        for s in self.systems:
            schmid = ufl.as_matrix(s.schmid_tensor(self.rotation_rad).tolist())
            # bcs on the row space V zero the constrained rows (no diagonal: K is rectangular)
            K = fem_petsc.assemble_matrix(fem.form(
                eigenstrain_load_form(q * schmid, v, base.problem.C)), bcs=base.problem.bcs)
            K.assemble()
            self.K.append(K)
        self.n_owned = self.Q.dofmap.index_map.size_local
        self.tensors = [distortion_tensor(s, self.rotation_rad) for s in self.systems]
        self.misfit = LatticeMisfit(base.V, self.Q, data, self.tensors, theta_weight,
                                    rigid_rotation=not self.dirichlet)
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
        self.d2R = fem.form(ufl.derivative(ufl.derivative(R, self.g, ufl.TestFunction(
            self.Q)), self.g, ufl.TrialFunction(self.Q)))
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
        # work functions of the Jacobian products (a slip direction, a displacement)
        self._direction = fem.Function(self.Q)
        self._response = fem.Function(base.V)

    @property
    def comm(self) -> MPI.Comm:
        return self.base.setup.mesh.comm

    def solve(self, coefficients: Sequence[float], gammas: Sequence,
              u: fem.Function | None = None, homogeneous: bool = False) -> fem.Function:
        r"""u = A^+(b_0 + \sum_k a_k b_k + \sum_s K_s \gamma_s); `gammas` Functions on Q (or
        None); without M1's fixed load b_0 (Dirichlet data, plane-strain f_b) if `homogeneous`
        (the tangent-linear response)."""
        rhs = self.base._rhs
        rhs.zeroEntries()
        rhs.maxpy([float(c) for c in coefficients], self.base.loads)
        for K, g in zip(self.K, gammas, strict=True):
            if g is not None:
                K.multAdd(g.x.petsc_vec, rhs, rhs)
        if self.base.offset is not None and not homogeneous:
            rhs.axpy(1.0, self.base.offset)
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

    def regularisation_hessian(self, gamma) -> PETSc.Mat:
        """The matrix d2R/dgamma2 at gamma (owned rows; alpha L for h1, the TV Hessian at
        gamma for tv): assembled once, then one sparse product per Hessian action."""
        self._load(gamma)
        H = fem_petsc.assemble_matrix(self.d2R)
        H.assemble()
        return H

    def slip_jacobian(self, directions: Sequence[np.ndarray]) -> np.ndarray:
        """J_gamma dgamma = P(B A^+ sum_s K_s dgamma_s - sum_s G_s dgamma_s): the misfit rows
        (local) of slip directions (owned values per system)."""
        return self.slip_jacobian_columns([np.asarray(d)[:, None] for d in directions])[:, 0]

    def slip_jacobian_transpose(self, rows: np.ndarray) -> list[np.ndarray]:
        """J_gamma^T v = K_s^T A^+ B^T v - G_s^T v per system (owned entries), v projected."""
        return [x[:, 0] for x in self.slip_jacobian_transpose_columns(np.asarray(rows)[:, None])]

    def slip_jacobian_columns(self, directions: Sequence[np.ndarray]) -> np.ndarray:
        """`slip_jacobian` of m directions at once: per system owned values (n_owned x m) ->
        misfit rows (local x m); the m forward solves are one multi-RHS back-substitution
        (`chemomech.mechanics.forward.solve_columns`).  Collective on the particle's
        communicator."""
        rhs = self.base._rhs
        loads = np.zeros((rhs.getLocalSize(), directions[0].shape[1]))
        direct = 0.0
        for K, G, d in zip(self.K, self.misfit.G, directions, strict=True):
            ghosted = _ghosted(self._direction, d)
            direct = direct - G @ ghosted
            for j in range(d.shape[1]):
                self._direction.x.array[:] = ghosted[:, j]
                K.mult(self._direction.x.petsc_vec, rhs)
                loads[:, j] += rhs.array
        U = self.base.problem.solve_columns(loads)
        return self.misfit.project(direct + self.misfit.B @ _ghosted(self._response, U))

    def slip_jacobian_transpose_columns(self, rows: np.ndarray) -> list[np.ndarray]:
        """`slip_jacobian_transpose` of m projected row vectors at once (local rows x m) -> per
        system owned entries (n_owned x m); the m adjoint solves are one multi-RHS
        back-substitution.  Collective on the particle's communicator."""
        lam_cols = self.base.problem.solve_columns(_owned_sum(self._response, self.misfit.B.T
                                                              @ rows))
        lam = _ghosted(self._response, lam_cols)
        out = []
        for K, G in zip(self.K, self.misfit.G, strict=True):
            x = _owned_sum(self._direction, -(G.T @ rows))
            for j in range(rows.shape[1]):
                self._response.x.array[:] = lam[:, j]
                K.multTranspose(self._response.x.petsc_vec, self._work)
                x[:, j] += self._work.array
            out.append(x)
        return out

    def apply_preconditioner_columns(self, k: int, r: np.ndarray) -> np.ndarray:
        """S_k^-1 R for m columns at once (owned rows x m; one multi-RHS back-substitution)."""
        return solve_columns(self._pc_ksp[k], r)
