"""Benchmark: chemomech.correlative.registration versus OpenCV's ECC
(cv2.findTransformECC, MOTION_AFFINE).

Pairs: the synthetic particle (four seeds) and the real LFP50_P2 particle (four warps),
each warped by a known affine (rotation <= 10 deg, scale +-10 %, shear, shift <= 20 px) with
Gaussian noise and a saturating X-ray contrast (three of each) or a linear one (one of each,
the case ECC's and Pearson's linear-contrast assumption fits).  Accuracy = RMS over the
particle's pixels of the distance between recovered and true X-ray coordinates (px).  For
the real particle the truth is the known warp composed with each method's own optimum on the
unwarped pair (the published maps are themselves registered only to ~0.5 px).

Run: scripts/in-env python3 bench/registration.py  ->  bench/results/registration.json
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np
import scipy.io

from chemomech.correlative.registration import (
    fill_outside,
    interior_pixels,
    pixel_rms_distance,
    register_affine,
    simulate_xray_map,
    synthetic_particle_maps,
)
from chemomech.io.results import versions, write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "registration.json"
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "LFP50_P2.mat"


def contrast(x):
    """Saturating monotone X-ray contrast."""
    return np.sqrt(np.clip(x, 0, None)) * (1 + 0.3 * x)


def random_affine(rng: np.random.Generator, centre, offset) -> np.ndarray:
    a = np.deg2rad(rng.uniform(-10, 10))
    A = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ \
        np.array([[rng.uniform(0.9, 1.1), rng.uniform(-0.08, 0.08)],
                  [0.0, rng.uniform(0.9, 1.1)]])
    centre = np.asarray(centre, float)
    return np.column_stack([A, centre + rng.uniform(-20, 20, 2) + offset - A @ centre])


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    return np.column_stack([outer[:, :2] @ inner[:, :2], outer[:, :2] @ inner[:, 2] + outer[:, 2]])


def to_cv(matrix: np.ndarray) -> np.ndarray:
    """Our (i, j) = (axis 0, axis 1) affine in OpenCV's (x = column, y = row) convention."""
    (a00, a01, t0), (a10, a11, t1) = matrix
    return np.array([[a11, a10, t1], [a01, a00, t0]], dtype=np.float32)


def from_cv(warp: np.ndarray) -> np.ndarray:
    (b00, b01, s0), (b10, b11, s1) = np.asarray(warp, float)
    return np.array([[b11, b10, s1], [b01, b00, s0]])


def ecc(fixed, fixed_mask, moving, moving_mask, initial,
        template_mask: bool = False) -> tuple[np.ndarray, float, float]:
    """OpenCV ECC affine: template = fixed (4D-STEM), input = moving (X-ray).

    findTransformECC with the X-ray validity as input mask, or (template_mask=True)
    findTransformECCWithMask scoring, like chemomech, only 4D-STEM pixels > 4 px inside.
    """
    template = fill_outside(fixed, fixed_mask).astype(np.float32)
    image = fill_outside(moving, moving_mask).astype(np.float32)
    input_mask = np.asarray(moving_mask, dtype=np.uint8)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 500, 1e-7)
    start = time.perf_counter()
    try:
        if template_mask:
            interior = interior_pixels(fixed_mask, 4.0).astype(np.uint8)
            cc, warp = cv2.findTransformECCWithMask(template, image, interior, input_mask,
                                                    to_cv(initial), cv2.MOTION_AFFINE,
                                                    criteria, 5)
        else:
            cc, warp = cv2.findTransformECC(template, image, to_cv(initial), cv2.MOTION_AFFINE,
                                            criteria, input_mask, 5)
    except cv2.error as err:
        logging.getLogger(__name__).warning("ECC failed: %s", str(err).strip()[-120:])
        return np.asarray(initial, float), float("nan"), time.perf_counter() - start
    return from_cv(warp), float(cc), time.perf_counter() - start


def centroid_start(fixed_mask, moving_mask) -> np.ndarray:
    """What a user would start ECC from: centroids matched, area scale, no rotation."""
    s = np.sqrt(moving_mask.sum() / fixed_mask.sum())
    c_f, c_m = np.argwhere(fixed_mask).mean(0), np.argwhere(moving_mask).mean(0)
    return np.column_stack([s * np.eye(2), c_m - s * c_f])


