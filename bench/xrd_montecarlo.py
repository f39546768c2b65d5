"""Benchmark: the variance method on peaks that its own profile model did not make.

Peaks of restrictedly random screw dislocations by Monte Carlo of the displacement field
(`chemomech.xrd.montecarlo`: column averages of cos 2 pi g.(u(x+L) - u(x)), direct cosine
transform, Gaussian instrument convolved in q, detector bins, Poisson counts 1e8) are
analysed by `chemomech.xrd.variance.analyse_peak` ("asymptotic" and "wilkens", fit range
0.15-0.55 1/nm).  The relative error of Lambda rho equals that of the density
(rho = Lambda rho / ((pi/2) g^2 b^2 C), C = sin^2 psi cos^2 psi known).  Writes
bench/results/xrd_montecarlo.json.

  scripts/in-env python3 bench/xrd_montecarlo.py [N_SEEDS]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from chemomech.xrd.montecarlo import ScrewEnsemble, monte_carlo_peak
from chemomech.xrd.peaks import InstrumentProfile
from chemomech.xrd.variance import analyse_peak

OUT = Path(__file__).resolve().parent / "results" / "xrd_montecarlo.json"
FWHM = 5e-3  # instrument FWHM (1/nm)
ENSEMBLES = {"R40_n2": ScrewEnsemble(cell_nm=40.0, per_cell=2),
             "R60_n4": ScrewEnsemble(cell_nm=60.0, per_cell=4, cells=10),
             "R60_n4_psi30": ScrewEnsemble(cell_nm=60.0, per_cell=4, cells=10, psi_deg=30.0)}


def main(n_seeds: int = 6) -> None:
    instrument = InstrumentProfile(U=0.0, V=0.0, W=FWHM**2, source="Gaussian")
    results = {"fit_range_per_nm": [0.15, 0.55], "instrument_fwhm_per_nm": FWHM,
               "ensembles": {}}
    for name, ensemble in ENSEMBLES.items():
        rows = []
        for seed in range(n_seeds):
            peak, truth = monte_carlo_peak(ensemble, instrument_fwhm=FWHM, lines=32,
                                           seed=seed)
            row = {"seed": seed, "cutoff_nm": truth["cutoff_nm"]}
            for method in ("asymptotic", "wilkens"):
                r = analyse_peak(peak, instrument, (0.15, 0.55), method=method, n_noise=4)
                row[method] = r.lambda_rho / truth["lambda_rho"] - 1.0
            rows.append(row)
            print(name, row, flush=True)
        results["ensembles"][name] = {
            "lambda_rho_per_nm2": ensemble.lambda_rho,
            "density_per_um2": ensemble.density_per_nm2 * 1e6,
            "M = R sqrt(rho)": ensemble.cell_nm * np.sqrt(ensemble.density_per_nm2),
            **{f"{m}_relative_error": {"mean": float(np.mean([r[m] for r in rows])),
                                       "min": float(min(r[m] for r in rows)),
                                       "max": float(max(r[m] for r in rows))}
               for m in ("asymptotic", "wilkens")},
            "runs": rows}
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6)
