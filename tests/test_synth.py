"""Synthetic twins: known truth, noise statistics, compatibility, determinism, stack round trip."""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

import numpy as np
import pytest
from mpi4py import MPI
from scipy import ndimage

from chemomech.correlative.frames import (
    curl_field,
    frame_check,
    gradient_image,
    interior_pixels,
    smooth_masked,
)
from chemomech.io.stack import read_stack, write_stack
from chemomech.mechanics import legendre
from chemomech.mechanics.materials import vegard_misfit
from chemomech.synth import (
    INTERFACE_101_RAD,
    SLIP_D_BURGERS_NM,
    ParticleSpec,
    add_arguments,
    composition_field,
    default_specs,
    group_of,
    platelet_mask,
    run_synth,
    simulate_particle,
    slip_field,
    vegard_coefficients,
)

STRAINS = ("e_xx", "e_yy", "e_xy", "theta")

#: A small two-phase platelet: 1.2 x 0.6 um at 20 nm pixels (~2000 pixels, ~1 s).
SMALL = dict(length_nm=1200.0, width_nm=600.0, pixel_size_nm=20.0)


def clean_copy(particle):
    """The particle with its stored strain replaced by the clean strain of the truth."""
    return replace(particle, **{k: particle.truth[k] for k in STRAINS})


def rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.nanmean(values**2)))


def two_phase_spec(seed: int = 11) -> ParticleSpec:
    """A phase-separated particle with two voids and the default noise."""
    return ParticleSpec("two_phase", 0.45, rotation_rad=0.7, n_voids=2,
                        void_radius_nm=(40.0, 60.0), seed=seed, **SMALL)


@pytest.fixture(scope="module")
def two_phase():
    """The twin of two_phase_spec()."""
    return simulate_particle(two_phase_spec())


# --------------------------------------------------------------------------- no FEM


def test_vegard_coefficients_are_the_lattice_misfit():
    a, c = vegard_coefficients()
    misfit = vegard_misfit()
    assert misfit["a"] == pytest.approx(-0.0495, abs=2e-4)
    assert misfit["c"] == pytest.approx(0.0205, abs=2e-4)
    X = np.linspace(0, 1, 11)
    assert np.allclose(legendre.evaluate(a, X), misfit["a"] * (1 - X), atol=1e-15)
    assert np.allclose(legendre.evaluate(c, X), misfit["c"] * (1 - X), atol=1e-15)
    a2, c2 = vegard_coefficients(0.003, -0.002)
    P2 = 1.5 * (2 * X - 1) ** 2 - 0.5
    assert np.allclose(legendre.evaluate(a2, X) - legendre.evaluate(a, X), 0.003 * P2)
    assert np.allclose(legendre.evaluate(c2, X) - legendre.evaluate(c, X), -0.002 * P2)


def test_platelet_area_and_voids():
    """Pixel area of the superellipse matches 4AB Gamma(1+1/p)^2 / Gamma(1+2/p); voids are holes."""
    p = 1.7
    spec = ParticleSpec("shape", 0.05, rotation_rad=0.3, outline_exponent=p, **SMALL)
    mask, centre = platelet_mask(spec)
    A, B, h = 600.0, 300.0, 20.0
    area = 4 * A * B * math.gamma(1 + 1 / p) ** 2 / math.gamma(1 + 2 / p)
    assert mask.sum() * h**2 == pytest.approx(area, rel=0.02)
    assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    holed, _ = platelet_mask(replace(spec, n_voids=3, void_radius_nm=(40.0, 50.0)),
                             np.random.default_rng(5))
    _, n_background = ndimage.label(~holed, structure=np.ones((3, 3)))
    assert n_background == 1 + 3  # the outside and three separate holes
    assert ndimage.label(holed)[1] == 1


