"""Benchmark: chemomech.correlative.registration (metrics morphology, strain, joint) against
OpenCV's ECC (cv2.findTransformECC, MOTION_AFFINE) and SimpleITK (Mattes mutual information,
affine, multi-resolution), on known warps.

Pairs:
- real: LFP50_P2's own thicknesses t_LFP = LFP, t_FP = FP (on the 4D-STEM grid of the .mat)
  carried to a larger X-ray grid by a known affine (the issue's 7 deg, scales 1.06/0.95, shear
  0.04, and seven random ones: rotation <= 10 deg, scales 0.9-1.1, shear <= 0.08, shift
  <= 20 px), blurred by 1.2 px and noised (0.01 per thickness map), then X = t_LFP / t, mask
  t > 0.1 (`simulate_xray_thicknesses`).  The 4D-STEM side is what `chemomech register
  LFP50_P2.mat` reads: e_aa = exx, the particle mask, HAADF.  The truth is the known warp
  itself: the .mat's X is on the 4D-STEM grid as published.  Each method's own optimum on the
  unwarped pair is reported too (`own_optimum_px`): the published registration is itself
  uncertain by about that much for that method.
- synthetic: `synthetic_particle_maps` (an ellipse, e_aa = Vegard + noise) with
  `synthetic_thickness`, four seeds, the same kind of warps.  An elliptical outline cannot fix
  an affine by itself (an ellipse maps onto itself under a one-parameter family of affine
  maps), so here the morphology metric leans on the thickness texture.

Metrics: auto (the default), morphology (outline only), morphology_haadf (outline + the HAADF
image term, image_weight 1), joint (strain weight 0.5), strain.
Accuracy = RMS over the 4D-STEM particle pixels of |recovered - true| X-ray coordinates (px).
ECC and SimpleITK start where a user would: centroids matched, area scale, no rotation; they
are run on the same two image pairs as chemomech's metrics (strain: e_aa vs X inside the
particle; morphology: the 4D-STEM mask vs the X-ray thickness near the outline).

Run: scripts/in-env python3 bench/registration.py  ->  bench/results/registration.json
SimpleITK is needed by this benchmark only (pip install SimpleITK); chemomech does not use it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np
import scipy.io
import SimpleITK as sitk

from chemomech.correlative.affine import fill_outside, pixel_rms_distance
from chemomech.correlative.registration import (
    DEFAULT_METRIC,
    interior_pixels,
    outline_band,
    register_affine,
)
from chemomech.correlative.warps import (
    simulate_xray_thicknesses,
    synthetic_particle_maps,
    synthetic_thickness,
)
from chemomech.io.results import versions, write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "registration.json"
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "LFP50_P2.mat"
METRICS = {"chemomech_auto": dict(metric="auto"),
           "chemomech_morphology": dict(metric="morphology"),
           "chemomech_morphology_haadf": dict(metric="morphology", image_weight=1.0),
           "chemomech_joint": dict(metric="joint", strain_weight=0.5),
           "chemomech_strain": dict(metric="strain")}
BLUR_PX, NOISE = 1.2, 0.01
log = logging.getLogger(__name__)


def affine(angle_deg: float, scales, shear: float, shift, centre) -> np.ndarray:
    """u = A q + t, A = R(angle) [[s0, shear], [0, s1]], the centre moved by `shift`."""
    a = np.deg2rad(angle_deg)
    A = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ \
        np.array([[scales[0], shear], [0.0, scales[1]]])
    centre = np.asarray(centre, float)
    return np.column_stack([A, centre + np.asarray(shift, float) - A @ centre])


def random_affine(rng: np.random.Generator, centre, offset) -> np.ndarray:
    matrix = affine(rng.uniform(-10, 10), rng.uniform(0.9, 1.1, 2), rng.uniform(-0.08, 0.08),
                    rng.uniform(-20, 20, 2), centre)
    matrix[:, 2] += offset
    return matrix


def centroid_start(fixed_mask, moving_mask) -> np.ndarray:
    """What a user would start ECC / SimpleITK from: centroids matched, area scale."""
    s = np.sqrt(moving_mask.sum() / fixed_mask.sum())
    c_f, c_m = np.argwhere(fixed_mask).mean(0), np.argwhere(moving_mask).mean(0)
    return np.column_stack([s * np.eye(2), c_m - s * c_f])


SWAP = np.array([[0.0, 1.0], [1.0, 0.0]])   # (axis 0, axis 1) <-> (column x, row y)


def to_xy(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Our (i, j) = (axis 0, axis 1) affine as (A, t) in image (x = column, y = row)."""
    return SWAP @ matrix[:, :2] @ SWAP, SWAP @ matrix[:, 2]


