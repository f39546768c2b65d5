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
Pearson r at the result whatever the metric.  `register_affine` adds ``"sigma_px"`` (4D-STEM
px, per axis) and ``"covariance_px2"`` (2x2): the standard error of the registered shift
(`registration_uncertainty`), the value for `uncertainty.registration_px`.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage, optimize

from chemomech.exceptions import InputError
from chemomech.io.stack import interior_pixels

if TYPE_CHECKING:
    from chemomech.io.py4dstem import StrainMaps
    from chemomech.io.readers import CompositionMap
    from chemomech.io.stack import ParticleData

from chemomech.correlative.affine import (
    CONTRASTS,
    AffineCorrelation,
    apply_affine,
    fill_outside,
    point_scaling,
    smooth,
    start_matrices,
    warp_to_grid,
)

logger = logging.getLogger(__name__)

#: Transforms with |det A| below this (X-ray pixels per 4D-STEM pixel, squared) are collapsed.
MIN_ABS_DETERMINANT = 0.05

#: Least fraction of the scored 4D-STEM pixels that must land inside the X-ray particle.
MIN_OVERLAP = 0.5


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

#: Side (4D-STEM px) of the square blocks over which `registration_uncertainty` sums the
#: score gradient: several times the residuals' correlation length (1 px smoothing, X-ray
#: blur ~1-2 px), small enough for ~50 blocks on a particle.
UNCERTAINTY_BLOCK_PX = 8


