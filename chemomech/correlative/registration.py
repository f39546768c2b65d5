"""Affine registration of X-ray maps onto the 4D-STEM grid by maximum Pearson correlation.

The transform is 6 numbers, ``u = A q + t``: it maps a 4D-STEM pixel q = (i, j) (x = axis 0,
y = axis 1, pixel centres at integers) to X-ray pixel coordinates u.  The score is the
Pearson correlation r between a fixed 4D-STEM channel (lattice parameter a or e_aa) and the
warped X-ray map X(A q + t), over the 4D-STEM pixels more than `margin_px` pixels inside the
particle (Euclidean distance transform of the mask), as in the reference study.

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
with a mirror the matrix itself has det < 0 and ``flip`` is true.
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
    from chemomech.io.readers import CompositionMap, StrainMaps
    from chemomech.io.stack import ParticleData

logger = logging.getLogger(__name__)

#: Transforms with |det A| below this (X-ray pixels per 4D-STEM pixel, squared) are collapsed.
MIN_ABS_DETERMINANT = 0.05

#: Least fraction of the scored 4D-STEM pixels that must land inside the X-ray particle.
MIN_OVERLAP = 0.5

#: Contrast models of the X-ray map: Pearson r ("linear") or spline correlation ratio.
CONTRASTS = ("linear", "spline")


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


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """sum_i a_i b_i without BLAS."""
    return float(np.add.reduce(a * b))


class AffineCorrelation:
    """Score of the fit of fixed f_k by the warped X-ray map m_k = X(A q_k + t), and its gradient.

    Parameters p = (R A00, R A01, R A10, R A11, b0, b1) with u = A (q - c) + b, c the centroid
    of the pixels and R their RMS radius, so that every parameter moves pixels by ~1 px.
    `contrast="linear"`: the Pearson r(f, m) (the study's score).  `contrast="spline"`: the
    correlation ratio R = max_h Pearson(f, h(m)) over cubic splines h with `knots` uniform
    intervals on `value_range` (the correlation of f with its least-squares fit by B_k(m)):
    any smooth contrast X -> m then leaves the optimum where it is.  With the spline basis
    B fixed, d(R^2)/dm_i = 2 e_i h'(m_i), e = f - B beta the fit residual.
    """

    def __init__(self, fixed_values: np.ndarray, points: np.ndarray, moving: np.ndarray,
                 contrast: str = "linear", value_range: tuple[float, float] | None = None,
                 knots: int = 8):
        self.points = np.asarray(points, dtype=float)
        self.centre = self.points.mean(axis=0)
        offsets = self.points - self.centre
        self.radius = float(np.sqrt(np.mean(np.sum(offsets**2, axis=1)) / 2.0))
        self.normalised = offsets / self.radius                   # (n, 2)
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


def register_affine(fixed: np.ndarray, fixed_mask: np.ndarray, moving: np.ndarray,
                    moving_mask: np.ndarray | None = None, *, sign: int = 1,
                    margin_px: float = 4.0, allow_flip: bool = False,
                    start_angles_deg=(-20.0, -10.0, 0.0, 10.0, 20.0),
                    start_scales=(0.9, 1.0, 1.1), initial: np.ndarray | None = None,
                    levels: int = 3, keep: int = 3, contrast: str = "spline",
                    contrast_knots: int = 8, smoothing_px: float = 1.0, max_iter: int = 200,
                    gtol: float = 1e-7) -> RegistrationResult:
    """Affine u = A q + t maximising sign * Pearson r(fixed(q), moving(u)) over interior q.

    `fixed` (4D-STEM grid, e.g. lattice parameter a or e_aa) and `moving` (X-ray grid, e.g. X)
    may hold NaN outside their particles; `levels` Gaussian scale-space levels with smoothing
    sigma = max(2^(L-1), smoothing_px) px and pixel stride 2^L (L = levels-1 .. 0); the final
    smoothing (default 1 px) keeps the variance of interpolated noise from depending on the
    sub-pixel phase, which otherwise biases r towards off-grid sampling.  The starts are
    optimised and ranked by sign * r on the coarsest level, then the best `keep` maximise, on
    every level, the spline correlation ratio (default; `AffineCorrelation`, `contrast_knots`
    intervals over the X-ray values), which a nonlinear X-ray contrast does not bias;
    `contrast="linear"` keeps the study's plain Pearson r throughout (biased by ~1 px by a
    saturating contrast, see the tests).
    The returned score is the plain Pearson r at full resolution.
    """
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
    scored = interior_pixels(fixed_mask, margin_px)
    if scored.sum() < 20:
        raise InputError(f"only {int(scored.sum())} 4D-STEM pixels lie more than {margin_px} px "
                         "inside the particle: the mask is too small for registration",
                         field="mask")
    if not moving_mask.any():
        raise InputError("the X-ray map has no valid pixel", field="moving")
    fixed_filled = fill_outside(fixed, fixed_mask)
    moving_filled = fill_outside(moving, moving_mask)
    points_all = np.argwhere(scored)

    if initial is not None:
        candidates = [np.asarray(initial, dtype=float).reshape(2, 3)]
    else:
        candidates = _start_matrices(fixed_mask, moving_mask, start_angles_deg, start_scales,
                                     allow_flip)
    if levels < 1:
        raise InputError(f"levels must be >= 1, got {levels}", field="levels")
    iterations = np.zeros(len(candidates), dtype=int)
    scores = np.zeros(len(candidates))
    direction = sign
    for level in range(levels - 1, -1, -1):
        stride = 2**level
        sigma = max(smoothing_px, 0.0 if level == 0 else 2.0 ** (level - 1))
        on_grid = np.all(points_all % stride == 0, axis=1)
        points = points_all[on_grid] if on_grid.sum() >= 20 else points_all
        fixed_values = _smooth(fixed_filled, sigma)[points[:, 0], points[:, 1]]
        moving_level = _smooth(moving_filled, sigma)
        values = moving_level[moving_mask]
        # the coarsest level first ranks the starts by sign * r, then refines with `contrast`
        passes = ["linear", contrast] if level == levels - 1 and contrast != "linear" \
            else [contrast]
        for model in passes:
            objective = AffineCorrelation(fixed_values, points, moving_level, model,
                                          (values.min(), values.max()), contrast_knots)
            direction = sign if model == "linear" else 1

            def negative(p, objective=objective, direction=direction):
                r, g = objective.value_and_gradient(p)
                return -direction * r, -direction * g

            for k, matrix in enumerate(candidates):
                solution = optimize.minimize(negative, objective.to_parameters(matrix),
                                             jac=True, method="L-BFGS-B",
                                             options=dict(maxiter=max_iter, gtol=gtol))
                candidates[k] = objective.to_matrix(solution.x)
                scores[k] = -direction * solution.fun
                iterations[k] += solution.nit
            logger.debug("level %d (stride %d, sigma %.1f px, %s): best score %.4f of %d",
                         level, stride, sigma, model, scores[np.argmax(direction * scores)],
                         len(candidates))
            final = level == 0 and model == passes[-1]
            best = np.argsort(-direction * scores)[:len(candidates) if final else keep]
            candidates = [candidates[k] for k in best]
            iterations, scores = iterations[best], scores[best]

    best = int(np.argmax(direction * scores))
    matrix = candidates[best]
    det = float(np.linalg.det(matrix[:, :2]))
    if abs(det) < MIN_ABS_DETERMINANT or (det < 0 and not allow_flip):
        raise InputError(f"degenerate transform (det A = {det:.4g}: "
                         f"{'reflection' if det < 0 else 'collapse'}); check the inputs, the "
                         "sign, or allow a mirror flip", field="matrix")
    u = apply_affine(matrix, points_all.astype(float)).T
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
    result = RegistrationResult(matrix, det < 0, r, int(iterations[best]))
    logger.info("registration: r = %.4f after %d iterations, det A = %.4f, overlap %.0f %%",
                result.score, result.iterations, det, 100 * overlap)
    return result


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


def read_strain_maps(path: str | Path) -> tuple[StrainMaps, tuple[float, str, int]]:
    """4D-STEM maps via `chemomech.io.readers`: .npz, the study's .mat, or py4DSTEM HDF5.

    Returns (StrainMaps, frame) with frame = (rotation_rad, strain_frame, theta_sign) as the
    reader documents it ((0, "image", +1) where the file says nothing).
    """
    from chemomech.io import readers

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".mat":
        p = readers.read_reference_mat(path)
        maps = readers.StrainMaps(p.e_xx, p.e_yy, p.e_xy, p.theta, p.mask, p.pixel_size_nm,
                                  p.source)
        return maps, (p.rotation_rad, p.strain_frame, p.theta_sign)
    maps = readers.read_strain_npz(path) if suffix == ".npz" else \
        readers.read_py4dstem_strain(path)
    if maps.mask is None:
        maps.mask = np.isfinite(maps.e_xx)
    else:
        maps.mask = (np.nan_to_num(np.asarray(maps.mask, dtype=float)) > 0.5) \
            & np.isfinite(maps.e_xx)
    return maps, (0.0, "image", 1)


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

    strain, (rotation, frame, theta_sign) = read_strain_maps(args.strain)
    rotation = rotation if args.rotation_rad is None else args.rotation_rad
    frame = frame if args.strain_frame is None else args.strain_frame
    theta_sign = theta_sign if args.theta_sign is None else args.theta_sign
    composition = read_composition_map(args.composition)
    fixed = fixed_channel(strain, args.channel, rotation, frame)
    result = register_affine(fixed, strain.mask, composition.X, composition.mask,
                             sign=args.sign, margin_px=args.margin_px,
                             allow_flip=args.allow_flip, contrast=args.contrast,
                             levels=args.levels)
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