def test_composition_mean_and_tanh_interface():
    spec = ParticleSpec("phases", 0.37, rotation_rad=-0.4, interface_width_nm=120.0, **SMALL)
    mask, _ = platelet_mask(spec)
    X = composition_field(mask, spec)
    assert X[mask].mean() == pytest.approx(0.37, abs=1e-9)
    # profile along the interface normal: X(s) = x_p + (x_r - x_p) (1 + tanh(2 s / w)) / 2
    from chemomech.synth import interface_distance

    s = interface_distance(mask, spec)
    jump = spec.x_rich - spec.x_poor
    expected = spec.x_poor + jump * 0.5 * (1 + np.tanh(2 * s / 120.0))
    assert np.allclose(X, expected)
    near_half = np.abs(s - 60.0) < 3.0  # s = w / 2: 88 % of the jump
    assert np.allclose((X[near_half] - spec.x_poor) / jump, 0.5 * (1 + math.tanh(1.0)),
                       atol=0.02)
    uniform = ParticleSpec("fp", 0.05, **SMALL)
    X_fp = composition_field(*platelet_mask(uniform)[:1], uniform)
    assert np.all(X_fp == 0.05)


def test_default_specs_span_the_three_groups_deterministically():
    specs = default_specs(seed=0)
    means = np.array([s.mean_X for s in specs])
    assert len(specs) == 10 and means.min() < 0.05 and means.max() > 0.95
    groups = [group_of(m) for m in means]
    assert {"FP", "LxFP", "LFP"} == set(groups)
    assert groups.count("LxFP") >= 4
    assert all(0 <= s.n_voids <= 3 for s in specs)
    assert default_specs(seed=0) == specs
    other = default_specs(seed=1)
    assert [s.rotation_rad for s in other] != [s.rotation_rad for s in specs]
    for s in specs:  # interface normal within 0.25 rad of the (101) normal (mod pi)
        d = (s.interface_normal_rad - INTERFACE_101_RAD) % math.pi
        assert min(d, math.pi - d) <= 0.25 + 1e-12


def test_gnd_density_is_the_slip_gradient_along_b():
    spec = ParticleSpec("slip", 0.5, rotation_rad=0.9, slip_amplitude=0.01, slip_width_nm=80,
                        **SMALL)
    mask, _ = platelet_mask(spec)
    gamma, rho = slip_field(mask, spec)
    assert gamma.max() == pytest.approx(0.01, rel=0.05)
    gx, gy = np.gradient(gamma, spec.pixel_size_nm)
    s_hat = np.array([-math.sin(0.9), math.cos(0.9)])  # crystal c in the image frame
    rho_fd = np.abs(gx * s_hat[0] + gy * s_hat[1]) / SLIP_D_BURGERS_NM * 1e6  # um^-2
    assert np.allclose(rho[mask], rho_fd[mask], atol=0.02 * rho.max())
    no_slip, zero = slip_field(mask, replace(spec, mean_X=0.05))
    assert not no_slip.any() and not zero.any()


# --------------------------------------------------------------------------- forward model


def test_single_phase_strain_equals_eigenstrain():
    """Uniform X: the eigenstrain is compatible, no coherency stress, eps(u) = eps*(X)."""
    spec = ParticleSpec("fp", 0.06, rotation_rad=1.1, noise_strain=0.0, n_voids=1,
                        void_radius_nm=(40.0, 50.0), seed=3, **SMALL)
    p = simulate_particle(spec)
    t = p.truth
    f_a = legendre.evaluate(t["coefficients_a"], 0.06)
    f_c = legendre.evaluate(t["coefficients_c"], 0.06)
    m = p.mask
    assert np.allclose(t["e_xx"][m], f_a, atol=1e-10, rtol=0)
    assert np.allclose(t["e_yy"][m], f_c, atol=1e-10, rtol=0)
    assert np.allclose(t["e_xy"][m], 0.0, atol=1e-10)
    assert np.ptp(t["theta"][m]) < 1e-10  # at most a rigid rotation
    for k in STRAINS:  # noise_strain = 0: stored = truth
        assert np.array_equal(getattr(p, k), t[k], equal_nan=True)