def run_pair(fixed, mask, X, truth_of, shape, rng, noise, saturating: bool = True) -> dict:
    truth = truth_of["warp"]
    xray, valid = simulate_xray_map(X, mask, truth, shape,
                                    contrast=contrast if saturating else None, noise=noise,
                                    rng=rng)
    row = {"noise": noise, "contrast": "saturating" if saturating else "linear"}
    for name, model in (("chemomech", "spline"), ("chemomech_pearson", "linear")):
        start = time.perf_counter()
        result = register_affine(fixed, mask, xray, valid, contrast=model)
        elapsed = time.perf_counter() - start
        reference = compose(truth, truth_of[name])
        row[name] = {"rms_px": pixel_rms_distance(result.matrix, reference, mask),
                     "score_r": result.score, "iterations": result.iterations,
                     "time_s": elapsed}
    for name, initial, masked in (
            ("ecc_centroid_start", centroid_start(mask, valid), False),
            ("ecc_true_start", truth, False),
            ("ecc_with_mask_centroid_start", centroid_start(mask, valid), True),
            ("ecc_with_mask_true_start", truth, True)):
        matrix, cc, elapsed = ecc(fixed, mask, xray, valid, initial, masked)
        reference = compose(truth, truth_of["ecc_with_mask" if masked else "ecc"])
        row[name] = {"rms_px": pixel_rms_distance(matrix, reference, mask), "ecc_cc": cc,
                     "time_s": elapsed}
    return row


def own_optima(fixed, mask, X) -> dict:
    """Each method's optimum on the unwarped pair (identity for exactly related synthetics)."""
    identity = np.column_stack([np.eye(2), np.zeros(2)])
    return {"chemomech": register_affine(fixed, mask, X, mask, contrast="spline").matrix,
            "chemomech_pearson": register_affine(fixed, mask, X, mask,
                                                 contrast="linear").matrix,
            "ecc": ecc(fixed, mask, X, mask, identity)[0],
            "ecc_with_mask": ecc(fixed, mask, X, mask, identity, True)[0]}


def main() -> dict:
    rng = np.random.default_rng(2026)
    pairs = []
    for seed in range(4):
        X, mask, e_aa = synthetic_particle_maps((140, 90), seed=seed)
        own = {k: np.column_stack([np.eye(2), np.zeros(2)])
               for k in ("chemomech", "chemomech_pearson", "ecc", "ecc_with_mask")}
        own["warp"] = random_affine(rng, (70, 45), (20.0, 20.0))
        pairs.append({"pair": f"synthetic seed {seed}"}
                     | run_pair(e_aa, mask, X, own, (180, 130), rng, 0.03, seed < 3))
    if REAL.exists():
        data = scipy.io.loadmat(REAL)
        mask = data["FP"] + data["LFP"] > 0.1
        with np.errstate(invalid="ignore", divide="ignore"):
            X = np.where(mask, data["LFP"] / (data["FP"] + data["LFP"]), np.nan)
        e_aa = np.where(mask, data["exx"], np.nan)
        own = own_optima(e_aa, mask, X)
        identity = np.column_stack([np.eye(2), np.zeros(2)])
        own_offsets = {k: pixel_rms_distance(v, identity, mask) for k, v in own.items()}
        for k in range(4):
            own["warp"] = random_affine(rng, (112, 62), (40.0, 50.0))
            pairs.append({"pair": f"LFP50_P2 warp {k}", "own_optimum_vs_identity_px":
                          own_offsets} | run_pair(e_aa, mask, X, own, (300, 220), rng, 0.02,
                                                  k < 3))
    methods = ("chemomech", "chemomech_pearson", "ecc_centroid_start", "ecc_true_start",
               "ecc_with_mask_centroid_start", "ecc_with_mask_true_start")
    summary = {}
    for kind in ("saturating", "linear"):
        rows = [p for p in pairs if p["contrast"] == kind]
        summary[f"{kind}_contrast"] = {
            m: {"median_rms_px": float(np.median([p[m]["rms_px"] for p in rows])),
                "max_rms_px": float(np.max([p[m]["rms_px"] for p in rows])),
                "median_time_s": float(np.median([p[m]["time_s"] for p in rows]))}
            for m in methods} | {"pairs": len(rows)}
    result = {"summary": summary, "pairs": pairs, "versions": versions() | {
        "opencv": cv2.__version__}}
    write_json_atomic(RESULTS, result)
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(main()["summary"], indent=2))
