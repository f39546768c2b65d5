"""Benchmark: the demo's M1 pipeline against a plain exact least-squares M1, in one run.

Full: `chemomech.pipeline.run` with the demo's configuration on the default ten twins (read,
frame check, integration, M0, gmsh meshes, M1 adjoint fit + linear cross-check, bands,
residuals, figures, fields.h5), its stage timings from summary.json.

Baseline ("plain exact least squares", independent of the pipeline's M1 code): per particle,
read it, integrate the measured gradient (the data), build a voxel mesh whose vertices are the
pixel centres (two triangles per 2x2 block of mask pixels; P1 values at the pixels are the DOFs,
so the observation operator is a selection), assemble the traction-free stiffness matrix, one
MUMPS LU factorisation, 2(N+1) basis loads and back-solves, rigid modes projected out on the
used pixels; then one joint normal-equation solve.  No frame check, bands, figures or files.

Order: warm-up (JIT caches; skipped with CHEMOMECH_BENCH_WARM=0), baseline, full, baseline
again; the ratio is full / mean baseline.
The load average (1 min) is recorded before and after every stage: the machine is shared, so
only ratios measured in one run mean anything.

  scripts/in-env python3 bench/pipeline.py            # -> bench/results/pipeline.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

RESULTS = Path(os.environ.get("CHEMOMECH_BENCH_RESULTS",
                              Path(__file__).resolve().parent / "results" / "pipeline.json"))
DEGREE = 2
EDGE_PX = 2


def voxel_mesh(mask: np.ndarray, h: float, comm=MPI.COMM_SELF):
    """P1 triangle mesh with vertices at the pixel centres of `mask` (x = i h, y = j h, nm)
    and the mask pixel of every vertex."""
    import basix.ufl
    from dolfinx import mesh as dmesh

    block = mask[:-1, :-1] & mask[1:, :-1] & mask[:-1, 1:] & mask[1:, 1:]
    i, j = np.nonzero(block)
    corners = [(i, j), (i + 1, j), (i + 1, j + 1), (i, j + 1)]
    used = np.zeros_like(mask)
    for a, b in corners:
        used[a, b] = True
    index = np.full(mask.shape, -1, dtype=np.int64)
    pixels = np.argwhere(used)
    index[used] = np.arange(len(pixels))
    v = [index[a, b] for a, b in corners]
    cells = np.vstack([np.stack([v[0], v[1], v[2]], 1), np.stack([v[0], v[2], v[3]], 1)])
    element = basix.ufl.element("Lagrange", "triangle", 1, shape=(2,))
    m = dmesh.create_mesh(comm, cells, element, pixels.astype(float) * h)
    return m, pixels


def baseline_fit(path: Path) -> tuple[np.ndarray, dict[str, float]]:
    """The plain exact least-squares M1 of all particles of `path` (see the module doc)."""
    import ufl
    from dolfinx import fem
    from dolfinx.fem import petsc as fem_petsc
    from petsc4py import PETSc

    from chemomech.correlative.displacement import measured_displacement
    from chemomech.inverse.misfit import rigid_mode_basis
    from chemomech.io.stack import interior_pixels, read_stack
    from chemomech.mechanics.forms import eigenstrain, eigenstrain_load_form, stiffness_tensor
    from chemomech.mechanics.forward import ElasticityProblem
    from chemomech.mechanics.materials import Material

    t = {"read": 0.0, "integrate": 0.0, "mesh": 0.0, "factorise": 0.0, "solves": 0.0}
    t0 = time.perf_counter()
    particles = read_stack(path)
    t["read"] = time.perf_counter() - t0
    n_c = 2 * (DEGREE + 1)
    N, r = np.zeros((n_c, n_c)), np.zeros(n_c)
    for p in particles:
        t0 = time.perf_counter()
        d = measured_displacement(p).u
        t1 = time.perf_counter()
        mesh, pixels = voxel_mesh(p.mask, p.pixel_size_nm)
        V1 = fem.functionspace(mesh, ("Lagrange", 1))
        X = fem.Function(V1)
        # vertex k of the geometry is pixel k; map it to the P1 dofs
        X.interpolate(lambda x, m=p: m.X[np.rint(x[0] / m.pixel_size_nm).astype(int),
                                         np.rint(x[1] / m.pixel_size_nm).astype(int)])
        t2 = time.perf_counter()
        C = stiffness_tensor(Material().image_tensor(p.rotation_rad))
        problem = ElasticityProblem(mesh, C, degree=1, solver="lu")
        t3 = time.perf_counter()
        unit = fem.Constant(mesh, np.zeros(n_c))
        eps = eigenstrain(X, [unit[k] for k in range(DEGREE + 1)],
                          [unit[DEGREE + 1 + k] for k in range(DEGREE + 1)], p.rotation_rad)
        form = fem.form(eigenstrain_load_form(eps, ufl.TestFunction(problem.V), C))
        dof_xy = problem.V.tabulate_dof_coordinates()[:, :2] / p.pixel_size_nm
        ij = np.rint(dof_xy).astype(int)
        keep = (interior_pixels(p.mask, EDGE_PX) & np.all(np.isfinite(d), axis=-1))[ij[:, 0],
                                                                                     ij[:, 1]]
        columns = []
        for k in range(n_c):
            unit.value[:] = 0.0
            unit.value[k] = 1.0
            b = fem_petsc.assemble_vector(form)  # traction-free: no lifting
            b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
            u = problem.solve_vector(b)
            columns.append(u.x.array.reshape(-1, 2)[keep].ravel())
            b.destroy()
        Q = rigid_mode_basis(ij[keep] * p.pixel_size_nm, MPI.COMM_SELF)
        G = np.column_stack(columns)
        G -= Q @ (Q.T @ G)
        data = d[ij[keep, 0], ij[keep, 1]].ravel()
        data -= Q @ (Q.T @ data)
        N += G.T @ G
        r += G.T @ data
        t4 = time.perf_counter()
        t["integrate"] += t1 - t0
        t["mesh"] += t2 - t1
        t["factorise"] += t3 - t2
        t["solves"] += t4 - t3
        problem.ksp.destroy()
        problem.A.destroy()
    a = np.linalg.solve(N, r)
    return a, t


def full_run(path: Path, output: Path) -> dict:
    from chemomech.config import RunConfig
    from chemomech.pipeline import run

    config = RunConfig(data=[path], model="M1", legendre_degree=DEGREE, output=output)
    return run(config, MPI.COMM_SELF)


def _timed(label: str, fn, *args):
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    out = fn(*args)
    elapsed = time.perf_counter() - t0
    print(f"{label}: {elapsed:.2f} s (load {load0:.2f} -> {os.getloadavg()[0]:.2f})", flush=True)
    return out, {"seconds": elapsed, "load_before": load0, "load_after": os.getloadavg()[0]}


def main() -> dict:
    from chemomech.io.results import versions, write_json_atomic
    from chemomech.synth import make_default_dataset

    data = Path(os.environ.get("CHEMOMECH_BENCH_DATA", "results/demo/data/twins_seed0_n10.h5"))
    if not data.exists():
        make_default_dataset(data, seed=0, n_particles=10, comm=MPI.COMM_SELF)
    with tempfile.TemporaryDirectory() as tmp:
        warm = None
        if os.environ.get("CHEMOMECH_BENCH_WARM", "1") != "0":  # 0: caches known to be warm
            warm, _ = _timed("warm-up (full, JIT caches)", full_run, data, Path(tmp) / "warm")
        a0, base0 = _timed("baseline", baseline_fit, data)
        summary, full = _timed("full pipeline", full_run, data, Path(tmp) / "full")
        a1, base1 = _timed("baseline again", baseline_fit, data)
    baseline_s = 0.5 * (base0["seconds"] + base1["seconds"])
    coefficients = np.r_[summary["coefficients"]["a"], summary["coefficients"]["c"]]
    result = {
        "benchmark": "demo M1 pipeline vs a plain exact least-squares M1 (one run, 1 rank)",
        "ratio": full["seconds"] / baseline_s,
        "full": full | {"stages_s": summary["timings_s"],
                        "fit_s": summary["fit"]["timings_s"],
                        "iterations": summary["fit"]["iterations"],
                        "reason": summary["fit"]["reason"],
                        "covariance_method": summary["fit"]["covariance_method"]},
        "baseline": {"runs": [base0 | {"stages_s": a0[1]}, base1 | {"stages_s": a1[1]}],
                     "mean_seconds": baseline_s},
        "coefficients": {"full": coefficients.tolist(), "baseline": a0[0].tolist(),
                         "max_relative_difference": float(
                             np.abs(coefficients - a0[0]).max() / np.abs(a0[0]).max())},
        "warm_up_total_s": None if warm is None else warm["timings_s"]["total"],
        "ranks": 1,
        "cpu_count": os.cpu_count(),
        "versions": versions(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS, result)
    print(f"ratio full / baseline = {result['ratio']:.2f}; coefficients differ by "
          f"{result['coefficients']['max_relative_difference']:.2e} (voxel vs gmsh mesh) -> "
          f"{RESULTS}")
    return result


if __name__ == "__main__":
    main()
