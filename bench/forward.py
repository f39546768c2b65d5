"""Benchmark: forward elasticity solve time and peak memory against DOFs (P1/P2, LU/GAMG).

Geometry: a synthetic platelet the size of the real particle (an ellipse with a hole,
~15 000 pixels of 16.6 nm) meshed at 1, 0.45 and 0.2 pixels, which gives P1 from ~6e4 to
~1e6 DOFs and P2 from ~2.3e5 to ~1e6 DOFs.  Each degree is solved once on the coarsest mesh
before timing (JIT cache warm).  Composition: a tanh interface (L2 projection of
the pixel image); eigenstrain: Vegard, averaged Maxisch-Ceder stiffness rotated by 0.3 rad,
traction-free (rigid modes removed by the null space).

Per case (max over ranks of the wall time, seconds):
  mesh      gmsh on rank 0 + distribution (once per mesh size)
  setup     ElasticityProblem: assemble K, attach the null space, factorise (LU) or set up
            GAMG
  solve     assemble the eigenstrain load and solve
  resolve   a second solve with the same operator (what each inverse iteration pays)
and peak RSS: the per-rank high-water mark during setup + solves, reset before each case
(/proc/self/clear_refs), summed over ranks ("peak_rss_mb") and the increase over the RSS
before the case ("delta_rss_mb": the solver's own memory).

Run on 1 and 2 ranks; rank 0 merges the run into bench/results/forward.json by rank count:
  scripts/in-env python3 bench/forward.py
  scripts/in-env mpirun -n 2 python3 bench/forward.py
`--compare SIZE_PX` times the legacy and the current GAMG options side by side on one P1 mesh
(0.2 px: ~1e6 DOFs), solve and re-solve with another load (key "gamg_compare"):
  scripts/in-env python3 bench/forward.py --compare 0.2
`--resolve SIZE_PX`: re-solves before / after the GAMG tuning, warm starts and Fischer's
guess (`resolve`), 1 and 2 ranks -> bench/results/forward_resolve.json:
  scripts/in-env python3 bench/forward.py --resolve 0.185
  scripts/in-env mpirun -n 2 python3 bench/forward.py --resolve 0.185
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # BLAS threads on 2 shared cores only contend

import ctypes  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from chemomech.io.results import versions, write_json_atomic  # noqa: E402
from chemomech.mechanics.fields import image_to_function  # noqa: E402
from chemomech.mechanics.forms import eigenstrain, stiffness_tensor  # noqa: E402
from chemomech.mechanics.forward import ElasticityProblem  # noqa: E402
from chemomech.mechanics.materials import Material, vegard_misfit  # noqa: E402
from chemomech.mechanics.mesh import mesh_from_mask  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "forward.json"
PIXEL_NM = 16.6
MESH_SIZES_PX = (1.0, 0.45, 0.2)
DEGREES = {1: MESH_SIZES_PX, 2: (1.0, 0.45)}
LU_MAX_DOFS = 1_100_000
ANGLE = 0.3


def platelet(shape=(225, 125)) -> tuple[np.ndarray, np.ndarray]:
    """Mask (ellipse 95 x 52 px with a hole of radius 8 px) and a tanh composition image."""
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    p, q = i - 112.0, j - 62.0
    mask = (p / 95.0) ** 2 + (q / 52.0) ** 2 < 1.0
    mask &= np.hypot(p - 30.0, q + 10.0) >= 8.0
    X = 0.5 * (1.0 + np.tanh((p + 0.5 * q) / 4.0))
    return mask, X


def _rss_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def _reset_peak_rss() -> bool:
    """Return freed heap to the OS (malloc_trim) and reset this process's peak RSS."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_case(comm, pm, X, degree: int, solver: str) -> dict:
    """Time setup and two solves; peak RSS of this case."""
    misfit = vegard_misfit()
    coeff_a = [misfit["a"] / 2, -misfit["a"] / 2]
    coeff_c = [misfit["c"] / 2, -misfit["c"] / 2]
    C = stiffness_tensor(Material().image_tensor(ANGLE))
    eps_star = eigenstrain(X, coeff_a, coeff_c, ANGLE)
    reset = _reset_peak_rss()
    comm.Barrier()
    base_kb = _rss_kb("VmRSS:")
    t0 = time.perf_counter()
    problem = ElasticityProblem(pm.mesh, C, degree=degree, solver=solver)
    t1 = time.perf_counter()
    u = problem.solve(eps_star)
    t2 = time.perf_counter()
    problem.solve(eps_star, u)
    t3 = time.perf_counter()
    peak_kb = _rss_kb("VmHWM:")
    elapsed = np.array([t1 - t0, t2 - t1, t3 - t2])
    comm.Allreduce(MPI.IN_PLACE, elapsed, op=MPI.MAX)
    case = {
        "degree": degree, "solver": solver, "dofs": problem.num_dofs,
        "iterations": problem.ksp.getIterationNumber(),
        "setup_s": float(elapsed[0]), "solve_s": float(elapsed[1]),
        "resolve_s": float(elapsed[2]),
        "peak_rss_mb": comm.allreduce(peak_kb) / 1024.0,
        "peak_rss_max_rank_mb": comm.allreduce(peak_kb, op=MPI.MAX) / 1024.0,
        "delta_rss_mb": comm.allreduce(peak_kb - base_kb) / 1024.0,
        "peak_reset": bool(comm.allreduce(reset, op=MPI.LAND)),
    }
    problem.ksp.destroy()
    problem.A.destroy()
    del problem, u
    return case


