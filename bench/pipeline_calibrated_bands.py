"""Benchmark: coverage and cost of the pipeline's bands (`chemomech.pipeline.run`) on
independent twins (`chemomech.twins`: P2 on h/2 of the smooth outline, pixel-averaged strain,
strain noise 1e-3), for the noise-only covariance ("noise": integrated_noise for the
displacement misfit, gauss_newton for the strain misfit; what `auto` chose before it chose
calibrated for M1) and `uncertainty.method: calibrated` (now the M1 default), both misfits.

Cases: "clean" X, and "dirty" X (blur 1 px, misregistration 0.5 px in a random direction,
noise 0.05; the calibrated band is told noise_composition 0.05, registration_px 0.5,
blur_px 1).  Each run: one particle, M1, N = 2, default optimiser (TAO + cross-check).
The band (95 %, pointwise) is checked at the 19 X of `chemomech.twins.CHECK_X`.  Writes
bench/results/pipeline_calibrated_bands.json: per case and method the pointwise coverage
(over seeds) at each X, the per-dataset covered fractions, law errors
(max |f - f_true| / range), and the cost (seconds of the M1 stage incl. bands, and of the
bands alone) relative to the noise-only run.

  scripts/in-env python3 bench/pipeline_calibrated_bands.py [N_SEEDS [CASES [MISFITS]]]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from chemomech.config import RunConfig  # noqa: E402
from chemomech.io.stack import write_stack  # noqa: E402
from chemomech.pipeline import run  # noqa: E402
from chemomech.twins import (  # noqa: E402
    CHECK_X,
    TwinOptions,
    band_covers,
    law_error,
    simulate_independent,
    verification_spec,
)

OUT = Path(__file__).resolve().parent / "results" / "pipeline_calibrated_bands.json"
DIRTY = {"noise_composition": 0.05, "registration_px": 0.5, "blur_px": 1.0}


def twin(seed: int, dirty: bool):
    angle = np.random.default_rng([seed, 99]).uniform(0.0, 2.0 * np.pi)
    options = TwinOptions(supersample=2, blur_px=1.0 if dirty else 0.0,
                          shift_px=(0.5 * np.cos(angle), 0.5 * np.sin(angle)) if dirty
                          else (0.0, 0.0))
    return simulate_independent(verification_spec(seed, 0.05 if dirty else 0.0), options)


def evaluate(summary: dict, truth: dict) -> dict:
    curve = {k: np.interp(CHECK_X, summary["eigenstrain_curve"]["X"], v)
             for k, v in summary["eigenstrain_curve"].items()}
    curve["X"] = CHECK_X
    covers = band_covers(curve, truth)
    a = np.r_[summary["coefficients"]["a"], summary["coefficients"]["c"]]
    t = summary["timings_s"]
    return {"covers": covers.astype(int).tolist(), "fraction": float(covers.mean()),
            "law_error": law_error(a, truth),
            "half_width_a_mid": float(0.5 * (curve["a_hi"] - curve["a_lo"])[9]),
            "m1_s": t["m1_total"], "bands_s": t["bands"], "total_s": t["total"]}


def main(n_seeds: int, cases: tuple[str, ...], misfits: tuple[str, ...], out: Path) -> None:
    results = {"X": CHECK_X.tolist(), "level": 0.95, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            dirty = case == "dirty"
            rows: dict[str, list] = {}
            for seed in range(n_seeds):
                particle = twin(seed, dirty)
                data = write_stack(Path(tmp) / f"{case}{seed}.h5", particle)
                for misfit in misfits:
                    for method in ("noise", "calibrated"):
                        extra = DIRTY if dirty and method == "calibrated" else {}
                        noise = "integrated_noise" if misfit == "displacement" \
                            else "gauss_newton"
                        config = RunConfig(data=[data], model="M1", legendre_degree=2,
                                           misfit=misfit, output=Path(tmp) / "run",
                                           uncertainty={"method": noise if method == "noise"
                                                        else method} | extra)
                        summary = run(config, MPI.COMM_SELF)
                        row = evaluate(summary, particle.truth) | {"seed": seed}
                        rows.setdefault(f"{misfit}/{method}", []).append(row)
                        print(case, misfit, method, seed, row["fraction"],
                              np.round(row["law_error"], 4), round(row["m1_s"], 2), flush=True)
                        shutil.rmtree(Path(tmp) / "run")
            block = {}
            for key, rs in rows.items():
                covers = np.array([r["covers"] for r in rs])  # (seeds, 2, X)
                misfit = key.split("/")[0]
                base = rows[f"{misfit}/noise"]
                block[key] = {
                    "n_seeds": len(rs),
                    "pointwise_coverage_a": covers[:, 0].mean(axis=0).tolist(),
                    "pointwise_coverage_c": covers[:, 1].mean(axis=0).tolist(),
                    "min_pointwise_coverage": float(covers.mean(axis=0).min()),
                    "mean_dataset_fraction": float(np.mean([r["fraction"] for r in rs])),
                    "min_dataset_fraction": float(min(r["fraction"] for r in rs)),
                    "median_law_error": np.median([r["law_error"] for r in rs], 0).tolist(),
                    "max_law_error": np.max([r["law_error"] for r in rs], 0).tolist(),
                    "median_half_width_a_mid": float(np.median([r["half_width_a_mid"]
                                                                for r in rs])),
                    "m1_cost_vs_default": float(np.median(
                        [r["m1_s"] / b["m1_s"] for r, b in zip(rs, base, strict=True)])),
                    "total_cost_vs_default": float(np.median(
                        [r["total_s"] / b["total_s"] for r, b in zip(rs, base, strict=True)])),
                    "median_bands_s": float(np.median([r["bands_s"] for r in rs])),
                    "median_m1_s": float(np.median([r["m1_s"] for r in rs])),
                    "runs": rs}
                print(case, key, {k: v for k, v in block[key].items()
                                  if k not in ("runs", "pointwise_coverage_a",
                                               "pointwise_coverage_c")}, flush=True)
            results["cases"][case] = block
            out.parent.mkdir(exist_ok=True)
            out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20,
         tuple(sys.argv[2].split(",")) if len(sys.argv) > 2 else ("clean", "dirty"),
         tuple(sys.argv[3].split(",")) if len(sys.argv) > 3 else ("displacement", "strain"),
         Path(sys.argv[4]) if len(sys.argv) > 4 else OUT)
