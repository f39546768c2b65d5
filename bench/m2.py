"""Benchmark: the dislocation model M2 on the real particle LFP50_P2 (1 or 2 MPI ranks).

Run: scripts/in-env python3 bench/m2.py
     scripts/in-env mpirun -n 2 python3 bench/m2.py      ->  bench/results/m2.json
Each run adds its rank count to the JSON.  Records: M0/M1/M2 model errors on the pipeline's
pixel set (M2 on the lattice distortion), the alpha of each rule (discrepancy principle with
the estimated noise level, L-curve) with the scanned curve (mean GND density of system D per
alpha decade), the M2 band (joint Gauss-Newton) half-widths, iterations, time, time per
iteration relative to one forward solve, the model-error rise of M1 and M2 under a uniform
e_ac offset of 0.01 and (1 rank) the comparison of the in-plane slip systems.  Figures go to
--figures (not versioned).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

from chemomech.analysis.report import plot_alpha_curve, plot_density_map, plot_model_errors
from chemomech.analysis.residual import m2_model_errors, model_error
from chemomech.analysis.slip_systems import compare_slip_systems
from chemomech.config import RunConfig
from chemomech.dislocations.run import M1Stage, run_m2
from chemomech.inverse.uncertainty import eigenstrain_band
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
    stage = M1Stage(m1.particle_indices, m1.meshes, m1.model, m1.fit.coefficients)
    t0 = time.perf_counter()
    m2 = run_m2(prepared, config, comm, m1=stage)
    t_m2 = time.perf_counter() - t0
    lcurve_config = config.model_copy(update={"dislocations": config.dislocations.model_copy(
        update={"regularisation": config.dislocations.regularisation.model_copy(
            update={"rule": "lcurve"}), "bands": False})})
    lcurve = run_m2(prepared, lcurve_config, comm, m1=stage)
    offset = _offset_rise(particles[0], config, comm, m2.fit.regularisation.alpha)
    table = None
    if comm.size == 1 and not args.no_compare:
        table = compare_slip_systems(prepared, lcurve_config.model_copy(update={
            "dislocations": lcurve_config.dislocations.model_copy(update={
                "regularisation": lcurve_config.dislocations.regularisation.model_copy(
                    update={"alpha": m2.fit.regularisation.alpha})})}), comm, m1=stage)
    if comm.rank != 0:
        return None
    p = prepared[0]
    name = p.data.name
    residual, used = _residuals(p, m0, {"M1": m1, "M2": m2}, config.edge_exclusion_px)
    maps = m2.images[name]
    errors = {model: model_error(r["e_xx"], r["e_yy"], r["e_xy"], used)
              for model, r in residual.items()}
    lc_error = m2_model_errors(prepared, lcurve.images, config.edge_exclusion_px)[name]
    figures = Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    plot_model_errors(errors, figures / "model_error.png")
    plot_density_map(maps["density_total"], p.data.X, maps["meshed_mask"] > 0,
                     p.data.pixel_size_nm, figures / f"density_{name}.png",
                     title=f"{name}: GND density, system D, mean "
                           f"{m2.mean_density_um2[name]:.0f} um^-2")
    if m2.alpha is not None:
        plot_alpha_curve(m2.alpha, figures / "alpha_curve.png")
    X = np.linspace(0, 1, 11)
    band = eigenstrain_band(m2.fit.coefficients, m2.covariance, X)
    band_m1 = eigenstrain_band(m1.fit.coefficients, m1.covariance, X)
    iterations = m2.timings_s["m2_iterations"]
    fit_time = m2.timings_s["m2_fit"]
    run = {
        "ranks": comm.size,
        "pixels": int(p.data.mask.sum()),
        "pixels_used": int(used.sum()),
        "model_errors": errors,
        "m1_vs_m0_percent": 100 * (errors["M1"] / errors["M0"] - 1),
        "m2_vs_m0_percent": 100 * (errors["M2"] / errors["M0"] - 1),
        "m2_misfit": "lattice distortion (e_xx, e_yy, e_xy, theta), theta_weight "
                     f"{config.dislocations.theta_weight}",
        "system": m2.summary["system"],
        "discrepancy": {"alpha": m2.fit.regularisation.alpha,
                        "rule": m2.summary["regularisation"]["rule"],
                        "noise_strain": m2.alpha.noise_strain,
                        "target_misfit": m2.alpha.target_misfit,
                        "misfit": m2.fit.misfit,
                        "mean_density_um2": m2.summary["mean_density_um2"],
                        "model_error": errors["M2"]},
        "lcurve": {"alpha": lcurve.fit.regularisation.alpha,
                   "rule": lcurve.summary["regularisation"]["rule"],
                   "misfit": lcurve.fit.misfit,
                   "mean_density_um2": lcurve.summary["mean_density_um2"],
                   "model_error": lc_error},
        "alpha_curve": m2.alpha.curve,
        "density_range_over_alpha_um2": [min(c["mean_density_um2"] for c in m2.alpha.curve),
                                         max(c["mean_density_um2"] for c in m2.alpha.curve)],
        "band_halfwidth_m2": {d: (0.5 * (band[f"{d}_hi"] - band[f"{d}_lo"])).tolist()
                              for d in ("a", "c")},
        "band_halfwidth_m1": {d: (0.5 * (band_m1[f"{d}_hi"] - band_m1[f"{d}_lo"])).tolist()
                              for d in ("a", "c")},
        "band_X": X.tolist(),
        "band_info": {k: v for k, v in m2.summary["band"].items()},
        "offset_e_ac_0.01": offset,
        "iterations_total": iterations,
        "iterations_final_fit": m2.fit.iterations,
        "evaluations_final_fit": m2.fit.timings_s["evaluations"],
        "time_prepare_s": t_prepare,
        "time_m1_s": t_m1,
        "time_m2_s": t_m2,
        "time_m2_fit_s": fit_time,
        "time_m2_band_s": m2.timings_s["m2_band"],
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


def _offset_rise(particle, config, comm, alpha: float) -> dict:
    """Model errors of M1 and M2 (alpha fixed) on the particle and on the particle with 0.01
    added to e_ac (crystal frame) everywhere."""
    fixed = config.model_copy(update={"dislocations": config.dislocations.model_copy(update={
        "regularisation": config.dislocations.regularisation.model_copy(
            update={"alpha": alpha}), "bands": False})})
    out = {"alpha": alpha}
    for shift in (0.0, 0.01):
        shifted = dataclasses.replace(particle, e_xy=np.where(particle.mask,
                                                              particle.e_xy + shift,
                                                              particle.e_xy))
        prepared = [prepare(shifted, fixed)]
        m0 = fit_direct_regression(prepared, fixed.m0_degree, fixed.edge_exclusion_px)
        m1 = run_m1(prepared, fixed, comm)
        stage = M1Stage(m1.particle_indices, m1.meshes, m1.model, m1.fit.coefficients)
        m2 = run_m2(prepared, fixed, comm, m1=stage)
        if comm.rank == 0:
            residual, used = _residuals(prepared[0], m0, {"M1": m1, "M2": m2},
                                        fixed.edge_exclusion_px)
            out[str(shift)] = {m: model_error(r["e_xx"], r["e_yy"], r["e_xy"], used)
                               for m, r in residual.items()}
    if comm.rank == 0:
        out["rise"] = {m: out["0.01"][m] - out["0.0"][m] for m in ("M0", "M1", "M2")}
    return out


if __name__ == "__main__":
    main()
