"""Affine maps between the 4D-STEM and X-ray pixel grids, warping, and the spline
correlation of `register_affine` (value and analytic gradient)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage
from scipy.interpolate import BSpline, RectBivariateSpline

from chemomech.exceptions import InputError

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

#: Contrast models of the X-ray map: Pearson r ("linear") or spline correlation ratio.
CONTRASTS = ("linear", "spline")


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
        score, g_u, g_v = self._pixel_slopes(p)
        qx, qy = self._qx, self._qy
        gradient = np.array([_dot(g_u, qx), _dot(g_u, qy), _dot(g_v, qx), _dot(g_v, qy),
                             g_u.sum(), g_v.sum()])
        return score, gradient

    def pixel_gradients(self, p: np.ndarray) -> np.ndarray:
        """Each fixed pixel's contribution (n, 6) to d(score)/dp (their sum is the gradient)."""
        _, g_u, g_v = self._pixel_slopes(p)
        qx, qy = self._qx, self._qy
        return np.column_stack([g_u * qx, g_u * qy, g_v * qx, g_v * qy, g_u, g_v])

    def _pixel_slopes(self, p: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Score and its per-pixel derivatives by the X-ray coordinates (u, v) of the pixels."""
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
        return score, dscore_dm * m_u, dscore_dm * m_v


def smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(image, sigma) if sigma > 0 else image


def start_matrices(fixed_mask: np.ndarray, moving_mask: np.ndarray, angles_deg, scales,
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
