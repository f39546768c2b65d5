"""Data-driven analysis of the measured maps (no mechanics): the study's Fig. 2b-f.

(a) Pixel-wise lattice parameters a = a_LFP (1 + e_aa), c = c_LFP (1 + e_cc) (Å, LiFePO4
    reference) against the Li fraction X, binned, for three groups of particles by their mean
    X: FP (mean X < 0.15), LxFP, LFP (mean X > 0.85).
(b) Interface width from line cuts perpendicular to the phase boundary.  The boundary is the
    X = 0.5 contour of a Gaussian-smoothed X; the normal is the gradient of the smoothed X.
    Along each cut the raw X and the raw a are fitted (scipy.optimize.curve_fit) with

        f(s) = m + (d / 2) tanh(2 (s - s0) / w)

    and the reported width is **w, the tanh width parameter** (nm): the distance over which the
    profile goes from 12 % to 88 % of its step.  The 10-90 % distance is w atanh(0.8) = 1.099 w
    (returned too).  The study (123 ± 39 nm composition, 132 ± 41 nm lattice parameter) does not
    state its definition in the main text.

Pure numpy/scipy/skimage/matplotlib: no DOLFINx here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage, optimize, stats

from chemomech.correlative.frames import crystal_strain, smooth_masked
from chemomech.io.stack import ParticleData, interior_pixels
from chemomech.mechanics.materials import LATTICE_ANGSTROM

logger = logging.getLogger(__name__)

#: Particle groups of the study's Fig. 2d-f by particle-mean X.
GROUP_EDGES = (0.15, 0.85)
GROUPS = ("FP", "LxFP", "LFP")
#: 10-90 % distance of a tanh(2 s / w) step, in units of w.
TEN_NINETY_PER_W = math.atanh(0.8)


# --------------------------------------------------------------------------- (a) lattice vs X


def lattice_parameters(particle: ParticleData) -> dict[str, np.ndarray]:
    """a = a_LFP (1 + e_aa), c = c_LFP (1 + e_cc) in Å per pixel, NaN outside the mask."""
    if particle.reference != "LiFePO4":
        logger.warning("particle %s: strain reference is %s, lattice parameters assume LiFePO4",
                       particle.name, particle.reference)
    a_ref, _, c_ref = LATTICE_ANGSTROM["LiFePO4"]
    e = crystal_strain(particle)
    a = np.where(particle.mask, a_ref * (1.0 + e["e_aa"]), np.nan)
    c = np.where(particle.mask, c_ref * (1.0 + e["e_cc"]), np.nan)
    return {"a": a, "c": c}


def particle_group(mean_X: float, edges: tuple[float, float] = GROUP_EDGES) -> str:
    """"FP" if mean X < edges[0], "LFP" if mean X > edges[1], else "LxFP"."""
    if mean_X < edges[0]:
        return "FP"
    if mean_X > edges[1]:
        return "LFP"
    return "LxFP"


@dataclass
class LatticeStatistics:
    """Binned a(X), c(X) (Å) of one group: mean, std and count per X bin, plus all pixels."""

    group: str
    particles: list[str]
    bin_edges: np.ndarray
    count: np.ndarray
    a_mean: np.ndarray
    a_std: np.ndarray
    c_mean: np.ndarray
    c_std: np.ndarray
    X: np.ndarray = field(repr=False)
    a: np.ndarray = field(repr=False)
    c: np.ndarray = field(repr=False)

    @property
    def bin_centres(self) -> np.ndarray:
        """Centres of the X bins."""
        return 0.5 * (self.bin_edges[:-1] + self.bin_edges[1:])


def lattice_composition_statistics(particles: Sequence[ParticleData], bins: int = 20,
                                   edges: tuple[float, float] = GROUP_EDGES,
                                   ) -> dict[str, LatticeStatistics]:
    """Pixel-wise a and c (Å) against X, binned (mean, std, count) per particle group."""
    pooled: dict[str, list] = {g: [[], [], [], []] for g in GROUPS}
    for p in particles:
        lat = lattice_parameters(p)
        ok = p.mask & np.isfinite(p.X) & np.isfinite(lat["a"]) & np.isfinite(lat["c"])
        group = particle_group(p.mean_X, edges)
        pooled[group][0].append(p.name)
        pooled[group][1].append(p.X[ok])
        pooled[group][2].append(lat["a"][ok])
        pooled[group][3].append(lat["c"][ok])
    bin_edges = np.linspace(0.0, 1.0, bins + 1)
    out: dict[str, LatticeStatistics] = {}
    for group, (names, Xs, As, Cs) in pooled.items():
        if not names:
            continue
        X, a, c = (np.concatenate(v) for v in (Xs, As, Cs))
        count = np.histogram(X, bin_edges)[0]

        def binned(values: np.ndarray, statistic: str, X=X, count=count) -> np.ndarray:
            result = stats.binned_statistic(X, values, statistic, bins=bin_edges).statistic
            return np.where(count > 0, result, np.nan)

        out[group] = LatticeStatistics(group=group, particles=names, bin_edges=bin_edges,
                                       count=count, a_mean=binned(a, "mean"),
                                       a_std=binned(a, "std"), c_mean=binned(c, "mean"),
                                       c_std=binned(c, "std"), X=X, a=a, c=c)
        logger.info("group %s: %d particle(s), %d pixels", group, len(names), X.size)
    return out


def plot_lattice_composition(statistics: dict[str, LatticeStatistics],
                             path: str | Path | None = None):
    """Fig. 2d-f: a and c (Å) against X per group, pixel density + binned mean ± std."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    groups = [g for g in GROUPS if g in statistics]
    fig, axes = plt.subplots(2, max(len(groups), 1), figsize=(4 * max(len(groups), 1), 6),
                             squeeze=False, sharex=True)
    for col, g in enumerate(groups):
        s = statistics[g]
        for row, (name, values, mean, std) in enumerate(
                (("a", s.a, s.a_mean, s.a_std), ("c", s.c, s.c_mean, s.c_std))):
            ax = axes[row, col]
            ax.hist2d(s.X, values, bins=(40, 40), cmap="Greys", cmin=1)
            ax.errorbar(s.bin_centres, mean, yerr=std, fmt="o-", ms=3, color="C3",
                        label="bin mean ± std")
            lfp = LATTICE_ANGSTROM["LiFePO4"][0 if name == "a" else 2]
            fp = LATTICE_ANGSTROM["FePO4"][0 if name == "a" else 2]
            ax.plot([0, 1], [fp, lfp], "--", color="C0", label="Vegard")
            ax.set_ylabel(f"{name} (Å)")
            if row == 0:
                ax.set_title(f"{g} ({len(s.particles)} particle(s), {s.X.size} px)")
            if row == 1:
                ax.set_xlabel("Li fraction X")
    if groups:
        axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


