"""py4DSTEM files written by py4DSTEM itself (tests/fixtures/py4dstem, see its script):
values, masks, label spellings, the 0.14 calibration pixel size, several maps in one file
(--group), the 2019 layout and its rotation angle, and `chemomech import` on all of them."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from chemomech.cli import main
from chemomech.correlative.frames import frame_check, strain_crystal_from_image, strain_image
from chemomech.correlative.importing import import_to_stack
from chemomech.exceptions import InputError
from chemomech.io.py4dstem import read_py4dstem_strain
from chemomech.io.readers import read_composition_map, read_particles
from chemomech.io.stack import read_stack

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "py4dstem"
RECORD = json.loads((FIXTURES / "truth.json").read_text())
TRUTH = dict(np.load(FIXTURES / "truth.npz"))
MASK = TRUTH["mask"].astype(bool)
COMPONENTS = ("e_xx", "e_yy", "e_xy", "theta")
#: py4DSTEM's own arithmetic (lstsq per pattern, rotation) against the analytic truth
TOL = 1e-13


def rotated_truth(degrees: float) -> dict[str, np.ndarray]:
    """The image-frame truth in axes rotated ccw by `degrees`, by chemomech's own rotation."""
    e = strain_crystal_from_image(TRUTH["e_xx"], TRUTH["e_yy"], TRUTH["e_xy"],
                                  math.radians(degrees))
    return {"e_xx": e["e_aa"], "e_yy": e["e_cc"], "e_xy": e["e_ac"], "theta": TRUTH["theta"]}


def assert_strain(maps, truth) -> None:
    for k in COMPONENTS:
        np.testing.assert_allclose(getattr(maps, k)[MASK], truth[k][MASK], rtol=0, atol=TOL)
        assert np.isnan(getattr(maps, k)[~MASK]).all(), k


def composition_npz(tmp_path: Path) -> Path:
    """An X map on the 4D-STEM grid with its thickness, no mask (the mask comes from it)."""
    i = np.indices(MASK.shape)[0]
    thickness = np.where(MASK, 0.3, 0.01)
    path = tmp_path / "X.npz"
    np.savez(path, X=np.where(MASK, i / MASK.shape[0], 0.0), thickness=thickness)
    return path


@pytest.mark.parametrize("version, labels", [("0.14.18", ["e_xx", "e_yy", "e_xy"]),
                                             ("0.14.8", ["exx", "eyy", "exy"])])
def test_py4dstem_014_strainmap(version, labels):
    path = FIXTURES / f"strain_{version}.h5"
    with h5py.File(path) as f:   # what py4DSTEM wrote: the leak and the uncalibrated dims
        g = f["braggvectors_root/strainmap"]
        stored = [v.decode() for v in g["dim2"][()]]
        assert stored == labels + ["theta", "mask", "error"]
        assert (g["data"][0][~MASK] == 1.0).all() and (g["data"][1][~MASK] == 1.0).all()
        assert g["dim0"].attrs["units"] == "pixels"
    s = read_py4dstem_strain(path)
    assert_strain(s, TRUTH)
    np.testing.assert_array_equal(s.mask, MASK)
    assert s.pixel_size_nm == pytest.approx(16.6)          # from metadatabundle/calibration
    assert "error" not in s.extra and s.strain_frame is None and s.rotation_rad is None


def test_import_014_without_pixel_size_flag_and_nothing_leaks(tmp_path):
    out = tmp_path / "stack.h5"
    assert main(["import", str(FIXTURES / "strain_0.14.18.h5"), str(composition_npz(tmp_path)),
                 "-o", str(out), "--frame-check", "adopt"]) == 0
    (p,) = read_stack(out)
    assert p.pixel_size_nm == pytest.approx(16.6)
    assert (p.strain_frame, p.rotation_rad, p.theta_sign) == ("image", 0.0, 1)  # kept
    np.testing.assert_array_equal(p.mask, MASK)
    assert_strain(p, TRUTH)
    assert not (p.e_xx == 1.0).any() and not (p.e_yy == 1.0).any()


def test_two_maps_need_group(tmp_path):
    path = FIXTURES / "strain_two_maps_0.14.18.h5"
    with pytest.raises(InputError, match="--group NAME"):
        read_py4dstem_strain(path)
    rotated = read_py4dstem_strain(path, group="strain_map_rotated")        # last component
    assert_strain(rotated, rotated_truth(RECORD["truth"]["rotation_deg"]))
    assert rotated.pixel_size_nm == pytest.approx(16.6)
    full = read_py4dstem_strain(path, group="/braggvectors_root/strain_map")   # full path
    assert_strain(full, TRUTH)
    for wrong in ("map", "strain", "braggvectors_root/strain_map_rotated"):
        with pytest.raises(InputError, match="no py4DSTEM strain map named"):
            read_py4dstem_strain(path, group=wrong)
    comp = composition_npz(tmp_path)
    assert main(["import", str(path), str(comp), "-o", str(tmp_path / "none.h5")]) == 2
    assert not (tmp_path / "none.h5").exists()
    assert main(["import", str(path), str(comp), "-o", str(tmp_path / "s.h5"), "--group",
                 "strain_map_rotated", "--frame-check", "off"]) == 0
    (p,) = read_stack(tmp_path / "s.h5")
    assert_strain(p, rotated_truth(30.0))
    with pytest.raises(InputError, match="group"):
        read_particles([tmp_path / "s.h5"], group="strain_map")


