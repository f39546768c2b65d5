"""Material constants: the reference code's constants, reductions and rotations."""

from __future__ import annotations

import numpy as np
import pytest

from chemomech.exceptions import InputError
from chemomech.mechanics.materials import (
    Material,
    ac_plane_moduli,
    average_voigt_stiffness,
    isotropic_plane_tensor,
    plane_stiffness_tensor,
    rotate_stiffness,
    rotation_matrix,
    vegard_b_coefficients,
    vegard_misfit,
    voigt_stiffness,
)


def test_reference_constants_are_scaled_average_plane_stress_moduli():
    """Reference constants alpha, beta, gamma, omega / (Q_aa, Q_ac, Q_cc, C55): one ratio."""
    Q = ac_plane_moduli(average_voigt_stiffness(), "plane_stress")
    reference = {"aa": 2494.7, "ac": 765.0, "cc": 2589.7, "ss": 858.0}
    ratios = np.array([value / Q[key] for key, value in reference.items()])
    assert ratios.max() / ratios.min() - 1 < 1e-3
    assert ratios.mean() == pytest.approx(17.49, rel=1e-3)


def test_plane_strain_keeps_the_3d_constants():
    Q = ac_plane_moduli(average_voigt_stiffness(), "plane_strain")
    assert (Q["aa"], Q["cc"], Q["ac"]) == pytest.approx((157.4, 154.0, 53.2))


def test_vegard_misfit_of_fepo4():
    m = vegard_misfit("LiFePO4")
    assert m["a"] == pytest.approx(9.821 / 10.332 - 1)
    assert m["a"] == pytest.approx(-0.0495, abs=5e-4)
    assert m["c"] == pytest.approx(0.0205, abs=5e-4)


def test_rotated_stiffness_maps_rotated_strain_to_rotated_stress():
    C = Material().crystal_tensor()
    phi = 0.7
    R = rotation_matrix(phi)
    eps = np.array([[1e-3, 4e-4], [4e-4, -2e-3]])
    sig = np.einsum("ijkl,kl->ij", C, eps)
    C_img = rotate_stiffness(C, phi)
    assert np.allclose(np.einsum("ijkl,kl->ij", C_img, R @ eps @ R.T), R @ sig @ R.T)


def test_isotropic_tensor_is_rotation_invariant_and_symmetric():
    C = isotropic_plane_tensor(100.0, 0.3)
    assert np.allclose(rotate_stiffness(C, 1.1), C)
    assert np.allclose(C, C.transpose(2, 3, 0, 1)) and np.allclose(C, C.transpose(1, 0, 2, 3))
    Cm = plane_stiffness_tensor(ac_plane_moduli(average_voigt_stiffness()))
    assert np.allclose(Cm, Cm.transpose(2, 3, 0, 1))


def test_bad_material_options_are_clear_errors():
    with pytest.raises(ValueError, match="stiffness"):
        Material(stiffness="steel")
    with pytest.raises(ValueError, match="reduction"):
        Material(reduction="3d")


def test_vegard_b_law_and_its_options():
    delta = 5.792 / 6.010 - 1.0  # DESIGN lattice constants
    assert vegard_b_coefficients() == pytest.approx((delta / 2, -delta / 2), rel=1e-12)
    f_b = np.polynomial.legendre.legval(np.array([-1.0, 1.0]), vegard_b_coefficients())
    assert f_b == pytest.approx([delta, 0.0], abs=1e-15)  # f_b(0) = delta, f_b(1) = 0
    assert Material(reduction="plane_strain").b_coefficients == vegard_b_coefficients()
    assert Material(reduction="plane_strain", b_law=(0.1,)).b_coefficients == (0.1,)
    assert Material().b_coefficients == () and Material().b_coupling(0.3) is None
    lfp = voigt_stiffness("LiFePO4")
    assert np.allclose(Material("LiFePO4", "plane_strain").b_coupling(0.0),
                       np.diag([lfp[0, 1], lfp[1, 2]]))
    with pytest.raises(InputError, match="plane strain") as err:
        Material(b_law=(0.1,))
    assert err.value.field == "b_law"
    with pytest.raises(InputError, match="finite"):
        Material(reduction="plane_strain", b_law=(np.nan,))