# --------------------------------------------------------------------------- (b) widths


def tanh_profile(s: np.ndarray, m: float, d: float, s0: float, w: float) -> np.ndarray:
    """f(s) = m + (d/2) tanh(2 (s - s0) / w): a step of height d and width w (nm)."""
    return m + 0.5 * d * np.tanh(2.0 * (s - s0) / w)


@dataclass
class TanhFit:
    """Parameters of one fitted cut (w and s0 in nm) and its RMS residual."""

    m: float
    d: float
    s0: float
    w: float
    rms: float


def fit_tanh(s: np.ndarray, values: np.ndarray, w_guess: float, w_max: float,
             ) -> TanhFit | None:
    """Least-squares tanh step fit (curve_fit); None if it fails or hits the bounds."""
    ok = np.isfinite(values)
    s, values = s[ok], values[ok]
    if s.size < 8:
        return None
    left, right = values[s < 0], values[s > 0]
    if left.size < 3 or right.size < 3:
        return None
    p0 = (float(values.mean()), float(right.mean() - left.mean()), 0.0, w_guess)
    span = float(np.ptp(s))
    lo = (-np.inf, -np.inf, -span / 2, 1e-3 * w_max)
    hi = (np.inf, np.inf, span / 2, w_max)
    try:
        popt, _ = optimize.curve_fit(tanh_profile, s, values, p0=p0, bounds=(lo, hi),
                                     maxfev=2000)
    except (RuntimeError, ValueError):
        return None
    m, d, s0, w = (float(v) for v in popt)
    if w >= 0.99 * w_max or w <= 1.01e-3 * w_max:
        return None
    rms = float(np.sqrt(np.mean((tanh_profile(s, *popt) - values) ** 2)))
    return TanhFit(m, d, s0, w, rms)


