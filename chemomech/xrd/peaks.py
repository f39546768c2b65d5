"""Peak windows, background subtraction, overlap detection and the instrument profile.

Positions come from the lattice: s_hkl = 1/d_hkl (1/nm).  Each analysed reflection gets a
window |s - s_hkl| < `window`; a linear background is fitted to the outer `edge_fraction` of
the window on both sides and subtracted; the centre is the centroid of the background-free
peak.  A reflection is *overlapping* when another reflection of the phase (space-group
allowed, or the analysed list) lies inside its window, or when the data show a second
maximum there.  The instrument profile is a pseudo-Voigt whose FWHM w(s)^2 = U s^2 + V s + W
and mixing eta(s) = eta0 + eta1 s are fitted to the peaks of a standard (LaB6).
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.signal import find_peaks

from chemomech.exceptions import InputError
from chemomech.mechanics.crystal import d_spacing
from chemomech.xrd.patterns import Pattern

logger = logging.getLogger(__name__)


# --- reflections -------------------------------------------------------------------------

def is_allowed(hkl: Sequence[int], space_group: str | None) -> bool:
    """Reflection conditions of Pnma, Fm-3m, Im-3m; Pm-3m, P1 and None allow every hkl."""
    h, k, l = (int(v) for v in hkl)
    if space_group in (None, "P1", "Pm-3m", "Pmmm"):
        return True
    if space_group == "Pnma":
        if h == 0 and (k + l) % 2:
            return False
        if l == 0 and h % 2:
            return False
        return not ((h == 0 and l == 0 and k % 2) or (h == 0 and k == 0 and l % 2))
    if space_group == "Fm-3m":
        return h % 2 == k % 2 == l % 2
    if space_group == "Im-3m":
        return (h + k + l) % 2 == 0
    raise InputError(f"space group {space_group!r} not supported "
                     "(Pnma, Pmmm, Fm-3m, Im-3m, Pm-3m, P1)", field="space_group")


def allowed_reflections(lattice: Sequence[float], d_min: float,
                        space_group: str | None) -> list[tuple[int, int, int]]:
    """Allowed reflections with d >= d_min (Angstrom), one per (+-h, +-k, +-l) family."""
    hmax = [int(np.ceil(x / d_min)) for x in lattice[:3]]
    out = []
    for hkl in itertools.product(*(range(n + 1) for n in hmax)):
        if any(hkl) and is_allowed(hkl, space_group) and d_spacing(lattice, hkl) >= d_min:
            out.append(hkl)
    return sorted(out, key=lambda r: -d_spacing(lattice, r))


# --- instrument --------------------------------------------------------------------------

def pseudo_voigt(q: np.ndarray, fwhm: float, eta: float) -> np.ndarray:
    """Unit-area pseudo-Voigt eta L + (1 - eta) G of FWHM `fwhm` (same units as q)."""
    g_sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    gauss = np.exp(-0.5 * (q / g_sigma) ** 2) / (g_sigma * np.sqrt(2.0 * np.pi))
    lorentz = (fwhm / (2.0 * np.pi)) / (q**2 + (fwhm / 2.0) ** 2)
    return eta * lorentz + (1.0 - eta) * gauss


@dataclass(frozen=True)
class InstrumentProfile:
    """Pseudo-Voigt instrument function: w(s)^2 = U s^2 + V s + W (1/nm), eta = eta0 + eta1 s."""

    U: float
    V: float
    W: float
    eta0: float = 0.0
    eta1: float = 0.0
    source: str = ""

    def fwhm(self, s: float) -> float:
        """w(s) in 1/nm."""
        return float(np.sqrt(max(self.U * s * s + self.V * s + self.W, 1e-12)))

    def eta(self, s: float) -> float:
        """Lorentzian fraction at s, clipped to [0, 1]."""
        return float(np.clip(self.eta0 + self.eta1 * s, 0.0, 1.0))

    def restricted_moments(self, s: float, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """M2(q), M4(q) of the unit-area instrument profile at s (1/nm^2, 1/nm^4)."""
        w, eta = self.fwhm(s), self.eta(s)
        grid = np.linspace(0.0, max(np.max(q), 1e-9), 4001)
        p = pseudo_voigt(grid, w, eta)
        m2 = 2.0 * _cumtrapz(grid**2 * p, grid)
        m4 = 2.0 * _cumtrapz(grid**4 * p, grid)
        return np.interp(q, grid, m2), np.interp(q, grid, m4)


def _cumtrapz(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Cumulative trapezoidal integral starting at 0."""
    return np.concatenate([[0.0], np.cumsum(0.5 * (y[1:] + y[:-1]) * np.diff(x))])


