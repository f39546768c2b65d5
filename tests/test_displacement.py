"""Integration of the measured gradient: exact fields recovered at O(h^2), curl residual."""

from __future__ import annotations

import numpy as np
import pytest

from chemomech.correlative.displacement import (
    integrate_gradient,
    measured_displacement,
    measured_strain,
    pixel_coordinates,
)
from chemomech.correlative.frames import frame_matrix
from chemomech.io.stack import ParticleData

L_NM = 400.0  # particle size


def annulus_mask(n: int) -> np.ndarray:
    """A disc of diameter L with an off-centre hole, on an n x (3n/4) pixel grid."""
    h = L_NM / n
    x = pixel_coordinates((n, 3 * n // 4), h)
    r = np.hypot(x[..., 0] - L_NM / 2, x[..., 1] - 0.375 * L_NM)
    hole = np.hypot(x[..., 0] - 0.6 * L_NM, x[..., 1] - 0.4 * L_NM) < 0.1 * L_NM
    return (r < 0.37 * L_NM) & ~hole


def smooth_field(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """u (nm) and its gradient H[..., i, j] = du_i/dx_j: waves + polynomial + rotation."""
    X, Y = x[..., 0] / L_NM, x[..., 1] / L_NM
    k = 2 * np.pi
    w = 0.003  # small rigid rotation (rad)
    ux = L_NM * (0.01 * np.sin(k * X) * np.cos(k * Y) + 0.02 * X**2) - w * x[..., 1]
    uy = L_NM * (0.015 * np.cos(k * X * 0.7) * Y + 0.01 * X * Y) + w * x[..., 0]
    H = np.empty(x.shape[:2] + (2, 2))
    H[..., 0, 0] = 0.01 * k * np.cos(k * X) * np.cos(k * Y) + 0.04 * X
    H[..., 0, 1] = -0.01 * k * np.sin(k * X) * np.sin(k * Y) - w
    H[..., 1, 0] = -0.015 * 0.7 * k * np.sin(0.7 * k * X) * Y + 0.01 * Y + w
    H[..., 1, 1] = 0.015 * np.cos(0.7 * k * X) + 0.01 * X
    return np.stack([ux, uy], axis=-1), H


def centred(u: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return u - u[mask].mean(axis=0)


def error_at(n: int) -> tuple[float, float]:
    mask = annulus_mask(n)
    h = L_NM / n
    u, H = smooth_field(pixel_coordinates(mask.shape, h))
    res = integrate_gradient(H, mask, h)
    err = res.u[mask] - centred(u, mask)[mask]
    assert np.isnan(res.u[~mask]).all()
    np.testing.assert_allclose(res.u[mask].mean(axis=0), 0, atol=1e-9)
    return float(np.sqrt(np.mean(err**2))), res.residual_rms


def test_recovers_smooth_field_at_second_order():
    errors = [error_at(n) for n in (40, 80, 160)]
    u_rms = 0.01 * L_NM
    rates = [np.log2(errors[k][0] / errors[k + 1][0]) for k in range(2)]
    assert errors[-1][0] < 1e-3 * u_rms
    assert all(1.8 < r < 2.3 for r in rates), rates
    # the equations' residual (trapezoid error of a compatible field) also falls as O(h^2)
    assert np.log2(errors[1][1] / errors[2][1]) > 1.8


def test_quadratic_field_is_exact():
    n = 50
    mask = annulus_mask(n)
    h = L_NM / n
    x = pixel_coordinates(mask.shape, h)
    A = np.array([[0.01, -0.02], [0.03, -0.005]])
    B = 1e-5
    u = np.einsum("ij,...j->...i", A, x) + B * np.stack([x[..., 0] * x[..., 1], x[..., 1]**2], -1)
    H = np.broadcast_to(A, x.shape[:2] + (2, 2)).copy()
    H[..., 0, 0] += B * x[..., 1]
    H[..., 0, 1] += B * x[..., 0]
    H[..., 1, 1] += 2 * B * x[..., 1]
    res = integrate_gradient(H, mask, h)
    np.testing.assert_allclose(res.u[mask], centred(u, mask)[mask], atol=1e-9)
    assert res.residual_rms < 1e-12


def particle_from_gradient(H_img, mask, h, rotation, theta_sign=1):
    """Crystal-frame maps whose image-frame gradient is H_img."""
    Q = frame_matrix(rotation)
    Hc = np.einsum("pi,...pq,qj->...ij", Q, H_img, Q)
    e_ac = 0.5 * (Hc[..., 0, 1] + Hc[..., 1, 0])
    theta = 0.5 * (Hc[..., 0, 1] - Hc[..., 1, 0]) / theta_sign
    X = np.full(mask.shape, 0.5)
    return ParticleData("t", X, Hc[..., 0, 0], Hc[..., 1, 1], e_ac, theta, mask, h,
                        rotation_rad=rotation, theta_sign=theta_sign)


def test_curl_residual_small_for_right_frame_large_for_wrong_theta_sign():
    n = 80
    mask = annulus_mask(n)
    h = L_NM / n
    u, H = smooth_field(pixel_coordinates(mask.shape, h))
    p = particle_from_gradient(H, mask, h, rotation=-1.2)
    right = measured_displacement(p)
    np.testing.assert_allclose(right.u[mask], centred(u, mask)[mask], atol=0.05)
    wrong = measured_displacement(p.with_frame(-1.2, -1))
    wrong_angle = measured_displacement(p.with_frame(-1.2 + 0.5, 1))
    assert right.relative_residual < 2e-3
    assert wrong.relative_residual > 50 * right.relative_residual
    assert wrong_angle.relative_residual > 50 * right.relative_residual
    # strain-only path: symmetric part in the image frame, NaN outside
    strain = measured_strain(p)
    np.testing.assert_allclose(strain["e_xy"][mask], 0.5 * (H[..., 0, 1] + H[..., 1, 0])[mask],
                               atol=1e-14)
    np.testing.assert_allclose(strain["e_yy"][mask], H[..., 1, 1][mask], atol=1e-14)
    assert np.isnan(strain["e_xx"][~mask]).all()


def test_separate_pieces_each_get_zero_mean():
    mask = np.zeros((20, 10), bool)
    mask[2:8, 2:8] = True
    mask[12:18, 2:8] = True
    H = np.zeros((20, 10, 2, 2))
    H[..., 0, 0] = 0.01
    res = integrate_gradient(H, mask, 2.0)
    assert res.n_pieces == 2
    for piece in (np.s_[2:8, 2:8], np.s_[12:18, 2:8]):
        np.testing.assert_allclose(res.u[piece].reshape(-1, 2).mean(axis=0), 0, atol=1e-12)
    # u_x grows by 0.01 * 2 nm per pixel along x
    np.testing.assert_allclose(np.diff(res.u[2:8, 4, 0]), 0.02, atol=1e-12)


def test_nan_pixels_are_skipped():
    n = 40
    mask = annulus_mask(n)
    h = L_NM / n
    u, H = smooth_field(pixel_coordinates(mask.shape, h))
    H[10, 15] = np.nan
    res = integrate_gradient(H, mask, h)
    assert np.isnan(res.u[10, 15]).all()
    assert res.n_pixels == mask.sum() - 1


def test_bad_shapes():
    from chemomech.exceptions import InputError

    with pytest.raises(InputError, match="H_img"):
        integrate_gradient(np.zeros((4, 4, 2)), np.ones((4, 4), bool), 1.0)
    with pytest.raises(InputError, match="pixel_size"):
        integrate_gradient(np.zeros((4, 4, 2, 2)), np.ones((4, 4), bool), 0.0)


def test_a_one_pixel_particle_is_refused_naming_the_particle_and_file():
    """The integration's error ("only 1 valid pixel(s)") named neither particle nor file."""
    from chemomech.correlative.prepared import prepare_particle
    from chemomech.exceptions import InputError

    mask = np.zeros((6, 5), bool)
    mask[3, 2] = True
    zero = np.zeros(mask.shape)
    p = ParticleData(name="speck", X=np.full(mask.shape, 0.5), e_xx=zero, e_yy=zero, e_xy=zero,
                     theta=zero, mask=mask, pixel_size_nm=10.0, file="stack.h5")
    with pytest.raises(InputError, match="particle 'speck': .*only 1 valid pixel") as err:
        prepare_particle(p)
    assert err.value.path == "stack.h5"
