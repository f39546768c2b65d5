"""Crystal and image frames of the measured strain, and the frame (compatibility) check.

Displacement gradient in the crystal frame, rows (u_a, u_c), columns (d/da, d/dc)::

    H_cr = [[e_aa, e_ac + s theta], [e_ac - s theta, e_cc]]        s = theta_sign

and in the image frame H_img = Q H_cr Q^T with Q = R(rotation_rad) (DESIGN §2), or
Q = R(rotation_rad) diag(1, -1) for a mirrored (left-handed) crystal frame: c -> -c, which
flips the sign of e_ac and of theta.  Strain tensors rotate the same way.

A measured gradient must be compatible: curl_i = d H_iy/dx - d H_ix/dy = 0 for both rows.  A
wrong rotation, theta sign or handedness breaks that, so `frame_check` scans them for the
smallest RMS curl.  H_img is unchanged by rotation_rad -> rotation_rad + pi (Q -> -Q): angles
are only determined modulo pi.

Ties: a field may not separate some frames at all (a uniform field has zero curl in every
frame; with e_xy = theta = 0 the theta sign and the mirror change nothing), and then float
rounding alone would rank them.  The stated frame is therefore kept unless another one is
better by more than the relative margin `RELATIVE_MARGIN` and more than rounding:
curl_best + floor < (1 - margin) curl_stated, with floor = `ROUNDING_FLOOR` x (RMS strain
component over the scored pixels) / (pixel size), the curl that rounding of the maps can make.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from chemomech.exceptions import InputError
from chemomech.io.stack import ParticleData, interior_pixels

logger = logging.getLogger(__name__)

MIRROR = np.diag([1.0, -1.0])

#: A frame replaces the stated one only if its RMS curl is lower by more than this fraction.
RELATIVE_MARGIN = 0.05

#: Curls below this fraction of (RMS strain component) / (pixel size) are rounding, not data.
ROUNDING_FLOOR = 1e-9


def rotation_matrix(angle_rad: float) -> np.ndarray:
    """R(phi) with v_image = R v_crystal; phi is the angle from image x to crystal a (ccw)."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, -s], [s, c]])


def frame_matrix(rotation_rad: float, mirror: bool = False) -> np.ndarray:
    """Q = R(phi) (or R(phi) diag(1, -1) if mirrored): columns are crystal a, c in the image."""
    R = rotation_matrix(rotation_rad)
    return R @ MIRROR if mirror else R


def gradient_crystal(e_aa: np.ndarray, e_cc: np.ndarray, e_ac: np.ndarray, theta: np.ndarray,
                     theta_sign: int = 1) -> np.ndarray:
    """H_cr[..., i, j] = [[e_aa, e_ac + s theta], [e_ac - s theta, e_cc]] (dimensionless)."""
    H = np.empty(np.shape(e_aa) + (2, 2))
    H[..., 0, 0] = e_aa
    H[..., 0, 1] = e_ac + theta_sign * theta
    H[..., 1, 0] = e_ac - theta_sign * theta
    H[..., 1, 1] = e_cc
    return H


def similarity(Q: np.ndarray, T: np.ndarray, axes: tuple[int, int] = (-2, -1)) -> np.ndarray:
    """Q T Q^T for the 2x2 tensors T in `axes` (any other axes are a batch): 16 scaled sums of
    whole arrays, several times cheaper than einsum on image-sized batches."""
    T = np.moveaxis(np.asarray(T), axes, (0, 1))
    out = np.zeros(T.shape, dtype=np.result_type(Q, T))
    for i in range(2):
        for j in range(2):
            for p in range(2):
                for q in range(2):
                    out[i, j] += (Q[i, p] * Q[j, q]) * T[p, q]
    return np.moveaxis(out, (0, 1), axes)


def rotate_tensor_field(T: np.ndarray, rotation_rad: float, mirror: bool = False) -> np.ndarray:
    """T_img = Q T_cr Q^T per pixel, Q = frame_matrix(rotation_rad, mirror)."""
    return similarity(frame_matrix(rotation_rad, mirror), T)


def crystal_strain(particle: ParticleData) -> dict[str, np.ndarray]:
    """e_aa, e_cc, e_ac in the crystal frame (rotated back from the image frame if needed)."""
    if particle.strain_frame == "crystal":
        return {"e_aa": particle.e_xx, "e_cc": particle.e_yy, "e_ac": particle.e_xy}
    return strain_crystal_from_image(particle.e_xx, particle.e_yy, particle.e_xy,
                                     particle.rotation_rad)