def from_xy(A: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.column_stack([SWAP @ A @ SWAP, SWAP @ t])


def ecc(fixed, fixed_scored, moving, moving_mask, initial) -> tuple[np.ndarray, float]:
    """OpenCV ECC affine, template = fixed (4D-STEM) scored on `fixed_scored`, input = moving."""
    A, t = to_xy(initial)
    warp = np.column_stack([A, t]).astype(np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 500, 1e-7)
    start = time.perf_counter()
    try:
        _, warp = cv2.findTransformECCWithMask(
            fixed.astype(np.float32), moving.astype(np.float32),
            fixed_scored.astype(np.uint8), moving_mask.astype(np.uint8), warp,
            cv2.MOTION_AFFINE, criteria, 5)
    except cv2.error as err:
        log.warning("ECC failed: %s", str(err).strip()[-120:])
        return np.asarray(initial, float), time.perf_counter() - start
    warp = np.asarray(warp, float)
    return from_xy(warp[:, :2], warp[:, 2]), time.perf_counter() - start


def simpleitk(fixed, fixed_scored, moving, moving_mask, initial) -> tuple[np.ndarray, float]:
    """SimpleITK: Mattes MI (32 bins), affine, regular-step gradient descent, 3 levels."""
    f_img = sitk.GetImageFromArray(fixed.astype(np.float64))     # sitk x = numpy axis 1
    m_img = sitk.GetImageFromArray(moving.astype(np.float64))
    A, t = to_xy(initial)
    transform = sitk.AffineTransform(2)
    transform.SetMatrix(A.ravel().tolist())
    transform.SetTranslation(t.tolist())
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.NONE)
    method.SetMetricFixedMask(sitk.GetImageFromArray(fixed_scored.astype(np.uint8)))
    method.SetMetricMovingMask(sitk.GetImageFromArray(moving_mask.astype(np.uint8)))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                                    numberOfIterations=300,
                                                    gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    method.SetInitialTransform(transform, inPlace=True)
    start = time.perf_counter()
    try:
        method.Execute(f_img, m_img)
    except RuntimeError as err:
        log.warning("SimpleITK failed: %s", str(err).strip()[-120:])
        return np.asarray(initial, float), time.perf_counter() - start
    A = np.reshape(transform.GetMatrix(), (2, 2))
    c, t = np.asarray(transform.GetCenter()), np.asarray(transform.GetTranslation())
    return from_xy(A, t + c - A @ c), time.perf_counter() - start


def image_pairs(e_aa, mask, X, xmask, thickness) -> dict[str, tuple]:
    """(fixed, fixed scored pixels, moving, moving mask) for the strain and morphology pairs."""
    return {"strain": (fill_outside(e_aa, mask), interior_pixels(mask, 4.0),
                       fill_outside(X, xmask), xmask),
            "morphology": (mask.astype(float), outline_band(mask, 8.0), thickness,
                           np.ones_like(xmask))}


def run_pair(e_aa, mask, dark_field, X, xmask, thickness, truth) -> dict:
    row = {}
    for name, options in METRICS.items():
        start = time.perf_counter()
        result = register_affine(e_aa, mask, X, xmask, thickness=thickness,
                                 dark_field=dark_field, **options)
        row[name] = {"rms_px": pixel_rms_distance(result.matrix, truth, mask),
                     "time_s": time.perf_counter() - start}
    for pair, (fixed, scored, moving, moving_mask) in image_pairs(e_aa, mask, X, xmask,
                                                                  thickness).items():
        initial = centroid_start(mask, xmask)
        for tool, run in (("ecc", ecc), ("simpleitk_mattes", simpleitk)):
            matrix, elapsed = run(fixed, scored, moving, moving_mask, initial)
            row[f"{tool}_{pair}"] = {"rms_px": pixel_rms_distance(matrix, truth, mask),
                                     "time_s": elapsed}
    return row


