r"""Residual strain: what the law and the coherency strain leave unexplained.

:math:`\varepsilon_{res} = \varepsilon_{meas} - \varepsilon(u_{model})` for M1 (= measured
minus eigenstrain minus coherency elastic strain) and
:math:`\varepsilon_{meas} - \varepsilon^*(X)` for M0.  Model error = mean over pixels of the
Frobenius norm of the residual; residual incompatibility
:math:`\mathrm{inc} = \partial_{yy} e_{xx} + \partial_{xx} e_{yy} - 2\,\partial_{xy} e_{xy}`
(zero for any strain that derives from a displacement), RMS over interior pixels.
All strain arrays are pixel images in one frame (the norms are frame-invariant).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from chemomech.correlative.prepared import PreparedParticle, used_pixels

#: Central-difference stencils (x = axis 0, y = axis 1) for ndimage.correlate, times h^2.
_D_YY = np.array([[0.0, 0.0, 0.0], [1.0, -2.0, 1.0], [0.0, 0.0, 0.0]])
_D_XY = np.array([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 1.0]]) / 4.0


def frobenius(e_xx: np.ndarray, e_yy: np.ndarray, e_xy: np.ndarray) -> np.ndarray:
    r""":math:`|\varepsilon|_F = (e_{xx}^2 + e_{yy}^2 + 2 e_{xy}^2)^{1/2}` per pixel."""
    return np.sqrt(e_xx**2 + e_yy**2 + 2.0 * e_xy**2)


def model_error(e_xx: np.ndarray, e_yy: np.ndarray, e_xy: np.ndarray,
                used: np.ndarray | None = None) -> float:
    """Mean Frobenius norm of the residual strain over `used` pixels (finite values only)."""
    norm = frobenius(e_xx, e_yy, e_xy)
    keep = np.isfinite(norm) if used is None else (np.asarray(used, bool) & np.isfinite(norm))
    return float(norm[keep].mean()) if keep.any() else float("nan")


def incompatibility(e_xx: np.ndarray, e_yy: np.ndarray, e_xy: np.ndarray, mask: np.ndarray,
                    pixel_size_nm: float) -> np.ndarray:
    r"""Saint-Venant incompatibility per pixel (um^-2), NaN where the 3x3 stencil leaves the mask.

    Central differences with x = axis 0, y = axis 1:
    :math:`\partial_{yy} e_{xx} + \partial_{xx} e_{yy} - 2\,\partial_{xy} e_{xy}`.
    """
    h = pixel_size_nm * 1e-3  # um
    inside = np.asarray(mask, bool) & np.isfinite(e_xx) & np.isfinite(e_yy) & np.isfinite(e_xy)
    exx, eyy, exy = (np.where(inside, e, 0.0) for e in (e_xx, e_yy, e_xy))
    inc = (ndimage.correlate(exx, _D_YY) + ndimage.correlate(eyy, _D_YY.T)
           - 2.0 * ndimage.correlate(exy, _D_XY)) / h**2
    interior = ndimage.binary_erosion(inside, np.ones((3, 3), bool), border_value=0)
    return np.where(interior, inc, np.nan)


def incompatibility_rms(e_xx: np.ndarray, e_yy: np.ndarray, e_xy: np.ndarray,
                        mask: np.ndarray, pixel_size_nm: float) -> float:
    """RMS of `incompatibility` over the interior pixels (um^-2)."""
    inc = incompatibility(e_xx, e_yy, e_xy, mask, pixel_size_nm)
    values = inc[np.isfinite(inc)]
    return float(np.sqrt(np.mean(values**2))) if values.size else float("nan")


def m2_model_errors(prepared: Sequence[PreparedParticle], images: dict[str, dict],
                    edge_exclusion_px: int) -> dict[str, float]:
    """{name: model error} of model maps (`images[name]` with e_xx, e_yy, e_xy, meshed_mask)
    over each particle's used pixels inside its meshed pixels (rank 0 holds the images)."""
    errors = {}
    for p in prepared:
        maps = images[p.data.name]
        used = used_pixels(p.data.mask & (maps["meshed_mask"] > 0), p, edge_exclusion_px)
        errors[p.data.name] = model_error(*(p.strain_image[c] - maps[c]
                                            for c in ("e_xx", "e_yy", "e_xy")), used)
    return errors