def test_noise_statistics_match_the_requested_levels():
    spec = ParticleSpec("noisy", 0.5, x_poor=0.3, x_rich=0.7, noise_strain=2e-3,
                        noise_composition=0.04, seed=5, **SMALL)
    p = simulate_particle(spec)
    n = int(p.mask.sum())
    tolerance = 4 / math.sqrt(2 * n)  # 4 sigma of a sample std
    noise = {k: (getattr(p, k) - p.truth[k])[p.mask] for k in STRAINS}
    for k, values in noise.items():
        assert np.std(values) == pytest.approx(2e-3, rel=tolerance), k
        assert abs(values.mean()) < 4 * 2e-3 / math.sqrt(n)
    assert abs(np.corrcoef(noise["e_xx"], noise["theta"])[0, 1]) < 4 / math.sqrt(n)
    dX = (p.X - p.truth["X"])[p.mask]  # phases 0.3 / 0.7: no clipping at 0.04
    assert np.std(dX) == pytest.approx(0.04, rel=tolerance)
    assert np.all(np.isnan(p.X[~p.mask])) and np.all(np.isnan(p.e_xx[~p.mask]))


def test_noisy_composition_is_clipped(two_phase):
    X = two_phase.X[two_phase.mask]
    assert X.min() == 0.0 and X.max() <= 1.0  # Li-poor phase 0.03 +- 0.05 hits 0
    assert np.all(two_phase.truth["X"][two_phase.mask] > 0.02)


def test_same_seed_same_particle(two_phase):
    again = simulate_particle(two_phase_spec())
    assert np.array_equal(again.mask, two_phase.mask)
    assert np.array_equal(again.X, two_phase.X, equal_nan=True)  # bitwise: no solver involved
    assert np.array_equal(again.truth["X"], two_phase.truth["X"], equal_nan=True)
    # solved fields: reproducible to the roundoff of the sparse direct solver
    for k in (*STRAINS, "u_x", "u_y"):
        assert np.allclose(again.truth[k], two_phase.truth[k], rtol=0, atol=1e-11,
                           equal_nan=True), k
    for k in STRAINS:
        assert np.allclose(getattr(again, k), getattr(two_phase, k), rtol=0, atol=1e-11,
                           equal_nan=True), k
    assert np.array_equal(platelet_mask(two_phase_spec())[0], two_phase.mask)
    other_mask, _ = platelet_mask(two_phase_spec(seed=12))
    assert not np.array_equal(other_mask, two_phase.mask)


def relative_curl(particle, theta_sign: int = 1, sigma_px: float = 1.0) -> float:
    """RMS curl of H_img over RMS of its two cancelling terms, interior pixels, after smoothing."""
    smooth = replace(particle, **{k: smooth_masked(getattr(particle, k), particle.mask,
                                                   sigma_px) for k in STRAINS})
    H = gradient_image(smooth, theta_sign=theta_sign)
    h = particle.pixel_size_nm
    inner = interior_pixels(particle.mask, 3)
    terms = np.stack([np.gradient(H, h, axis=0)[..., :, 1][inner],
                      np.gradient(H, h, axis=1)[..., :, 0][inner]])
    return rms(curl_field(H, h)[inner]) / rms(terms)


def test_clean_strain_is_compatible_noisy_is_not(two_phase):
    """curl H = 0 for eps(u) + theta of a displacement (up to discretisation), not for noise.

    Smoothed by 1 px as in the frame check: the pointwise gradient of a P1 (P2) displacement
    jumps between cells, so its finite-difference curl is O(1) (O(h)) at pixel scale.
    """
    spec = ParticleSpec("compatible", 0.5, rotation_rad=0.4, fe_degree=2, seed=1, **SMALL)
    p2 = simulate_particle(spec)
    clean = relative_curl(clean_copy(p2))
    assert clean < 0.05
    assert relative_curl(p2) > 5 * clean  # noise 1e-3 breaks compatibility
    assert relative_curl(clean_copy(p2), theta_sign=-1) > 20 * clean  # so does the wrong sign
    assert relative_curl(clean_copy(two_phase)) < 0.5 * relative_curl(two_phase)  # P1, voids
    assert frame_check(clean_copy(p2), step_deg=1.0).stated_is_best()
    assert frame_check(two_phase, step_deg=1.0).stated_is_best()  # also from noisy P1 data