def test_py4dstem_012_rotated_map(tmp_path):
    path = FIXTURES / "strain_0.12.24.h5"
    with h5py.File(path) as f:
        g = f["4DSTEM_experiment/data/realslices/strain_map_rotated"]
        assert [v.decode() for v in g["dim3"][()]] == ["e_xx", "e_xy", "e_yy", "theta", "mask"]
    s = read_py4dstem_strain(path)
    assert_strain(s, rotated_truth(RECORD["files"]["strain_0.12.24.h5"]["rotation_deg"]))
    assert s.pixel_size_nm is None                           # 0.12 stores '[pix]' only
    comp = composition_npz(tmp_path)
    with pytest.raises(InputError, match="pixel size"):
        import_to_stack([path, comp], tmp_path / "s.h5")
    out = import_to_stack([path, comp], tmp_path / "s.h5", pixel_size_nm=16.6,
                          frame_check="off")
    assert read_stack(out)[0].pixel_size_nm == 16.6


def test_2019_layout_angle_convention_round_trip(tmp_path):
    """strain_map_rotated_by_<deg>: crystal-frame strain at rotation_rad = radians(deg)
    (axes rotated ccw from image x = axis 0); rotating it back gives the image-frame field."""
    path = FIXTURES / "strain_2019_layout.h5"
    degrees = RECORD["files"]["strain_2019_layout.h5"]["rotation_deg"]
    s = read_py4dstem_strain(path)
    assert s.strain_frame == "crystal" and s.rotation_rad == pytest.approx(math.radians(degrees))
    np.testing.assert_array_equal(s.mask, MASK)               # from the 'TRUE'/'FALSE' strings
    assert s.dark_field is not None and s.dark_field.shape == MASK.shape
    assert_strain(s, rotated_truth(degrees))
    p = read_particles([path, composition_npz(tmp_path)], pixel_size_nm=16.6)[0]
    assert (p.strain_frame, p.rotation_rad) == ("crystal", pytest.approx(math.radians(degrees)))
    back = strain_image(p)                                    # Q e_cr Q^T, DESIGN §2
    for k in ("e_xx", "e_yy", "e_xy"):
        np.testing.assert_allclose(back[k][MASK], TRUTH[k][MASK], rtol=0, atol=TOL)
    # compatibility agrees: the truth is a gradient, most compatible at the file's angle
    result = frame_check(p, step_deg=1.0)
    assert result.stated_is_best() and result.best.theta_sign == 1 and not result.best.mirror
    np.testing.assert_allclose(p.dark_field, s.dark_field)
    assert read_stack(import_to_stack([path, composition_npz(tmp_path)], tmp_path / "s.h5",
                                      pixel_size_nm=16.6))[0].dark_field is not None


def test_2019_mask_as_variable_length_strings_and_bad_strings(tmp_path):
    path = tmp_path / "vlen.h5"
    shutil.copy(FIXTURES / "strain_2019_layout.h5", path)
    key = "4DSTEM_experiment/data/realslices/mask_realspace/realslice"
    with h5py.File(path, "r+") as f:
        del f[key]
        f.create_dataset(key, data=np.where(MASK, "TRUE", "FALSE").astype(object),
                         dtype=h5py.string_dtype())
    np.testing.assert_array_equal(read_py4dstem_strain(path).mask, MASK)
    with h5py.File(path, "r+") as f:
        del f[key]
        f.create_dataset(key, data=np.where(MASK, b"yes", b"FALSE").astype("S5"))
    with pytest.raises(InputError, match="'TRUE' or 'FALSE'"):
        read_py4dstem_strain(path)


def test_composition_npz_without_mask_takes_it_from_thickness(tmp_path):
    """X = 0 outside the particle is no data: the thickness (or OD) makes the mask."""
    c = read_composition_map(composition_npz(tmp_path))
    np.testing.assert_array_equal(c.mask, MASK)
    assert np.isnan(c.X[~MASK]).all() and c.thickness is not None
    od = np.stack([2.0 * np.where(MASK, 0.3, 0.01), 3.0 * np.where(MASK, 0.3, 0.01)])
    np.savez(tmp_path / "od.npz", X=np.where(MASK, 0.4, 0.0), od=od)
    np.testing.assert_array_equal(read_composition_map(tmp_path / "od.npz").mask, MASK)
    np.savez(tmp_path / "bare.npz", X=np.where(MASK, 0.4, 0.0))
    assert read_composition_map(tmp_path / "bare.npz").mask.all()   # nothing to tell: warned
