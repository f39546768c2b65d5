"""Powder-pattern readers: formats, abscissae (2theta, d, q), and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from chemomech.exceptions import InputError
from chemomech.xrd.patterns import read_pattern, s_from_axis, two_theta_from_s, write_xye

WAVELENGTH = 0.7293


def _pattern():
    tt = np.linspace(10.0, 20.0, 200)
    y = 50.0 + 1000.0 * np.exp(-0.5 * ((tt - 15.0) / 0.05) ** 2)
    return tt, y


def test_two_theta_d_q_give_one_s(tmp_path):
    """s = 2 sin(theta)/lambda = 1/d = q/(2 pi): the three readers agree to 1e-12."""
    tt, y = _pattern()
    s_ref = s_from_axis(tt, "2theta", WAVELENGTH)
    d = 10.0 / s_ref
    q = 2.0 * np.pi * s_ref / 10.0
    np.savetxt(tmp_path / "a.xy", np.column_stack([tt, y]))
    np.savetxt(tmp_path / "b.xy", np.column_stack([d, y]))          # d descending: allowed
    (tmp_path / "c.csv").write_text("counts,q_invA\n" + "".join(
        f"{yi},{qi}\n" for yi, qi in zip(y, q, strict=True)))
    a = read_pattern(tmp_path / "a.xy", wavelength_angstrom=WAVELENGTH)
    b = read_pattern(tmp_path / "b.xy", axis="d")
    c = read_pattern(tmp_path / "c.csv", axis="q", x_column="q_invA", y_column="counts")
    for p in (b, c):
        assert np.allclose(p.s, a.s, rtol=1e-12)
        assert np.allclose(p.intensity, a.intensity)
    assert np.allclose(two_theta_from_s(a.s, WAVELENGTH), tt)
    assert np.allclose(a.sigma, np.sqrt(y))                          # counting statistics


def test_xye_round_trip_keeps_esd(tmp_path):
    tt, y = _pattern()
    esd = np.full_like(y, 3.5)
    write_xye(tmp_path / "p.xye", tt, y, esd, WAVELENGTH)
    p = read_pattern(tmp_path / "p.xye", wavelength_angstrom=WAVELENGTH)
    assert np.allclose(p.sigma, 3.5)
    assert np.allclose(p.intensity, np.round(y, 4))


def test_non_monotonic_two_theta_is_a_clear_error(tmp_path):
    tt, y = _pattern()
    tt[100] = tt[98]
    np.savetxt(tmp_path / "bad.xy", np.column_stack([tt, y]))
    with pytest.raises(InputError, match=r"bad.xy.*2theta.*not strictly monotonic.*row 100"):
        read_pattern(tmp_path / "bad.xy", wavelength_angstrom=WAVELENGTH)


def test_bad_pattern_inputs(tmp_path):
    tt, y = _pattern()
    np.savetxt(tmp_path / "p.xy", np.column_stack([tt, y]))
    with pytest.raises(InputError, match="wavelength"):
        read_pattern(tmp_path / "p.xy")
    with pytest.raises(InputError, match="not found"):
        read_pattern(tmp_path / "missing.xy", wavelength_angstrom=WAVELENGTH)
    (tmp_path / "p.h5").write_text("x")
    with pytest.raises(InputError, match="unknown pattern format"):
        read_pattern(tmp_path / "p.h5", wavelength_angstrom=WAVELENGTH)
    (tmp_path / "p.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="column 'c'"):
        read_pattern(tmp_path / "p.csv", axis="d", y_column="c")