@dataclass
class InterfaceWidths:
    """Tanh widths w (nm) of X and of lattice parameter a along cuts across the X = 0.5 boundary."""

    widths_X_nm: np.ndarray
    widths_a_nm: np.ndarray
    n_cuts: int
    cut_points_px: np.ndarray = field(repr=False)
    normals: np.ndarray = field(repr=False)
    s_nm: np.ndarray = field(repr=False)
    profiles_X: np.ndarray = field(repr=False)
    profiles_a: np.ndarray = field(repr=False)
    definition: str = "w in m + (d/2) tanh(2 (s - s0) / w); 10-90 % distance = 1.099 w"

    def summary(self) -> dict[str, float]:
        """Mean ± std (and 10-90 % equivalents) of the widths in nm and the numbers of cuts."""
        out: dict[str, float] = {"n_cuts": float(self.n_cuts)}
        for key, w in (("X", self.widths_X_nm), ("a", self.widths_a_nm)):
            out[f"{key}_n"] = float(w.size)
            out[f"{key}_mean_nm"] = float(np.mean(w)) if w.size else math.nan
            out[f"{key}_std_nm"] = float(np.std(w, ddof=1)) if w.size > 1 else math.nan
            out[f"{key}_median_nm"] = float(np.median(w)) if w.size else math.nan
            out[f"{key}_mean_10_90_nm"] = out[f"{key}_mean_nm"] * TEN_NINETY_PER_W
        return out


