"""Readers: reference .mat (v5 and v7.3), py4DSTEM v0.12 and v0.14 layouts, composition maps,
plain .npz, import to a stack file; every reader round-trips through the stack format."""

from __future__ import annotations

import argparse

import h5py
import numpy as np
import pytest
import scipy.io

from chemomech.correlative.importing import add_import_arguments, cmd_import, import_to_stack
from chemomech.exceptions import InputError
from chemomech.io.py4dstem import read_py4dstem_strain
from chemomech.io.readers import read_composition_map, read_particles, read_reference_mat
from chemomech.io.stack import read_stack, write_stack

SHAPE = (30, 20)
LABELS = ["e_xx", "e_yy", "e_xy", "theta", "mask"]


def maps(seed: int = 0) -> dict[str, np.ndarray]:
    """An elliptic particle: thicknesses, X ramp, strains of order 1e-2, mask."""
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    mask = ((i - 14.5) / 12) ** 2 + ((j - 9.5) / 8) ** 2 < 1
    X = np.clip(i / (SHAPE[0] - 1), 0, 1)
    thick = np.where(mask, 0.3, 0.0)
    return dict(mask=mask, X=X, t_LFP=X * thick, t_FP=(1 - X) * thick,
                e_xx=-0.049 * (1 - X) + 1e-3 * rng.standard_normal(SHAPE),
                e_yy=0.02 * (1 - X) + 1e-3 * rng.standard_normal(SHAPE),
                e_xy=1e-3 * rng.standard_normal(SHAPE), theta=2e-3 * rng.standard_normal(SHAPE))


