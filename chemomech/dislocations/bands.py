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
particles: per particle one solve :math:`H_{\gamma\gamma} X = C` with 2(N+1) right-hand sides,
by block conjugate gradients (one Krylov space for all columns: about half the iterations of
one CG per column), matrix-free: each block product is one forward and one adjoint
multi-RHS back-substitution for all columns (MUMPS MatMatSolve reads the factor once),
preconditioned by the slip block of the LMVM initial Hessian (:math:`\alpha L + \beta M`
per system, also applied to all columns at once); on a traction-free particle the
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
from typing import Literal

import numpy as np

from chemomech.dislocations.model import M2Model

logger = logging.getLogger(__name__)


class _SlipHessian:
    """H_gg = J_g^T J_g + R'' of one particle (all its systems) and its preconditioner, on
    blocks of columns (owned slip values, system-major, x m)."""

    def __init__(self, model: M2Model, index: int):
        self.p = model.particles[index]
        self.n = self.p.n_owned
        self.n_s = len(self.p.systems)
        # R'' per system at the fit, assembled once (not one vector assembly per product)
        self.reg = [self.p.regularisation_hessian(g) for g in model.gammas[index]]
        self.n_global = self.p.comm.allreduce(self.n)
        self.timings = {"hessian_products": 0.0, "hessian_product_s": 0.0,
                        "preconditioner_s": 0.0}

    def release(self) -> None:
        for m in self.reg:
            m.destroy()

    def _split(self, X: np.ndarray) -> list[np.ndarray]:
        return [X[k * self.n:(k + 1) * self.n] for k in range(self.n_s)]

    def mult(self, X: np.ndarray) -> np.ndarray:
        """H X: one multi-RHS forward and one adjoint back-substitution for all columns."""
        t0 = time.perf_counter()
        D = self._split(X)
        out = self.p.slip_jacobian_transpose_columns(self.p.slip_jacobian_columns(D))
        for k, (o, d) in enumerate(zip(out, D, strict=True)):
            o += _sparse_columns(self.reg[k], d)
        self.timings["hessian_products"] += 1
        self.timings["hessian_product_s"] += time.perf_counter() - t0
        return np.concatenate(out)

    def precondition(self, R: np.ndarray) -> np.ndarray:
        """S^-1 R per system (`SlipParticle.apply_preconditioner_columns`)."""
        t0 = time.perf_counter()
        out = np.concatenate([self.p.apply_preconditioner_columns(k, r)
                              for k, r in enumerate(self._split(R))])
        self.timings["preconditioner_s"] += time.perf_counter() - t0
        return out

    def remove_null_space(self, X: np.ndarray, traction_free: bool) -> None:
        """Traction-free: remove the uniform slip of every system (the operator's null space)
        from the columns of X, in place."""
        if traction_free:
            for x in self._split(X):
                x -= self.p.comm.allreduce(x.sum(axis=0)) / self.n_global


def _sparse_columns(A, X: np.ndarray) -> np.ndarray:
    """A X for a PETSc AIJ matrix and owned-row columns X (numpy)."""
    x, y = A.createVecs()
    out = np.empty_like(X)
    for j in range(X.shape[1]):
        x.array[:] = X[:, j]
        A.mult(x, y)
        out[:, j] = y.array
    x.destroy()
    y.destroy()
    return out


