"""Benchmark: M2 with M1's options on the real particle LFP50_P2, through the pipeline.

Run: scripts/in-env python3 bench/m2_options.py [--variants dirichlet mixed plane_strain]
     ->  bench/results/m2_options.json
Each variant is one `chemomech.pipeline.run` with ``model: M2`` (defaults otherwise: strain
from the file, N = 2, alpha by the discrepancy rule, M2 band on) and the variant's options:
``dirichlet`` = boundary_condition dirichlet (gauge auto, f(1) = 0); ``mixed`` = dirichlet +
stiffness mixed; ``plane_strain`` = dirichlet + reduction plane_strain (Vegard b-law).  Records
the wall time of the run and of its M2 stage, the chosen alpha and rule, the model errors of
M0, M1 and M2 (the pipeline's pixel set; M1 and M2 with the same options) and the coefficients.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from mpi4py import MPI

from chemomech.config import RunConfig
from chemomech.io.results import versions, write_json_atomic
from chemomech.pipeline import run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "m2_options.json"
REAL = ROOT.parent / "shared" / "data" / "LFP50_P2.mat"
VARIANTS = {
    "dirichlet": {"boundary_condition": "dirichlet"},
    "mixed": {"boundary_condition": "dirichlet", "stiffness": "mixed"},
    "plane_strain": {"boundary_condition": "dirichlet", "reduction": "plane_strain"},
}


def main() -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", nargs="+", default=["dirichlet"], choices=list(VARIANTS))
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    logging.basicConfig(level=logging.INFO if comm.rank == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() and comm.rank == 0 else {}
    results = old.get("variants", {})
    for name in args.variants:
        with tempfile.TemporaryDirectory() as tmp:
            config = RunConfig(data=[REAL], model="M2", output=Path(tmp) / "out",
                               **VARIANTS[name])
            t0 = time.perf_counter()
            summary = run(config, comm)
            elapsed = time.perf_counter() - t0
        if comm.rank != 0:
            continue
        errors = summary["model_errors"]
        disl = summary["dislocations"]
        results[name] = {
            "options": VARIANTS[name], "ranks": comm.size,
            "time_total_s": elapsed, "time_m2_s": summary["timings_s"]["m2_total"],
            "time_m2_fit_s": summary["timings_s"]["m2_fit"],
            "m2_iterations": summary["timings_s"]["m2_iterations"],
            "alpha": disl["regularisation"]["alpha"], "alpha_rule": disl["regularisation"]["rule"],
            "alpha_curve": disl["regularisation"].get("curve"),
            "mean_density_um2": disl["mean_density_um2"],
            "model_errors": errors,
            "m1_vs_m0_percent": 100 * (errors["M1"] / errors["M0"] - 1),
            "m2_vs_m0_percent": 100 * (errors["M2"] / errors["M0"] - 1),
            "m2_vs_m1_percent": 100 * (errors["M2"] / errors["M1"] - 1),
            "m1_coefficients": summary["fit"]["coefficients"],
            "m2_coefficients": disl["fit"]["coefficients"], "gauge": disl["fit"]["gauge"],
        }
        logging.getLogger("bench").info("%s: %s", name, json.dumps(results[name], indent=1))
    if comm.rank != 0:
        return None
    out = {"benchmark": "M2 with dirichlet / mixed / plane strain on LFP50_P2 (pipeline)",
           "variants": results, "versions": versions()}
    write_json_atomic(RESULTS, out)
    return out


if __name__ == "__main__":
    main()