def mat_variables(m: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference .mat layout: sentinels 1 (strain) and 0 (theta) outside."""
    out = {k: np.where(m["mask"], m[k], 1.0) for k in ("e_xx", "e_yy")}
    return {"FP": m["t_FP"], "LFP": m["t_LFP"], "exx": out["e_xx"], "eyy": out["e_yy"],
            "exy": np.where(m["mask"], m["e_xy"], 1.0), "theta": np.where(m["mask"], m["theta"], 0),
            "mask": m["mask"].astype(float), "HAADF": np.ones(SHAPE) * 7,
            "rot": np.array([[1.7104]])}


def assert_maps_equal(p, m, frame=("e_xx", "e_yy", "e_xy", "theta")):
    np.testing.assert_array_equal(p.mask, m["mask"])
    np.testing.assert_allclose(p.X[m["mask"]], m["X"][m["mask"]], atol=1e-12)
    for key in frame:
        np.testing.assert_allclose(p.__dict__[key][m["mask"]], m[key][m["mask"]], atol=1e-12)


def round_trip(p, tmp_path):
    back = read_stack(write_stack(tmp_path / f"rt_{p.name}.h5", p))[0]
    for key in ("X", "e_xx", "e_yy", "e_xy", "theta", "mask"):
        np.testing.assert_array_equal(getattr(back, key), getattr(p, key))
    assert (back.rotation_rad, back.theta_sign, back.strain_frame, back.pixel_size_nm,
            back.source) == (p.rotation_rad, p.theta_sign, p.strain_frame, p.pixel_size_nm,
                             p.source)
    return back


# --------------------------------------------------------------------------- .mat


def test_reference_mat_v5(tmp_path):
    m = maps()
    path = tmp_path / "particle.mat"
    scipy.io.savemat(path, mat_variables(m))
    p = read_reference_mat(path)
    assert_maps_equal(p, m)
    assert np.isnan(p.e_xx[~m["mask"]]).all() and np.isnan(p.theta[~m["mask"]]).all()
    assert p.rotation_rad == pytest.approx(-1.7104) and p.theta_sign == 1
    assert p.strain_frame == "crystal" and p.pixel_size_nm == 16.6
    assert "documented" in p.source and "16.6" in p.source
    np.testing.assert_allclose(p.thickness[m["mask"]], 0.3)
    assert read_reference_mat(path, rotation="file").rotation_rad == pytest.approx(1.7104)
    assert read_reference_mat(path, rotation=0.25, pixel_size_nm=10).pixel_size_nm == 10
    round_trip(p, tmp_path)


def test_reference_mat_v73_hdf5(tmp_path):
    """MATLAB v7.3 files are HDF5 with column-major (transposed) arrays."""
    m = maps(1)
    path = tmp_path / "particle73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        for k, v in mat_variables(m).items():
            f.create_dataset(k, data=np.asarray(v, dtype=float).T)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116)
    with open(path, "r+b") as f:  # the 128-byte MATLAB header in the user block
        f.write(header + b"\x00" * 8 + b"\x00\x02" + b"IM")
    p = read_reference_mat(path)
    assert_maps_equal(p, m)
    round_trip(p, tmp_path)


def test_reference_mat_missing_variable_and_garbage(tmp_path):
    variables = mat_variables(maps())
    del variables["theta"]
    path = tmp_path / "bad.mat"
    scipy.io.savemat(path, variables)
    with pytest.raises(InputError, match="bad.mat") as err:
        read_reference_mat(path)
    assert err.value.field == "theta"
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"\x00" * 300)
    with pytest.raises(InputError, match="garbage.mat"):
        read_reference_mat(garbage)


def test_reference_mat_strain_in_percent(tmp_path):
    m = maps()
    variables = mat_variables(m)
    variables["exx"] = np.where(m["mask"], 100 * m["e_xx"], 1.0)
    path = tmp_path / "percent.mat"
    scipy.io.savemat(path, variables)
    with pytest.raises(InputError, match="divide by 100") as err:
        read_reference_mat(path)
    assert err.value.path == str(path) and err.value.field == "e_xx"


def test_real_particle(real_particle_path, tmp_path):
    p = read_reference_mat(real_particle_path)
    assert p.shape == (225, 125)
    assert p.mask.sum() == 14490
    assert 0.45 < p.mean_X < 0.55  # "LFP50": half lithiated
    assert np.isfinite(p.e_xx[p.mask]).all()
    assert np.isnan(p.e_xx[~p.mask]).mean() > 0.5
    # FP along a is about -4.9 % relative to LFP: strain in the FP-rich pixels is negative
    fp_rich = p.mask & (p.X < 0.15)
    assert -0.08 < np.median(p.e_xx[fp_rich]) < -0.02
    assert p.rotation_rad == pytest.approx(-1.7104, abs=1e-4)
    round_trip(p, tmp_path)


# --------------------------------------------------------------------------- py4DSTEM


def write_py4dstem_v012(path, m, h_nm=2.0, labels=LABELS, scale=1.0):
    """Legacy v0.12: /4DSTEM_experiment/data/realslices/<name>/data (Rx, Ry, N), dim1..dim3."""
    with h5py.File(path, "w") as f:
        top = f.create_group("4DSTEM_experiment")
        top.attrs.update(emd_group_type=2, version_major=0, version_minor=12)
        for sub in ("datacubes", "counted_datacubes", "diffractionslices", "realslices",
                    "pointlists", "pointlistarrays"):
            top.create_group(f"data/{sub}")
        g = top["data/realslices"].create_group("strain_map")
        stack = np.stack([scale * m[k] if k != "mask" else m[k].astype(float)
                          for k in LABELS], axis=-1)
        g.create_dataset("data", data=stack)
        for n, size in ((1, SHAPE[0]), (2, SHAPE[1])):
            d = g.create_dataset(f"dim{n}", data=np.arange(size) * h_nm)
            d.attrs.update(name=f"R{'xy'[n - 1]}", units="nm")
        g.create_dataset("dim3", data=np.array(labels, dtype="S64"))


def write_py4dstem_v014(path, m, h_angstrom=20.0):
    """EMD 1.0 (py4DSTEM 0.14 StrainMap): data (6, Rx, Ry), dim0/dim1 calibrations, dim2 labels."""
    labels = ["exx", "eyy", "exy", "theta", "mask", "error"]
    with h5py.File(path, "w") as f:
        f.attrs.update(emd_group_type="file", version_major=1, version_minor=0)
        root = f.create_group("experiment")
        root.attrs.update(emd_group_type="root")
        g = root.create_group("braggvectors/strainmap")
        g.attrs.update(emd_group_type="array", python_class="StrainMap")
        data = np.stack([m["e_xx"], m["e_yy"], m["e_xy"], m["theta"],
                         m["mask"].astype(float), np.zeros(SHAPE)])
        g.create_dataset("data", data=data).attrs["units"] = ""
        for n in (0, 1):
            d = g.create_dataset(f"dim{n}", data=np.array([0.0, h_angstrom]))
            d.attrs.update(name=f"R{'xy'[n]}", units="A")
        lab = g.create_dataset("dim2", data=[s.encode() for s in labels])
        lab.attrs["name"] = "_labels_"


@pytest.mark.parametrize("writer, h_nm", [(write_py4dstem_v012, 2.0),
                                          (write_py4dstem_v014, 2.0)])
def test_py4dstem_layouts(tmp_path, writer, h_nm):
    m = maps(2)
    path = tmp_path / "strain.h5"
    writer(path, m)
    s = read_py4dstem_strain(path)
    assert s.pixel_size_nm == pytest.approx(h_nm)
    for key in ("e_xx", "e_yy", "e_xy", "theta"):
        np.testing.assert_array_equal(getattr(s, key)[m["mask"]], m[key][m["mask"]])
        assert np.isnan(getattr(s, key)[~m["mask"]]).all()
    np.testing.assert_array_equal(s.mask > 0.5, m["mask"])
    comp = tmp_path / "composition.npz"
    np.savez(comp, t_LFP=m["t_LFP"], t_FP=m["t_FP"])
    p = read_particles([path, comp], name="p")[0]
    assert p.strain_frame == "image" and p.pixel_size_nm == pytest.approx(h_nm)
    assert_maps_equal(p, m)
    round_trip(p, tmp_path)


def test_py4dstem_missing_pixel_size_percent_and_truncated(tmp_path):
    m = maps(3)
    path = tmp_path / "strain.h5"
    write_py4dstem_v012(path, m)
    with h5py.File(path, "r+") as f:
        for n in (1, 2):
            f[f"4DSTEM_experiment/data/realslices/strain_map/dim{n}"].attrs["units"] = "pixels"
    comp = tmp_path / "X.npz"
    np.savez(comp, X=np.where(m["mask"], m["X"], np.nan))
    with pytest.raises(InputError, match="pixel size") as err:
        read_particles([path, comp])
    assert err.value.path == str(path)
    assert read_particles([path, comp], pixel_size_nm=3.0)[0].pixel_size_nm == 3.0

    percent = tmp_path / "percent.h5"
    write_py4dstem_v012(percent, m, scale=100.0)
    with pytest.raises(InputError, match="percent") as err:
        read_particles([percent, comp])
    assert str(percent) in str(err.value)

    data = path.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="cut.h5"):
        read_py4dstem_strain(cut)

    other = tmp_path / "labels.h5"
    write_py4dstem_v012(other, m, labels=["a", "b", "c", "d", "e"])
    with pytest.raises(InputError, match="no py4DSTEM strain map"):
        read_py4dstem_strain(other)
    # as a [strain, composition] pair: the message says the strain map is what is missing
    with pytest.raises(InputError, match=r"labels.h5 \(composition: no py4DSTEM strain map"):
        read_particles([other, comp])


# --------------------------------------------------------------------------- composition


def test_composition_formats_agree(tmp_path):
    import tifffile

    m = maps(4)
    X_in = np.where(m["mask"], m["X"], np.nan)
    np.savez(tmp_path / "thick.npz", t_LFP=m["t_LFP"], t_FP=m["t_FP"])
    np.savez(tmp_path / "x.npz", X=X_in)
    tifffile.imwrite(tmp_path / "x.tif", X_in.astype(np.float32))
    tifffile.imwrite(tmp_path / "thick.tif", np.stack([m["t_LFP"], m["t_FP"]]))
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["X"] = X_in
        f["mask"] = m["mask"].astype(np.uint8)
    from chemomech.correlative.composition import CompositionMaps, write_composition

    write_composition(CompositionMaps(X=X_in, thickness=m["t_LFP"] + m["t_FP"],
                                      t_lfp=m["t_LFP"], t_fp=m["t_FP"], mask=m["mask"],
                                      residual=np.zeros(SHAPE), threshold=0.1,
                                      energy_ev=np.array([700.0, 706.2])),
                      tmp_path / "chemomech_composition.h5")
    for name in ("thick.npz", "x.npz", "x.tif", "thick.tif", "x.h5", "chemomech_composition.h5"):
        c = read_composition_map(tmp_path / name)
        np.testing.assert_array_equal(c.mask, m["mask"], err_msg=name)
        np.testing.assert_allclose(c.X[m["mask"]], m["X"][m["mask"]], atol=1e-6, err_msg=name)
    with pytest.raises(InputError, match="t_LFP"):
        np.savez(tmp_path / "none.npz", Y=X_in)
        read_composition_map(tmp_path / "none.npz")


def test_composition_shape_mismatch_and_X_out_of_range(tmp_path):
    m = maps(5)
    strain = tmp_path / "strain.npz"
    np.savez(strain, **{k: m[k] for k in ("e_xx", "e_yy", "e_xy", "theta")}, pixel_size_nm=5.0)
    small = tmp_path / "small.npz"
    np.savez(small, X=np.full((10, 10), 0.5))
    with pytest.raises(InputError, match="register") as err:
        read_particles([strain, small])
    assert err.value.path == str(strain) and err.value.field == "X"
    bad = tmp_path / "bad.npz"
    np.savez(bad, X=np.where(m["mask"], 1.7, np.nan))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        read_particles([strain, bad])
    ok = tmp_path / "ok.npz"
    np.savez(ok, X=np.where(m["mask"], m["X"], np.nan))
    p = read_particles([strain, ok], rotation_rad=0.3, strain_frame="crystal")[0]
    assert (p.rotation_rad, p.strain_frame, p.pixel_size_nm) == (0.3, "crystal", 5.0)


def test_fragmented_composition_mask(tmp_path):
    m = maps(6)
    X = np.where(m["mask"], m["X"], np.nan)
    X[0, 0] = 0.5  # a speck of debris
    strain = tmp_path / "strain.npz"
    np.savez(strain, **{k: m[k] for k in ("e_xx", "e_yy", "e_xy", "theta")}, pixel_size_nm=5.0)
    comp = tmp_path / "X.npz"
    np.savez(comp, X=X)
    with pytest.raises(InputError, match="fragmented"):
        read_particles([strain, comp])
    p = read_particles([strain, comp], keep_largest=True)[0]
    assert p.mask.sum() == m["mask"].sum()


# --------------------------------------------------------------------------- import


def test_import_to_stack_cli_and_failure_leaves_nothing(tmp_path):
    m = maps(7)
    mat = tmp_path / "P1.mat"
    scipy.io.savemat(mat, mat_variables(m))
    parser = argparse.ArgumentParser()
    add_import_arguments(parser)
    out = tmp_path / "stack.h5"
    args = parser.parse_args([str(mat), "-o", str(out), "--frame-check", "off"])
    assert cmd_import(args) == 0
    (p,) = read_stack(out)
    assert p.name == "P1" and p.rotation_rad == pytest.approx(-1.7104)
    assert_maps_equal(p, m)

    # a second particle appended from a particle .npz
    npz = tmp_path / "P2.npz"
    np.savez(npz, X=np.where(m["mask"], m["X"], np.nan), mask=m["mask"],
             **{k: m[k] for k in ("e_xx", "e_yy", "e_xy", "theta")}, pixel_size_nm=8.0,
             rotation_rad=0.5)
    import_to_stack([npz], out, frame_check="off", append=True)
    assert [q.name for q in read_stack(out)] == ["P1", "P2"]
    assert read_stack(out, ["P2"])[0].rotation_rad == 0.5

    # failures: nothing written, the existing stack untouched
    before = out.read_bytes()
    bad = tmp_path / "bad.npz"
    np.savez(bad, X=np.full((3, 3), 0.5))
    with pytest.raises(InputError):
        import_to_stack([mat, bad], out)
    with pytest.raises(InputError):
        import_to_stack([tmp_path / "missing.mat"], tmp_path / "new.h5")
    assert out.read_bytes() == before
    assert not (tmp_path / "new.h5").exists()
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]


def test_import_frame_check_adopts(tmp_path, caplog):
    """A .mat whose strain field is compatible only in another frame: adopt finds it."""
    from chemomech.correlative.frames import angle_distance_mod_pi, frame_matrix

    n = 40
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    x, y = i / n, j / n
    mask = np.hypot(x - 0.5, y - 0.5) < 0.45
    k = 2 * np.pi
    H = np.empty((n, n, 2, 2))
    H[..., 0, 0] = -0.03 * np.tanh((x - 0.5 + 0.3 * y) / 0.1)
    H[..., 0, 1] = 0.3 * H[..., 0, 0] + 0.02 * np.sin(k * y)
    H[..., 1, 0] = 0.012 * np.sin(k * (x + y)) + 0.01 * np.cos(k * x)
    H[..., 1, 1] = 0.012 * np.sin(k * (x + y))
    true_rotation = 0.9
    Q = frame_matrix(true_rotation)
    Hc = np.einsum("pi,...pq,qj->...ij", Q, H, Q)
    thick = np.where(mask, 0.3, 0.0)
    variables = {"FP": 0.5 * thick, "LFP": 0.5 * thick,
                 "exx": np.where(mask, Hc[..., 0, 0], 1), "eyy": np.where(mask, Hc[..., 1, 1], 1),
                 "exy": np.where(mask, 0.5 * (Hc[..., 0, 1] + Hc[..., 1, 0]), 1),
                 "theta": np.where(mask, 0.5 * (Hc[..., 0, 1] - Hc[..., 1, 0]), 0),
                 "rot": np.array([[0.2]])}
    mat = tmp_path / "twisted.mat"
    scipy.io.savemat(mat, variables)
    out = import_to_stack([mat], tmp_path / "s.h5", frame_check="adopt")
    (p,) = read_stack(out)
    assert angle_distance_mod_pi(p.rotation_rad, true_rotation) < np.radians(1.0)
    assert "frame check adopted" in p.source


def three_inputs(tmp_path, seed: int) -> list:
    """A .mat (particle A), a stack (B, 16.6 nm) and a [strain .npz (5 nm), X .npz] pair (C)."""
    m = maps(seed)
    scipy.io.savemat(tmp_path / "A.mat", mat_variables(m))
    write_stack(tmp_path / "s.h5", read_reference_mat(tmp_path / "A.mat", name="B"))
    strain = tmp_path / "C.npz"
    np.savez(strain, **{k: m[k] for k in ("e_xx", "e_yy", "e_xy", "theta")}, pixel_size_nm=5.0)
    comp = tmp_path / "C_X.npz"
    np.savez(comp, X=np.where(m["mask"], m["X"], np.nan))
    return [tmp_path / "A.mat", str(tmp_path / "s.h5"), [strain, comp]]


def test_read_data_combines_inputs_and_selects_particles(tmp_path):
    from chemomech.io.readers import read_data

    data = three_inputs(tmp_path, 8)
    assert [p.name for p in read_data(data)] == ["A", "B", "C"]
    assert [p.name for p in read_data(data, particles=["C", "A"])] == ["C", "A"]
    with pytest.raises(InputError, match="not found"):
        read_data(data, particles=["Z"])
    with pytest.raises(InputError, match="more than one input"):
        read_data([tmp_path / "A.mat", tmp_path / "A.mat"])


def test_the_pixel_size_override_applies_to_every_kind_of_input(tmp_path):
    """`pixel_size_nm` (config key, `import --pixel-size-nm`) also overrides a stack file's
    stored size (it was ignored for stacks: a run on a stack kept the file's h)."""
    from chemomech.io.readers import read_data

    data = three_inputs(tmp_path, 9)
    assert [p.pixel_size_nm for p in read_data(data)] == [16.6, 16.6, 5.0]
    assert [p.pixel_size_nm for p in read_data(data, pixel_size_nm=7.0)] == [7.0, 7.0, 7.0]

    # --name renames the one particle of a stack (it was ignored), and is refused for several
    assert [p.name for p in read_particles([tmp_path / "s.h5"], name="D")] == ["D"]
    write_stack(tmp_path / "two.h5", read_data(data))
    with pytest.raises(InputError, match="renames one particle; the stack holds 3") as err:
        read_particles([tmp_path / "two.h5"], name="D")
    assert err.value.field == "name"


def test_a_corrupt_npz_is_refused_as_such(tmp_path):
    """Random bytes in an .npz: np.load took them for a pickle and the message advised
    `allow_pickle`; a truncated archive is refused the same way."""
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(np.random.default_rng(0).bytes(3000))
    m = maps(10)
    good = tmp_path / "good.npz"
    np.savez(good, **{k: m[k] for k in ("X", "e_xx", "e_yy", "e_xy", "theta", "mask")},
             pixel_size_nm=5.0)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:2000])
    for bad in (garbage, cut):
        for read in (lambda p: read_particles([p]), read_composition_map):
            with pytest.raises(InputError, match="not a readable .npz file") as err:
                read(bad)
            assert err.value.path == str(bad) and "pickle" not in str(err.value)
    assert read_particles([good])[0].pixel_size_nm == 5.0