def simultaneous_cg(mult, precondition, project, B: np.ndarray, comm, rtol: float,
                    max_it: int, batch: int | None = None) -> tuple[np.ndarray, list[int],
                                                                       list[int]]:
    """Solve H x_j = b_j for the columns of `B` by preconditioned CG, each column its own CG
    (PETSc KSPCG's recurrences: zero initial guess, preconditioned residual norm, converged
    when |M^-1 r| <= rtol |M^-1 b|, the null space removed by `project` from the right-hand
    side and every preconditioned residual), run together: one `mult` and one `precondition`
    per iteration on the block of the columns not yet converged, so the back-substitutions of
    all columns share one multi-RHS solve.  `batch` columns at a time (None: all; 1: one after
    the other).  Returns (X, iterations, reasons) per column, reason 2 converged (rtol),
    -3 max_it, -8 indefinite (PETSc's codes).  Dot products summed over `comm`."""
    n, m = B.shape
    batch = m if batch is None else max(1, int(batch))
    X = np.zeros_like(B)
    its, reasons = [0] * m, [0] * m

    def dots(U, V):
        return comm.allreduce(np.einsum("ij,ij->j", U, V))

    for first in range(0, m, batch):
        cols = list(range(first, min(first + batch, m)))
        R = B[:, cols].copy()
        project(R)
        Z = precondition(R)
        project(Z)
        norm0 = np.sqrt(dots(Z, Z))
        rho = dots(Z, R)
        P = np.zeros_like(R)
        rho_old = np.ones(len(cols))
        for j in range(len(cols)):
            if norm0[j] == 0.0:  # a zero right-hand side: x = 0
                reasons[cols[j]] = 2
        active = [j for j in range(len(cols)) if reasons[cols[j]] == 0]
        it = 0
        while active:
            a = np.array(active)
            if it == 0:
                P[:, a] = Z[:, a]
            else:
                P[:, a] = Z[:, a] + (rho[a] / rho_old[a]) * P[:, a]
            W = mult(P[:, a])
            curvature = dots(P[:, a], W)
            step = rho[a] / np.where(curvature > 0, curvature, 1.0)
            X[:, [cols[j] for j in a]] += step * P[:, a]
            R[:, a] -= step * W
            Za = precondition(R[:, a])
            project(Za)
            Z[:, a] = Za
            it += 1
            norm = np.sqrt(dots(Za, Za))
            rho_old[a] = rho[a]
            rho[a] = dots(Za, R[:, a])
            still = []
            for i, j in enumerate(a):
                if curvature[i] <= 0:
                    reasons[cols[j]] = -8
                elif norm[i] <= rtol * norm0[j]:
                    reasons[cols[j]] = 2
                elif it >= max_it:
                    reasons[cols[j]] = -3
                else:
                    still.append(int(j))
                if reasons[cols[j]] != 0:
                    its[cols[j]] = it
            active = still
    return X, its, reasons


def _orthonormal(Y: np.ndarray, comm, drop: float = 1e-10) -> np.ndarray:
    """An orthonormal basis of the column space of Y (owned rows x m) over `comm`: columns
    scaled to unit norm, eigenvectors of their Gram matrix with eigenvalue > `drop` (nearly
    dependent directions are dropped), Y V L^-1/2."""
    norms = np.sqrt(comm.allreduce(np.einsum("ij,ij->j", Y, Y)))
    Y = Y[:, norms > 0] / norms[norms > 0]
    lam, V = np.linalg.eigh(comm.allreduce(Y.T @ Y))
    keep = lam > drop * max(lam.max(initial=0.0), 1.0)
    return Y @ (V[:, keep] / np.sqrt(lam[keep]))


def block_cg(mult, precondition, project, B: np.ndarray, comm, rtol: float, max_it: int
             ) -> tuple[np.ndarray, list[int], list[int]]:
    r"""Solve H X = B by breakdown-free block preconditioned CG (Ji & Li, 2017): one search
    space for all columns, :math:`P_{k+1} = \mathrm{orth}(Z_{k+1} - P_k (P_k^T H P_k)^{-1}
    (H P_k)^T Z_{k+1})` with the preconditioned residuals Z = M^-1 R, nearly dependent
    directions dropped; column j converged when |z_j| <= rtol |z_j^0| (KSPCG's preconditioned
    norm), the block iterates until all are.  One `mult` and one `precondition` per iteration
    on the whole block.  Returns (X, iterations at which each column converged, reasons as in
    `simultaneous_cg`)."""
    m = B.shape[1]

    def gram(U, V):
        return comm.allreduce(U.T @ V)

    X = np.zeros_like(B)
    R = B.copy()
    project(R)
    Z = precondition(R)
    project(Z)
    norm0 = np.sqrt(comm.allreduce(np.einsum("ij,ij->j", Z, Z)))
    its = [0] * m
    reasons = [2 if n == 0 else 0 for n in norm0]
    P = _orthonormal(Z, comm)
    it = 0
    while 0 in reasons and P.shape[1] > 0:
        Q = mult(P)
        PQ = gram(P, Q)
        if np.any(np.linalg.eigvalsh(0.5 * (PQ + PQ.T)) <= 0):
            reasons = [-8 if r == 0 else r for r in reasons]
            break
        step = np.linalg.solve(PQ, gram(P, R))
        X += P @ step
        R -= Q @ step
        Z = precondition(R)
        project(Z)
        it += 1
        norm = np.sqrt(comm.allreduce(np.einsum("ij,ij->j", Z, Z)))
        for j in range(m):
            if reasons[j] == 0 and (norm[j] <= rtol * norm0[j] or it >= max_it):
                reasons[j] = 2 if norm[j] <= rtol * norm0[j] else -3
                its[j] = it
        P = _orthonormal(Z - P @ np.linalg.solve(PQ, gram(Q, Z)), comm)
    # no search direction left before a column met rtol: report it as not converged
    its = [n if r else it for n, r in zip(its, reasons, strict=True)]
    return X, its, [r if r else -3 for r in reasons]