def boundary_cuts(X_smooth: np.ndarray, region: np.ndarray, spacing_px: float,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Points (k, 2) on the X = 0.5 contour, `spacing_px` apart, and normals grad X / |grad X|."""
    from skimage.measure import find_contours

    filled = np.where(np.isfinite(X_smooth), X_smooth, 0.0)
    contours = find_contours(filled, 0.5, mask=region)
    gx = np.gradient(filled, axis=0)
    gy = np.gradient(filled, axis=1)
    points, normals = [], []
    for contour in contours:
        if len(contour) < 2:
            continue
        seg = np.linalg.norm(np.diff(contour, axis=0), axis=1)
        arc = np.r_[0.0, np.cumsum(seg)]
        if arc[-1] < spacing_px:
            continue
        targets = np.arange(0.5 * spacing_px, arc[-1], spacing_px)
        pts = np.column_stack([np.interp(targets, arc, contour[:, 0]),
                               np.interp(targets, arc, contour[:, 1])])
        g = np.column_stack([ndimage.map_coordinates(gx, pts.T, order=1),
                             ndimage.map_coordinates(gy, pts.T, order=1)])
        norm = np.linalg.norm(g, axis=1)
        keep = norm > 0
        points.append(pts[keep])
        normals.append(g[keep] / norm[keep, None])
    if not points:
        return np.zeros((0, 2)), np.zeros((0, 2))
    return np.concatenate(points), np.concatenate(normals)


def sample_along(image: np.ndarray, points: np.ndarray, normals: np.ndarray,
                 s_px: np.ndarray) -> np.ndarray:
    """image (bilinear, NaN outside) at points + s n, shape (cuts, len(s))."""
    coords = points[:, None, :] + s_px[None, :, None] * normals[:, None, :]
    nan_outside = ~np.isfinite(image)
    values = ndimage.map_coordinates(np.where(nan_outside, 0.0, image),
                                     coords.reshape(-1, 2).T, order=1, cval=np.nan)
    # a sample touching any invalid pixel is invalid
    touched = ndimage.map_coordinates(nan_outside.astype(float), coords.reshape(-1, 2).T,
                                      order=1, cval=1.0)
    values[touched > 0] = np.nan
    return values.reshape(coords.shape[:2])


def interface_widths(particle: ParticleData, *, cut_length_nm: float = 600.0,
                     spacing_px: float = 3.0, sigma_px: float = 2.0, edge_px: int = 3,
                     min_valid_fraction: float = 0.6, min_step_X: float = 0.4,
                     ) -> InterfaceWidths:
    """Tanh widths w (nm) of X and of a along cuts normal to the X = 0.5 contour.

    Cuts of length `cut_length_nm` (centred on the contour, sampled every h/2) start every
    `spacing_px` along the contour of X smoothed with `sigma_px`, at least `edge_px` inside the
    mask.  A cut counts when >= `min_valid_fraction` of it lies in the particle, the X fit
    converges with a step >= `min_step_X` and its centre stays within a quarter-length; the a fit
    on the same cut is kept when it converges with a step of the sign of the X step.  Bilinear
    sampling broadens very sharp steps: w of ~3.6 px comes out ~4 % wide, w >= 7 px within 1 %.
    """
    h = particle.pixel_size_nm
    X_smooth = smooth_masked(particle.X, particle.mask, sigma_px)
    region = interior_pixels(particle.mask, edge_px)
    points, normals = boundary_cuts(X_smooth, region, spacing_px)
    half = 0.5 * cut_length_nm / h
    s_px = np.arange(-half, half + 1e-9, 0.5)
    s_nm = s_px * h
    lattice_a = lattice_parameters(particle)["a"]
    profiles_X = sample_along(particle.X, points, normals, s_px)
    profiles_a = sample_along(lattice_a, points, normals, s_px)
    w_guess, w_max = 100.0, cut_length_nm
    widths_X, widths_a, kept = [], [], []
    for k in range(len(points)):
        if np.isfinite(profiles_X[k]).mean() < min_valid_fraction:
            continue
        fit_X = fit_tanh(s_nm, profiles_X[k], w_guess, w_max)
        if fit_X is None or fit_X.d < min_step_X or abs(fit_X.s0) > cut_length_nm / 4:
            continue
        kept.append(k)
        widths_X.append(fit_X.w)
        fit_a = fit_tanh(s_nm, profiles_a[k], w_guess, w_max)
        # X up means a up (a_LFP > a_FP): the a step must have the same sign
        if fit_a is not None and fit_a.d > 0 and abs(fit_a.s0) < cut_length_nm / 4:
            widths_a.append(fit_a.w)
    kept_idx = np.array(kept, dtype=int)
    result = InterfaceWidths(widths_X_nm=np.array(widths_X), widths_a_nm=np.array(widths_a),
                             n_cuts=len(points), cut_points_px=points[kept_idx],
                             normals=normals[kept_idx], s_nm=s_nm,
                             profiles_X=profiles_X[kept_idx], profiles_a=profiles_a[kept_idx])
    summary = result.summary()
    logger.info("particle %s: %d cuts, %d X fits: w = %.1f ± %.1f nm; %d a fits: w = %.1f ± "
                "%.1f nm", particle.name, len(points), summary["X_n"], summary["X_mean_nm"],
                summary["X_std_nm"], summary["a_n"], summary["a_mean_nm"], summary["a_std_nm"])
    return result


def plot_interface_profiles(result: InterfaceWidths, path: str | Path | None = None):
    """Fig. 2b-c: the X and a profiles of the kept cuts, aligned at the X = 0.5 crossing."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    summary = result.summary()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, profiles, key, label in ((axes[0], result.profiles_X, "X", "Li fraction X"),
                                     (axes[1], result.profiles_a, "a", "a (Å)")):
        for prof in profiles:
            ax.plot(result.s_nm, prof, lw=0.5, alpha=0.4)
        ax.set_xlabel("distance across the boundary (nm)")
        ax.set_ylabel(label)
        ax.set_title(f"w = {summary[f'{key}_mean_nm']:.0f} ± {summary[f'{key}_std_nm']:.0f} nm "
                     f"(n = {int(summary[f'{key}_n'])})")
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