def gradient_image(particle: ParticleData, rotation_rad: float | None = None,
                   theta_sign: int | None = None, mirror: bool = False) -> np.ndarray:
    """H_img (nx, ny, 2, 2) = Q H_cr Q^T from the particle's maps (its own frame by default)."""
    phi = particle.rotation_rad if rotation_rad is None else rotation_rad
    s = particle.theta_sign if theta_sign is None else theta_sign
    H = gradient_crystal(particle.e_xx, particle.e_yy, particle.e_xy, particle.theta, s)
    if particle.strain_frame == "image" and rotation_rad is None:
        phi = 0.0
    return rotate_tensor_field(H, phi, mirror)


def strain_image(particle: ParticleData, mirror: bool = False) -> dict[str, np.ndarray]:
    """Symmetric strain in the image frame: e_xx, e_yy, e_xy = sym(H_img) (dimensionless)."""
    H = gradient_image(particle, mirror=mirror)
    return {"e_xx": H[..., 0, 0], "e_yy": H[..., 1, 1],
            "e_xy": 0.5 * (H[..., 0, 1] + H[..., 1, 0])}


def strain_crystal_from_image(e_xx: np.ndarray, e_yy: np.ndarray, e_xy: np.ndarray,
                              rotation_rad: float, mirror: bool = False,
                              ) -> dict[str, np.ndarray]:
    """e_cr = Q^T e_img Q: the symmetric image-frame strain back in the crystal frame (a, c)."""
    E = gradient_crystal(e_xx, e_yy, e_xy, np.zeros_like(e_xx))
    C = similarity(frame_matrix(rotation_rad, mirror).T, E)
    return {"e_aa": C[..., 0, 0], "e_cc": C[..., 1, 1], "e_ac": C[..., 0, 1]}


