"""A distributed elasticity solve gives the serial answer (run under mpirun -n 2 by `make test`)."""

from __future__ import annotations

import numpy as np
import pytest
from dolfinx import fem, mesh
from mpi4py import MPI

from chemomech.mechanics.forms import eigenstrain, stiffness_tensor
from chemomech.mechanics.forward import ElasticityProblem, l2_norm
from chemomech.mechanics.materials import Material


def _displacement_norm(comm: MPI.Comm, solver: str) -> float:
    """|u|_L2 of a traction-free plate with a smooth two-phase eigenstrain."""
    domain = mesh.create_rectangle(comm, [[0.0, 0.0], [2.0, 1.0]], [24, 12],
                                   mesh.CellType.triangle)
    X = fem.Function(fem.functionspace(domain, ("Lagrange", 1)))
    X.interpolate(lambda x: 0.5 * (1 + np.tanh((x[0] - 1.0 + 0.3 * x[1]) / 0.1)))
    angle = 0.4
    C = stiffness_tensor(Material().image_tensor(angle))
    problem = ElasticityProblem(domain, C, degree=2, solver=solver)
    u = problem.solve(eigenstrain(X, [-0.025, 0.025, 0.003], [0.01, -0.01], angle))
    return l2_norm(u)


@pytest.mark.mpi
@pytest.mark.mpi_only  # serial vs COMM_WORLD: meaningful on >= 2 ranks only
@pytest.mark.parametrize("solver", ["lu", "gamg"])
def test_distributed_norm_equals_serial(solver):
    distributed = _displacement_norm(MPI.COMM_WORLD, solver)
    serial = _displacement_norm(MPI.COMM_SELF, solver)
    assert distributed > 1e-3  # a real, non-trivial displacement
    rtol = 1e-10 if solver == "lu" else 1e-8
    assert distributed == pytest.approx(serial, rel=rtol)