def main() -> dict:
    from dolfinx import fem

    comm = MPI.COMM_WORLD
    mask, X_image = platelet()
    run = {"ranks": comm.size, "pixels": int(mask.sum()), "pixel_size_nm": PIXEL_NM,
           "load_average": os.getloadavg()[0], "cases": [], "meshes": []}
    t_start = time.perf_counter()
    for size in MESH_SIZES_PX:
        comm.Barrier()
        t0 = time.perf_counter()
        pm = mesh_from_mask(mask, PIXEL_NM, comm, mesh_size_px=size)
        t_mesh = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        t0 = time.perf_counter()
        X = image_to_function(np.where(mask, X_image, np.nan), PIXEL_NM,
                              fem.functionspace(pm.mesh, ("Lagrange", 1)), mask=mask)
        t_x = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        cells = pm.mesh.topology.index_map(2).size_global
        run["meshes"].append({"mesh_size_px": size, "cells": cells, "mesh_s": t_mesh,
                              "project_X_s": t_x})
        for degree, sizes in DEGREES.items():
            if size not in sizes:
                continue
            if size == MESH_SIZES_PX[0]:
                run_case(comm, pm, X, degree, "gamg")  # warm-up: JIT-compile the forms
            for solver in ("gamg", "lu"):
                dofs = 2 * (pm.mesh.topology.index_map(0).size_global if degree == 1 else
                            pm.mesh.topology.index_map(0).size_global
                            + _num_edges(pm.mesh))
                if solver == "lu" and dofs > LU_MAX_DOFS:
                    continue
                case = run_case(comm, pm, X, degree, solver)
                case |= {"mesh_size_px": size, "cells": cells}
                run["cases"].append(case)
                if comm.rank == 0:
                    print(f"P{degree} {solver:4s} {case['dofs']:>8d} DOFs: setup "
                          f"{case['setup_s']:.2f} s, solve {case['solve_s']:.2f} s, resolve "
                          f"{case['resolve_s']:.2f} s, {case['iterations']} it, peak "
                          f"{case['peak_rss_mb']:.0f} MB (+{case['delta_rss_mb']:.0f})",
                          flush=True)
        del pm, X
    run["total_s"] = comm.allreduce(time.perf_counter() - t_start, op=MPI.MAX)
    run["versions"] = versions()
    if comm.rank == 0:
        data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        data["benchmark"] = "forward elasticity: time and peak RSS against DOFs"
        data.setdefault("runs", {})[str(comm.size)] = run
        write_json_atomic(RESULTS, data)
        print(f"{comm.size} rank(s): total {run['total_s']:.0f} s -> {RESULTS}")
    return run


def _num_edges(mesh) -> int:
    mesh.topology.create_entities(1)
    return mesh.topology.index_map(1).size_global


#: The GAMG options before the tuning (PETSc's default graph threshold keeps every edge).
LEGACY_GAMG = {"pc_gamg_threshold": -1.0}


