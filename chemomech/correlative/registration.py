"""Affine registration of X-ray maps onto the 4D-STEM grid.

The transform is 6 numbers, ``u = A q + t``: it maps a 4D-STEM pixel q = (i, j) (x = axis 0,
y = axis 1, pixel centres at integers) to X-ray pixel coordinates u.  What is matched
(`metric`, `register_affine`):

- morphology: the particle's shape, independent of the composition-strain law: the 4D-STEM
  particle mask (blurred to the X-ray's resolution) against the X-ray thickness or OD within
  `band_px` of the outline, optionally plus a 4D-STEM virtual image (DF, HAADF) against the
  thickness;
- strain: the study's score, a 4D-STEM strain channel (e_aa) against the warped X over the
  pixels more than `margin_px` inside the particle.  It uses the very correlation the law is
  learned from, and on the real particle its optimum is ~0.8 px off (the strain is not a
  linear function of X), see bench/registration.py;
- joint: S = (1 - w) S_morphology + w S_strain, w = `strain_weight` (0.5);
- auto (default): morphology, unless the outline cannot fix the map (an ellipse maps onto
  itself under a family of affine maps; detected by the curvature of the score), then joint.

Sign: Li-rich LiFePO4 (X = 1) is the strain reference (e_aa = 0) and FePO4 has e_aa = -4.9 %,
so a (or e_aa) and X are positively correlated: the default ``sign=+1`` maximises +r; use
``sign=-1`` for a channel that falls with X (e.g. c or e_cc).

Contrast: X-ray maps need not be linear in X (other thickness/contrast relations, or a map
that is not X itself), and a nonlinear contrast moves the Pearson optimum by ~1 px.  The
default score on the finer levels is therefore the correlation ratio R = max_h r(f, h(m))
over cubic splines h of the X-ray value m; ``contrast="linear"`` keeps the plain r.

Method: the X-ray map is a bicubic interpolating spline (scipy RectBivariateSpline) whose
exact x/y derivatives give the analytic gradient of the score; L-BFGS (scipy.optimize)
maximises it coarse-to-fine over a Gaussian scale space (both images smoothed, pixels
subsampled), from several starts (rotations, scales, optionally mirrored) ranked by sign * r
on the coarsest level, the best few carried to the next finer level.

`registration.json` (DESIGN §3) stores
``{"matrix": [[a00, a01, t0], [a10, a11, t1]], "flip": bool, "score": r, "iterations": n}``;
with a mirror the matrix itself has det < 0 and ``flip`` is true; `score` is the strain-X
Pearson r at the result whatever the metric.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage, optimize
from scipy.interpolate import BSpline, RectBivariateSpline

from chemomech.exceptions import InputError
from chemomech.io.stack import interior_pixels

if TYPE_CHECKING:
    from chemomech.io.py4dstem import StrainMaps
    from chemomech.io.readers import CompositionMap
    from chemomech.io.stack import ParticleData

logger = logging.getLogger(__name__)

#: Transforms with |det A| below this (X-ray pixels per 4D-STEM pixel, squared) are collapsed.
MIN_ABS_DETERMINANT = 0.05

#: Least fraction of the scored 4D-STEM pixels that must land inside the X-ray particle.
MIN_OVERLAP = 0.5

#: Contrast models of the X-ray map: Pearson r ("linear") or spline correlation ratio.
CONTRASTS = ("linear", "spline")

#: What is matched: the particle's shape, the strain-X correlation, both (weighted), or
#: "auto": the shape, joined by the strain term only where the outline cannot fix the map.
METRICS = ("auto", "morphology", "strain", "joint")

#: "auto" adds the strain term when lambda_min / lambda_max of the outline score's curvature
#: (in the scaled affine parameters) is below this: an ellipse gives ~2e-3, LFP50_P2 ~7e-2.
MIN_OUTLINE_CONDITIONING = 0.01

#: Blurs (px, Gaussian sigma) of the 4D-STEM mask scanned to match the X-ray's resolution.
OUTLINE_BLURS_PX = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)

#: The default metric: the most accurate on real-particle warps (bench/registration.py).
DEFAULT_METRIC = "auto"


@dataclass(frozen=True, slots=True)
class RegistrationResult:
    """The affine map u = matrix[:, :2] q + matrix[:, 2], its Pearson r and iteration count."""

    matrix: np.ndarray
    flip: bool
    score: float
    iterations: int

    def to_dict(self) -> dict:
        """The stable `registration.json` content (DESIGN §3)."""
        return {"matrix": np.asarray(self.matrix, dtype=float).tolist(), "flip": bool(self.flip),
                "score": float(self.score), "iterations": int(self.iterations)}


def write_registration(result: RegistrationResult, path: str | Path) -> Path:
    """Write `registration.json` atomically."""
    from chemomech.io.results import write_json_atomic

    return write_json_atomic(path, result.to_dict())


def read_registration(path: str | Path) -> RegistrationResult:
    """Read and validate `registration.json`."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path=str(path))
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"not JSON ({err})", path=str(path)) from None
    missing = {"matrix", "flip", "score", "iterations"} - set(data)
    if missing:
        raise InputError(f"missing keys {sorted(missing)}", path=str(path))
    matrix = np.asarray(data["matrix"], dtype=float)
    if matrix.shape != (2, 3) or not np.all(np.isfinite(matrix)):
        raise InputError(f"matrix must be 2x3 and finite, got {data['matrix']}", path=str(path),
                         field="matrix")
    det = float(np.linalg.det(matrix[:, :2]))
    if bool(data["flip"]) != (det < 0):
        raise InputError(f"flip={data['flip']} disagrees with det(matrix[:, :2]) = {det:.4g}",
                         path=str(path), field="flip")
    return RegistrationResult(matrix, bool(data["flip"]), float(data["score"]),
                              int(data["iterations"]))