def m2_covariance(model: M2Model, rtol: float = 1e-6, max_it: int = 5000,
                  method: Literal["block", "columns"] = "block", batch: int | None = None
                  ) -> tuple[np.ndarray, float, dict]:
    """(Cov(a) = sigma^2 [H^-1]_aa, sigma^2, info) at the model's current state (after a fit:
    coefficients, slip fields and alpha), collective on the world.  The 2(N+1) solves with
    H_gg of a particle: `method` "block" (default), one block CG over all columns
    (`block_cg`); "columns", one CG per column (`simultaneous_cg`, `batch` columns at a time;
    None: all together, 1: one after the other).  `info`: the method (cg_method), CG
    iterations per particle and coefficient, the time and its parts (this rank, summed over
    its particles): block Hessian products (count, s; each one multi-RHS forward and one
    adjoint back-substitution), preconditioner applications (s)."""
    if method not in ("block", "columns"):
        raise ValueError(f"method must be 'block' or 'columns', got {method!r}")
    t0 = time.perf_counter()
    pairs, _, _ = model._layout()
    model._update_preconditioner(pairs)  # the slip block of H0 at the current alpha
    n_c = model.num_coefficients
    normal = np.zeros((n_c, n_c))
    schur = np.zeros((n_c, n_c))
    iterations = []
    timings = {"hessian_products": 0.0, "hessian_product_s": 0.0, "preconditioner_s": 0.0}
    for i, (p, Ja) in enumerate(zip(model.particles, model.coefficient_columns(), strict=True)):
        comm = p.comm
        H = _SlipHessian(model, i)

        def project(X, H=H, p=p):
            H.remove_null_space(X, traction_free=not p.dirichlet)

        C = np.concatenate(p.slip_jacobian_transpose_columns(Ja))
        if method == "block":
            X, its, reasons = block_cg(H.mult, H.precondition, project, C, comm, rtol, max_it)
        else:
            X, its, reasons = simultaneous_cg(H.mult, H.precondition, project, C, comm, rtol,
                                              max_it, batch)
        for k, reason in enumerate(reasons):
            if reason < 0:
                logger.warning("%s: CG for the M2 band did not converge (coefficient %d, "
                               "reason %d)", p.name, k, reason)
        iterations += its
        part_schur = comm.allreduce(C.T @ X)
        part_normal = comm.allreduce(Ja.T @ Ja)
        if model.group.rank == 0:
            schur += 0.5 * (part_schur + part_schur.T)
            normal += part_normal
        timings = {k: v + H.timings[k] for k, v in timings.items()}
        H.release()
    normal = model.world.allreduce(normal)
    schur = model.world.allreduce(schur)
    n_obs = model._world_sum(sum(p.misfit.num_observations for p in model.particles))
    misfit = float(sum(model.misfits().values()))
    T = model.gauge_transform()[0]
    sigma2 = 2.0 * misfit / max(n_obs - T.shape[1], 1)
    cov = sigma2 * T @ np.linalg.inv(T.T @ (normal - schur) @ T) @ T.T
    info = {"cg_method": method,
            "cg_iterations": [int(n) for part in model.world.allgather(
                iterations if model.group.rank == 0 else []) for n in part],
            "time_s": time.perf_counter() - t0} | timings
    return cov, sigma2, info
