"""NNLS over slip systems, subset ranking, peak windows and overlap detection."""

from __future__ import annotations

import numpy as np
import pytest

from chemomech.exceptions import InputError
from chemomech.mechanics.materials import LATTICE_ANGSTROM, voigt_stiffness
from chemomech.xrd import design_matrix, slip_systems
from chemomech.xrd.fit import (
    best_combinations,
    effective_density,
    fit_densities,
    reduced_broadening,
)
from chemomech.xrd.peaks import extract_peaks, find_overlaps, find_peak_positions
from chemomech.xrd.synthetic import EXAMPLE_REFLECTIONS, synthetic_pattern

LFP = (*LATTICE_ANGSTROM["LiFePO4"], 90.0, 90.0, 90.0)
HKLS = [(2, 0, 0), (1, 0, 1), (2, 1, 0), (0, 1, 1), (1, 1, 1), (2, 0, 1), (2, 1, 1),
        (0, 2, 0), (3, 0, 1), (3, 1, 1), (1, 2, 1), (4, 1, 0)]


def _design(labels):
    return design_matrix(voigt_stiffness("LiFePO4"), LFP, slip_systems(labels), HKLS)


def test_nnls_recovers_exact_densities_and_zero_elsewhere():
    """y = A rho exactly: NNLS returns rho (1/um^2), 100 % explained, tight bootstrap."""
    labels = ["A", "D", "G", "H", "M"]
    A = _design(labels)
    rho = np.array([0.0, 300.0, 0.0, 500.0, 0.0])
    y = A @ rho / 1e6
    fit = fit_densities(A, y, 0.01 * y, labels, n_bootstrap=200)
    assert fit.densities == pytest.approx(rho, abs=1e-6)
    assert fit.data_explained == pytest.approx(1.0)
    assert fit.rank == 5 and fit.total == pytest.approx(800.0)
    assert np.all(fit.sigma < 0.1 * 500) and np.all(fit.sigma[[1, 3]] > 0)
    assert fit.ci95[1, 0] < 300.0 < fit.ci95[1, 1]


def test_noisy_broadening_gives_honest_uncertainty():
    """With 3 % noise the truth lies within 3 bootstrap sigma; wrong systems stay small."""
    labels = ["A", "D", "G", "H", "M"]
    A = _design(labels)
    rho = np.array([0.0, 300.0, 0.0, 500.0, 0.0])
    y0 = A @ rho / 1e6
    y = y0 * (1 + 0.03 * np.random.default_rng(3).standard_normal(y0.size))
    fit = fit_densities(A, y, 0.03 * y0, labels, n_bootstrap=300, seed=1)
    assert np.all(np.abs(fit.densities - rho) < 3 * fit.sigma + 1.0)
    assert fit.densities[[0, 2, 4]].sum() < 0.15 * fit.total


def test_best_combinations_rank_the_true_pair_first():
    labels = ["A", "D", "G", "H", "I", "J", "M"]
    A = _design(labels)
    y = A @ np.array([0, 250.0, 0, 0, 0, 400.0, 0]) / 1e6
    best = best_combinations(A, y, 0.01 * y, labels, max_systems=2, top=3)
    assert best[0]["systems"] == ["D", "J"]
    assert best[0]["densities_per_um2"] == pytest.approx([250.0, 400.0], rel=1e-6)
    assert best[0]["data_explained"] > best[1]["data_explained"]


def test_too_few_reflections_is_a_clear_error():
    labels = ["A", "B", "C", "D", "E"]
    A = _design(labels)[:4]
    with pytest.raises(InputError, match="4 reflections cannot determine 5"):
        fit_densities(A, np.ones(4), np.ones(4), labels)


def test_reduced_and_effective_density_units():
    """y = Lambda rho / ((pi/2) g^2); rho* = y / b_ref^2 in 1/um^2."""
    y = reduced_broadening(np.array([0.5 * np.pi * 4.0 * 1e-4]), np.array([2.0]))
    assert y == pytest.approx([1e-4])
    assert effective_density(y, 0.5) == pytest.approx([400.0])


def test_overlapping_reflections_are_detected_from_the_lattice():
    """LiFePO4 (211) and (020) are 0.002 1/nm apart: an InputError naming both."""
    overlaps = find_overlaps(LFP, [(2, 1, 1)], 0.05, "Pnma")
    assert "020" in overlaps["211"]
    pattern, _ = synthetic_pattern(LFP, [(2, 1, 1), (0, 2, 0)], np.zeros((2, 1)), np.zeros(1),
                                   wavelength_angstrom=0.7293,
                                   two_theta=np.arange(10.0, 20.0, 0.002), noise=False)
    with pytest.raises(InputError, match=r"overlapping peak 211.*020"):
        extract_peaks(pattern, LFP, [(2, 1, 1)], window=0.05, space_group="Pnma")


def test_overlap_seen_in_the_data_and_skip_mode():
    """A second maximum in the window (a line not in the model) is an overlap too."""
    tt = np.arange(6.0, 30.0, 0.002)
    hkls = [(2, 0, 0), (1, 0, 1)]
    # A foreign line 0.12 1/nm above (101): generate (101) twice, once shifted by the lattice.
    shifted = (LFP[0], LFP[1], LFP[2] * 0.95, 90.0, 90.0, 90.0)
    p1, _ = synthetic_pattern(LFP, hkls, np.zeros((2, 1)), np.zeros(1), noise=False,
                              wavelength_angstrom=0.7293, two_theta=tt)
    p2, _ = synthetic_pattern(shifted, [(1, 0, 1)], np.zeros((1, 1)), np.zeros(1),
                              noise=False, wavelength_angstrom=0.7293, two_theta=tt,
                              background=(0.0, 0.0))
    p1.intensity[:] += p2.intensity
    with pytest.raises(InputError, match="101.*maxima"):
        extract_peaks(p1, LFP, hkls, window=0.15)
    kept = extract_peaks(p1, LFP, hkls, window=0.15, on_overlap="skip")
    assert [p.hkl for p in kept.peaks] == [(2, 0, 0)] and "101" in kept.overlaps
    assert kept.peaks[0].centre == pytest.approx(kept.peaks[0].s_expected, abs=1e-4)
    found = find_peak_positions(p1)
    assert len(found) == 3 and found[0] == pytest.approx(kept.peaks[0].s_expected, abs=1e-3)


def test_example_reflections_are_isolated_at_the_example_window():
    assert find_overlaps(LFP, list(EXAMPLE_REFLECTIONS), 0.6, None) == {}
