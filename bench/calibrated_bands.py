"""Benchmark: coverage of the calibrated 95 % band of f on independent twins (chemomech.twins).

For each seed an independent twin (P2 on h/2 of the smooth outline, pixel-averaged strain,
strain noise 1e-3) is inverted with the strain misfit (P1, pixel-mask mesh, 1 px and 0.5 px)
and the band of `chemomech.inverse.uncertainty.calibrated_fit` (sandwich over 8 px blocks +
mesh-refinement discretisation error + errors in variables) is checked at 19 X in
[0.05, 0.95], against the plain Gauss-Newton band.  Two cases: "clean" X, and "dirty" X
(blur 1 px, misregistration 0.5 px in a random direction, noise 0.05; the band is told
noise 0.05, blur 1 px and registration uncertainty 0.5 px).  Writes
bench/results/calibrated_bands.json: pointwise coverage per X, per-dataset covered
fractions, law errors (max |f - f_true| / range).

  scripts/in-env python3 bench/calibrated_bands.py [N_SEEDS [CASES [OUT]]]
  (CASES: comma-separated of clean, dirty, dirty_no_bias_correction)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from chemomech.inverse.uncertainty import (  # noqa: E402
    calibrated_band,
    calibrated_fit,
    eigenstrain_band,
    fit_covariance,
)
from chemomech.twins import (  # noqa: E402
    CHECK_X,
    TwinOptions,
    band_covers,
    law_error,
    simulate_independent,
    strain_model_builder,
    verification_spec,
)

OUT = Path(__file__).resolve().parent / "results" / "calibrated_bands.json"


def run_case(seed: int, dirty: bool, bias_correction: bool = True) -> dict:
    rng = np.random.default_rng([seed, 99])
    angle = rng.uniform(0.0, 2.0 * np.pi)
    options = TwinOptions(supersample=2, blur_px=1.0 if dirty else 0.0,
                          shift_px=(0.5 * np.cos(angle), 0.5 * np.sin(angle)) if dirty
                          else (0.0, 0.0))
    particle = simulate_independent(verification_spec(seed, 0.05 if dirty else 0.0), options)
    build = strain_model_builder(particle)
    started = time.perf_counter()
    fit = build(particle.X, 1.0).fit("linear")
    gn, _ = fit_covariance(fit)
    cal = calibrated_fit(build, particle.X, particle.mask, mesh_size_px=1.0,
                         block_nm=8 * particle.pixel_size_nm,
                         noise_composition=0.05 if dirty else 0.0,
                         registration_px=0.5 if dirty else 0.0,
                         blur_px=1.0 if dirty else 0.0, n_draws=12, seed=seed,
                         bias_correction=bias_correction)
    band = calibrated_band(cal["coefficients"], cal["covariance"], cal["dof"], CHECK_X)
    covers = band_covers(band, particle.truth)
    plain = band_covers(eigenstrain_band(fit.coefficients, gn, CHECK_X), particle.truth)
    return {"seed": seed, "covers": covers.astype(int).tolist(),
            "fraction": float(covers.mean()), "gauss_newton_fraction": float(plain.mean()),
            "law_error": law_error(cal["coefficients"], particle.truth),
            "law_error_plain_fit": law_error(fit.coefficients, particle.truth),
            "half_width_a_mid": float(0.5 * (band["a_hi"] - band["a_lo"])[9]),
            "seconds": time.perf_counter() - started}


CASES = {"clean": (False, True), "dirty": (True, True), "dirty_no_bias_correction": (True, False)}


def main(n_seeds: int = 12, cases: tuple[str, ...] = ("clean", "dirty"),
         out: Path = OUT) -> None:
    results = {"X": CHECK_X.tolist(), "level": 0.95, "cases": {}}
    for case in cases:
        dirty, bias_correction = CASES[case]
        rows = [run_case(seed, dirty, bias_correction) for seed in range(n_seeds)]
        covers = np.array([r["covers"] for r in rows])  # (seeds, 2, X)
        results["cases"][case] = {
            "n_seeds": n_seeds,
            "pointwise_coverage_a": covers[:, 0].mean(axis=0).tolist(),
            "pointwise_coverage_c": covers[:, 1].mean(axis=0).tolist(),
            "min_pointwise_coverage": float(covers.mean(axis=0).min()),
            "min_dataset_fraction": float(min(r["fraction"] for r in rows)),
            "mean_gauss_newton_fraction": float(np.mean([r["gauss_newton_fraction"]
                                                         for r in rows])),
            "median_law_error": np.median([r["law_error"] for r in rows], axis=0).tolist(),
            "max_law_error": np.max([r["law_error"] for r in rows], axis=0).tolist(),
            "runs": rows}
        print(case, {k: v for k, v in results["cases"][case].items() if k != "runs"},
              flush=True)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 12,
         tuple(sys.argv[2].split(",")) if len(sys.argv) > 2 else ("clean", "dirty"),
         Path(sys.argv[3]) if len(sys.argv) > 3 else OUT)
