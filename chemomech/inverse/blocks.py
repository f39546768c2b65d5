r"""The custom pyadjoint blocks of the inverse problems (forward, adjoint, TLM and Hessian rules).

* `ReplicateBlock`: replicated mesh-free controls; the adjoint sums over COMM_WORLD.
* `EigenstrainSolveBlock`: coefficients -> u = A^+ sum_k a_k b_k (factorised operator).
* `PixelMisfitBlock`: u -> 1/2 |P(Bu - d)|^2.
* `GroupSumBlock`: the particle costs summed over the particle groups.
* `SlipSolveBlock` (M2): (a, gamma_s) -> u = A^+(sum a_k b_k + sum_s K_s gamma_s).
* `LatticeMisfitBlock` (M2): (u, gamma_s) -> 1/2 |P(Bu - sum_s G_s gamma_s - d)|^2, the
  misfit on the lattice distortion grad u - beta_p.
* `RegularisationBlock` (M2): gamma -> R(gamma).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import dolfinx_adjoint as dxa
import numpy as np
from dolfinx import fem
from mpi4py import MPI
from pyadjoint import AdjFloat, Block

from chemomech.inverse.misfit import PixelMisfit

if TYPE_CHECKING:  # the particles the blocks act on (duck-typed; no runtime import)
    from chemomech.dislocations.lattice import LatticeMisfit
    from chemomech.dislocations.particle import SlipParticle
    from chemomech.inverse.particle import _Particle


class ReplicateBlock(Block):
    """Copies of the replicated controls; the adjoint sums group sensitivities over the world."""

    def __init__(self, controls: Sequence[AdjFloat], world: MPI.Comm, group: MPI.Comm):
        super().__init__()
        self.world, self.group = world, group
        for c in controls:
            self.add_dependency(c)

    def __str__(self):
        return "replicate controls over particle groups"

    def recompute_component(self, inputs, block_variable, idx, prepared):
        return float(inputs[idx])

    def prepare_evaluate_adj(self, inputs, adj_inputs, relevant_dependencies):
        local = np.array([0.0 if a is None else float(a) for a in adj_inputs])
        if self.group.rank != 0:
            local[:] = 0.0
        return self.world.allreduce(local, op=MPI.SUM)

    def evaluate_adj_component(self, inputs, adj_inputs, block_variable, idx, prepared=None):
        return float(prepared[idx])

    def evaluate_tlm_component(self, inputs, tlm_inputs, block_variable, idx, prepared=None):
        return tlm_inputs[idx]

    def prepare_evaluate_hessian(self, inputs, hessian_inputs, adj_inputs,
                                 relevant_dependencies):
        return self.prepare_evaluate_adj(inputs, hessian_inputs, relevant_dependencies)

    def evaluate_hessian_component(self, inputs, hessian_inputs, adj_inputs, block_variable,
                                   idx, relevant_dependencies, prepared=None):
        return float(prepared[idx])


def replicated_controls(values: Sequence[float], tape, world: MPI.Comm, group: MPI.Comm
                        ) -> tuple[list[AdjFloat], list[AdjFloat]]:
    """Controls a (AdjFloats) and their per-group copies, joined by a `ReplicateBlock` on
    `tape`: the model is built from the copies, the ReducedFunctional takes the controls."""
    controls = [AdjFloat(float(v)) for v in values]
    replicate = ReplicateBlock(controls, world, group)
    tape.add_block(replicate)
    copies = [AdjFloat(float(v)) for v in values]
    for c in copies:
        replicate.add_output(c.block_variable)
    return controls, copies


class EigenstrainSolveBlock(Block):
    r"""Coefficients -> u = A^+ \sum_k a_k b_k; adjoint dJ/da_k = b_k . A^+ g."""

    def __init__(self, particle: _Particle, coefficients: Sequence[AdjFloat]):
        super().__init__()
        self.particle = particle
        for c in coefficients:
            self.add_dependency(c)

    def __str__(self):
        return f"eigenstrain solve ({self.particle.setup.name})"

    def recompute_component(self, inputs, block_variable, idx, prepared):
        u = dxa.Function(self.particle.V, name="u")
        self.particle.solve([float(a) for a in inputs], u)
        return u

    def prepare_evaluate_adj(self, inputs, adj_inputs, relevant_dependencies):
        return self.particle.solve_adjoint(adj_inputs[0])

    def evaluate_adj_component(self, inputs, adj_inputs, block_variable, idx, prepared=None):
        return float(self.particle.loads[idx].dot(prepared.x.petsc_vec))

    def evaluate_tlm_component(self, inputs, tlm_inputs, block_variable, idx, prepared=None):
        if all(t is None for t in tlm_inputs):
            return None
        du = dxa.Function(self.particle.V, name="du")
        self.particle.solve([0.0 if t is None else float(t) for t in tlm_inputs], du,
                            homogeneous=True)
        return du

    def prepare_evaluate_hessian(self, inputs, hessian_inputs, adj_inputs,
                                 relevant_dependencies):
        # the state equation is linear in u and in a: no second-derivative terms
        return self.particle.solve_adjoint(hessian_inputs[0])

    def evaluate_hessian_component(self, inputs, hessian_inputs, adj_inputs, block_variable,
                                   idx, relevant_dependencies, prepared=None):
        return float(self.particle.loads[idx].dot(prepared.x.petsc_vec))


class PixelMisfitBlock(Block):
    r"""u -> J = \tfrac12|P(Bu - d)|^2; adjoint B^T P (Bu - d)."""

    def __init__(self, misfit: PixelMisfit, u: fem.Function):
        super().__init__()
        self.misfit = misfit
        self.add_dependency(u)

    def __str__(self):
        return f"pixel misfit ({self.misfit.name})"

    def recompute_component(self, inputs, block_variable, idx, prepared):
        return self.misfit.cost(inputs[0])

    def evaluate_adj_component(self, inputs, adj_inputs, block_variable, idx, prepared=None):
        scale = 1.0 if adj_inputs[0] is None else float(adj_inputs[0])
        g = self.misfit.gradient(inputs[0], scale=scale)
        out = dxa.Function(self.misfit.V).x  # a dolfinx_adjoint dual vector
        out.array[:] = g.array
        return out

    def evaluate_tlm_component(self, inputs, tlm_inputs, block_variable, idx, prepared=None):
        if tlm_inputs[0] is None:
            return None
        r = self.misfit.residual(inputs[0])
        return self.misfit.comm.allreduce(float(r @ (self.misfit.B @ tlm_inputs[0].x.array)))

    def evaluate_hessian_component(self, inputs, hessian_inputs, adj_inputs, block_variable,
                                   idx, relevant_dependencies, prepared=None):
        # d2J/du2 [du] = B^T P B du, plus the second-order input times the gradient
        m = self.misfit
        adj = 0.0 if adj_inputs[0] is None else float(adj_inputs[0])
        hess = 0.0 if hessian_inputs[0] is None else float(hessian_inputs[0])
        values = hess * m.residual(inputs[0])
        du = block_variable.tlm_value
        if du is not None and adj != 0.0:
            values = values + adj * m.project(m.B @ du.x.array)
        out = dxa.Function(m.V).x
        out.array[:] = m.apply_transpose(values).array
        return out


class GroupSumBlock(Block):
    """J = sum over particle groups of the groups' costs (COMM_WORLD)."""

    def __init__(self, costs: Sequence[AdjFloat], world: MPI.Comm, group: MPI.Comm):
        super().__init__()
        self.world, self.group = world, group
        for c in costs:
            self.add_dependency(c)

    def __str__(self):
        return "sum over particle groups"

    def _sum(self, values) -> float:
        local = sum(0.0 if v is None else float(v) for v in values)
        return self.world.allreduce(local if self.group.rank == 0 else 0.0, op=MPI.SUM)

    def recompute_component(self, inputs, block_variable, idx, prepared):
        return self._sum(inputs)

    def evaluate_adj_component(self, inputs, adj_inputs, block_variable, idx, prepared=None):
        return adj_inputs[0]

    def evaluate_tlm_component(self, inputs, tlm_inputs, block_variable, idx, prepared=None):
        return self._sum(tlm_inputs)

    def evaluate_hessian_component(self, inputs, hessian_inputs, adj_inputs, block_variable,
                                   idx, relevant_dependencies, prepared=None):
        return hessian_inputs[0]