# --------------------------------------------------------------------------- driver and CLI


def analyze_particles(particles: Sequence[ParticleData], output: str | Path, *,
                      bins: int = 20, cut_length_nm: float = 600.0,
                      sigma_px: float = 2.0) -> dict:
    """Write analysis.json (widths per particle, binned a(X), c(X)) and figures under `output`."""
    import matplotlib.pyplot as plt

    from chemomech.io.results import write_json_atomic

    output = Path(output)
    figures = output / "figures"
    summary: dict = {"interface_width_definition": InterfaceWidths.definition,
                     "particles": {}, "lattice_vs_X": {}}
    for p in particles:
        widths = interface_widths(p, cut_length_nm=cut_length_nm, sigma_px=sigma_px)
        summary["particles"][p.name] = {"mean_X": p.mean_X, "group": particle_group(p.mean_X),
                                        **widths.summary()}
        if widths.widths_X_nm.size:
            plt.close(plot_interface_profiles(widths, figures / f"interface_{p.name}.png"))
    stats = lattice_composition_statistics(particles, bins=bins)
    for group, s in stats.items():
        summary["lattice_vs_X"][group] = {
            "particles": s.particles, "X_bin_centres": s.bin_centres.tolist(),
            "count": s.count.tolist(), "a_mean_A": s.a_mean.tolist(), "a_std_A": s.a_std.tolist(),
            "c_mean_A": s.c_mean.tolist(), "c_std_A": s.c_std.tolist()}
    plt.close(plot_lattice_composition(stats, figures / "lattice_vs_X.png"))
    # NaN is not JSON: empty bins and missing statistics become null
    write_json_atomic(output / "analysis.json", _nan_to_none(summary))
    return summary


def _nan_to_none(value):
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def add_analysis_arguments(parser) -> None:
    """Arguments of `chemomech analyze`."""
    parser.add_argument("inputs", nargs="+", help="a stack file, or any input of `import`")
    parser.add_argument("-o", "--output", default="results/analysis", help="output folder")
    parser.add_argument("--particles", nargs="*", default=None, help="names (default: all)")
    parser.add_argument("--bins", type=int, default=20, help="X bins of a(X), c(X)")
    parser.add_argument("--cut-length-nm", type=float, default=600.0,
                        help="length of the line cuts across the boundary (nm)")
    parser.add_argument("--sigma-px", type=float, default=2.0,
                        help="Gaussian smoothing of X used to locate the boundary (px)")


def cmd_analysis(args) -> int:
    """`chemomech analyze INPUTS -o DIR`: lattice parameters vs X and interface widths."""
    from chemomech.exceptions import InputError
    from chemomech.io.readers import read_data

    if args.bins < 1:
        raise InputError(f"must be >= 1, got {args.bins}", field="--bins")
    # unknown names are an error (they were dropped silently, analysing nothing)
    particles = read_data([args.inputs], args.particles or "all")
    analyze_particles(particles, args.output, bins=args.bins,
                      cut_length_nm=args.cut_length_nm, sigma_px=args.sigma_px)
    return 0
