r"""Forward model of dislocation-broadened powder peaks, for verification and examples.

Each reflection is the Fourier series :math:`P(q) = \int A(L) \cos(2\pi q L)\,dL` of
:math:`A(L) = A^S(L)\,A^D(L)\,A^I(L)` with q = s - s_hkl (1/nm), L in nm:

- size (spheres of diameter D): :math:`A^S = 1 - \tfrac32 L/D + \tfrac12 (L/D)^3`, L < D;
- dislocations (Krivoglaz-Wilkens, restrictedly random distribution):
  :math:`A^D = \exp[-\Lambda\rho\, L^2 f^*(\eta)]`, :math:`\eta = e^{-1/4} L / (2 R_e)`,
  :math:`\Lambda\rho = (\pi/2) g^2 \sum_s \rho_s b_s^2 \bar C_{hkl,s}`.  For L << R_e,
  :math:`A^D \approx 1 - \Lambda\rho L^2 [\ln(R_e/L) + 2]`, whose :math:`|q|^{-3}` tail
  :math:`\Lambda\rho/(4\pi^2 |q|^3)` is what the variance method measures;
- instrument: a Gaussian of FWHM w(s) with :math:`w^2 = U s^2 + V s + W` (1/nm).

Only the listed reflections are generated (no other phase lines), on a linear background
with Poisson noise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chemomech.mechanics.crystal import d_spacing
from chemomech.xrd.patterns import Pattern, two_theta_from_s

logger = logging.getLogger(__name__)

#: 1 nm^-2 = 1e6 um^-2.
UM2_PER_NM2 = 1.0e6


@dataclass(frozen=True)
class GaussianInstrument:
    """Instrument FWHM in s (1/nm): w(s)^2 = U s^2 + V s + W."""

    U: float = 1.0e-6
    V: float = 0.0
    W: float = 2.5e-5

    def fwhm(self, s: float) -> float:
        """w(s) = sqrt(U s^2 + V s + W) in 1/nm."""
        return float(np.sqrt(max(self.U * s * s + self.V * s + self.W, 0.0)))


def wilkens_f(eta: np.ndarray) -> np.ndarray:
    """Wilkens' f*(eta) (Wilkens 1970), eta = e^(-1/4) L / (2 R_e); f* ~ -ln(eta) + 7/4 - ln 2."""
    eta = np.atleast_1d(np.asarray(eta, dtype=float))
    out = np.empty_like(eta)
    small = eta < 1e-3
    mid = (eta >= 1e-3) & (eta < 1.0)
    big = eta >= 1.0
    e = eta[small]
    out[small] = -np.log(e) + 1.75 - np.log(2.0) + e**2 / 6.0
    e = eta[mid]
    # int_0^eta arcsin(V)/V dV = int_0^arcsin(eta) t cot(t) dt, by Gauss-Legendre.
    nodes, weights = np.polynomial.legendre.leggauss(40)
    upper = np.arcsin(e)[:, None]
    t = 0.5 * upper * (nodes[None, :] + 1.0)
    integral = 0.5 * upper[:, 0] * np.sum(weights * t / np.tan(t), axis=1)
    root = np.sqrt(1.0 - e**2)
    out[mid] = (-np.log(e) + 1.75 - np.log(2.0) + 512.0 / (90.0 * np.pi * e)
                + (2.0 / np.pi) * (1.0 - 1.0 / (4.0 * e**2)) * integral
                - (769.0 / (180.0 * e) + 41.0 * e / 90.0 + 2.0 * e**3 / 90.0) * root / np.pi
                - (11.0 / (12.0 * e**2) + 3.5 + e**2 / 3.0) * np.arcsin(e) / np.pi
                + e**2 / 6.0)
    e = eta[big]
    out[big] = 512.0 / (90.0 * np.pi * e) - (11.0 / 24.0 + 0.25 * np.log(2.0 * e)) / e**2
    return out


def fourier_coefficients(L: np.ndarray, lambda_rho: float, size_nm: float, Re_nm: float,
                         instrument_fwhm: float, instrument_eta: float = 0.0) -> np.ndarray:
    """A(L) = A_size A_dislocation A_instrument (dimensionless), L in nm.

    The instrument is a pseudo-Voigt of FWHM w and Lorentz fraction eta:
    A_I = eta exp(-pi w L) + (1 - eta) exp(-2 pi^2 sigma^2 L^2), sigma = w / 2.3548.
    """
    L = np.asarray(L, dtype=float)
    x = np.clip(L / size_nm, 0.0, 1.0)
    a_size = np.where(L < size_nm, 1.0 - 1.5 * x + 0.5 * x**3, 0.0)
    eta = 0.5 * np.exp(-0.25) * np.maximum(L, 1e-300) / Re_nm
    a_disl = np.exp(-lambda_rho * L**2 * wilkens_f(eta))
    sigma = instrument_fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    a_inst = ((1.0 - instrument_eta) * np.exp(-2.0 * np.pi**2 * sigma**2 * L**2)
              + instrument_eta * np.exp(-np.pi * instrument_fwhm * L))
    return a_size * a_disl * a_inst