def _platelet_case(comm, mesh_size_px: float):
    """(ParticleMesh, X on P1, stiffness, Vegard misfit) of the platelet at one mesh size."""
    from dolfinx import fem

    mask, X_image = platelet()
    pm = mesh_from_mask(mask, PIXEL_NM, comm, mesh_size_px=mesh_size_px)
    X = image_to_function(np.where(mask, X_image, np.nan), PIXEL_NM,
                          fem.functionspace(pm.mesh, ("Lagrange", 1)), mask=mask)
    return pm, X, stiffness_tensor(Material().image_tensor(ANGLE)), vegard_misfit()


def compare(mesh_size_px: float) -> dict:
    """Legacy against current GAMG options on one P1 mesh, in one run: setup, a solve and a
    re-solve with a different load (the same operator, as in an inverse iteration)."""

    comm = MPI.COMM_WORLD
    pm, X, C, misfit = _platelet_case(comm, mesh_size_px)
    loads = [eigenstrain(X, [misfit["a"] / 2, -misfit["a"] / 2],
                         [misfit["c"] / 2, -misfit["c"] / 2], ANGLE),
             eigenstrain(X, [misfit["a"] / 3, misfit["a"] / 4],
                         [-misfit["c"] / 2, misfit["c"] / 5], ANGLE)]
    run = {"ranks": comm.size, "mesh_size_px": mesh_size_px, "variants": {}}
    for name, options in (("legacy", LEGACY_GAMG), ("current", {}), ("legacy_again",
                                                                     LEGACY_GAMG)):
        load0 = os.getloadavg()[0]
        comm.Barrier()
        t0 = time.perf_counter()
        problem = ElasticityProblem(pm.mesh, C, degree=1, solver="gamg",
                                    petsc_options=options)
        t1 = time.perf_counter()
        b = [problem.load_vector(e) for e in loads]
        times, iterations = [], []
        for vec in b:
            comm.Barrier()
            t2 = time.perf_counter()
            problem.solve_vector(vec)
            times.append(time.perf_counter() - t2)
            iterations.append(problem.ksp.getIterationNumber())
        elapsed = comm.allreduce(np.array([t1 - t0, *times]), op=MPI.MAX)
        run["variants"][name] = {"dofs": problem.num_dofs, "setup_s": float(elapsed[0]),
                                 "solve_s": float(elapsed[1]), "resolve_s": float(elapsed[2]),
                                 "iterations": iterations, "options": options,
                                 "load_before": load0, "load_after": os.getloadavg()[0]}
        if comm.rank == 0:
            print(name, run["variants"][name], flush=True)
        for vec in b:
            vec.destroy()
        problem.ksp.destroy()
        problem.A.destroy()
    if comm.rank == 0:
        data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        data.setdefault("gamg_compare", {})[f"{comm.size}_ranks_{mesh_size_px}px"] = run
        write_json_atomic(RESULTS, data)
    return run


#: GAMG as before the re-solve tuning (main 3c72c81): two Chebyshev sweeps per level, every
#: solve from zero.
BEFORE_GAMG = {"mg_levels_ksp_max_it": 2, "ksp_guess_type": None,
               "ksp_guess_fischer_model": None}
RESOLVE_RESULTS = Path(__file__).resolve().parent / "results" / "forward_resolve.json"


def _timed_solve(comm, problem, b, u, warm: bool = False) -> dict:
    """One solve of `b` into `u` (from u if `warm`, else from zero / the default guess)."""
    problem.ksp.setInitialGuessNonzero(warm)
    rhs = b.copy()
    comm.Barrier()
    c0, t0 = time.process_time(), time.perf_counter()
    problem.solve_vector(rhs, u)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rhs.destroy()
    problem.ksp.setInitialGuessNonzero(False)
    wall, cpu = comm.allreduce(wall, op=MPI.MAX), comm.allreduce(cpu, op=MPI.MAX)
    return {"iterations": problem.ksp.getIterationNumber(), "wall_s": wall, "cpu_s": cpu}


