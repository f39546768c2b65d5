"""Benchmark: the M2 band (joint Gauss-Newton covariance) on LFP50_P2, three ways on one state.

M2 fitted as the standalone M2 stage fits it (`run_m2` without the pipeline's M1 stage: M1's
linear fast path as the start, the default config, alpha by the default rule over the default
scan; the alpha is recorded), then `chemomech.dislocations.bands.m2_covariance` at that state

* ``columns, batch 1``: one CG per coefficient column, one back-substitution per product
  (the path before issue #17's batching),
* ``columns, batch all``: the same CGs run together, multi-RHS back-substitutions,
* ``block``: block CG over all columns, multi-RHS back-substitutions (the default),

with the time of each, its parts (block Hessian products: count and s; preconditioner s), the
CG iterations, the largest difference of Cov(a) from the first (relative to its largest
entry) and the 1-min load average before and after each:

  scripts/in-env python3 bench/m2_band.py                  # -> bench/results/m2_band.json
  scripts/in-env mpirun -n 2 python3 bench/m2_band.py      # adds the 2-rank run
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "LFP50_P2.mat"
RESULTS = Path(os.environ.get("CHEMOMECH_BENCH_RESULTS",
                              ROOT / "bench" / "results" / "m2_band.json"))
WAYS = (("columns, batch 1", "columns", 1), ("columns, batch all", "columns", None),
        ("block", "block", None))


def main() -> dict | None:
    from chemomech.config import RunConfig
    from chemomech.dislocations.alpha import choose_alpha
    from chemomech.dislocations.bands import m2_covariance
    from chemomech.dislocations.run import _noise_target, build_m1_stage, m2_model
    from chemomech.io.readers import read_particles
    from chemomech.io.results import versions, write_json_atomic
    from chemomech.pipeline import prepare

    logging.basicConfig(level=logging.WARNING)
    comm = MPI.COMM_WORLD
    config = RunConfig(data=[REAL], model="M2")
    settings = config.dislocations
    prepared = [prepare(p, config) for p in read_particles([REAL])]
    stage = build_m1_stage(prepared, config, comm)
    model = m2_model(prepared, stage, config)
    target, _ = _noise_target(model, config, prepared, stage.particle_indices)
    t0 = time.perf_counter()
    choice, fit = choose_alpha(model, settings.regularisation.rule, target_misfit=target,
                               decades=settings.alpha_decades, tau=settings.discrepancy_tau,
                               tao_type=settings.tao_type, max_it=settings.max_it,
                               grtol=settings.grtol, stagnation_rtol=settings.stagnation_rtol,
                               stagnation_window=settings.stagnation_window)
    t_fit = time.perf_counter() - t0
    ways, reference = {}, None
    for label, method, batch in WAYS:
        load0 = os.getloadavg()[0]
        c0 = time.process_time()
        cov, sigma2, info = m2_covariance(model, method=method, batch=batch)
        cpu = comm.allreduce(time.process_time() - c0, op=MPI.MAX)
        reference = cov if reference is None else reference
        ways[label] = {"method": method, "batch": batch, "seconds": info["time_s"],
                       "cpu_seconds": cpu, "load_before": load0,
                       "load_after": os.getloadavg()[0],
                       "hessian_products": info["hessian_products"],
                       "hessian_product_s": info["hessian_product_s"],
                       "preconditioner_s": info["preconditioner_s"],
                       "cg_iterations": info["cg_iterations"],
                       "cov_max_difference_from_batch_1": float(
                           np.abs(cov - reference).max() / np.abs(reference).max()),
                       "sigma2": sigma2,
                       "halfwidth_diag": np.sqrt(np.diag(cov)).tolist()}
    if comm.rank != 0:
        return None
    p = model.particles[0]
    run = {"ranks": comm.size, "alpha": model.reg.alpha, "rule": choice.rule,
           "fit_seconds": t_fit, "fit_iterations": sum(c["iterations"] for c in choice.curve),
           "slip_dofs_per_system": p.comm.allreduce(p.n_owned) if p.comm.size == 1 else None,
           "displacement_dofs": p.base.problem.num_dofs, "ways": ways,
           "speedup_block_over_batch_1": ways["columns, batch 1"]["seconds"]
           / ways["block"]["seconds"]}
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["benchmark"] = "M2 band on LFP50_P2 at the standalone M2 stage's fit, three CG paths"
    results.setdefault("runs", {})[str(comm.size)] = run
    results["versions"] = versions()
    write_json_atomic(RESULTS, results)
    for label, w in ways.items():
        print(f"{comm.size} rank(s), {label}: {w['seconds']:.1f} s (load {w['load_before']:.1f}"
              f"), {w['hessian_products']:.0f} products, CG {w['cg_iterations']}, "
              f"diff {w['cov_max_difference_from_batch_1']:.1e}")
    return results


if __name__ == "__main__":
    main()
