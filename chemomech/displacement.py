"""Measured displacement from the measured displacement gradient, by sparse least squares.

Like the reference code's intgrad2, but in the image frame and on the mask only: for every pair
of 4-neighbouring valid pixels p, q = p + e_k (k = x or y) one equation

    u(q) - u(p) = h (H_img[p, :, k] + H_img[q, :, k]) / 2        (trapezoidal: O(h^2))

Holes and notches are handled because only pairs of valid neighbours enter.  The constant (the
null space) is fixed by pinning one pixel per connected piece and then subtracting the mean, so
the result has zero mean.  The residual of the equations measures the incompatibility (curl) of
the gradient: ~0 (discretisation error) for a true gradient, large for a wrong frame.

The strain-only path (`measured_strain`) returns the symmetric image-frame strain per pixel for
a misfit on strain, with no integration.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph
from scipy.sparse.linalg import factorized

from chemomech.exceptions import InputError
from chemomech.frames import gradient_image, strain_image
from chemomech.stack import ParticleData

logger = logging.getLogger(__name__)


@dataclass
class DisplacementResult:
    """u (nx, ny, 2) in nm (NaN outside), the equations' residual RMS (dimensionless) etc."""

    u: np.ndarray
    residual_rms: float
    gradient_rms: float
    n_pixels: int
    n_pieces: int

    @property
    def relative_residual(self) -> float:
        """residual_rms / RMS of the gradient entries: ~0 compatible, O(1) incompatible."""
        return self.residual_rms / self.gradient_rms if self.gradient_rms > 0 else 0.0


def pixel_coordinates(shape: tuple[int, int], pixel_size_nm: float) -> np.ndarray:
    """Pixel centre coordinates (nx, ny, 2) in nm: x = i h, y = j h."""
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    return np.stack([i, j], axis=-1) * float(pixel_size_nm)


def _difference_system(valid: np.ndarray, H: np.ndarray, h: float
                       ) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Sparse difference matrix D (pairs x pixels), right-hand sides (pairs x 2), index map."""
    index = np.full(valid.shape, -1, dtype=np.int64)
    index[valid] = np.arange(int(valid.sum()))
    rows_p, rows_q, rhs = [], [], []
    for axis in (0, 1):
        lo = [slice(None), slice(None)]
        hi = [slice(None), slice(None)]
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        pair = valid[tuple(lo)] & valid[tuple(hi)]
        rows_p.append(index[tuple(lo)][pair])
        rows_q.append(index[tuple(hi)][pair])
        # column `axis` of H: (dH u_x / d axis, d u_y / d axis) at both ends, averaged
        rhs.append(0.5 * h * (H[tuple(lo)][pair][:, :, axis] + H[tuple(hi)][pair][:, :, axis]))
    p = np.concatenate(rows_p)
    q = np.concatenate(rows_q)
    n_eq, n = p.size, int(valid.sum())
    D = sp.csr_matrix((np.r_[np.ones(n_eq), -np.ones(n_eq)],
                       (np.r_[np.arange(n_eq), np.arange(n_eq)], np.r_[q, p])), shape=(n_eq, n))
    return D, np.concatenate(rhs, axis=0), index


def integrate_gradient(H_img: np.ndarray, mask: np.ndarray, pixel_size_nm: float
                       ) -> DisplacementResult:
    """u (nm) minimising sum over neighbour pairs |u_q - u_p - h (H_p + H_q) e_k / 2|^2, mean 0."""
    H_img = np.asarray(H_img, dtype=float)
    mask = np.asarray(mask, dtype=bool)
    if H_img.shape != mask.shape + (2, 2):
        raise InputError(f"gradient shape {H_img.shape} does not match mask {mask.shape} + (2, 2)",
                         field="H_img")
    if not pixel_size_nm or pixel_size_nm <= 0:
        raise InputError(f"pixel size must be positive, got {pixel_size_nm!r}",
                         field="pixel_size_nm")
    valid = mask & np.all(np.isfinite(H_img), axis=(-2, -1))
    n = int(valid.sum())
    if n < 2:
        raise InputError(f"only {n} valid pixel(s) to integrate", field="mask")
    D, b, index = _difference_system(valid, H_img, pixel_size_nm)
    if D.shape[0] == 0:
        raise InputError("no pair of neighbouring valid pixels to integrate", field="mask")
    # pieces of the pair graph: each has its own free constant
    n_pieces, labels = csgraph.connected_components(D.T @ D, directed=False)
    if n_pieces > 1:
        sizes = np.bincount(labels)
        logger.warning("gradient integration: valid pixels form %d separate pieces (sizes %s); "
                       "each gets zero mean on its own", n_pieces, sorted(sizes)[::-1][:5])
    pinned = np.array([np.flatnonzero(labels == k)[0] for k in range(n_pieces)])
    free = np.setdiff1d(np.arange(n), pinned)
    Df = D[:, free].tocsc()
    solve = factorized((Df.T @ Df).tocsc())
    u_valid = np.zeros((n, 2))
    for c in range(2):
        u_valid[free, c] = solve(Df.T @ b[:, c])
    for k in range(n_pieces):
        u_valid[labels == k] -= u_valid[labels == k].mean(axis=0)
    residual = (D @ u_valid - b) / pixel_size_nm  # per unit length: a gradient (dimensionless)
    u = np.full(mask.shape + (2,), np.nan)
    u[valid] = u_valid
    finite = H_img[valid]
    result = DisplacementResult(u=u, residual_rms=float(np.sqrt(np.mean(residual**2))),
                                gradient_rms=float(np.sqrt(np.mean(finite**2))), n_pixels=n,
                                n_pieces=int(n_pieces))
    logger.info("integrated %d pixels: residual RMS %.3e (%.1f %% of the gradient RMS)", n,
                result.residual_rms, 100 * result.relative_residual)
    return result


def measured_displacement(particle: ParticleData) -> DisplacementResult:
    """Integrate the particle's image-frame gradient H_img = Q H_cr Q^T over its mask (nm)."""
    return integrate_gradient(gradient_image(particle), particle.mask, particle.pixel_size_nm)


def measured_strain(particle: ParticleData) -> dict[str, np.ndarray]:
    """Image-frame strain e_xx, e_yy, e_xy = sym(H_img) per pixel, NaN outside the mask."""
    strain = strain_image(particle)
    return {k: np.where(particle.mask, v, np.nan) for k, v in strain.items()}