def fit_instrument(standard: Pattern, lattice: Sequence[float], space_group: str | None,
                   window: float = 0.08) -> InstrumentProfile:
    """Fit pseudo-Voigts to the isolated standard peaks, then U, V, W and eta(s)."""
    s_lo, s_hi = standard.s[0] + window, standard.s[-1] - window
    hkls = [h for h in allowed_reflections(lattice, 10.0 / s_hi, space_group)
            if 10.0 / d_spacing(lattice, h) > s_lo]
    positions = np.array([10.0 / d_spacing(lattice, h) for h in hkls])
    s_fit, w_fit, eta_fit = [], [], []
    for s0 in np.unique(np.round(positions, 9)):
        if np.any((np.abs(positions - s0) < 2 * window) & (np.abs(positions - s0) > 1e-6)):
            continue                                  # overlapped standard line: skip
        sel = np.abs(standard.s - s0) < window
        q, y, e = standard.s[sel] - s0, standard.intensity[sel], standard.sigma[sel]
        if q.size < 15 or y.max() - np.median(y) < 10 * np.median(e):
            continue

        def model(q, c, area, w, eta, b0, b1):
            return area * pseudo_voigt(q - c, abs(w), np.clip(eta, 0, 1)) + b0 + b1 * q

        p0 = [0.0, (y - y.min()).sum() * np.mean(np.diff(q)), window / 8, 0.2, y.min(), 0.0]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                popt, _ = curve_fit(model, q, y, p0=p0, sigma=e, maxfev=20000)
        except RuntimeError:
            logger.warning("standard peak at s=%.4f 1/nm did not fit; skipped", s0)
            continue
        s_fit.append(s0 + popt[0])
        w_fit.append(abs(popt[2]))
        eta_fit.append(float(np.clip(popt[3], 0, 1)))
    if len(s_fit) < 3:
        raise InputError(f"instrument standard has {len(s_fit)} usable isolated peaks; "
                         "need at least 3 to fit w(s)", path=standard.source or None,
                         field="instrument")
    s_fit, w_fit, eta_fit = map(np.asarray, (s_fit, w_fit, eta_fit))
    U, V, W = np.polyfit(s_fit, w_fit**2, 2)
    eta1, eta0 = np.polyfit(s_fit, eta_fit, 1)
    logger.info("instrument from %d standard peaks: FWHM %.4g-%.4g 1/nm", len(s_fit),
                w_fit.min(), w_fit.max())
    return InstrumentProfile(U=float(U), V=float(V), W=float(W), eta0=float(eta0),
                             eta1=float(eta1), source=standard.source)


def find_peak_positions(pattern: Pattern, prominence: float = 0.02) -> np.ndarray:
    """s (1/nm) of the maxima whose prominence exceeds `prominence` x the highest peak."""
    y = pattern.intensity - np.median(pattern.intensity)
    idx, _ = find_peaks(y, prominence=prominence * y.max())
    return pattern.s[idx]


# --- sample peaks ------------------------------------------------------------------------

@dataclass(frozen=True)
class PeakWindow:
    """A background-free peak on q = s - centre (1/nm), with its integrated intensity."""

    hkl: tuple[int, int, int]
    s_expected: float
    centre: float
    q: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray
    area: float
    background: tuple[float, float]


@dataclass
class PeakSet:
    """The peaks kept for analysis and the overlapping ones left out (with reasons)."""

    peaks: list[PeakWindow] = field(default_factory=list)
    overlaps: dict[str, str] = field(default_factory=dict)


def hkl_label(hkl: Sequence[int]) -> str:
    """'211' style label (negative indices with a minus sign)."""
    return "".join(str(int(v)) for v in hkl) if all(abs(v) < 10 for v in hkl) \
        else " ".join(str(int(v)) for v in hkl)