def line_profile_fft(lambda_rho: float, size_nm: float, Re_nm: float, instrument_fwhm: float,
                     instrument_eta: float = 0.0, q_max: float = 1.0,
                     n: int = 1 << 15) -> tuple[np.ndarray, np.ndarray]:
    """(q >= 0, P(q)) of the same model by a real FFT: dL = 1/(8 q_max), q step 1/(n dL)."""
    dL = 1.0 / (8.0 * q_max)
    L = dL * np.arange(n)
    A = fourier_coefficients(L, lambda_rho, size_nm, Re_nm, instrument_fwhm, instrument_eta)
    P = dL * (2.0 * np.fft.rfft(A).real - A[0])
    q = np.fft.rfftfreq(n, d=dL)
    keep = q <= q_max
    return q[keep], P[keep]


def line_profile(q: np.ndarray, lambda_rho: float, size_nm: float, Re_nm: float,
                 instrument_fwhm: float, dL: float | None = None) -> np.ndarray:
    """P(q) = dL [A(0) + 2 sum_n A(n dL) cos(2 pi q n dL)], unit area (1/nm^-1).

    This is the Fourier series of the sampled A(L): P aliased with period 1/dL in q; the
    default dL = 1/(20 max|q|) keeps the aliases 20 half-windows away.
    """
    q = np.asarray(q, dtype=float)
    if dL is None:
        dL = 1.0 / (20.0 * max(np.max(np.abs(q)), 1e-6))
    sigma = instrument_fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    L_max = size_nm if sigma <= 0 else min(size_nm, 1.2 / sigma)   # A^I < 1e-12 beyond
    L = np.arange(0.0, L_max + dL, dL)
    A = fourier_coefficients(L, lambda_rho, size_nm, Re_nm, instrument_fwhm)
    w = np.full(L.size, 2.0 * dL)
    w[0] = dL
    out = np.empty(np.size(q))
    for start in range(0, q.size, 2048):      # chunks keep the cos matrix small
        qc = q[start:start + 2048]
        out[start:start + 2048] = np.cos(2.0 * np.pi * np.outer(qc, L)) @ (w * A)
    return out


@dataclass(frozen=True)
class SyntheticPeak:
    """One generated reflection: indices, position s (1/nm), area and Lambda*rho (1/nm^2)."""

    hkl: tuple[int, int, int]
    s: float
    area: float
    lambda_rho: float


def synthetic_pattern(lattice: Sequence[float], hkls: Sequence[Sequence[int]],
                      design: np.ndarray, densities_um2: np.ndarray, *,
                      wavelength_angstrom: float, two_theta: np.ndarray,
                      size_nm: float = 150.0, Re_nm: float = 60.0,
                      instrument: GaussianInstrument | None = None,
                      areas: Sequence[float] | None = None, background: tuple[float, float]
                      = (20.0, 0.0), window: float = 0.6, seed: int | None = 0,
                      noise: bool = True) -> tuple[Pattern, list[SyntheticPeak]]:
    """Counts(2theta) of the listed reflections: Poisson(background + sum_r area_r P_r).

    `design` is `chemomech.xrd.slip.design_matrix` (nm^2) for the same hkls, `densities_um2`
    the true densities per system (1/um^2); background = (b0, b1) counts + counts per 1/nm.
    Each profile is evaluated within +-window (1/nm) of its centre.
    """
    instrument = instrument or GaussianInstrument()
    two_theta = np.asarray(two_theta, dtype=float)
    s = 10.0 * 2.0 * np.sin(np.radians(two_theta) / 2.0) / wavelength_angstrom
    rho_nm2 = np.asarray(densities_um2, dtype=float) / UM2_PER_NM2
    areas = np.full(len(hkls), 2.0e3) if areas is None else np.asarray(areas, dtype=float)
    # Counts per point: the profile is per unit s, the pattern is sampled per point.
    ds = np.gradient(s)
    mean = background[0] + background[1] * (s - s.mean())
    peaks = []
    for r, hkl in enumerate(hkls):
        s0 = 10.0 / d_spacing(lattice, hkl)
        lam_rho = 0.5 * np.pi * s0**2 * float(design[r] @ rho_nm2)
        near = np.abs(s - s0) < window
        if not near.any():
            logger.debug("reflection %s outside the pattern: not generated", hkl)
            continue
        mean[near] += areas[r] * line_profile(s[near] - s0, lam_rho, size_nm, Re_nm,
                                              instrument.fwhm(s0)) * ds[near]
        peaks.append(SyntheticPeak(tuple(int(v) for v in hkl), s0, float(areas[r]), lam_rho))
    counts = np.random.default_rng(seed).poisson(np.maximum(mean, 0)).astype(float) \
        if noise else mean
    pattern = Pattern(s=s, intensity=counts, sigma=np.sqrt(np.maximum(counts, 1.0)),
                      source="synthetic")
    logger.debug("synthetic pattern: %d reflections, 2theta %.2f-%.2f deg", len(hkls),
                 two_theta.min(), two_theta.max())
    return pattern, peaks


