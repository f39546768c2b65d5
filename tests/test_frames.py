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
from chemomech.exceptions import InputError
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


def tied_particle(values: dict[str, np.ndarray], rotation: float, theta_sign: int,
                  ) -> ParticleData:
    """A crystal-frame particle on an elliptical mask with the given maps."""
    shape = next(iter(values.values())).shape
    i, j = np.indices(shape, dtype=float)
    mask = ((i - shape[0] / 2) / (0.45 * shape[0])) ** 2 \
        + ((j - shape[1] / 2) / (0.45 * shape[1])) ** 2 < 1
    return ParticleData("tie", np.full(shape, 0.5), values["e_xx"], values["e_yy"],
                        values["e_xy"], values["theta"], mask, 10.0, rotation_rad=rotation,
                        theta_sign=theta_sign)


def test_frame_check_keeps_the_stated_frame_on_a_uniform_field(caplog):
    """Every frame has zero curl up to rounding: nothing may be adopted, nothing flipped."""
    shape = (40, 30)
    values = {"e_xx": np.full(shape, -0.013), "e_yy": np.full(shape, 0.021),
              "e_xy": np.full(shape, 0.004), "theta": np.full(shape, 0.0017)}
    p = tied_particle(values, 0.9, -1)
    with caplog.at_level(logging.WARNING, logger="chemomech.correlative.frames"):
        result = frame_check(p, step_deg=1.0, adopt=True)
    assert not result.adopted and result.stated_is_best()
    assert "not the most compatible" not in caplog.text
    assert result.best.curl_rms_per_nm < 1e-12          # a tie indeed: all (near) zero
    q = result.particle
    assert (q.rotation_rad, q.theta_sign, q.strain_frame) == (0.9, -1, "crystal")
    for name in ("e_xx", "e_yy", "e_xy", "theta"):
        np.testing.assert_array_equal(getattr(q, name), values[name])


def test_frame_check_keeps_the_stated_frame_when_sign_and_mirror_cannot_be_told_apart():
    """e_ac = theta = 0: theta sign and mirror leave H unchanged, so four frames tie at the
    true rotation (their curls differ by rounding only); the stated one must stay."""
    phi = 0.6
    i, j = np.indices((48, 36), dtype=float)
    a = i * np.cos(phi) + j * np.sin(phi)                 # crystal coordinates (px)
    c = -i * np.sin(phi) + j * np.cos(phi)
    values = {"e_xx": 0.02 * np.sin(a / 6.0), "e_yy": 0.015 * np.cos(c / 5.0),
              "e_xy": np.zeros_like(a), "theta": np.zeros_like(a)}   # u_a(a), u_c(c)
    p = tied_particle(values, phi, -1)
    result = frame_check(p, step_deg=1.0, adopt=True)
    tied = [row for row in result.table
            if angle_distance_mod_pi(row.rotation_rad, phi) < 1e-9]
    assert {(row.theta_sign, row.mirror) for row in tied} == {(1, False), (1, True),
                                                               (-1, False), (-1, True)}
    curls = [row.curl_rms_per_nm for row in tied]
    assert max(curls) - min(curls) <= 1e-9 * max(curls)   # equal up to rounding
    wrong = [row.curl_rms_per_nm for row in result.table
             if angle_distance_mod_pi(row.rotation_rad, phi) > math.radians(10)]
    assert min(wrong) > 10 * max(curls)                    # the rotation itself is clear
    assert not result.adopted and result.stated_is_best()
    assert result.best.theta_sign == -1 and not result.best.mirror   # stated first on ties
    assert result.particle.theta_sign == -1
    np.testing.assert_array_equal(result.particle.theta, values["theta"])


def test_frame_check_margin_decides_between_keeping_and_adopting():
    """A frame better than the stated one by less than the margin is not adopted."""
    p = synthetic_particle(0.7, 1, stated_rotation=0.7 + math.radians(5.0))
    close = frame_check(p, step_deg=0.5, adopt=True)
    gain = 1 - close.best.curl_rms_per_nm / close.stated.curl_rms_per_nm
    assert 0 < gain                                       # the true frame is a bit better...
    kept = frame_check(p, step_deg=0.5, adopt=True, margin=min(0.99, 2 * gain))
    assert not kept.adopted and kept.particle.rotation_rad == p.rotation_rad
    taken = frame_check(p, step_deg=0.5, adopt=True, margin=0.5 * gain)
    assert taken.adopted
    assert angle_distance_mod_pi(taken.particle.rotation_rad, 0.7) < math.radians(0.6)
    with pytest.raises(InputError, match="margin"):
        frame_check(p, margin=1.0)