def fill_outside(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Copy of `image` with every invalid pixel set to its nearest valid pixel's value."""
    valid = np.asarray(valid, dtype=bool) & np.isfinite(image)
    if not valid.any():
        raise InputError("no valid pixel to register", field="mask")
    index = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return np.asarray(image, dtype=float)[tuple(index)]


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """u = A q + t for points q of shape (n, 2) (pixel coordinates)."""
    matrix = np.asarray(matrix, dtype=float)
    return points @ matrix[:, :2].T + matrix[:, 2]


def pixel_rms_distance(matrix_a: np.ndarray, matrix_b: np.ndarray, mask: np.ndarray) -> float:
    """RMS over the mask's pixels q of |M_a q - M_b q| (X-ray pixels)."""
    q = np.argwhere(np.asarray(mask, dtype=bool)).astype(float)
    diff = apply_affine(matrix_a, q) - apply_affine(matrix_b, q)
    return float(np.sqrt(np.mean(np.sum(diff**2, axis=1))))


def warp_to_grid(moving: np.ndarray, matrix: np.ndarray, shape: tuple[int, int],
                 moving_mask: np.ndarray | None = None, order: int = 1) -> np.ndarray:
    """moving(A q + t) on a grid of `shape`; NaN where q lands outside the moving mask/image."""
    moving = np.asarray(moving, dtype=float)
    valid = np.isfinite(moving) if moving_mask is None else \
        (np.asarray(moving_mask, dtype=bool) & np.isfinite(moving))
    filled = fill_outside(moving, valid)
    q = np.indices(shape).reshape(2, -1).T.astype(float)
    u = apply_affine(matrix, q).T
    values = ndimage.map_coordinates(filled, u, order=order, mode="nearest")
    inside = ndimage.map_coordinates(valid.astype(float), u, order=1, mode="constant",
                                     cval=0.0) >= 0.5
    return np.where(inside, values, np.nan).reshape(shape)


def point_scaling(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Centroid c and RMS radius R = sqrt(mean |q - c|^2 / 2) of pixel coordinates (px)."""
    points = np.asarray(points, dtype=float)
    centre = points.mean(axis=0)
    return centre, float(np.sqrt(np.mean(np.sum((points - centre) ** 2, axis=1)) / 2.0))


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """sum_i a_i b_i without BLAS."""
    return float(np.add.reduce(a * b))


class AffineCorrelation:
    """Score of the fit of fixed f_k by the warped X-ray map m_k = X(A q_k + t), and its gradient.

    Parameters p = (R A00, R A01, R A10, R A11, b0, b1) with u = A (q - c) + b, c the centroid
    of the pixels and R their RMS radius (`point_scaling`; `scaling=(c, R)` shares them between
    the terms of one registration), so that every parameter moves pixels by ~1 px.
    `contrast="linear"`: the Pearson r(f, m) (the study's score).  `contrast="spline"`: the
    correlation ratio R = max_h Pearson(f, h(m)) over cubic splines h with `knots` uniform
    intervals on `value_range` (the correlation of f with its least-squares fit by B_k(m)):
    any smooth contrast X -> m then leaves the optimum where it is.  With the spline basis
    B fixed, d(R^2)/dm_i = 2 e_i h'(m_i), e = f - B beta the fit residual.
    """

    def __init__(self, fixed_values: np.ndarray, points: np.ndarray, moving: np.ndarray,
                 contrast: str = "linear", value_range: tuple[float, float] | None = None,
                 knots: int = 8, scaling: tuple[np.ndarray, float] | None = None):
        self.points = np.asarray(points, dtype=float)
        self.centre, self.radius = point_scaling(self.points) if scaling is None else scaling
        self.normalised = (self.points - self.centre) / self.radius   # (n, 2)
        self._qx = np.ascontiguousarray(self.normalised[:, 0])
        self._qy = np.ascontiguousarray(self.normalised[:, 1])
        f = np.asarray(fixed_values, dtype=float) - np.mean(fixed_values)
        norm = np.sqrt(_dot(f, f))
        if norm == 0:
            raise InputError("the fixed channel is constant over the scored pixels",
                             field="fixed")
        if contrast not in CONTRASTS:
            raise InputError(f"contrast must be one of {CONTRASTS}, got {contrast!r}",
                             field="contrast")
        self.f_hat = f / norm
        self.contrast = contrast
        if contrast == "spline":
            lo, hi = value_range if value_range is not None else (moving.min(), moving.max())
            if not hi > lo or knots < 1:
                raise InputError("the X-ray map is constant: nothing to register",
                                 field="moving")
            self.knots = np.concatenate([[lo] * 3, np.linspace(lo, hi, knots + 1), [hi] * 3])
            self.value_range = (float(lo), float(hi))
        self.shape = moving.shape
        axes = [np.arange(n, dtype=float) for n in moving.shape]
        self.spline = RectBivariateSpline(axes[0], axes[1], moving, kx=3, ky=3, s=0)
        self.evaluations = 0

    def to_parameters(self, matrix: np.ndarray) -> np.ndarray:
        """p from the 2x3 matrix (u = A q + t)."""
        A, t = matrix[:, :2], matrix[:, 2]
        return np.concatenate([(A * self.radius).ravel(), A @ self.centre + t])

    def to_matrix(self, p: np.ndarray) -> np.ndarray:
        """The 2x3 matrix (u = A q + t) from p."""
        A = np.reshape(p[:4], (2, 2)) / self.radius
        return np.column_stack([A, p[4:] - A @ self.centre])

    def coordinates(self, p: np.ndarray) -> np.ndarray:
        """X-ray coordinates u_k (n, 2) of the fixed pixels."""
        return self.normalised @ np.reshape(p[:4], (2, 2)).T + p[4:]

    def _score_and_slope(self, m: np.ndarray) -> tuple[float, np.ndarray]:
        """Score s(m) and ds/dm: Pearson r ("linear") or the correlation ratio R ("spline").

        Reductions avoid BLAS (`_dot`): threaded BLAS on 10^4-vectors is slower than a ufunc
        loop and stalls on a loaded machine.
        """
        if self.contrast == "linear":
            mc = m - m.mean()
            norm = np.sqrt(_dot(mc, mc))
            if norm < 1e-12 * max(1.0, float(np.abs(m).max())):
                return 0.0, np.zeros_like(m)
            m_hat = mc / norm
            r = _dot(self.f_hat, m_hat)
            return r, (self.f_hat - r * m_hat) / norm
        lo, hi = self.value_range
        inside = (m >= lo) & (m <= hi)
        x = np.clip(m, lo, hi)
        basis = BSpline.design_matrix(x, self.knots, 3)           # sparse (n, knots + 3)
        gram = (basis.T @ basis).toarray()
        beta = np.linalg.lstsq(gram, basis.T @ self.f_hat, rcond=None)[0]
        residual = self.f_hat - basis @ beta
        r2 = 1.0 - _dot(residual, residual)     # f_hat: zero mean, unit norm; sum_k B_k = 1
        if r2 <= 1e-12:
            return 0.0, np.zeros_like(m)
        slope = BSpline(self.knots, beta, 3)(x, nu=1) * inside
        R = np.sqrt(r2)
        return R, residual * slope / R

    def value_and_gradient(self, p: np.ndarray) -> tuple[float, np.ndarray]:
        """Score and d(score)/dp; pixels outside the image see its clamped edge (zero slope)."""
        self.evaluations += 1
        qx, qy = self._qx, self._qy
        u = p[0] * qx + p[1] * qy + p[4]
        v = p[2] * qx + p[3] * qy + p[5]
        u_in = np.clip(u, 0.0, self.shape[0] - 1.0)
        v_in = np.clip(v, 0.0, self.shape[1] - 1.0)
        m = self.spline.ev(u_in, v_in)
        m_u = np.where(u == u_in, self.spline.ev(u_in, v_in, dx=1), 0.0)
        m_v = np.where(v == v_in, self.spline.ev(u_in, v_in, dy=1), 0.0)
        score, dscore_dm = self._score_and_slope(m)
        g_u, g_v = dscore_dm * m_u, dscore_dm * m_v
        gradient = np.array([_dot(g_u, qx), _dot(g_u, qy), _dot(g_v, qx), _dot(g_v, qy),
                             g_u.sum(), g_v.sum()])
        return score, gradient


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(image, sigma) if sigma > 0 else image


def _start_matrices(fixed_mask: np.ndarray, moving_mask: np.ndarray, angles_deg, scales,
                    allow_flip: bool) -> list[np.ndarray]:
    """Initial transforms mapping the fixed particle's centroid onto the moving one's."""
    c_fixed = np.argwhere(fixed_mask).mean(axis=0)
    c_moving = np.argwhere(moving_mask).mean(axis=0)
    area_scale = np.sqrt(moving_mask.sum() / fixed_mask.sum())
    starts = []
    for mirror in ((False, True) if allow_flip else (False,)):
        for angle in np.deg2rad(np.asarray(angles_deg, dtype=float)):
            c, s = np.cos(angle), np.sin(angle)
            A = np.array([[c, -s], [s, c]])
            if mirror:
                A = A @ np.diag([1.0, -1.0])
            for scale in scales:
                As = area_scale * scale * A
                starts.append(np.column_stack([As, c_moving - As @ c_fixed]))
    return starts


@dataclass(frozen=True)
class SimilarityTerm:
    """One image pair scored by `AffineCorrelation`: fixed(q) on the 4D-STEM grid over the
    `scored` pixels q against moving(A q + t) on the X-ray grid, with a weight and the sign of
    the correlation for the linear ranking pass (+1: they rise together), and optionally its
    own finest-level smoothing (px)."""

    name: str
    fixed: np.ndarray
    scored: np.ndarray
    moving: np.ndarray
    weight: float = 1.0
    sign: int = 1
    smoothing_px: float | None = None     # finest-level smoothing; None: register_terms'


def strain_term(fixed: np.ndarray, fixed_mask: np.ndarray, moving: np.ndarray,
                moving_mask: np.ndarray, *, sign: int = 1, margin_px: float = 4.0,
                weight: float = 1.0) -> SimilarityTerm:
    """The strain-X term: a 4D-STEM strain channel against X over the pixels more than
    `margin_px` inside the 4D-STEM particle (the study's score)."""
    return SimilarityTerm("strain", fill_outside(fixed, fixed_mask),
                          interior_pixels(fixed_mask, margin_px),
                          fill_outside(moving, moving_mask), weight, sign)


def outline_band(mask: np.ndarray, band_px: float) -> np.ndarray:
    """Pixels within `band_px` (Euclidean) of the mask's boundary, inside and outside it."""
    mask = np.asarray(mask, dtype=bool)
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    return np.where(mask, inside <= band_px, outside <= band_px)


def morphology_terms(fixed_mask: np.ndarray, moving_image: np.ndarray,
                     moving_mask: np.ndarray, *, band_px: float = 8.0,
                     dark_field: np.ndarray | None = None, image_weight: float = 0.0,
                     weight: float = 1.0, outline_blur_px: float = 0.0,
                     ) -> list[SimilarityTerm]:
    """Terms independent of the strain-composition law: the particle's shape.

    Outline: the 4D-STEM mask (0/1, blurred by `outline_blur_px` to the X-ray's resolution)
    against the X-ray thickness (or OD; the X-ray mask if neither is given) over
    `outline_band(mask, band_px)`, where the outline lives (inside it a thickness map varies
    while the mask does not).  Optionally a 4D-STEM virtual image
    (`dark_field`: DF, HAADF) against the thickness over the band and the particle, with
    relative weight `image_weight`.  The terms share `weight` in the proportion
    1 : image_weight.
    """
    if image_weight < 0:
        raise InputError(f"image_weight must be >= 0, got {image_weight}", field="image_weight")
    moving = fill_outside(moving_image, np.isfinite(moving_image)) if moving_image is not None \
        else np.asarray(moving_mask, dtype=float)
    band = outline_band(fixed_mask, band_px)
    total = 1.0 + (image_weight if dark_field is not None else 0.0)
    outline = _smooth(np.asarray(fixed_mask, dtype=float), outline_blur_px)
    terms = [SimilarityTerm("outline", outline, band, moving, weight / total)]
    if dark_field is not None and image_weight > 0:
        image = fill_outside(dark_field, np.isfinite(dark_field))
        terms.append(SimilarityTerm("virtual image", image, band | fixed_mask, moving,
                                    weight * image_weight / total))
    return terms


def register_terms(terms: list[SimilarityTerm], fixed_mask: np.ndarray,
                   moving_mask: np.ndarray, *, allow_flip: bool = False,
                   start_angles_deg=(-20.0, -10.0, 0.0, 10.0, 20.0),
                   start_scales=(0.9, 1.0, 1.1), initial: np.ndarray | None = None,
                   levels: int = 3, keep: int = 3, contrast: str = "spline",
                   contrast_knots: int = 8, smoothing_px: float = 1.0, max_iter: int = 200,
                   gtol: float = 1e-7) -> tuple[np.ndarray, float, int]:
    """Affine u = A q + t maximising S = sum_k w_k S_k / sum_k w_k over the terms.

    Each S_k is the Pearson r (sign-corrected) or the spline correlation ratio of one
    `SimilarityTerm` (`AffineCorrelation`, all with the parameter scaling of the 4D-STEM
    particle).  `levels` Gaussian scale-space levels with smoothing sigma =
    max(2^(L-1), smoothing_px) px and pixel stride 2^L (L = levels-1 .. 0); the final smoothing
    (default 1 px) keeps the variance of interpolated noise from depending on the sub-pixel
    phase, which otherwise biases r towards off-grid sampling.  The starts (rotations, scales,
    optionally mirrored; centroids matched) are optimised and ranked by the sign-corrected
    Pearson score on the coarsest level, then the best `keep` maximise, on every level, the
    `contrast` score ("spline": the correlation ratio, which a nonlinear contrast does not
    bias; "linear": the plain r).  Returns (matrix, S, iterations).
    """
    if levels < 1:
        raise InputError(f"levels must be >= 1, got {levels}", field="levels")
    if contrast not in CONTRASTS:
        raise InputError(f"contrast must be one of {CONTRASTS}, got {contrast!r}",
                         field="contrast")
    total = sum(t.weight for t in terms)
    if not terms or total <= 0 or any(t.weight < 0 for t in terms):
        raise InputError("registration needs terms with non-negative weights of positive sum",
                         field="weights")
    terms = [t for t in terms if t.weight > 0]
    scaling = point_scaling(np.argwhere(fixed_mask))
    if initial is not None:
        candidates = [np.asarray(initial, dtype=float).reshape(2, 3)]
    else:
        candidates = _start_matrices(fixed_mask, moving_mask, start_angles_deg, start_scales,
                                     allow_flip)
    iterations = np.zeros(len(candidates), dtype=int)
    scores = np.zeros(len(candidates))
    for level in range(levels - 1, -1, -1):
        stride = 2**level
        coarse = 0.0 if level == 0 else 2.0 ** (level - 1)
        # the coarsest level first ranks the starts by sign * r, then refines with `contrast`
        passes = ["linear", contrast] if level == levels - 1 and contrast != "linear" \
            else [contrast]
        for model in passes:
            objectives = []
            for term in terms:
                sigma = max(smoothing_px if term.smoothing_px is None else term.smoothing_px,
                            coarse)
                points = np.argwhere(term.scored)
                on_grid = np.all(points % stride == 0, axis=1)
                points = points[on_grid] if on_grid.sum() >= 20 else points
                moving_level = _smooth(term.moving, sigma)
                values = _smooth(term.fixed, sigma)[points[:, 0], points[:, 1]]
                objective = AffineCorrelation(values, points, moving_level, model,
                                              (moving_level.min(), moving_level.max()),
                                              contrast_knots, scaling)
                signed = term.weight / total * (term.sign if model == "linear" else 1)
                objectives.append((objective, signed))

            def negative(p, objectives=objectives):
                value, gradient = 0.0, np.zeros(6)
                for objective, w in objectives:
                    r, g = objective.value_and_gradient(p)
                    value += w * r
                    gradient += w * g
                return -value, -gradient

            first = objectives[0][0]
            for k, matrix in enumerate(candidates):
                solution = optimize.minimize(negative, first.to_parameters(matrix),
                                             jac=True, method="L-BFGS-B",
                                             options=dict(maxiter=max_iter, gtol=gtol))
                candidates[k] = first.to_matrix(solution.x)
                scores[k] = -solution.fun
                iterations[k] += solution.nit
            logger.debug("level %d (stride %d, sigma >= %.1f px, %s, terms %s): best score "
                         "%.4f of %d", level, stride, coarse, model, [t.name for t in terms],
                         scores.max(), len(candidates))
            final = level == 0 and model == passes[-1]
            best = np.argsort(-scores)[:len(candidates) if final else keep]
            candidates = [candidates[k] for k in best]
            iterations, scores = iterations[best], scores[best]
    best = int(np.argmax(scores))
    return candidates[best], float(scores[best]), int(iterations[best])


def _fine_objectives(terms: list[SimilarityTerm], fixed_mask: np.ndarray,
                     smoothing_px: float, contrast_knots: int,
                     ) -> list[tuple[AffineCorrelation, float]]:
    """The finest-level spline objectives of the terms with their normalised weights."""
    scaling = point_scaling(np.argwhere(fixed_mask))
    total = sum(t.weight for t in terms)
    objectives = []
    for t in terms:
        sigma = smoothing_px if t.smoothing_px is None else t.smoothing_px
        points = np.argwhere(t.scored)
        moving = _smooth(t.moving, sigma)
        objectives.append((AffineCorrelation(
            _smooth(t.fixed, sigma)[points[:, 0], points[:, 1]], points, moving, "spline",
            (moving.min(), moving.max()), contrast_knots, scaling), t.weight / total))
    return objectives


def terms_score(terms: list[SimilarityTerm], matrix: np.ndarray, fixed_mask: np.ndarray,
                smoothing_px: float = 1.0, contrast_knots: int = 8) -> float:
    """S = sum_k w_k S_k / sum_k w_k (spline scores, finest level) at `matrix`."""
    objectives = _fine_objectives(terms, fixed_mask, smoothing_px, contrast_knots)
    p = objectives[0][0].to_parameters(np.asarray(matrix, dtype=float))
    return float(sum(w * o.value_and_gradient(p)[0] for o, w in objectives))


def outline_conditioning(terms: list[SimilarityTerm], matrix: np.ndarray,
                         fixed_mask: np.ndarray, smoothing_px: float = 1.0,
                         contrast_knots: int = 8, step: float = 1e-3) -> float:
    """lambda_min / lambda_max of -Hessian of the weighted spline score at `matrix`.

    The Hessian is central differences (step in the scaled parameters, ~px) of the analytic
    gradient; 0 when a direction is flat or uphill: the terms leave the map undetermined.
    """
    objectives = _fine_objectives(terms, fixed_mask, smoothing_px, contrast_knots)

    def gradient(p: np.ndarray) -> np.ndarray:
        return sum(w * o.value_and_gradient(p)[1] for o, w in objectives)

    p0 = objectives[0][0].to_parameters(np.asarray(matrix, dtype=float))
    H = np.array([(gradient(p0 + step * e) - gradient(p0 - step * e)) / (2 * step)
                  for e in np.eye(6)])
    eigenvalues = np.linalg.eigvalsh(-0.5 * (H + H.T))
    return float(max(eigenvalues[0], 0.0) / eigenvalues[-1]) if eigenvalues[-1] > 0 else 0.0


def _checked_result(matrix: np.ndarray, iterations: int, fixed: np.ndarray,
                    fixed_mask: np.ndarray, moving: np.ndarray, moving_mask: np.ndarray,
                    allow_flip: bool, margin_px: float, sign: int) -> RegistrationResult:
    """Reject degenerate or non-overlapping transforms; score = the strain-X Pearson r."""
    det = float(np.linalg.det(matrix[:, :2]))
    if abs(det) < MIN_ABS_DETERMINANT or (det < 0 and not allow_flip):
        raise InputError(f"degenerate transform (det A = {det:.4g}: "
                         f"{'reflection' if det < 0 else 'collapse'}); check the inputs, the "
                         "sign, or allow a mirror flip", field="matrix")
    points = np.argwhere(interior_pixels(fixed_mask, margin_px))
    u = apply_affine(matrix, points.astype(float)).T
    overlap = float(np.mean(ndimage.map_coordinates(moving_mask.astype(float), u, order=0,
                                                    mode="constant", cval=0.0) > 0.5))
    if overlap < MIN_OVERLAP:
        raise InputError(f"after warping only {100 * overlap:.0f} % of the scored 4D-STEM "
                         f"pixels fall inside the X-ray particle (need {100 * MIN_OVERLAP:.0f} "
                         "%): the images do not overlap", field="matrix")
    r = correlation_score(fixed, fixed_mask, moving, matrix, moving_mask, margin_px)
    if sign * r <= 0:
        logger.warning("the registered Pearson r = %.3f has the opposite of the requested sign "
                       "%+d", r, sign)
    logger.info("registration: strain-X r = %.4f after %d iterations, det A = %.4f, overlap "
                "%.0f %%", r, iterations, det, 100 * overlap)
    return RegistrationResult(matrix, det < 0, r, iterations)


def _checked_inputs(fixed: np.ndarray, fixed_mask: np.ndarray, moving: np.ndarray,
                    moving_mask: np.ndarray | None, sign: int,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Float images and boolean masks (finite pixels only), checked for shape and content."""
    if sign not in (1, -1):
        raise InputError(f"sign must be +1 or -1, got {sign}", field="sign")
    fixed = np.asarray(fixed, dtype=float)
    moving = np.asarray(moving, dtype=float)
    fixed_mask = np.asarray(fixed_mask, dtype=bool) & np.isfinite(fixed)
    moving_mask = np.isfinite(moving) if moving_mask is None else \
        np.asarray(moving_mask, dtype=bool) & np.isfinite(moving)
    if fixed.ndim != 2 or moving.ndim != 2 or fixed_mask.shape != fixed.shape \
            or moving_mask.shape != moving.shape:
        raise InputError("fixed, moving and their masks must be 2-D images of matching shapes",
                         field="fixed/moving")
    if not moving_mask.any():
        raise InputError("the X-ray map has no valid pixel", field="moving")
    return fixed, fixed_mask, moving, moving_mask


def register_affine(fixed: np.ndarray, fixed_mask: np.ndarray, moving: np.ndarray,
                    moving_mask: np.ndarray | None = None, *, sign: int = 1,
                    margin_px: float = 4.0, allow_flip: bool = False,
                    metric: str = DEFAULT_METRIC, thickness: np.ndarray | None = None,
                    dark_field: np.ndarray | None = None, strain_weight: float = 0.5,
                    image_weight: float = 0.0, band_px: float = 8.0,
                    outline_blur_px: float | None = None, **options) -> RegistrationResult:
    """Affine u = A q + t from the 4D-STEM grid (q) to the X-ray grid (u).

    `fixed` is the 4D-STEM strain channel (e.g. e_aa) with its particle mask, `moving` the
    X-ray X with its mask; both may hold NaN outside their particles.  `metric`:

    - "strain": maximise the strain-X score over pixels `margin_px` inside (the study's way;
      it uses the very correlation the law is learned from, and on the real particle its
      optimum is ~0.8 px off, bench/registration.py);
    - "morphology": the particle's shape only (`morphology_terms`: 4D-STEM mask against the
      X-ray `thickness` or OD, else the X-ray mask, plus `dark_field` with `image_weight`),
      independent of the law;
    - "joint": S = (1 - strain_weight) S_morphology + strain_weight S_strain;
    - "auto" (default): morphology, unless the outline leaves the map undetermined
      (`outline_conditioning` < MIN_OUTLINE_CONDITIONING, e.g. an ellipse), then joint.

    The outline is matched at the 4D-STEM mask blur (`OUTLINE_BLURS_PX`) that fits best,
    unless `outline_blur_px` is given.
    Optimiser options (`levels`, `contrast`, starts, ...) as in `register_terms`.  The
    returned score is the strain-X Pearson r at full resolution, whatever the metric.
    """
    fixed, fixed_mask, moving, moving_mask = _checked_inputs(fixed, fixed_mask, moving,
                                                             moving_mask, sign)
    if metric not in METRICS:
        raise InputError(f"metric must be one of {METRICS}, got {metric!r}", field="metric")
    if not 0.0 <= strain_weight <= 1.0:
        raise InputError(f"strain_weight must be in [0, 1], got {strain_weight}",
                         field="strain_weight")
    if thickness is not None and np.shape(thickness) != moving.shape:
        raise InputError(f"thickness {np.shape(thickness)} and X {moving.shape} differ",
                         field="thickness")
    if dark_field is not None and np.shape(dark_field) != fixed.shape:
        raise InputError(f"dark field {np.shape(dark_field)} and strain maps {fixed.shape} "
                         "differ", field="dark_field")
    scored = int(interior_pixels(fixed_mask, margin_px).sum())
    if scored < 20:
        raise InputError(f"only {scored} 4D-STEM pixels lie more than {margin_px} px inside the "
                         "particle: the mask is too small for registration", field="mask")
    def terms(w_strain: float, blur: float) -> list[SimilarityTerm]:
        out = []
        if w_strain > 0:
            out.append(strain_term(fixed, fixed_mask, moving, moving_mask, sign=sign,
                                   margin_px=margin_px, weight=w_strain))
        if w_strain < 1:
            out += morphology_terms(fixed_mask, thickness, moving_mask, band_px=band_px,
                                    dark_field=dark_field, image_weight=image_weight,
                                    weight=1.0 - w_strain, outline_blur_px=blur)
        return out

    score_options = {"smoothing_px": options.get("smoothing_px", 1.0),
                     "contrast_knots": options.get("contrast_knots", 8)}

    def run(w_strain: float) -> tuple[np.ndarray, float, int, float]:
        blur = outline_blur_px or 0.0
        matrix, score, iterations = register_terms(
            terms(w_strain, blur), fixed_mask, moving_mask, allow_flip=allow_flip, **options)
        if w_strain < 1 and outline_blur_px is None:
            # the X-ray is blurrier than the 4D-STEM mask and a blurred curved edge moves its
            # level lines: the mask blur that scores best at this optimum, then refine there
            scores = [terms_score(terms(w_strain, b), matrix, fixed_mask, **score_options)
                      for b in OUTLINE_BLURS_PX]
            blur = OUTLINE_BLURS_PX[int(np.argmax(scores))]
            logger.info("registration: outline matched at a 4D-STEM mask blur of %.2f px", blur)
            if blur > 0:
                refine = {k: v for k, v in options.items() if k not in ("initial", "levels")}
                matrix, score, n = register_terms(terms(w_strain, blur), fixed_mask,
                                                  moving_mask, allow_flip=allow_flip,
                                                  initial=matrix, levels=1, **refine)
                iterations += n
        return matrix, score, iterations, blur

    if metric == "auto":
        matrix, score, iterations, blur = run(0.0)
        conditioning = outline_conditioning(terms(0.0, blur), matrix, fixed_mask,
                                            **score_options)
        if conditioning < MIN_OUTLINE_CONDITIONING:
            logger.warning("the particle outline leaves the affine map nearly undetermined in "
                           "one direction (curvature ratio %.2g < %.2g, e.g. an elliptical "
                           "particle): adding the strain-X term (metric joint, strain weight "
                           "%.2f)", conditioning, MIN_OUTLINE_CONDITIONING, strain_weight)
            metric = "joint"
            matrix, score, iterations, _ = run(strain_weight)
        else:
            metric = "morphology"
    else:
        w = {"strain": 1.0, "morphology": 0.0, "joint": strain_weight}[metric]
        matrix, score, iterations, _ = run(w)
    logger.info("registration metric %s: score %.4f", metric, score)
    return _checked_result(matrix, iterations, fixed, fixed_mask, moving, moving_mask,
                           allow_flip, margin_px, sign)


def correlation_score(fixed: np.ndarray, fixed_mask: np.ndarray, moving: np.ndarray,
                      matrix: np.ndarray, moving_mask: np.ndarray | None = None,
                      margin_px: float = 4.0) -> float:
    """Pearson r between fixed(q) and moving(A q + t) over the interior pixels q."""
    fixed_mask = np.asarray(fixed_mask, dtype=bool) & np.isfinite(fixed)
    moving_mask = np.isfinite(moving) if moving_mask is None else \
        np.asarray(moving_mask, dtype=bool) & np.isfinite(moving)
    points = np.argwhere(interior_pixels(fixed_mask, margin_px))
    objective = AffineCorrelation(np.asarray(fixed)[points[:, 0], points[:, 1]], points,
                                  fill_outside(moving, moving_mask))
    return objective.value_and_gradient(objective.to_parameters(np.asarray(matrix)))[0]


def overlay_figure(fixed: np.ndarray, fixed_mask: np.ndarray, moving: np.ndarray,
                   result: RegistrationResult, path: str | Path,
                   moving_mask: np.ndarray | None = None) -> Path:
    """Before/after figure: the X-ray particle outline over the fixed channel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fixed_mask = np.asarray(fixed_mask, dtype=bool)
    shown = np.where(fixed_mask, fixed, np.nan)
    c_fixed = np.argwhere(fixed_mask).mean(axis=0)
    moving_valid = np.isfinite(moving) if moving_mask is None else np.asarray(moving_mask, bool)
    c_moving = np.argwhere(moving_valid).mean(axis=0)
    naive = np.column_stack([np.eye(2), c_moving - c_fixed])
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.5), constrained_layout=True)
    for ax, matrix, title in ((axes[0], naive, "before (centroids matched)"),
                              (axes[1], result.matrix, f"after (r = {result.score:.3f})")):
        warped = warp_to_grid(moving, matrix, fixed.shape, moving_mask)
        ax.imshow(shown.T, origin="lower", cmap="viridis")
        ax.contour(np.isfinite(warped).T.astype(float), levels=[0.5], colors="w",
                   linewidths=1.0)
        ax.contour(np.nan_to_num(warped).T, levels=[0.5], colors="r", linewidths=0.8)
        ax.set_title(title)
        ax.set_xlabel("x (axis 0, px)")
        ax.set_ylabel("y (axis 1, px)")
    warped = warp_to_grid(moving, result.matrix, fixed.shape, moving_mask)
    image = axes[2].imshow(np.where(fixed_mask, warped, np.nan).T, origin="lower",
                           cmap="coolwarm")
    fig.colorbar(image, ax=axes[2], shrink=0.8)
    axes[2].set_title("registered X-ray map")
    fig.suptitle("4D-STEM channel with X-ray particle outline (white) and X = 0.5 (red)")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def simulate_xray_map(X: np.ndarray, mask: np.ndarray, matrix: np.ndarray,
                      shape: tuple[int, int], *, contrast=None, noise: float = 0.0,
                      rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """X-ray map m(u) = contrast(X(M^-1 u)) + noise on a grid of `shape`, NaN off the particle.

    The inverse of `warp_to_grid` (bilinear), for verification: registering the result onto
    the 4D-STEM grid should recover `matrix`.
    """
    matrix = np.asarray(matrix, dtype=float)
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    warped = warp_to_grid(X, inverse, shape, mask)
    valid = np.isfinite(warped)
    if contrast is not None:
        warped = np.where(valid, contrast(np.where(valid, warped, 0.0)), np.nan)
    if noise > 0:
        rng = np.random.default_rng() if rng is None else rng
        warped = warped + noise * rng.standard_normal(warped.shape)
    return warped, valid


def simulate_xray_thicknesses(t_lfp: np.ndarray, t_fp: np.ndarray, matrix: np.ndarray,
                              shape: tuple[int, int], *, blur_px: float = 1.2,
                              noise: float = 0.0, threshold: float = 0.10,
                              rng: np.random.Generator | None = None,
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X-ray maps of a particle whose thicknesses are known on the 4D-STEM grid.

    Each thickness is carried to an X-ray grid of `shape` through the known affine `matrix`
    (4D-STEM -> X-ray, cubic interpolation, 0 outside), blurred (Gaussian, `blur_px` X-ray
    pixels), and given white noise of `noise`; then X = t_LFP / (t_LFP + t_FP) and
    mask = t_LFP + t_FP > threshold, as `chemomech composition` would report them.  Returns
    (X NaN outside, mask, thickness).  For verification: registering X / the thickness onto
    the 4D-STEM grid should recover `matrix`.
    """
    rng = np.random.default_rng() if rng is None else rng
    inverse = np.linalg.inv(np.vstack([np.asarray(matrix, dtype=float), [0.0, 0.0, 1.0]]))[:2]
    q = apply_affine(inverse, np.indices(shape).reshape(2, -1).T.astype(float)).T
    maps = []
    for t in (t_lfp, t_fp):
        warped = ndimage.map_coordinates(np.asarray(t, dtype=float), q, order=3,
                                         mode="constant", cval=0.0).reshape(shape)
        maps.append(_smooth(warped, blur_px) + noise * rng.standard_normal(shape))
    thickness = maps[0] + maps[1]
    mask = thickness > threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        X = np.where(mask, np.clip(maps[0] / np.where(mask, thickness, 1.0), 0.0, 1.0), np.nan)
    return X, mask, thickness


def synthetic_thickness(mask: np.ndarray, seed: int = 0, edge_px: float = 4.0) -> np.ndarray:
    """Test thickness (X-ray units, ~0.3 inside): rising over `edge_px` from the outline, with
    smooth +-20 % texture and two thin spots (voids), 0 outside the mask."""
    rng = np.random.default_rng(seed + 1000)
    depth = ndimage.distance_transform_edt(mask)
    texture = ndimage.gaussian_filter(rng.standard_normal(mask.shape), 6.0)
    texture *= 0.2 / max(np.abs(texture).max(), 1e-12)
    i, j = np.indices(mask.shape, dtype=float)
    inside = np.argwhere(depth > 3 * edge_px)
    voids = np.zeros(mask.shape)
    for ci, cj in inside[rng.choice(len(inside), size=min(2, len(inside)), replace=False)]:
        voids += np.exp(-((i - ci) ** 2 + (j - cj) ** 2) / (2 * 3.0**2))
    return np.where(mask, 0.3 * np.tanh(depth / edge_px) * (1 + texture) * (1 - 0.6 * voids),
                    0.0)


def synthetic_particle_maps(shape: tuple[int, int] = (140, 90), seed: int = 0,
                            interface_px: float = 3.0, strain_noise: float = 0.002,
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test particle: X (two-phase domains, tanh interfaces), mask (ellipse), e_aa = Vegard.

    e_aa = -0.0495 (1 - X) + white noise of `strain_noise` (dimensionless).
    """
    rng = np.random.default_rng(seed)
    nx, ny = shape
    i, j = np.indices(shape, dtype=float)
    x, y = (i - nx / 2) / nx, (j - ny / 2) / ny
    mask = (x / 0.42) ** 2 + (y / 0.40) ** 2 + 0.1 * x * y < 1
    phase = rng.uniform(0, 2 * np.pi, 3)
    level = (np.sin(2 * np.pi * (1.3 * x + 0.4 * y) + phase[0])
             + 0.6 * np.sin(2 * np.pi * (0.5 * x - 1.7 * y) + phase[1])
             + 0.3 * np.cos(2 * np.pi * 2.3 * x * y + phase[2]))
    gradient = np.hypot(*np.gradient(level))
    X = 0.5 + 0.5 * np.tanh(level / (interface_px * np.maximum(gradient, 1e-3)))
    e_aa = -0.0495 * (1 - X) + strain_noise * rng.standard_normal(shape)
    return np.where(mask, X, np.nan), mask, np.where(mask, e_aa, np.nan)


def particle_from_correlative(name: str, strain: StrainMaps, composition: CompositionMap,
                              result: RegistrationResult, *, pixel_size_nm: float | None = None,
                              rotation_rad: float = 0.0, strain_frame: str = "crystal",
                              theta_sign: int = 1) -> ParticleData:
    """ParticleData on the 4D-STEM grid: `readers.StrainMaps` plus the registered X.

    X, its mask and thickness (a `readers.CompositionMap` on the X-ray grid) are carried by
    `warp_to_grid`; the particle is the largest connected part of the strain mask where the
    warped X is defined (`readers.combine_strain_and_composition`).
    """
    from chemomech.io.readers import CompositionMap, combine_strain_and_composition

    shape = np.asarray(strain.e_xx).shape
    X = warp_to_grid(composition.X, result.matrix, shape, composition.mask)
    thickness = None if composition.thickness is None else \
        warp_to_grid(composition.thickness, result.matrix, shape, composition.mask)
    note = (f"X registered by affine {np.round(result.matrix, 6).tolist()} "
            f"(flip={result.flip}, r={result.score:.4f})")
    source = f"{composition.source}; {note}" if composition.source else note
    registered = CompositionMap(X=np.clip(X, 0.0, 1.0), mask=np.isfinite(X),
                                thickness=thickness, source=source)
    if not (registered.mask & (strain.mask if strain.mask is not None else True)).any():
        raise InputError("the registered composition does not overlap the 4D-STEM particle",
                         field="mask")
    return combine_strain_and_composition(strain, registered, name=name,
                                          pixel_size_nm=pixel_size_nm, rotation_rad=rotation_rad,
                                          strain_frame=strain_frame, theta_sign=theta_sign,
                                          keep_largest=True)


# ----------------------------------------------------------------------------- CLI


def read_strain_maps(path: str | Path, group: str | None = None,
                     ) -> tuple[StrainMaps, tuple[float, str, int]]:
    """4D-STEM maps via `chemomech.io.readers`: .npz, the study's .mat, or py4DSTEM HDF5.

    Returns (StrainMaps, frame) with frame = (rotation_rad, strain_frame, theta_sign) as the
    reader documents it ((0, "image", +1) where the file says nothing); `group` chooses the
    map of a py4DSTEM file holding several.
    """
    from chemomech.io import readers

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".mat":
        p = readers.read_reference_mat(path)
        maps = readers.StrainMaps(p.e_xx, p.e_yy, p.e_xy, p.theta, p.mask, p.pixel_size_nm,
                                  p.source, dark_field=p.dark_field)
        return maps, (p.rotation_rad, p.strain_frame, p.theta_sign)
    maps = readers.read_strain_npz(path) if suffix == ".npz" else \
        readers.read_py4dstem_strain(path, group=group)
    if maps.mask is None:
        maps.mask = np.isfinite(maps.e_xx)
    else:
        maps.mask = (np.nan_to_num(np.asarray(maps.mask, dtype=float)) > 0.5) \
            & np.isfinite(maps.e_xx)
    rotation = 0.0 if maps.rotation_rad is None else maps.rotation_rad
    return maps, (rotation, maps.strain_frame or "image", 1)


def fixed_channel(strain: StrainMaps, channel: str, rotation_rad: float = 0.0,
                  strain_frame: str = "crystal") -> np.ndarray:
    """The 4D-STEM channel to correlate: e_aa = n.eps.n, n = (cos phi, sin phi) in the image.

    `channel` is e_aa or e_cc (crystal axes, rotated from image-frame strain when needed) or a
    stored map (e_xx, e_yy, e_xy, theta).
    """
    if channel in ("e_xx", "e_yy", "e_xy", "theta"):
        return np.asarray(getattr(strain, channel), dtype=float)
    if channel not in ("e_aa", "e_cc"):
        raise InputError(f"unknown channel {channel!r}; choose e_aa, e_cc, e_xx, e_yy, e_xy or "
                         "theta", field="channel")
    if strain_frame == "crystal":
        return np.asarray(strain.e_xx if channel == "e_aa" else strain.e_yy, dtype=float)
    angle = rotation_rad if channel == "e_aa" else rotation_rad + np.pi / 2
    c, s = np.cos(angle), np.sin(angle)
    return c * c * strain.e_xx + 2 * c * s * strain.e_xy + s * s * strain.e_yy


def add_register_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `chemomech register`."""
    parser.add_argument("strain", help="4D-STEM strain maps: .npz (e_xx, e_yy, e_xy, theta[, "
                                       "mask]), the study's .mat, or py4DSTEM HDF5")
    parser.add_argument("composition", help="X-ray composition on its own grid: chemomech "
                                            "composition .h5, .npz (X[, mask]) or .tif")
    parser.add_argument("-o", "--output", default="registration",
                        help="folder for registration.json, overlay.png, X_registered.npz")
    parser.add_argument("--channel", default="e_aa",
                        help="4D-STEM channel correlated with X: e_aa (default), e_cc, e_xx, "
                             "e_yy, e_xy, theta")
    parser.add_argument("--sign", type=int, choices=(1, -1), default=1,
                        help="sign of the correlation (+1: e_aa and X rise together; -1 e_cc)")
    parser.add_argument("--margin-px", type=float, default=4.0,
                        help="score pixels more than this far inside the particle (4)")
    parser.add_argument("--metric", choices=METRICS, default=DEFAULT_METRIC,
                        help="what is matched: 'morphology' (the 4D-STEM particle outline "
                             "against the X-ray thickness/OD, independent of the law), 'strain' "
                             "(the strain channel against X, as in the study), 'joint' "
                             "(weighted sum, see --strain-weight), or 'auto' (default: "
                             "morphology, joint where the outline cannot fix the map, e.g. an "
                             "ellipse)")
    parser.add_argument("--strain-weight", type=float, default=0.5,
                        help="joint (and auto's fallback): S = (1 - w) S_morphology + w "
                             "S_strain (0.5)")
    parser.add_argument("--image-weight", type=float, default=0.0,
                        help="morphology: weight of the 4D-STEM dark-field/HAADF image "
                             "against the thickness, relative to the outline (default 0: with "
                             "it, LFP50_P2 warps register worse, bench/registration.py)")
    parser.add_argument("--band-px", type=float, default=8.0,
                        help="morphology: score the outline within this distance of the "
                             "4D-STEM mask boundary, both sides (8)")
    parser.add_argument("--group", default=None, metavar="NAME",
                        help="which strain map of a py4DSTEM file holding several")
    parser.add_argument("--allow-flip", action="store_true", help="also try mirrored maps")
    parser.add_argument("--contrast", choices=CONTRASTS, default="spline",
                        help="X-ray contrast model: spline correlation ratio (default) or "
                             "linear (plain Pearson r, as in the study)")
    parser.add_argument("--levels", type=int, default=3, help="coarse-to-fine levels (3)")
    parser.add_argument("--stack", default=None,
                        help="also write a chemomech stack (HDF5) with the registered X")
    parser.add_argument("--name", default="particle", help="particle name in the stack")
    parser.add_argument("--pixel-size-nm", type=float, default=None,
                        help="4D-STEM pixel size (nm; default: from the strain file)")
    parser.add_argument("--rotation-rad", type=float, default=None,
                        help="angle from image x to crystal a (rad, ccw; default: from the "
                             "reader, else 0)")
    parser.add_argument("--strain-frame", choices=("crystal", "image"), default=None,
                        help="frame of the strain maps (default: from the reader)")
    parser.add_argument("--theta-sign", type=int, choices=(1, -1), default=None)


def cmd_register(args: argparse.Namespace) -> int:
    """`chemomech register STRAIN COMPOSITION -o DIR`: affine X-ray -> 4D-STEM registration."""
    from chemomech.io.readers import read_composition_map

    strain, (rotation, frame, theta_sign) = read_strain_maps(args.strain, args.group)
    rotation = rotation if args.rotation_rad is None else args.rotation_rad
    frame = frame if args.strain_frame is None else args.strain_frame
    theta_sign = theta_sign if args.theta_sign is None else args.theta_sign
    composition = read_composition_map(args.composition)
    if args.stack and args.pixel_size_nm is None and strain.pixel_size_nm is None:
        raise InputError("the strain file stores no pixel size: give --pixel-size-nm to write "
                         "the stack", path=str(args.strain), field="pixel_size_nm")
    fixed = fixed_channel(strain, args.channel, rotation, frame)
    result = register_affine(fixed, strain.mask, composition.X, composition.mask,
                             sign=args.sign, margin_px=args.margin_px,
                             allow_flip=args.allow_flip, contrast=args.contrast,
                             levels=args.levels, metric=args.metric,
                             thickness=composition.thickness, dark_field=strain.dark_field,
                             strain_weight=args.strain_weight,
                             image_weight=args.image_weight, band_px=args.band_px)
    out = Path(args.output)
    write_registration(result, out / "registration.json")
    overlay_figure(fixed, strain.mask, composition.X, result, out / "overlay.png",
                   composition.mask)
    registered = warp_to_grid(composition.X, result.matrix, strain.mask.shape,
                              composition.mask)
    np.savez_compressed(out / "X_registered.npz", X=registered, mask=strain.mask)
    if args.stack:
        from chemomech.io.stack import write_stack

        particle = particle_from_correlative(args.name, strain, composition, result,
                                             pixel_size_nm=args.pixel_size_nm,
                                             rotation_rad=rotation, strain_frame=frame,
                                             theta_sign=theta_sign)
        write_stack(args.stack, particle)
    logger.info("registration r = %.4f written to %s", result.score, out)
    return 0