def resolve(mesh_size_px: float) -> dict:
    """GAMG before / after the re-solve tuning on one P1 mesh (0.185 px: ~1e6 DOFs), in one
    run: setup, a first solve, a re-solve with another load, and an optimisation-like
    sequence of nearby loads (relative changes 1e-2 .. 1e-5), once inside the span of the
    eigenstrain coefficients (Vegard law with perturbed coefficients: linear in them) and
    once outside it (plus a spatially varying eigenstrain whose wavelength changes each
    time).  "before" re-solves from zero; "before_warm" from the previous solution;
    "after" is the default (one sweep per level + Fischer's guess); rtol 1e-12 (default)
    and 1e-8 (warm and after)."""
    import ufl
    from dolfinx import fem

    comm = MPI.COMM_WORLD
    pm, X, C, misfit = _platelet_case(comm, mesh_size_px)
    base = np.array([misfit["a"] / 2, -misfit["a"] / 2, misfit["c"] / 2, -misfit["c"] / 2])
    other = np.array([misfit["a"] / 3, misfit["a"] / 4, -misfit["c"] / 2, misfit["c"] / 5])
    x = ufl.SpatialCoordinate(pm.mesh)
    rng = np.random.default_rng(0)
    deltas = [1e-2, 1e-3, 1e-4, 1e-5]

    def law(a):
        return eigenstrain(X, list(a[:2]), list(a[2:]), ANGLE)

    steps = [base]  # each load differs from the previous one by about `delta`
    for d in deltas:
        steps.append(steps[-1] * (1 + d * rng.normal(size=4)))
    inside = [law(a) for a in steps[1:]]
    outside, extra = [], 0  # each adds a new direction of relative size delta
    for k, d in enumerate(deltas):
        extra = extra + d * misfit["a"] * ufl.sin(x[0] / (200.0 + 50.0 * k)) * ufl.Identity(2)
        outside.append(law(base) + extra)
    run = {"ranks": comm.size, "mesh_size_px": mesh_size_px, "deltas": deltas,
           "load_average_start": os.getloadavg()[0], "variants": {}}
    for name, options, warm, rtol in (("before", BEFORE_GAMG, False, 1e-12),
                                      ("before_warm", BEFORE_GAMG, True, 1e-12),
                                      ("after", {}, False, 1e-12),
                                      ("before_warm", BEFORE_GAMG, True, 1e-8),
                                      ("after", {}, False, 1e-8)):
        load0 = os.getloadavg()[0]
        comm.Barrier()
        t0 = time.perf_counter()
        problem = ElasticityProblem(pm.mesh, C, degree=1, solver="gamg", rtol=rtol,
                                    petsc_options=options)
        setup = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        u = fem.Function(problem.V)
        first = _timed_solve(comm, problem, problem.load_vector(law(base)), u)
        again = _timed_solve(comm, problem, problem.load_vector(law(other)), u)
        entry = {"dofs": problem.num_dofs, "rtol": rtol, "setup_s": setup,
                 "solve": first, "resolve_other_load": again, "options": options}
        for label, loads in (("nearby_inside_span", inside),
                             ("nearby_outside_span", outside)):
            if name == "before":  # from zero: as `solve`
                break
            _timed_solve(comm, problem, problem.load_vector(law(base)), u)
            entry[label] = [_timed_solve(comm, problem, problem.load_vector(e), u, warm)
                            for e in loads]
        entry |= {"load_before": load0, "load_after": os.getloadavg()[0]}
        run["variants"][f"{name}_rtol{rtol:g}"] = entry
        if comm.rank == 0:
            print(name, rtol, json.dumps(entry, default=str), flush=True)
        problem.ksp.destroy()
        problem.A.destroy()
    if comm.rank == 0:
        data = json.loads(RESOLVE_RESULTS.read_text()) if RESOLVE_RESULTS.exists() else {}
        data["benchmark"] = ("GAMG re-solves at ~1e6 P1 DOFs: before/after tuning, warm "
                             "start, Fischer guess (bench/forward.py --resolve)")
        data.setdefault("runs", {})[str(comm.size)] = run | {"versions": versions()}
        write_json_atomic(RESOLVE_RESULTS, data)
    return run


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 2 and sys.argv[1] == "--compare":
        compare(float(sys.argv[2]))
    elif len(sys.argv) > 2 and sys.argv[1] == "--resolve":
        resolve(float(sys.argv[2]))
    else:
        main()
