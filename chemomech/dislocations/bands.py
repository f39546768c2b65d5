r"""Bands of M2's law: the joint Gauss-Newton covariance over (a, gamma), marginalised on a.

M2's misfit residual is linear in all controls, :math:`r = J_a a + J_\gamma\gamma - d`, and the
regulariser adds :math:`R''` (:math:`\alpha L` for H1; the TV Hessian at the fit).  The joint
Gauss-Newton matrix and its marginal on the coefficients are

.. math::

    H = \begin{pmatrix} J_a^T J_a & J_a^T J_\gamma \\ J_\gamma^T J_a &
        J_\gamma^T J_\gamma + R'' \end{pmatrix}, \qquad
    \mathrm{Cov}(a) = \sigma^2 [H^{-1}]_{aa}
      = \sigma^2 \big(J_a^T J_a - C^T H_{\gamma\gamma}^{-1} C\big)^{-1},
    \quad C = J_\gamma^T J_a,

i.e. the slip fields are integrated out with the regularisation as their prior (the a-gamma
correlation widens the band; M1's covariance rescaled would ignore it).  Slip fields of
different particles are independent, so :math:`H_{\gamma\gamma}` is block-diagonal over
particles: per particle 2(N+1) conjugate-gradient solves, matrix-free (each product one
forward and one adjoint back-substitution), preconditioned by the slip block of the LMVM
initial Hessian (:math:`\alpha L + \beta M` per system); on a traction-free particle the
uniform slip, which no measured quantity sees, is the operator's null space (removed; with
Dirichlet data the data see it).  Under a gauge (Dirichlet data, `M2Model.gauge_transform`
:math:`a = T z + t`) the marginal is taken in the free coefficients,
:math:`\mathrm{Cov}(a) = \sigma^2 T\,[T^T(J_a^T J_a - C^T H_{\gamma\gamma}^{-1} C)T]^{-1} T^T`.
The noise variance is :math:`\sigma^2 = 2 J_\mathrm{misfit} / (n_\mathrm{obs} - n_a)` from the
M2 residual (:math:`n_a` = 2(N+1), or 2N under a gauge): it
does not count the slip fields' effective degrees of freedom and treats the residual as white,
so on real data, where model error dominates the residual, the band is conditional on these
assumptions and on alpha.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from petsc4py import PETSc

from chemomech.dislocations.model import M2Model

logger = logging.getLogger(__name__)


class _SlipHessian:
    """PETSc shell context of H_gg = J_g^T J_g + R'' of one particle (all its systems)."""

    def __init__(self, model: M2Model, index: int):
        self.p = model.particles[index]
        self.gammas = model.gammas[index]
        self.n = self.p.n_owned
        self.n_s = len(self.p.systems)
        # R'' per system at the fit, assembled once (not one vector assembly per product)
        self.reg = [self.p.regularisation_hessian(g) for g in self.gammas]
        self._x, self._y = self.reg[0].createVecs()

    def release(self) -> None:
        """Free the R'' matrices (not `destroy`: petsc4py calls that on the shell's Mat/PC)."""
        for m in self.reg:
            m.destroy()
        self._x.destroy()
        self._y.destroy()

    def _reg_product(self, k: int, d: np.ndarray) -> np.ndarray:
        self._x.array[:] = d
        self.reg[k].mult(self._x, self._y)
        return self._y.array.copy()

    def _split(self, x) -> list[np.ndarray]:
        a = x.getArray(readonly=True)
        return [a[k * self.n:(k + 1) * self.n].copy() for k in range(self.n_s)]

    def mult(self, mat, x, y):
        d = self._split(x)
        rows = self.p.slip_jacobian(d)
        out = self.p.slip_jacobian_transpose(rows)
        out = [o + self._reg_product(k, dk) for k, (o, dk) in enumerate(zip(out, d, strict=True))]
        y.setArray(np.concatenate(out))

    def apply(self, pc, x, y):
        r = self._split(x)
        y.setArray(np.concatenate([self.p.apply_preconditioner(k, rk)
                                   for k, rk in enumerate(r)]))


def m2_covariance(model: M2Model, rtol: float = 1e-6, max_it: int = 5000
                  ) -> tuple[np.ndarray, float, dict]:
    """(Cov(a) = sigma^2 [H^-1]_aa, sigma^2, info) at the model's current state (after a fit:
    coefficients, slip fields and alpha), collective on the world.  `info`: CG iterations per
    particle and coefficient, the time."""
    t0 = time.perf_counter()
    pairs, _, _ = model._layout()
    model._update_preconditioner(pairs)  # the slip block of H0 at the current alpha
    n_c = model.num_coefficients
    normal = np.zeros((n_c, n_c))
    schur = np.zeros((n_c, n_c))
    iterations = []
    for i, (p, Ja) in enumerate(zip(model.particles, model.coefficient_columns(), strict=True)):
        comm = p.comm
        n_loc = p.n_owned * len(p.systems)
        ctx = _SlipHessian(model, i)
        H = PETSc.Mat().createPython([(n_loc, PETSc.DECIDE)] * 2, ctx, comm=comm)
        H.setUp()
        null = []
        for k in range(0 if p.dirichlet else len(p.systems)):
            v = H.createVecRight()
            a = np.zeros(n_loc)
            a[k * p.n_owned:(k + 1) * p.n_owned] = 1.0
            v.setArray(a)
            v.normalize()
            null.append(v)
        if null:
            H.setNullSpace(PETSc.NullSpace().create(vectors=null, comm=comm))
        ksp = PETSc.KSP().create(comm)
        ksp.setOperators(H)
        ksp.setType("cg")
        ksp.getPC().setType("python")
        ksp.getPC().setPythonContext(ctx)
        ksp.setTolerances(rtol=rtol, atol=0.0, max_it=max_it)
        rhs, sol = H.createVecRight(), H.createVecRight()
        C, X = np.zeros((n_loc, n_c)), np.zeros((n_loc, n_c))
        for k in range(n_c):
            C[:, k] = np.concatenate(p.slip_jacobian_transpose(Ja[:, k]))
            rhs.setArray(C[:, k])
            sol.zeroEntries()
            ksp.solve(rhs, sol)
            if ksp.getConvergedReason() < 0:
                logger.warning("%s: CG for the M2 band did not converge (reason %d)", p.name,
                               ksp.getConvergedReason())
            iterations.append(ksp.getIterationNumber())
            X[:, k] = sol.getArray()
        part_schur = comm.allreduce(C.T @ X)
        part_normal = comm.allreduce(Ja.T @ Ja)
        if model.group.rank == 0:
            schur += 0.5 * (part_schur + part_schur.T)
            normal += part_normal
        ksp.destroy()
        H.destroy()
        ctx.release()
    normal = model.world.allreduce(normal)
    schur = model.world.allreduce(schur)
    n_obs = model._world_sum(sum(p.misfit.num_observations for p in model.particles))
    misfit = float(sum(model.misfits().values()))
    T = model.gauge_transform()[0]
    sigma2 = 2.0 * misfit / max(n_obs - T.shape[1], 1)
    cov = sigma2 * T @ np.linalg.inv(T.T @ (normal - schur) @ T) @ T.T
    info = {"cg_iterations": [int(n) for part in model.world.allgather(
                iterations if model.group.rank == 0 else []) for n in part],
            "time_s": time.perf_counter() - t0}
    return cov, sigma2, info