def smooth_masked(field: np.ndarray, mask: np.ndarray, sigma_px: float) -> np.ndarray:
    """Normalised Gaussian smoothing sum(G f m) / sum(G m) over valid pixels (NaN elsewhere)."""
    valid = mask & np.isfinite(field)
    if sigma_px <= 0:
        return np.where(valid, field, np.nan)
    f = np.where(valid, field, 0.0)
    num = ndimage.gaussian_filter(f, sigma_px, mode="constant")
    den = ndimage.gaussian_filter(valid.astype(float), sigma_px, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[~valid] = np.nan
    return out


def curl_field(H_img: np.ndarray, pixel_size_nm: float = 1.0) -> np.ndarray:
    """curl_i = dH_iy/dx - dH_ix/dy (1/nm) per pixel and row i, shape (nx, ny, 2)."""
    d_dx = np.gradient(H_img, pixel_size_nm, axis=0)
    d_dy = np.gradient(H_img, pixel_size_nm, axis=1)
    return d_dx[..., :, 1] - d_dy[..., :, 0]


@dataclass(frozen=True)
class FrameCandidate:
    """One row of the frame check: a frame and its RMS curl (1/nm) over interior pixels."""

    rotation_rad: float
    theta_sign: int
    mirror: bool
    curl_rms_per_nm: float
    label: str = ""

    @property
    def rotation_deg(self) -> float:
        """The rotation in degrees."""
        return math.degrees(self.rotation_rad)


@dataclass
class FrameCheckResult:
    """Ranked frames (best first), the file's stated frame, and the particle (adopted or not)."""

    table: list[FrameCandidate]
    stated: FrameCandidate
    particle: ParticleData
    adopted: bool
    margin: float = RELATIVE_MARGIN
    floor_per_nm: float = 0.0

    @property
    def best(self) -> FrameCandidate:
        """The most compatible frame; the stated one when no frame beats it by the margin."""
        return self.table[0]

    def same_as_stated(self, frame: FrameCandidate,
                       tolerance_rad: float = math.radians(2.0)) -> bool:
        """Whether `frame` is the stated frame (rotation modulo pi within tolerance)."""
        s = self.stated
        return (frame.theta_sign == s.theta_sign and frame.mirror == s.mirror
                and angle_distance_mod_pi(frame.rotation_rad, s.rotation_rad) <= tolerance_rad)

    def stated_is_best(self, tolerance_rad: float = math.radians(2.0)) -> bool:
        """Whether the stated frame stands: it is the best one, or no frame is better by more
        than the relative `margin` and the rounding floor (curl_best + floor >= (1 - margin)
        curl_stated; ties keep it)."""
        if self.same_as_stated(self.best, tolerance_rad):
            return True
        best, stated = self.best.curl_rms_per_nm, self.stated.curl_rms_per_nm
        return not (np.isfinite(best) and np.isfinite(stated)
                    and best + self.floor_per_nm < (1.0 - self.margin) * stated)

    def format_table(self, rows: int = 10) -> str:
        """The first `rows` rows of the ranking as text."""
        lines = [f"{'rank':>4} {'rotation_rad':>12} {'deg':>8} {'s':>3} {'mirror':>6} "
                 f"{'curl_rms_1/nm':>14} label"]
        for k, c in enumerate(self.table[:rows]):
            lines.append(f"{k + 1:>4} {c.rotation_rad:>12.4f} {c.rotation_deg:>8.2f} "
                         f"{c.theta_sign:>+3d} {c.mirror!s:>6} {c.curl_rms_per_nm:>14.4e} "
                         f"{c.label}")
        lines.append(f"stated: rotation {self.stated.rotation_rad:.4f}, s "
                     f"{self.stated.theta_sign:+d}, curl_rms {self.stated.curl_rms_per_nm:.4e}")
        return "\n".join(lines)


def angle_distance_mod_pi(a: float, b: float) -> float:
    """Distance between two angles modulo pi (frames at phi and phi + pi are the same)."""
    d = (a - b) % math.pi
    return min(d, math.pi - d)


def _candidate_angles(stated: float, step_rad: float) -> list[tuple[float, str]]:
    """A grid over [-pi/2, pi/2) plus +-stated and +-stated +- pi/2 (labelled)."""
    grid = [(float(a), "") for a in np.arange(-math.pi / 2, math.pi / 2, step_rad)]
    special = [(stated, "stated"), (-stated, "-stated"),
               (stated + math.pi / 2, "stated+pi/2"), (stated - math.pi / 2, "stated-pi/2"),
               (-stated + math.pi / 2, "-stated+pi/2"), (-stated - math.pi / 2, "-stated-pi/2")]
    return special + grid


def frame_check(particle: ParticleData, *, step_deg: float = 0.5, sigma_px: float = 1.0,
                erosion_px: int = 3, include_mirror: bool = True, adopt: bool = False,
                margin: float = RELATIVE_MARGIN) -> FrameCheckResult:
    """Rank frames (rotation mod pi, theta sign, handedness) by RMS curl of smoothed H_img (1/nm).

    The strain maps are smoothed (normalised Gaussian, `sigma_px`), differentiated by central
    differences, and the curl of Q H Q^T is evaluated over the mask eroded by `erosion_px`.
    Warns when another frame is more compatible than the stated one by more than the relative
    `margin` (default `RELATIVE_MARGIN`); with `adopt=True` the returned particle then carries
    that frame (a mirrored frame is adopted by negating e_xy and theta).  Ties, and differences
    within the margin, keep the stated frame.
    """
    if not 0.0 <= margin < 1.0:
        raise InputError(f"margin must be in [0, 1), got {margin}", field="margin")
    h = particle.pixel_size_nm
    mask = particle.mask
    stated_angle = 0.0 if particle.strain_frame == "image" else particle.rotation_rad
    interior = interior_pixels(mask, erosion_px)
    # derivative maps of the smoothed components; curl is linear in them for a fixed frame
    comps = {}
    for name in ("e_xx", "e_yy", "e_xy", "theta"):
        smooth = smooth_masked(getattr(particle, name), mask, sigma_px)
        comps[name] = (np.gradient(smooth, h, axis=0)[interior],
                       np.gradient(smooth, h, axis=1)[interior])
    keep = np.all([np.isfinite(d) for pair in comps.values() for d in pair], axis=0)
    if keep.sum() < 10:
        logger.warning("frame check: only %d interior pixels (erosion %d px); ranking is "
                       "unreliable", int(keep.sum()), erosion_px)
    comps = {k: (dx[keep], dy[keep]) for k, (dx, dy) in comps.items()}
    values = np.concatenate([getattr(particle, k)[interior][keep] for k in
                             ("e_xx", "e_yy", "e_xy", "theta")])
    values = values[np.isfinite(values)]
    floor = ROUNDING_FLOOR * float(np.sqrt(np.mean(values**2))) / h if values.size else 0.0

    names = ("e_xx", "e_yy", "e_xy", "theta")

    def curl_rms(angles: np.ndarray, s: int, mirror: bool) -> np.ndarray:
        dHx = gradient_crystal(*(comps[k][0] for k in names), s)
        dHy = gradient_crystal(*(comps[k][1] for k in names), s)
        if dHx.shape[0] == 0:
            return np.full(len(angles), np.nan)
        # curl_i(phi) = Q_ip (Q_yq dHx_pq - Q_xq dHy_pq) is quadratic in (cos phi, sin phi):
        # curl(phi) = A + B cos 2phi + C sin 2phi per pixel and component, so its mean square
        # is v^T M v with v = (1, cos 2phi, sin 2phi) and the 3x3 Gram matrix M of (A, B, C)
        # (three angles evaluated instead of every candidate)
        Q = np.stack([frame_matrix(phi, mirror) for phi in (0.0, math.pi / 4, math.pi / 2)])
        V = dHx @ Q[:, 1, :].T - dHy @ Q[:, 0, :].T  # (n, p, 3)
        c0, c45, c90 = np.einsum("aip,npa->ani", Q, V, optimize=True).reshape(3, -1)
        basis = np.stack([0.5 * (c0 + c90), 0.5 * (c0 - c90), c45 - 0.5 * (c0 + c90)])
        M = basis @ basis.T / basis.shape[1]
        v = np.stack([np.ones(len(angles)), np.cos(2 * angles), np.sin(2 * angles)])
        return np.sqrt(np.maximum(np.einsum("ia,ij,ja->a", v, M, v), 0.0))

    candidates = _candidate_angles(stated_angle, math.radians(step_deg))
    angles = np.array([phi for phi, _ in candidates])
    table: list[FrameCandidate] = []
    mirrors = (False, True) if include_mirror else (False,)
    for s in (1, -1):
        for m in mirrors:
            rms = curl_rms(angles, s, m)
            table += [FrameCandidate(phi, s, m, float(r), label)
                      for (phi, label), r in zip(candidates, rms, strict=True)]
    stated = FrameCandidate(stated_angle, particle.theta_sign, False,
                            float(curl_rms(np.array([stated_angle]), particle.theta_sign,
                                           False)[0]), "stated")
    result = FrameCheckResult(table=table, stated=stated, particle=particle, adopted=False,
                              margin=margin, floor_per_nm=floor)
    table.sort(key=lambda c: (c.curl_rms_per_nm, not result.same_as_stated(c), c.label == ""))
    if result.stated_is_best():   # nothing beats it by the margin: rank the stated frame first
        first = next((k for k, c in enumerate(table) if result.same_as_stated(c)), None)
        if first is not None:
            table.insert(0, table.pop(first))
    best = result.best
    logger.info("frame check of %s:\n%s", particle.name, result.format_table(6))
    if not result.stated_is_best():
        logger.warning("particle %s: the stated frame (rotation %.4f rad, theta_sign %+d) is "
                       "not the most compatible (margin %.0f %%); best is rotation %.4f rad "
                       "(mod pi), "
                       "theta_sign %+d, mirror %s (curl RMS %.3e vs %.3e 1/nm)%s",
                       particle.name, stated.rotation_rad, stated.theta_sign,
                       100 * margin, best.rotation_rad, best.theta_sign, best.mirror,
                       best.curl_rms_per_nm, stated.curl_rms_per_nm,
                       "; adopting it" if adopt else "")
    if adopt and not result.stated_is_best():
        result.particle = adopt_frame(particle, best)
        result.adopted = True
    return result


def adopt_frame(particle: ParticleData, frame: FrameCandidate,
                tolerance_rad: float = math.radians(2.0)) -> ParticleData:
    """The particle re-labelled with `frame` (mirror folded into e_xy, theta by negation).

    Image-frame data whose best rotation is ~0 (mod pi) stay in the image frame and keep their
    rotation_rad (the crystal orientation, which compatibility cannot see); otherwise the maps
    are taken as crystal-frame data at the best rotation.
    """
    keep_image = (particle.strain_frame == "image"
                  and angle_distance_mod_pi(frame.rotation_rad, 0.0) <= tolerance_rad)
    rotation = particle.rotation_rad if keep_image else frame.rotation_rad
    note = (f"frame check adopted {'image frame' if keep_image else 'rotation'} "
            f"{rotation:.4f} rad, theta_sign {frame.theta_sign:+d}"
            f"{', mirrored (e_xy, theta negated)' if frame.mirror else ''}")
    p = particle.with_frame(rotation, frame.theta_sign, note)
    p.strain_frame = "image" if keep_image else "crystal"
    if frame.mirror:
        p.e_xy = -p.e_xy
        p.theta = -p.theta
    return p
