"""The frame check's closed-form RMS curl against a direct curl of the rotated gradient."""

from __future__ import annotations

import numpy as np
import pytest

from chemomech.correlative.frames import (
    curl_field,
    frame_check,
    gradient_crystal,
    rotate_tensor_field,
    smooth_masked,
)
from chemomech.io.stack import interior_pixels
from chemomech.synth import ParticleSpec, simulate_particle


def test_closed_form_curl_equals_direct_curl_for_every_kind_of_candidate():
    p = simulate_particle(ParticleSpec("t", 0.5, rotation_rad=0.7, length_nm=600,
                                       width_nm=400, noise_strain=2e-4, seed=4))
    result = frame_check(p, step_deg=5.0)
    smooth = {k: smooth_masked(getattr(p, k), p.mask, 1.0)
              for k in ("e_xx", "e_yy", "e_xy", "theta")}
    interior = interior_pixels(p.mask, 3)
    picked = [c for c in result.table if c.label][:3] + result.table[-3:] + result.table[10:12]
    assert {c.mirror for c in picked} == {False, True}
    assert {c.theta_sign for c in picked} == {1, -1}
    for c in picked:
        H = gradient_crystal(smooth["e_xx"], smooth["e_yy"], smooth["e_xy"], smooth["theta"],
                             c.theta_sign)
        curl = curl_field(rotate_tensor_field(H, c.rotation_rad, c.mirror),
                          p.pixel_size_nm)[interior]
        curl = curl[np.all(np.isfinite(curl), axis=1)]
        assert c.curl_rms_per_nm == pytest.approx(np.sqrt(np.mean(curl**2)), rel=1e-9)