class SlipSolveBlock(Block):
    r"""(a, gamma_s) -> u = A^+(b_0 + \sum a_k b_k + \sum_s K_s gamma_s); adjoint b_k.lambda,
    K_s^T lambda; tangent linear without the fixed load b_0."""

    def __init__(self, particle: SlipParticle, coefficients: Sequence[AdjFloat],
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
        return self.particle.solve(coefficients, tlm_inputs[self.n_c:], du, homogeneous=True)


class LatticeMisfitBlock(Block):
    r"""(u, gamma_s) -> J = \tfrac12|r|^2, r = P(B u - \sum_s G_s\gamma_s - d); adjoint
    B^T r (u) and -G_s^T r (gamma_s); tangent r . (B du - sum_s G_s dgamma_s)."""

    def __init__(self, misfit: LatticeMisfit, u: fem.Function, gammas: Sequence[fem.Function]):
        super().__init__()
        self.misfit = misfit
        self.add_dependency(u)
        for g in gammas:
            self.add_dependency(g)

    def __str__(self):
        return f"lattice-distortion misfit ({self.misfit.name})"

    def recompute_component(self, inputs, block_variable, idx, prepared):
        return self.misfit.cost(inputs[0], inputs[1:])

    def prepare_evaluate_adj(self, inputs, adj_inputs, relevant_dependencies):
        scale = 1.0 if adj_inputs[0] is None else float(adj_inputs[0])
        return scale * self.misfit.residual(inputs[0], inputs[1:])

    def evaluate_adj_component(self, inputs, adj_inputs, block_variable, idx, prepared=None):
        if idx == 0:
            return self.misfit.gradient_u(prepared)
        return self.misfit.gradient_gamma(idx - 1, prepared)

    def evaluate_tlm_component(self, inputs, tlm_inputs, block_variable, idx, prepared=None):
        if all(t is None for t in tlm_inputs):
            return None
        m = self.misfit
        r = m.residual(inputs[0], inputs[1:])
        du = tlm_inputs[0]
        d = m.B @ du.x.array if du is not None else np.zeros_like(r)
        for G, dg in zip(m.G, tlm_inputs[1:], strict=True):
            if dg is not None:
                d = d - G @ dg.x.array
        return m.comm.allreduce(float(r @ d))


class RegularisationBlock(Block):
    """gamma -> R(gamma); adjoint dR/dgamma (UFL derivative), tangent dR . dgamma."""

    def __init__(self, particle: SlipParticle, gamma: fem.Function):
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