def own_optima(e_aa, mask, dark_field, t_lfp, t_fp) -> dict[str, float]:
    """Distance (px RMS) of each chemomech metric's optimum on the unwarped, unblurred pair
    from the identity: how far that metric disagrees with the published registration."""
    identity = np.column_stack([np.eye(2), np.zeros(2)])
    X, xmask, thickness = simulate_xray_thicknesses(t_lfp, t_fp, identity, mask.shape,
                                                    blur_px=0.0)
    return {name: pixel_rms_distance(register_affine(
        e_aa, mask, X, xmask, thickness=thickness, dark_field=dark_field, initial=identity,
        **options).matrix, identity, mask) for name, options in METRICS.items()}


def summarise(rows: list[dict]) -> dict:
    methods = [k for k in rows[0] if isinstance(rows[0][k], dict) and "rms_px" in rows[0][k]]
    return {m: {"median_rms_px": float(np.median([r[m]["rms_px"] for r in rows])),
                "max_rms_px": float(np.max([r[m]["rms_px"] for r in rows])),
                "median_time_s": float(np.median([r[m]["time_s"] for r in rows]))}
            for m in methods} | {"pairs": len(rows)}


def main() -> dict:
    rng = np.random.default_rng(2026)
    real, synthetic = [], []
    if REAL.exists():
        data = scipy.io.loadmat(REAL)
        t_lfp, t_fp = (np.asarray(data[k], dtype=float) for k in ("LFP", "FP"))
        mask = t_lfp + t_fp > 0.1
        e_aa = np.where(mask, data["exx"], np.nan)
        dark_field = np.asarray(data["HAADF"], dtype=float)
        own = own_optima(e_aa, mask, dark_field, t_lfp, t_fp)
        warps = [affine(7.0, (1.06, 0.95), 0.04, (12.0, -9.0), (112, 62))]
        warps[0][:, 2] += (40.0, 50.0)
        warps += [random_affine(rng, (112, 62), (40.0, 50.0)) for _ in range(7)]
        for k, warp in enumerate(warps):
            X, xmask, thickness = simulate_xray_thicknesses(t_lfp, t_fp, warp, (310, 230),
                                                            blur_px=BLUR_PX, noise=NOISE,
                                                            rng=rng)
            real.append({"pair": f"LFP50_P2 warp {k}", "warp": warp.tolist()}
                        | run_pair(e_aa, mask, dark_field, X, xmask, thickness, warp))
            log.info("%s", {m: round(v["rms_px"], 3) for m, v in real[-1].items()
                            if isinstance(v, dict)})
    for seed in range(4):
        X0, mask, e_aa = synthetic_particle_maps((140, 90), seed=seed)
        t = synthetic_thickness(mask, seed)
        warp = random_affine(rng, (70, 45), (20.0, 20.0))
        X, xmask, thickness = simulate_xray_thicknesses(np.nan_to_num(X0) * t,
                                                        (1 - np.nan_to_num(X0)) * t, warp,
                                                        (180, 130), blur_px=BLUR_PX,
                                                        noise=NOISE, rng=rng)
        synthetic.append({"pair": f"synthetic seed {seed}", "warp": warp.tolist()}
                         | run_pair(e_aa, mask, None, X, xmask, thickness, warp))
    result = {"summary": {"real_LFP50_P2": summarise(real) if real else None,
                          "synthetic": summarise(synthetic)},
              "default_metric": DEFAULT_METRIC,
              "own_optimum_px": own if real else None,
              "settings": {"blur_px": BLUR_PX, "noise_per_thickness": NOISE,
                           "joint_strain_weight": 0.5, "band_px": 8.0},
              "pairs": real + synthetic,
              "versions": versions() | {"opencv": cv2.__version__,
                                        "simpleitk": sitk.Version().VersionString()}}
    write_json_atomic(RESULTS, result)
    return result


if __name__ == "__main__":
    import json

    logging.basicConfig(level=logging.INFO)
    out = main()
    print(json.dumps({"summary": out["summary"], "own_optimum_px": out["own_optimum_px"]},
                     indent=2))