@dataclass(frozen=True, slots=True)
class RegistrationResult:
    """The affine map u = matrix[:, :2] q + matrix[:, 2], its Pearson r and iteration count,
    and the estimated shift uncertainty (`registration_uncertainty`): `sigma_px` (4D-STEM px,
    per axis; NaN: not estimated) and its 2x2 `covariance_px2` (px^2)."""

    matrix: np.ndarray
    flip: bool
    score: float
    iterations: int
    sigma_px: float = float("nan")
    covariance_px2: np.ndarray | None = None

    def to_dict(self) -> dict:
        """The stable `registration.json` content (DESIGN §3), plus sigma_px / covariance_px2
        when estimated."""
        data = {"matrix": np.asarray(self.matrix, dtype=float).tolist(),
                "flip": bool(self.flip), "score": float(self.score),
                "iterations": int(self.iterations)}
        if np.isfinite(self.sigma_px) and self.covariance_px2 is not None:
            data["sigma_px"] = float(self.sigma_px)
            data["covariance_px2"] = np.asarray(self.covariance_px2, dtype=float).tolist()
        return data


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
    sigma = float(data.get("sigma_px", float("nan")))
    covariance = data.get("covariance_px2")
    if "sigma_px" in data and not (sigma >= 0 and np.shape(covariance) == (2, 2)):
        raise InputError(f"sigma_px must be >= 0 with a 2x2 covariance_px2, got {sigma}",
                         path=str(path), field="sigma_px")
    return RegistrationResult(matrix, bool(data["flip"]), float(data["score"]),
                              int(data["iterations"]), sigma,
                              None if covariance is None else np.asarray(covariance, float))


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
    outline = smooth(np.asarray(fixed_mask, dtype=float), outline_blur_px)
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
        candidates = start_matrices(fixed_mask, moving_mask, start_angles_deg, start_scales,
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
                moving_level = smooth(term.moving, sigma)
                values = smooth(term.fixed, sigma)[points[:, 0], points[:, 1]]
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
        moving = smooth(t.moving, sigma)
        objectives.append((AffineCorrelation(
            smooth(t.fixed, sigma)[points[:, 0], points[:, 1]], points, moving, "spline",
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
    p0 = objectives[0][0].to_parameters(np.asarray(matrix, dtype=float))
    eigenvalues = np.linalg.eigvalsh(_curvature(objectives, p0, step))
    return float(max(eigenvalues[0], 0.0) / eigenvalues[-1]) if eigenvalues[-1] > 0 else 0.0


def _curvature(objectives: list[tuple[AffineCorrelation, float]], p0: np.ndarray,
               step: float) -> np.ndarray:
    """-Hessian (6x6, symmetrised) of the weighted score at p0: central differences (step in
    the scaled parameters, ~px) of the analytic gradient."""

    def gradient(p: np.ndarray) -> np.ndarray:
        return sum(w * o.value_and_gradient(p)[1] for o, w in objectives)

    H = np.array([(gradient(p0 + step * e) - gradient(p0 - step * e)) / (2 * step)
                  for e in np.eye(6)])
    return -0.5 * (H + H.T)


def registration_uncertainty(terms: list[SimilarityTerm], matrix: np.ndarray,
                             fixed_mask: np.ndarray, smoothing_px: float = 1.0,
                             contrast_knots: int = 8, block_px: int = UNCERTAINTY_BLOCK_PX,
                             step: float = 1e-3) -> tuple[float, np.ndarray]:
    """Standard error of the registered shift from the registration itself (sandwich).

    At the optimum p* of S(p) = sum_k w_k S_k(p) (finest-level spline scores, p the 6 scaled
    affine parameters, p[4:] = the X-ray position of the particle centroid, X-ray px),
    p* - p_true ~ C^-1 g with C = -Hessian of S (`_curvature`) and g = sum_i g_i the score
    gradient, a sum of per-pixel terms g_i = w_k dS_k/dm_i grad_p m_i driven by the fit
    residuals.  The residuals are spatially correlated (smoothing, X-ray blur, model error of
    the outline), so Var(g) is estimated cluster-robustly over square blocks b of `block_px`
    4D-STEM px: V = n_b / (n_b - 1) sum_b (G_b - Gbar)(G_b - Gbar)^T, G_b = sum_{i in b} g_i.
    Then Cov(p*) = C^-1 V C^-1; its translation block, carried to the 4D-STEM grid by
    delta q = A^-1 delta u, is `covariance` (4D-STEM px^2) and
    sigma = sqrt(trace(covariance) / 2) (4D-STEM px, RMS per axis: the std of a random shift
    per axis, `uncertainty.registration_px`).  Returns (sigma, covariance); sigma = inf where
    the score is flat or uphill in some direction.  It measures the scatter from noise and
    texture, not a bias of the metric (e.g. "strain" on LFP50_P2, ~0.8 px).
    """
    matrix = np.asarray(matrix, dtype=float)
    objectives = _fine_objectives(terms, fixed_mask, smoothing_px, contrast_knots)
    p0 = objectives[0][0].to_parameters(matrix)
    curvature = _curvature(objectives, p0, step)
    if np.linalg.eigvalsh(curvature)[0] <= 0:
        return float("inf"), np.full((2, 2), np.inf)
    block_of = {}
    sums = []
    for (objective, w), term in zip(objectives, terms, strict=True):
        points = np.argwhere(term.scored)
        labels = [block_of.setdefault(tuple(b), len(block_of))
                  for b in map(tuple, points // block_px)]
        contribution = w * objective.pixel_gradients(p0)
        block_sums = np.zeros((len(block_of), 6))
        np.add.at(block_sums, np.asarray(labels), contribution)
        sums.append(block_sums)
    G = np.zeros((len(block_of), 6))
    for block_sums in sums:
        G[:len(block_sums)] += block_sums
    n_blocks = len(G)
    G -= G.mean(axis=0)
    V = n_blocks / max(n_blocks - 1, 1) * G.T @ G
    inverse = np.linalg.inv(curvature)
    cov_b = (inverse @ V @ inverse)[4:, 4:]
    A_inv = np.linalg.inv(matrix[:, :2])
    covariance = A_inv @ cov_b @ A_inv.T
    return float(np.sqrt(np.trace(covariance) / 2)), covariance


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
            w = strain_weight
            matrix, score, iterations, blur = run(w)
        else:
            metric, w = "morphology", 0.0
    else:
        w = {"strain": 1.0, "morphology": 0.0, "joint": strain_weight}[metric]
        matrix, score, iterations, blur = run(w)
    logger.info("registration metric %s: score %.4f", metric, score)
    result = _checked_result(matrix, iterations, fixed, fixed_mask, moving, moving_mask,
                             allow_flip, margin_px, sign)
    sigma, covariance = registration_uncertainty(terms(w, blur), matrix, fixed_mask,
                                                 **score_options)
    logger.info("registration: shift uncertainty sigma = %.3f px per axis (4D-STEM px)",
                sigma)
    return replace(result, sigma_px=sigma, covariance_px2=covariance)


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
            f"(flip={result.flip}, r={result.score:.4f}, sigma_px={result.sigma_px:.3f})")
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
    logger.info("registration r = %.4f, shift uncertainty sigma = %.3f px per axis (use as "
                "uncertainty.registration_px) written to %s", result.score, result.sigma_px,
                out)
    return 0
