"""`make demo`: the main job on the bundled default data.

Until the inversion lands this is a forward smoke run: a 2 x 1 um platelet, half
LiFePO4 and half FePO4 with a 120 nm tanh interface, Vegard eigenstrain, the
averaged Maxisch-Ceder stiffness rotated by 0.3 rad, traction-free.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

from chemomech.materials import Material, vegard_misfit
from chemomech.results import versions, write_json_atomic

logger = logging.getLogger(__name__)


def run_demo(output: str | Path, n_cells: int = 80) -> dict:
    """Solve the smoke problem and write `summary.json` and `fields.xdmf` to `output`."""
    import dolfinx
    import ufl
    from dolfinx import fem, mesh

    from chemomech.forms import eigenstrain, epsilon, sigma, stiffness_tensor
    from chemomech.forward import ElasticityProblem, l2_norm

    comm = MPI.COMM_WORLD
    t0 = time.perf_counter()
    length, width, interface_nm, angle = 2000.0, 1000.0, 120.0, 0.3
    domain = mesh.create_rectangle(comm, [[0.0, 0.0], [length, width]],
                                   [2 * n_cells, n_cells], mesh.CellType.triangle)
    Q = fem.functionspace(domain, ("Lagrange", 1))
    X = fem.Function(Q, name="X")
    X.interpolate(lambda x: 0.5 * (1 + np.tanh((x[0] - length / 2) / (interface_nm / 2))))
    misfit = vegard_misfit()
    # f(X) = misfit * (1 - X): P0 and P1 coefficients of the shifted Legendre series
    coeff_a = [misfit["a"] / 2, -misfit["a"] / 2]
    coeff_c = [misfit["c"] / 2, -misfit["c"] / 2]
    C = stiffness_tensor(Material().image_tensor(angle))
    problem = ElasticityProblem(domain, C, degree=1)
    eps_star = eigenstrain(X, coeff_a, coeff_c, angle)
    u = problem.solve(eps_star)
    elastic = epsilon(u) - eps_star
    energy = comm.allreduce(fem.assemble_scalar(fem.form(
        0.5 * ufl.inner(sigma(elastic, C), elastic) * ufl.dx)))
    elapsed = time.perf_counter() - t0

    output = Path(output)
    if comm.rank == 0:
        output.mkdir(parents=True, exist_ok=True)
    comm.barrier()
    with dolfinx.io.XDMFFile(comm, output / "fields.xdmf", "w") as xdmf:
        xdmf.write_mesh(domain)
        u_out = fem.Function(fem.functionspace(domain, ("Lagrange", 1, (2,))), name="u")
        u_out.interpolate(u)
        xdmf.write_function(u_out)
        xdmf.write_function(X)
    summary = {
        "job": "forward smoke run (inversion not yet available)",
        "mesh_cells": domain.topology.index_map(2).size_global,
        "dofs": problem.num_dofs,
        "solver": problem.solver,
        "displacement_l2_nm2": l2_norm(u),
        "elastic_energy_GPa_nm2": float(energy),
        "timings_s": {"total": elapsed},
        "versions": versions(),
    }
    if comm.rank == 0:
        write_json_atomic(output / "summary.json", summary)
        logger.info("demo: %d DOFs, |u|_L2 = %.4g nm^2, elastic energy %.4g GPa nm^2, %.2f s; "
                    "results in %s", summary["dofs"], summary["displacement_l2_nm2"],
                    summary["elastic_energy_GPa_nm2"], elapsed, output)
    return summary