def synthetic_standard(lattice: Sequence[float], hkls: Sequence[Sequence[int]], *,
                       wavelength_angstrom: float, two_theta: np.ndarray,
                       instrument: GaussianInstrument | None = None, area: float = 5.0e3,
                       background: float = 10.0, seed: int | None = 1) -> Pattern:
    """A line-profile standard (e.g. LaB6): instrument broadening only, Poisson counts."""
    n = len(hkls)
    pattern, _ = synthetic_pattern(lattice, hkls, np.zeros((n, 1)), np.zeros(1),
                                   wavelength_angstrom=wavelength_angstrom,
                                   two_theta=two_theta, size_nm=1.0e5, Re_nm=1.0,
                                   instrument=instrument, areas=np.full(n, area),
                                   background=(background, 0.0), window=0.3, seed=seed)
    return pattern


def pattern_two_theta(pattern: Pattern, wavelength_angstrom: float) -> np.ndarray:
    """2theta (deg) of the points of a pattern."""
    return two_theta_from_s(pattern.s, wavelength_angstrom)


#: Reflections of LiFePO4 more than 1.3 1/nm apart in s (2theta < 60 deg at 0.7293 A).
EXAMPLE_REFLECTIONS: tuple[tuple[int, int, int], ...] = (
    (2, 0, 0), (2, 1, 1), (1, 1, 2), (6, 1, 0), (6, 1, 2))

#: The example's true densities (1/um^2) and candidate systems.
EXAMPLE_TRUTH: dict[str, float] = {"D": 300.0, "H": 500.0}
EXAMPLE_SYSTEMS: tuple[str, ...] = ("A", "D", "H", "J")
#: 17 keV, the energy of the study's powder measurements.
EXAMPLE_WAVELENGTH_ANGSTROM = 0.7293
LAB6_ANGSTROM = 4.156826


def write_example_dataset(folder: str | Path, phase: str = "LiFePO4", *,
                          truth: dict[str, float] | None = None, seed: int = 0,
                          name: str | None = None) -> dict:
    """Write <name>.xye (sample) and lab6.xye (standard) for `phase`; return the truth.

    Peaks: areas 1e8 counts, background 10 counts, spheres of 1 um, R_e = 60 nm, Gaussian
    instrument (GaussianInstrument defaults), 2theta 4-60 deg in 0.002 deg steps.
    """
    from chemomech.mechanics.materials import LATTICE_ANGSTROM, voigt_stiffness
    from chemomech.mechanics.slip import slip_systems
    from chemomech.xrd.patterns import write_xye
    from chemomech.xrd.peaks import allowed_reflections
    from chemomech.xrd.slip import design_matrix

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    truth = dict(EXAMPLE_TRUTH if truth is None else truth)
    name = name or phase
    lattice = (*LATTICE_ANGSTROM[phase], 90.0, 90.0, 90.0)
    systems = slip_systems(EXAMPLE_SYSTEMS)
    A = design_matrix(voigt_stiffness(phase), lattice, systems, EXAMPLE_REFLECTIONS)
    rho = np.array([truth.get(s.label, 0.0) for s in systems])
    lam = EXAMPLE_WAVELENGTH_ANGSTROM
    two_theta = np.arange(4.0, 60.0, 0.002)
    pattern, _ = synthetic_pattern(lattice, EXAMPLE_REFLECTIONS, A, rho,
                                   wavelength_angstrom=lam, two_theta=two_theta,
                                   size_nm=1000.0, Re_nm=60.0,
                                   areas=np.full(len(EXAMPLE_REFLECTIONS), 1.0e8),
                                   background=(10.0, 0.0), window=0.65, seed=seed)
    write_xye(folder / f"{name}.xye", two_theta, pattern.intensity, pattern.sigma, lam)
    cubic = (LAB6_ANGSTROM,) * 3 + (90.0,) * 3
    standard = synthetic_standard(cubic, allowed_reflections(cubic, 0.75, "Pm-3m"),
                                  wavelength_angstrom=lam, two_theta=two_theta, seed=seed + 1)
    write_xye(folder / "lab6.xye", two_theta, standard.intensity, standard.sigma, lam)
    logger.info("example dataset for %s written to %s", phase, folder)
    return {"phase": phase, "densities_per_um2": truth, "systems": list(EXAMPLE_SYSTEMS),
            "reflections": [list(h) for h in EXAMPLE_REFLECTIONS]}
