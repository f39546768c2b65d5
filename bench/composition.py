"""Benchmark: vectorised closed-form NNLS versus a scipy.optimize.nnls loop, and X accuracy.

Run: scripts/in-env python3 bench/composition.py  ->  bench/results/composition.json
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from chemomech.correlative.composition import (
    DEFAULT_ENERGIES_EV,
    fit_composition,
    model_reference_spectra,
    nnls_two_components,
)
from chemomech.io.results import versions, write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "composition.json"


def synthetic_od(A: np.ndarray, n: int, rng: np.random.Generator):
    """A disc particle 300 nm thick on an n x n grid with X rising from 0 to 1 along x."""
    i, j = np.indices((n, n), dtype=float)
    r2 = ((i - n / 2) ** 2 + (j - n / 2) ** 2) / (0.4 * n) ** 2
    thickness = np.where(r2 < 1, 300.0, 0.0)
    X = np.clip(0.5 + 0.5 * np.tanh((i - n / 2) / (0.1 * n)), 0, 1)
    od = A[:, 0, None, None] * thickness * X + A[:, 1, None, None] * thickness * (1 - X)
    return od, X, r2 < 1


def main() -> dict:
    rng = np.random.default_rng(0)
    A = np.column_stack(model_reference_spectra(np.asarray(DEFAULT_ENERGIES_EV)))
    n = 1024
    od, X, inside = synthetic_od(A, n, rng)
    counts = rng.poisson(1e4 * np.exp(-od)).clip(1)
    od_noisy = -np.log(counts / 1e4)
    b = od_noisy.reshape(len(A), -1)

    start = time.perf_counter()
    nnls_two_components(A, b)
    vectorised_s = time.perf_counter() - start
    start = time.perf_counter()
    fit_composition(od_noisy, A)
    full_fit_s = time.perf_counter() - start

    sample = rng.choice(b.shape[1], 20_000, replace=False)
    start = time.perf_counter()
    loop = np.array([nnls(A, b[:, k])[0] for k in sample]).T
    loop_s = (time.perf_counter() - start) * b.shape[1] / sample.size
    t, _ = nnls_two_components(A, b[:, sample])
    max_diff = float(np.abs(t - loop).max())

    accuracy = []
    for i0 in (1e3, 1e4, 1e5, 1e6):
        counts = rng.poisson(i0 * np.exp(-od[:, ::4, ::4])).clip(1)
        maps = fit_composition(-np.log(counts / i0), A)
        core = inside[::4, ::4] & maps.mask
        od_noise = float(np.sqrt(np.mean(np.exp(od[:, ::4, ::4][:, core]) / i0)))
        error = maps.X[core] - X[::4, ::4][core]
        accuracy.append({"i0_counts": i0, "od_noise_rms": od_noise,
                         "x_error_rms": float(np.sqrt(np.mean(error**2))),
                         "x_error_mean": float(np.mean(error))})
    megapixels = b.shape[1] / 1e6
    result = {
        "pixels": int(b.shape[1]), "energies": list(DEFAULT_ENERGIES_EV),
        "vectorised_s_per_megapixel": vectorised_s / megapixels,
        "fit_composition_s_per_megapixel": full_fit_s / megapixels,
        "scipy_nnls_loop_s_per_megapixel": loop_s / megapixels,
        "loop_sampled_pixels": int(sample.size),
        "speedup": loop_s / vectorised_s,
        "max_abs_difference_vs_scipy": max_diff,
        "accuracy_vs_dose": accuracy,
        "versions": versions(),
    }
    write_json_atomic(RESULTS, result)
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
