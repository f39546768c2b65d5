r"""Dislocation-broadened peaks by Monte Carlo of a displacement field: test data for the
variance method that do not come from its own profile model (`chemomech.xrd.synthetic`).

Straight screw dislocations along z (Burgers vector :math:`\pm b\hat z`, nm) are placed
*restrictedly at random* (Wilkens): the plane is cut into square cells of side `cell_nm`,
each holding `per_cell` dislocations at uniform random positions, half of each sign, so the
density is :math:`\rho = n / R^2`.  Their displacement is the sum of the isotropic screw
fields :math:`u_z = \tfrac{b_i}{2\pi}\operatorname{atan2}(y - y_i, x - x_i)`.  A reflection
:math:`\mathbf g` at angle :math:`\psi` to the lines, with :math:`g_z b` = `order` (an
integer, so the branch cuts of atan2 do not show), is diffracted by columns along
:math:`\hat n = (\sin\psi, 0, \cos\psi)`; the Fourier coefficients are the column average

.. math:: A(L) = \big\langle \cos 2\pi g_z\,[u_z(x + L\sin\psi, y) - u_z(x, y)] \big\rangle ,

over random lines y in the inner part of the domain (an FFT autocorrelation of
:math:`e^{2\pi i g_z u_z}` along each line).  The profile is its direct cosine transform
:math:`P(q) = 2\int_0^{L_c} A(L)\cos 2\pi q L\,dL` (tapered to zero where A falls into its
Monte Carlo noise), convolved in q with a Gaussian instrument, integrated over detector bins and
Poisson-sampled.  No closed form of A(L) (Krivoglaz-Wilkens f*, size or instrument
coefficients) is used.  The expected value the variance method measures is
:math:`\Lambda\rho = (\pi/2) g^2 b^2 C \rho` with the isotropic screw contrast factor
:math:`C = \sin^2\psi\cos^2\psi` (from :math:`\langle(\partial_x u_z)^2\rangle =
\rho b^2 \ln(R/r_0) / 4\pi`).  Units: nm, 1/nm.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from chemomech.exceptions import InputError
from chemomech.xrd.peaks import PeakWindow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScrewEnsemble:
    """Restrictedly random screw dislocations and the reflection that sees them.

    `burgers_nm` b; `cell_nm` R and `per_cell` n (even): rho = n / R^2; `cells` per side of
    the simulated square; `psi_deg` angle of g to the lines; `order` = g_z b.
    """

    burgers_nm: float = 0.5
    cell_nm: float = 60.0
    per_cell: int = 4
    cells: int = 12
    psi_deg: float = 45.0
    order: int = 1

    def __post_init__(self) -> None:
        if self.per_cell < 2 or self.per_cell % 2 or self.cells < 5 or self.order < 1 \
                or not 0 < self.psi_deg < 90 or not self.burgers_nm > 0:
            raise InputError(f"invalid dislocation ensemble {self!r}", field="ensemble")

    @property
    def density_per_nm2(self) -> float:
        """rho = n / R^2 (1/nm^2)."""
        return self.per_cell / self.cell_nm**2

    @property
    def contrast(self) -> float:
        """Isotropic screw contrast factor C = sin^2 psi cos^2 psi."""
        psi = np.radians(self.psi_deg)
        return float((np.sin(psi) * np.cos(psi)) ** 2)

    @property
    def g_per_nm(self) -> float:
        """|g| = (order / b) / cos psi (1/nm)."""
        return self.order / self.burgers_nm / np.cos(np.radians(self.psi_deg))

    @property
    def lambda_rho(self) -> float:
        """Expected Lambda rho = (pi/2) g^2 b^2 C rho (1/nm^2)."""
        return 0.5 * np.pi * self.g_per_nm**2 * self.burgers_nm**2 * self.contrast \
            * self.density_per_nm2

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Positions (n, 2) nm and signed Burgers vectors (n,) nm of one realisation."""
        i, j = np.meshgrid(np.arange(self.cells), np.arange(self.cells), indexing="ij")
        corners = np.repeat(np.c_[i.ravel(), j.ravel()] * self.cell_nm, self.per_cell, axis=0)
        positions = corners + rng.uniform(0.0, self.cell_nm, corners.shape)
        signs = np.tile(np.repeat([1.0, -1.0], self.per_cell // 2), self.cells**2)
        return positions, signs * self.burgers_nm


def fourier_coefficients_mc(ensemble: ScrewEnsemble, L_max: float, dL: float,
                            realisations: int = 4, lines: int = 48, seed: int = 0
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(L, A(L), standard error of A) on L = 0, dL, ... <= L_max by the column average."""
    rng = np.random.default_rng(seed)
    side = ensemble.cells * ensemble.cell_nm
    margin = 2.0 * ensemble.cell_nm
    s = np.sin(np.radians(ensemble.psi_deg))
    n_L = int(L_max / dL) + 1
    length = (side - 2 * margin) / s  # column length inside the inner square
    n_x = int(length / dL)
    if n_x < 2 * n_L:
        raise InputError(f"the simulated square ({side:.0f} nm) is too small for L_max = "
                         f"{L_max} nm", field="cells")
    g_z = ensemble.order / ensemble.burgers_nm
    per_line = []
    for _ in range(realisations):
        positions, burgers = ensemble.draw(rng)
        for y in rng.uniform(margin, side - margin, lines):
            x = margin + s * dL * np.arange(n_x)
            dx = x[:, None] - positions[None, :, 0]
            dy = y - positions[None, :, 1]
            u = np.arctan2(dy, dx) @ burgers / (2.0 * np.pi)
            z = np.exp(2j * np.pi * g_z * u)
            F = np.fft.fft(z, 2 * n_x)
            corr = np.fft.ifft(F * np.conj(F))[:n_L]  # sum_x z(x + L) conj z(x)
            per_line.append(corr.real / (n_x - np.arange(n_L)))
    per_line = np.array(per_line)
    A = per_line.mean(axis=0)
    se = per_line.std(axis=0, ddof=1) / np.sqrt(len(per_line))
    return dL * np.arange(n_L), A, se


def monte_carlo_peak(ensemble: ScrewEnsemble, *, instrument_fwhm: float, window: float = 0.6,
                     bins: int = 601, counts: float = 1e8, background_per_bin: float = 0.0,
                     L_max: float = 200.0, dL: float = 0.1, realisations: int = 4,
                     lines: int = 48, seed: int = 0, centre: float = 3.0,
                     hkl: tuple[int, int, int] = (1, 1, 1)) -> tuple[PeakWindow, dict]:
    """A Poisson-sampled, binned, background-subtracted peak (`PeakWindow`) of the ensemble
    and a dict of the truth (lambda_rho, density, contrast, g, the cut-off length)."""
    rng = np.random.default_rng([seed, 1])
    L, A, se = fourier_coefficients_mc(ensemble, L_max, dL, realisations, lines, seed)
    below = np.flatnonzero(A < 3.0 * np.maximum(se, 1e-12))
    cut = int(below[0]) if below.size else L.size  # A lost in its noise beyond here
    L, A = L[:cut], A[:cut].copy()
    taper = L > 0.5 * L[-1]  # Hann taper to zero over the last half: no truncation ringing
    A[taper] *= 0.5 * (1.0 + np.cos(np.pi * (L[taper] / L[-1] - 0.5) / 0.5))
    # direct cosine transform on a fine q grid (trapezoid in L)
    sub = 8
    edges = np.linspace(-window, window, bins + 1)
    width = edges[1] - edges[0]
    pad = 5.0 * instrument_fwhm
    step = width / sub
    n_pad = int(np.ceil(pad / step))
    fine = edges[0] + (np.arange(-n_pad, bins * sub + n_pad) + 0.5) * step  # sub-bin midpoints
    w = np.full(L.size, dL)
    w[0] = w[-1] = 0.5 * dL
    P = 2.0 * np.cos(2.0 * np.pi * np.outer(fine, L)) @ (w * A)
    # Gaussian instrument, convolved in q
    sigma = instrument_fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    k = np.arange(-int(5 * sigma / step) - 1, int(5 * sigma / step) + 2) * step
    kernel = np.exp(-0.5 * (k / sigma) ** 2)
    P = np.convolve(P, kernel / kernel.sum(), mode="same")
    # detector: integrate over each bin (midpoint sub-samples), Poisson counts
    centres = 0.5 * (edges[1:] + edges[:-1])
    per_bin = P[n_pad: n_pad + bins * sub].reshape(bins, sub).mean(axis=1) * width
    expected = counts * per_bin / per_bin.sum() + background_per_bin
    observed = rng.poisson(np.maximum(expected, 0.0)).astype(float) - background_per_bin
    intensity = observed / width
    sigma_i = np.sqrt(np.maximum(expected, 1.0)) / width
    peak = PeakWindow(hkl=hkl, s_expected=centre, centre=centre, q=centres,
                      intensity=intensity, sigma=sigma_i, area=float(observed.sum()),
                      background=(0.0, 0.0))
    truth = {"lambda_rho": ensemble.lambda_rho, "density_per_nm2": ensemble.density_per_nm2,
             "contrast": ensemble.contrast, "g_per_nm": ensemble.g_per_nm,
             "cutoff_nm": float(L[-1])}
    logger.info("Monte Carlo peak: Lambda rho = %.4g 1/nm^2, A(L) cut at %.1f nm",
                ensemble.lambda_rho, truth["cutoff_nm"])
    return peak, truth