def find_overlaps(lattice: Sequence[float], hkls: Sequence[Sequence[int]], window: float,
                  space_group: str | None) -> dict[str, str]:
    """Reflections whose window contains another reflection of the phase: {hkl: reason}."""
    s_of = {tuple(h): 10.0 / d_spacing(lattice, h) for h in hkls}
    d_min = 10.0 / (max(s_of.values()) + window)
    others = {tuple(h): 10.0 / d_spacing(lattice, h) for h in (
        allowed_reflections(lattice, d_min, space_group) if space_group else hkls)}
    others.update(s_of)
    out = {}
    for hkl, s0 in s_of.items():
        clash = [o for o, so in others.items() if o != hkl and abs(so - s0) < window
                 and abs(so - s0) > 1e-7 * s0]
        if clash:
            names = ", ".join(hkl_label(c) for c in clash)
            out[hkl_label(hkl)] = f"within the window (+-{window:.3g} 1/nm) of {names}"
    return out


def extract_peaks(pattern: Pattern, lattice: Sequence[float], hkls: Sequence[Sequence[int]],
                  *, window: float, space_group: str | None = None,
                  on_overlap: str = "error", edge_fraction: float = 0.15) -> PeakSet:
    """Window, background-subtract and centre each reflection; detect overlapping peaks.

    on_overlap: "error" raises InputError naming the reflections; "skip" leaves them out and
    reports them in PeakSet.overlaps.
    """
    if on_overlap not in ("error", "skip"):
        raise InputError(f"on_overlap must be 'error' or 'skip', got {on_overlap!r}",
                         field="on_overlap")
    if len({tuple(h) for h in hkls}) != len(hkls):
        raise InputError("a reflection is listed twice", field="reflections")
    overlaps = find_overlaps(lattice, hkls, window, space_group)
    result = PeakSet()
    for hkl in hkls:
        hkl = tuple(int(v) for v in hkl)
        label = hkl_label(hkl)
        s0 = 10.0 / d_spacing(lattice, hkl)
        if s0 - window < pattern.s[0] or s0 + window > pattern.s[-1]:
            raise InputError(f"reflection {label} (s = {s0:.4f} 1/nm) and its window lie "
                             "outside the measured range", path=pattern.source or None,
                             field="reflections")
        if label not in overlaps:
            peak, reason = _window_peak(pattern, hkl, s0, window, edge_fraction)
            if peak is not None:
                result.peaks.append(peak)
                continue
            overlaps[label] = reason
        if on_overlap == "error":
            raise InputError(f"overlapping peak {label}: {overlaps[label]}; choose a smaller "
                             "window, leave it out, or set on_overlap: skip",
                             path=pattern.source or None, field="reflections")
        result.overlaps[label] = overlaps[label]
        logger.warning("reflection %s left out: %s", label, overlaps[label])
    return result


def _window_peak(pattern: Pattern, hkl: tuple[int, int, int], s0: float, window: float,
                 edge_fraction: float) -> tuple[PeakWindow | None, str]:
    """Background-subtracted, centred window of one reflection, or (None, why it overlaps)."""
    sel = np.abs(pattern.s - s0) < window
    s, y, e = pattern.s[sel], pattern.intensity[sel], pattern.sigma[sel]
    edge = np.abs(s - s0) > (1.0 - edge_fraction) * window
    b1, b0 = np.polyfit(s[edge] - s0, y[edge], 1, w=1.0 / e[edge])
    net = y - (b0 + b1 * (s - s0))
    # A second maximum of the smoothed data (prominence > 10 % of the peak) means overlap.
    kernel = np.ones(5) / 5.0
    smooth = np.convolve(net, kernel, mode="same")
    maxima, _ = find_peaks(smooth, prominence=0.10 * smooth.max())
    if maxima.size > 1:
        where = ", ".join(f"{s[m]:.4f}" for m in maxima)
        return None, f"the data show {maxima.size} maxima in the window (s = {where} 1/nm)"
    centre = s0
    for _ in range(3):                       # centroid of the central part, iterated
        core = np.abs(s - centre) < 0.5 * window
        centre = float(np.sum(s[core] * net[core]) / np.sum(net[core]))
    if abs(centre - s0) > 0.2 * window:
        logger.warning("reflection %s: centroid %.4f 1/nm is %.3g 1/nm from the lattice "
                       "position (wrong lattice or phase?)", hkl_label(hkl), centre,
                       centre - s0)
    ds = np.gradient(s)
    q = s - centre
    area = float(np.sum(net))                 # counts: the integral of net/ds over s
    if area <= 0:
        return None, "no positive peak intensity above the background"
    # Counts per point -> intensity per unit s, so that moments are integrals over q.
    return PeakWindow(hkl=hkl, s_expected=s0, centre=centre, q=q, intensity=net / ds,
                      sigma=e / ds, area=area, background=(float(b0), float(b1))), ""
