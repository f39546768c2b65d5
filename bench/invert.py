"""Benchmark: the M1 inversion of the real particle LFP50_P2 (225 x 125 maps, 16.6 nm pixels).

Times (max over ranks, JIT cache warm: everything is run once before timing):
  forward      one forward solve from scratch: assemble + factorise K, assemble the
               eigenstrain load, solve (the unit of the ratios)
  backsolve    one further solve with the factorisation (what every adjoint/TAO step pays)
  model        M1Model setup: K assembled + factorised once, 2(N+1) basis loads
  tao          adjoint-gradient PETSc TAO (BLMVM) fit, no covariance
  linear       linear fast path: 2(N+1) back-substitutions + normal equations
  inversion_*  model + fit: the full M1 inversion once the data are on the mesh
Also: TAO iterations, objective evaluations, relative difference TAO vs linear.

Run on 1 and 2 ranks (results are merged into bench/results/invert.json by rank count):
  scripts/in-env python3 bench/invert.py
  scripts/in-env mpirun -n 2 python3 bench/invert.py
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # BLAS threads on 2 shared cores only contend

import json  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from chemomech.correlative.displacement import measured_displacement  # noqa: E402
from chemomech.inverse.particle import particle_setup  # noqa: E402
from chemomech.inverse.problem import M1Model  # noqa: E402
from chemomech.io.readers import read_reference_mat  # noqa: E402
from chemomech.io.results import versions, write_json_atomic  # noqa: E402
from chemomech.mechanics.forms import eigenstrain, stiffness_tensor  # noqa: E402
from chemomech.mechanics.forward import ElasticityProblem  # noqa: E402
from chemomech.mechanics.materials import Material  # noqa: E402
from chemomech.mechanics.mesh import mesh_from_mask  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "invert.json"
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "LFP50_P2.mat"
DEGREE = 2
REPEATS = 3


def timed(comm, fn):
    """(result, max over ranks of the best wall time of REPEATS calls) of fn()."""
    best, out = np.inf, None
    for _ in range(REPEATS):
        comm.Barrier()
        t0 = time.perf_counter()
        out = fn()
        elapsed = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        best = min(best, elapsed)
    return out, best


def main() -> dict:
    comm = MPI.COMM_WORLD
    particle = read_reference_mat(REAL)
    t0 = time.perf_counter()
    u_data = measured_displacement(particle).u
    t_integrate = time.perf_counter() - t0
    pm = mesh_from_mask(particle.mask, particle.pixel_size_nm, comm)
    setup = particle_setup(particle.name, pm, particle.X, particle.rotation_rad,
                           displacement=u_data, edge_exclusion_px=2)
    material = Material()
    C = stiffness_tensor(material.image_tensor(particle.rotation_rad))
    a_vegard = [-0.0247, 0.0247, 0.0]
    c_vegard = [0.0102, -0.0102, 0.0]

    def forward():
        problem = ElasticityProblem(pm.mesh, C, degree=1)
        return problem, problem.solve(eigenstrain(setup.X, a_vegard, c_vegard,
                                                  particle.rotation_rad))

    (problem, _), t_forward = timed(comm, forward)
    b = problem.load_vector(eigenstrain(setup.X, a_vegard, c_vegard, particle.rotation_rad))
    _, t_backsolve = timed(comm, lambda: problem.solve_vector(b.copy()))

    model, t_model = timed(comm, lambda: M1Model([setup], degree=DEGREE, comm=comm))
    linear, t_linear_cold = timed(comm, lambda: _cold_linear(model))
    tao, t_tao = timed(comm, lambda: model.fit("tao", with_normal_matrix=False))
    evaluations = model._evaluations
    rel = float(np.linalg.norm(tao.coefficients - linear.coefficients)
                / np.linalg.norm(linear.coefficients))
    n_dofs = problem.num_dofs
    used = comm.allreduce(setup.misfit.d.size) // 2
    run = {
        "ranks": comm.size,
        "pixels_meshed": int(pm.mask.sum()), "pixels_used": int(used),
        "cells": int(pm.mesh.topology.index_map(2).size_global), "dofs": int(n_dofs),
        "legendre_degree": DEGREE,
        "time_s": {"integrate_gradient": t_integrate, "forward": t_forward,
                   "backsolve": t_backsolve, "model": t_model, "linear": t_linear_cold,
                   "tao": t_tao, "inversion_tao": t_model + t_tao,
                   "inversion_linear": t_model + t_linear_cold},
        "ratio_to_forward": {"inversion_tao": (t_model + t_tao) / t_forward,
                             "inversion_linear": (t_model + t_linear_cold) / t_forward,
                             "tao_fit_only": t_tao / t_forward,
                             "backsolve": t_backsolve / t_forward},
        "tao_iterations": tao.iterations, "tao_evaluations": evaluations,
        "tao_vs_linear_relative": rel,
        "coefficients_linear": {"a": linear.coefficients_a.tolist(),
                                "c": linear.coefficients_c.tolist()},
        "coefficients_tao": {"a": tao.coefficients_a.tolist(),
                             "c": tao.coefficients_c.tolist()},
        "J": tao.cost,
    }
    return run


def _cold_linear(model):
    """The linear fast path without its cached basis responses."""
    model._system = None
    return model.fit("linear", with_normal_matrix=False)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    run = main()
    if MPI.COMM_WORLD.rank == 0:
        data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        data.setdefault("runs", {})[str(run["ranks"])] = run
        data["particle"] = "LFP50_P2 (shared/data), displacement misfit, edge exclusion 2 px, P1"
        data["versions"] = versions()
        write_json_atomic(RESULTS, data)
        t, r = run["time_s"], run["ratio_to_forward"]
        print(f"{run['ranks']} rank(s): {run['dofs']} DOFs, {run['pixels_used']} px; "
              f"forward {t['forward']:.3f} s, backsolve {t['backsolve']:.4f} s; "
              f"inversion TAO {t['inversion_tao']:.3f} s = {r['inversion_tao']:.1f} forward "
              f"({run['tao_iterations']} it, {run['tao_evaluations']} evals), "
              f"linear {t['inversion_linear']:.3f} s = {r['inversion_linear']:.1f} forward; "
              f"TAO vs linear {run['tao_vs_linear_relative']:.1e}")