def test_strain_is_stored_in_the_crystal_frame(two_phase):
    """Far from the interface, e_aa ~ f_a(X) and e_cc ~ f_c(X) (plus coherency strain)."""
    t = two_phase.truth
    assert two_phase.strain_frame == "crystal" and two_phase.theta_sign == 1
    poor = two_phase.mask & (t["X"] < 0.05)
    rich = two_phase.mask & (t["X"] > 0.95)
    jump_a = np.median(t["e_xx"][rich]) - np.median(t["e_xx"][poor])
    jump_c = np.median(t["e_yy"][rich]) - np.median(t["e_yy"][poor])
    misfit = vegard_misfit()
    assert jump_a == pytest.approx(-misfit["a"] * 0.94, rel=0.35)
    assert jump_c == pytest.approx(-misfit["c"] * 0.94, rel=0.5)
    assert np.sign(jump_a) == 1 and np.sign(jump_c) == -1


def test_truth_round_trips_through_the_stack(two_phase, tmp_path):
    slip = simulate_particle(ParticleSpec("slip", 0.5, rotation_rad=-0.3, slip_amplitude=0.01,
                                          seed=2, **SMALL))
    path = write_stack(tmp_path / "twins.h5", [two_phase, slip])
    read = {p.name: p for p in read_stack(path)}
    for original in (two_phase, slip):
        back = read[original.name]
        for k in ("X", *STRAINS):
            assert np.array_equal(getattr(back, k), getattr(original, k), equal_nan=True)
        assert np.array_equal(back.mask, original.mask)
        assert back.rotation_rad == original.rotation_rad and back.theta_sign == 1
        for k, v in original.truth.items():
            if isinstance(v, np.ndarray):
                assert np.array_equal(back.truth[k], v, equal_nan=True), k
            elif isinstance(v, dict):
                assert back.truth[k].keys() == v.keys()
            else:
                assert back.truth[k] == v, k
        assert back.truth["spec"]["seed"] == original.truth["seed"]
    assert "gamma" not in read["two_phase"].truth
    gnd = read["slip"].truth["gnd_density_um2"][read["slip"].mask]
    assert gnd.max() > 50.0  # um^-2 near the phase boundary
    # slip changes the measured lattice distortion (mostly its rotation: slip relaxes by bending
    # the lattice) by a fraction of gamma_0 near the boundary
    no_slip = simulate_particle(ParticleSpec("slip", 0.5, rotation_rad=-0.3, seed=2, **SMALL))
    delta = max(np.abs(slip.truth[k] - no_slip.truth[k])[slip.mask].max()
                for k in ("e_xy", "theta"))
    assert 1e-3 < delta < 0.02


@pytest.mark.mpi
def test_cli_writes_a_readable_dataset(tmp_path):
    """`chemomech synth` on all ranks (round robin, COMM_SELF solves): a valid file, 3 groups."""
    comm = MPI.COMM_WORLD
    folder = comm.bcast(str(tmp_path), root=0)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--output", f"{folder}/synth.h5", "--particles", "3",
                              "--seed", "4", "--length", "900", "--width", "450",
                              "--pixel-size", "25", "--slip", "--mesh-size", "1.2"])
    assert run_synth(args) == 0
    particles = read_stack(f"{folder}/synth.h5")
    assert [group_of(p.truth["mean_X"]) for p in particles] == ["FP", "LxFP", "LFP"]
    assert [p.truth["seed"] for p in particles] == [s.seed for s in default_specs(4, 3)]
    assert "gamma" in particles[1].truth and "gamma" not in particles[0].truth
    assert all(p.truth["spec"]["mesh_size_px"] == 1.2 for p in particles)
    if comm.rank == 0:  # particle 1 (solved by rank 1 on 2 ranks) re-solved here serially
        spec = default_specs(4, 3, length_nm=900, width_nm=450, pixel_size_nm=25,
                             mesh_size_px=1.2, slip_amplitude=0.01)[1]
        again = simulate_particle(spec)
        stored = next(p for p in particles if p.name == spec.name)
        assert np.array_equal(again.X, stored.X, equal_nan=True)
        assert np.allclose(again.e_xx, stored.e_xx, rtol=0, atol=1e-11, equal_nan=True)
    comm.barrier()
