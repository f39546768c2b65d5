"""Benchmark: law error of the M1 inversion on independent twins as the resolution is refined.

Noise-free independent twins (chemomech.twins; P2 on ~6.7 nm elements, pixel-averaged strain)
of `verification_spec(seed)` at pixel sizes 40 .. 10 nm; the inversion meshes the pixel mask
at 1 px (P1) and fits the strain misfit (degree 2).  The error floor at a fixed pixel size
is set by the pixel-mask outline and pixel-centre sampling, so the inversion mesh refines
with the pixels.  Writes bench/results/twin_convergence.json: law errors (max |f - f_true| /
range over X in [0.05, 0.95]) per seed and pixel size, and the least-squares rate in h.

  scripts/in-env python3 bench/twin_convergence.py [N_SEEDS]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from chemomech.twins import (  # noqa: E402
    TwinOptions,
    law_error,
    simulate_independent,
    strain_model_builder,
    verification_spec,
)

OUT = Path(__file__).resolve().parent / "results" / "twin_convergence.json"
PIXELS_NM = (40.0, 28.28, 20.0, 14.14, 10.0)


def main(n_seeds: int = 4) -> None:
    runs = []
    for seed in range(n_seeds):
        errors = []
        for h in PIXELS_NM:
            spec = verification_spec(seed, noise_strain=0.0, pixel_size_nm=h)
            particle = simulate_independent(spec, TwinOptions(supersample=h / 6.67))
            fit = strain_model_builder(particle)(particle.X, 1.0).fit("linear")
            errors.append(law_error(fit.coefficients, particle.truth))
        errors = np.array(errors)
        rates = [float(np.polyfit(np.log(PIXELS_NM), np.log(errors[:, k]), 1)[0])
                 for k in range(2)]
        runs.append({"seed": seed, "law_error_a": errors[:, 0].tolist(),
                     "law_error_c": errors[:, 1].tolist(), "rate_a": rates[0],
                     "rate_c": rates[1]})
        print(runs[-1], flush=True)
    all_a = np.array([r["law_error_a"] for r in runs])
    all_c = np.array([r["law_error_c"] for r in runs])
    pooled = np.concatenate([all_a, all_c])  # (2 seeds-components, levels)
    rate = float(np.polyfit(np.tile(np.log(PIXELS_NM), len(pooled)), np.log(pooled).ravel(),
                            1)[0])
    result = {"pixel_size_nm": list(PIXELS_NM), "runs": runs,
              "median_law_error_a": np.median(all_a, axis=0).tolist(),
              "median_law_error_c": np.median(all_c, axis=0).tolist(),
              "pooled_rate": rate}
    print({k: v for k, v in result.items() if k != "runs"})
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4)
