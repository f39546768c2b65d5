"""Benchmark: M1 bands under Dirichlet data on LFP50_P2, exact vs Monte Carlo evaluation.

Run: scripts/in-env python3 bench/dirichlet_bands.py  ->  bench/results/dirichlet_bands.json
The pipeline with ``boundary_condition: dirichlet``, N = 1 (gauge f(1) = 0), the displacement
misfit and ``uncertainty.method: integrated_noise``, once with ``evaluation: exact`` (closed
form, the adjoint of the boundary response included) and once with ``monte_carlo``
(``n_draws`` 100): the 95 % half-widths of f_a, f_c at X = 0 and 0.5, sigma and the time of
the covariance.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

from chemomech.config import RunConfig
from chemomech.io.results import versions, write_json_atomic
from chemomech.pipeline import run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "dirichlet_bands.json"
REAL = ROOT.parent / "shared" / "data" / "LFP50_P2.mat"


def main() -> dict | None:
    comm = MPI.COMM_WORLD
    logging.basicConfig(level=logging.INFO if comm.rank == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    out = {}
    for evaluation in ("exact", "monte_carlo"):
        with tempfile.TemporaryDirectory() as tmp:
            config = RunConfig(data=[REAL], legendre_degree=1, boundary_condition="dirichlet",
                               output=Path(tmp) / "out",
                               uncertainty={"method": "integrated_noise",
                                            "evaluation": evaluation})
            t0 = time.perf_counter()
            summary = run(config, comm)
            elapsed = time.perf_counter() - t0
        if comm.rank != 0:
            continue
        curve = summary["eigenstrain_curve"]
        X = np.asarray(curve["X"])
        half = {}
        for d in ("a", "c"):
            width = 0.5 * (np.asarray(curve[f"{d}_hi"]) - np.asarray(curve[f"{d}_lo"]))
            half[d] = {str(x): float(np.interp(x, X, width)) for x in (0.0, 0.5)}
        out[evaluation] = {"half_width_95": half, "noise_sigma": summary["fit"]["noise_sigma"],
                           "covariance_evaluation": summary["fit"]["covariance_evaluation"],
                           "run_time_s": elapsed}
    if comm.rank != 0:
        return None
    result = {"benchmark": "M1 Dirichlet bands on LFP50_P2 (N = 1): exact vs Monte Carlo",
              "runs": out, "versions": versions()}
    write_json_atomic(RESULTS, result)
    return result


if __name__ == "__main__":
    main()
