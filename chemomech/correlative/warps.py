"""Known warps of X-ray maps: synthetic particles and warped, blurred, noised X-ray maps for
the registration tests and benchmarks."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    pass

from chemomech.correlative.affine import apply_affine, smooth, warp_to_grid

logger = logging.getLogger(__name__)


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
        maps.append(smooth(warped, blur_px) + noise * rng.standard_normal(shape))
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
