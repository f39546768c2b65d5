"""Benchmark: the dislocation model M2 on the real particle LFP50_P2 (1 or 2 MPI ranks).

Run: scripts/in-env python3 bench/m2.py
     scripts/in-env mpirun -n 2 python3 bench/m2.py      ->  bench/results/m2.json
Each run adds its rank count to the JSON.  Records: M0/M1/M2 model errors on the pipeline's
pixel set, the chosen alpha (discrepancy principle) and its curve, the mean GND density of
system D, iterations, time, time per iteration relative to one forward solve and (1 rank)
the comparison of the in-plane slip systems.  Figures go to --figures (not versioned).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

from chemomech.analysis.report import plot_alpha_curve, plot_density_map, plot_model_errors
from chemomech.analysis.residual import model_error
from chemomech.analysis.slip_systems import compare_slip_systems
from chemomech.config import RunConfig
from chemomech.dislocations.run import run_m2
from chemomech.dislocations.settings import M2Settings
from chemomech.io.readers import read_particles
from chemomech.io.results import versions, write_json_atomic
from chemomech.pipeline import _residuals, fit_direct_regression, prepare, run_m1

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "m2.json"
REAL = ROOT.parent / "shared" / "data" / "LFP50_P2.mat"


def main() -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--figures", default="/tmp/chemomech_bench_m2")
    parser.add_argument("--no-compare", action="store_true", help="skip the system comparison")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    logging.basicConfig(level=logging.INFO if comm.rank == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("chemomech.mechanics.mesh", "chemomech.mechanics.fields",
                  "chemomech.correlative.frames"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = RunConfig(data=[REAL])
    t0 = time.perf_counter()
    particles = read_particles([REAL])
    prepared = [prepare(p, config) for p in particles]
    t_prepare = time.perf_counter() - t0
    m0 = fit_direct_regression(prepared, config.m0_degree, config.edge_exclusion_px)
    t0 = time.perf_counter()
    m1 = run_m1(prepared, config, comm)
    t_m1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    m2 = run_m2(prepared, config, comm, m1_result=m1, settings=M2Settings())
    t_m2 = time.perf_counter() - t0
    # baseline: M1 + a nearly uniform slip (the largest alpha of the scan: the H1 seminorm does
    # not penalise a constant gamma, a uniform e_ac-type shear eigenstrain that M1 lacks): how
    # much of M2's gain a uniform shear explains
    big = max(c["alpha"] for c in m2.alpha.curve)
    uniform = run_m2(prepared, config, comm, m1_result=m1, settings=M2Settings(alpha=big))
    table = None
    if comm.size == 1 and not args.no_compare:
        table = compare_slip_systems(prepared, config, comm, m1_result=m1)
    if comm.rank != 0:
        return None
    p = prepared[0]
    name = p.data.name
    residual, used = _residuals(p, m0, {"M1": m1, "M2": m2}, config.edge_exclusion_px)
    maps = m2.images[name]
    errors = {model: model_error(r["e_xx"], r["e_yy"], r["e_xy"], used)
              for model, r in residual.items()}
    umaps = uniform.images[name]
    uniform_error = model_error(*(p.strain_image[c] - umaps[c] for c in ("e_xx", "e_yy", "e_xy")),
                                used)
    figures = Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    plot_model_errors(errors, figures / "model_error.png")
    plot_density_map(maps["density_total"], p.data.X, maps["meshed_mask"] > 0,
                     p.data.pixel_size_nm, figures / f"density_{name}.png",
                     title=f"{name}: GND density, system D, mean "
                           f"{m2.mean_density_um2[name]:.0f} um^-2")
    if m2.alpha is not None:
        plot_alpha_curve(m2.alpha, figures / "alpha_curve.png")
    iterations = m2.timings_s["m2_iterations"]
    fit_time = m2.timings_s["m2_fit"]
    run = {
        "ranks": comm.size,
        "pixels": int(p.data.mask.sum()),
        "pixels_used": int(used.sum()),
        "model_errors": errors,
        "m2_vs_m0_percent": 100 * (errors["M2"] / errors["M0"] - 1),
        "model_error_m1_plus_uniform_slip": uniform_error,
        "m1_plus_uniform_slip_vs_m0_percent": 100 * (uniform_error / errors["M0"] - 1),
        "uniform_slip_alpha": big,
        "uniform_slip_gamma_mean": float(np.nanmean(umaps["gamma_D"])),
        "uniform_slip_gamma_std": float(np.nanstd(umaps["gamma_D"])),
        "m2_gamma_mean": float(np.nanmean(maps["gamma_D"])),
        "m2_gamma_std": float(np.nanstd(maps["gamma_D"])),
        "m1_vs_m0_percent": 100 * (errors["M1"] / errors["M0"] - 1),
        "system": m2.summary["system"],
        "mean_density_um2": m2.summary["mean_density_um2"],
        "regularisation": m2.summary["regularisation"],
        "iterations_total": iterations,
        "iterations_final_fit": m2.fit.iterations,
        "evaluations_final_fit": m2.fit.timings_s["evaluations"],
        "time_prepare_s": t_prepare,
        "time_m1_s": t_m1,
        "time_m2_s": t_m2,
        "time_m2_fit_s": fit_time,
        "forward_solve_s": m2.timings_s["m2_forward_solve"],
        "time_per_iteration_s": fit_time / max(iterations, 1),
        "time_per_iteration_over_forward_solve": fit_time / max(iterations, 1)
        / m2.timings_s["m2_forward_solve"],
        "m1_coefficients": m1.fit.coefficients.tolist(),
        "m2_coefficients": m2.fit.coefficients.tolist(),
    }
    if table is not None:
        run["system_comparison"] = table
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.setdefault("runs", {})[str(comm.size)] = run
    results["particle"] = str(REAL.name)
    results["versions"] = versions()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS, results)
    logging.getLogger("bench.m2").info("%s", json.dumps(run, indent=1, default=float)[:3000])
    return results


if __name__ == "__main__":
    main()
