"""Frames: tensor rotation, theta sign, handedness, and the compatibility frame check."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from chemomech.correlative.frames import (
    angle_distance_mod_pi,
    curl_field,
    frame_check,
    frame_matrix,
    gradient_crystal,
    gradient_image,
    rotate_tensor_field,
    rotation_matrix,
    strain_crystal_from_image,
    strain_image,
)
from chemomech.io.stack import ParticleData


def test_uniaxial_strain_along_a_rotates_to_a_a_transpose():
    phi, eps = 0.4, -0.05
    H = gradient_crystal(np.array(eps), np.array(0.0), np.array(0.0), np.array(0.0))
    a = np.array([math.cos(phi), math.sin(phi)])  # crystal a in image coordinates
    np.testing.assert_allclose(rotate_tensor_field(H, phi), eps * np.outer(a, a), atol=1e-15)
    np.testing.assert_allclose(frame_matrix(phi), rotation_matrix(phi))


def test_theta_sign_and_small_rotation():
    """theta is the rigid rotation angle: u = theta (-y, x) has H = [[0, -t], [t, 0]] for s = -1."""
    t = 1e-3
    zero = np.array(0.0)
    H_plus = gradient_crystal(zero, zero, zero, np.array(t), theta_sign=1)
    H_minus = gradient_crystal(zero, zero, zero, np.array(t), theta_sign=-1)
    np.testing.assert_allclose(H_plus, [[0, t], [-t, 0]])
    np.testing.assert_allclose(H_minus, [[0, -t], [t, 0]])
    # a rotation tensor is frame-invariant: any rotation leaves it alone
    np.testing.assert_allclose(rotate_tensor_field(H_plus, 1.1), H_plus, atol=1e-16)
    # a mirrored frame flips its sense
    np.testing.assert_allclose(rotate_tensor_field(H_plus, 1.1, mirror=True), H_minus,
                               atol=1e-16)


def test_mirror_negates_shear_and_theta():
    rng = np.random.default_rng(3)
    e = rng.normal(size=(4, 5, 4)) * 1e-2
    phi = -0.8
    H_m = rotate_tensor_field(gradient_crystal(*e.T, theta_sign=1), phi, mirror=True)
    H_f = rotate_tensor_field(gradient_crystal(e.T[0], e.T[1], -e.T[2], -e.T[3]), phi)
    np.testing.assert_allclose(H_m, H_f, atol=1e-16)


def test_strain_round_trip_crystal_image():
    rng = np.random.default_rng(4)
    e_aa, e_cc, e_ac = rng.normal(size=(3, 6, 7)) * 1e-2
    phi = 2.3
    E_img = rotate_tensor_field(gradient_crystal(e_aa, e_cc, e_ac, np.zeros_like(e_aa)), phi)
    back = strain_crystal_from_image(E_img[..., 0, 0], E_img[..., 1, 1], E_img[..., 0, 1], phi)
    np.testing.assert_allclose(back["e_aa"], e_aa, atol=1e-15)
    np.testing.assert_allclose(back["e_cc"], e_cc, atol=1e-15)
    np.testing.assert_allclose(back["e_ac"], e_ac, atol=1e-15)
    # trace and determinant are invariant
    np.testing.assert_allclose(np.trace(E_img, axis1=-2, axis2=-1), e_aa + e_cc, atol=1e-15)


def synthetic_particle(rotation: float, theta_sign: int, n: int = 48, stated_rotation=None,
                       stated_sign=None, mirror=False) -> ParticleData:
    """Crystal-frame maps of a compatible field u, with a possibly wrong stated frame."""
    h = 10.0
    i, j = np.meshgrid(np.arange(n), np.arange(3 * n // 4), indexing="ij")
    x, y = i * h / (n * h), j * h / (n * h)
    mask = np.hypot(x - 0.5, y - 0.37) < 0.36
    k = 2 * np.pi
    # a true gradient (in units of the particle size): u_x = F(x + 0.3 y) + G(y),
    # u_y = -0.012/k cos(k(x + y)) + 0.01/k sin(k x)
    H = np.empty(mask.shape + (2, 2))
    ux_x = -0.03 * np.tanh((x - 0.5 + 0.3 * y) / 0.08)
    H[..., 0, 0] = ux_x
    H[..., 0, 1] = 0.3 * ux_x + 0.02 * np.sin(k * y)
    H[..., 1, 0] = 0.012 * np.sin(k * (x + y)) + 0.01 * np.cos(k * x)
    H[..., 1, 1] = 0.012 * np.sin(k * (x + y))
    Q = frame_matrix(rotation, mirror)
    Hc = np.einsum("pi,...pq,qj->...ij", Q, H, Q)
    e_ac = 0.5 * (Hc[..., 0, 1] + Hc[..., 1, 0])
    theta = 0.5 * (Hc[..., 0, 1] - Hc[..., 1, 0]) / theta_sign
    return ParticleData("syn", np.full(mask.shape, 0.5), Hc[..., 0, 0], Hc[..., 1, 1], e_ac,
                        theta, mask, h,
                        rotation_rad=rotation if stated_rotation is None else stated_rotation,
                        theta_sign=theta_sign if stated_sign is None else stated_sign)


def test_synthetic_field_is_compatible_in_its_own_frame_only():
    p = synthetic_particle(0.7, 1)
    curl = curl_field(gradient_image(p), p.pixel_size_nm)
    wrong = curl_field(gradient_image(p, theta_sign=-1), p.pixel_size_nm)
    inner = np.zeros_like(p.mask)
    inner[2:-2, 2:-2] = p.mask[2:-2, 2:-2]
    assert np.sqrt(np.mean(curl[inner] ** 2)) < 0.1 * np.sqrt(np.mean(wrong[inner] ** 2))


def test_frame_check_finds_true_frame_warns_and_adopts(caplog):
    truth = 0.7
    p = synthetic_particle(truth, 1, stated_rotation=-0.7, stated_sign=-1)
    with caplog.at_level(logging.WARNING, logger="chemomech.correlative.frames"):
        result = frame_check(p, step_deg=1.0, adopt=True)
    best = result.best
    assert angle_distance_mod_pi(best.rotation_rad, truth) < math.radians(1.0)
    assert best.theta_sign == 1 and not best.mirror
    assert result.stated.curl_rms_per_nm > 3 * best.curl_rms_per_nm
    assert "not the most compatible" in caplog.text
    assert result.adopted and result.particle.theta_sign == 1
    assert result.particle.rotation_rad == pytest.approx(best.rotation_rad)
    assert "frame check adopted" in result.particle.source
    # checking the adopted particle again: no warning, same frame
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="chemomech.correlative.frames"):
        again = frame_check(result.particle, step_deg=1.0)
    assert again.stated_is_best() and not again.adopted
    assert "not the most compatible" not in caplog.text


def test_frame_check_detects_a_mirrored_frame_and_folds_it_into_the_maps():
    p = synthetic_particle(-0.4, 1, mirror=True)
    result = frame_check(p, step_deg=1.0, adopt=True)
    assert result.best.mirror and result.best.theta_sign == 1
    assert angle_distance_mod_pi(result.best.rotation_rad, -0.4) < math.radians(1.0)
    adopted = result.particle
    np.testing.assert_allclose(adopted.e_xy, -p.e_xy)
    # the adopted particle's (non-mirrored) image gradient is the compatible one
    H_true = gradient_image(p, mirror=True)
    np.testing.assert_allclose(gradient_image(adopted, rotation_rad=-0.4), H_true, atol=1e-15)


def test_strain_image_of_image_frame_data_is_unrotated():
    p = synthetic_particle(0.7, 1)
    q = p.with_frame(0.7, 1)
    q.strain_frame = "image"
    np.testing.assert_allclose(strain_image(q)["e_xx"], p.e_xx)


def test_frame_check_on_real_particle(real_particle_path):
    """LFP50_P2: DESIGN §3 says rotation -1.7104 (mod pi), theta_sign +1, not mirrored."""
    from chemomech.io.readers import read_reference_mat

    p = read_reference_mat(real_particle_path, rotation="file")
    assert p.rotation_rad == pytest.approx(1.7104, abs=1e-4)
    result = frame_check(p)
    best = result.best
    assert best.theta_sign == 1 and not best.mirror
    assert angle_distance_mod_pi(best.rotation_rad, -1.7104) < math.radians(2.0)
    assert not result.stated_is_best()  # the file's own rot is for MATLAB's x = column
    # every other sign/handedness is clearly worse than the best frame
    others = [c for c in result.table if (c.theta_sign, c.mirror) != (1, False)]
    assert min(c.curl_rms_per_nm for c in others) > 1.05 * best.curl_rms_per_nm
    # the reader's documented frame (-rot, +1) is accepted by the check: nothing to adopt
    documented = frame_check(read_reference_mat(real_particle_path), adopt=True)
    assert documented.stated_is_best() and not documented.adopted
    assert documented.particle.rotation_rad == pytest.approx(-1.7104, abs=1e-4)


def test_image_frame_data_keep_their_crystal_orientation_when_adopting():
    """Compatibility cannot see the crystal orientation of image-frame strain: keep it."""
    p = synthetic_particle(0.0, 1)  # crystal frame = image frame
    q = p.with_frame(1.2, -1)  # image-frame data, crystal at 1.2 rad, wrong theta sign
    q.strain_frame = "image"
    result = frame_check(q, step_deg=1.0, adopt=True)
    assert result.adopted
    adopted = result.particle
    assert adopted.strain_frame == "image" and adopted.rotation_rad == 1.2
    assert adopted.theta_sign == 1
    np.testing.assert_allclose(gradient_image(adopted), gradient_image(p), atol=1e-15)
