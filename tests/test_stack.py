"""The stack file format: round trips, validation of ParticleData, bad and corrupt files."""

from __future__ import annotations

import os
import stat

import h5py
import numpy as np
import pytest

from chemomech.exceptions import InputError
from chemomech.io.stack import (
    STACK_FORMAT,
    ParticleData,
    is_stack_file,
    largest_component,
    list_particles,
    read_stack,
    write_stack,
)


def make_particle(name: str = "p1", shape=(24, 18), seed: int = 0, **overrides) -> ParticleData:
    """A small elliptic particle with a hole, X a ramp, strains of a few 1e-3..1e-2."""
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    ci, cj = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    mask = ((i - ci) / (0.45 * shape[0])) ** 2 + ((j - cj) / (0.45 * shape[1])) ** 2 < 1
    mask &= ~((abs(i - ci) <= 1) & (abs(j - cj) <= 1))
    X = np.clip(i / (shape[0] - 1), 0, 1)
    values = dict(name=name, X=X, e_xx=-0.049 * (1 - X) + 1e-3 * rng.standard_normal(shape),
                  e_yy=0.02 * (1 - X), e_xy=1e-3 * rng.standard_normal(shape),
                  theta=2e-3 * rng.standard_normal(shape), mask=mask, pixel_size_nm=16.6,
                  rotation_rad=0.3, source="unit test")
    values.update(overrides)
    return ParticleData(**values)


def assert_same(a: ParticleData, b: ParticleData) -> None:
    assert a.name == b.name
    for key in ("X", "e_xx", "e_yy", "e_xy", "theta", "mask"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    for key in ("pixel_size_nm", "rotation_rad", "strain_frame", "theta_sign", "reference",
                "source"):
        assert getattr(a, key) == getattr(b, key), key


def test_round_trip_with_truth_and_optional_maps(tmp_path):
    coeffs = {"a": [-0.049, 0.01, -0.002], "c": [0.02, -0.001, 0.0]}
    gamma = np.linspace(0, 1, 12).reshape(3, 4)
    p = make_particle(thickness=np.full((24, 18), 40.0), dark_field=np.ones((24, 18)),
                      truth={"coefficients": coeffs, "model": "M1", "noise": 1e-4,
                             "degree": 2, "gamma": gamma, "flags": [1, 2, 3],
                             "systems": ["A", "D"], "converged": True, "seed": None,
                             "noise_model": {"sigma": 2e-4, "kind": "gaussian"}})
    q = make_particle("p2", seed=1, strain_frame="image", theta_sign=-1)
    out = write_stack(tmp_path / "s.h5", [p, q])
    assert is_stack_file(out)
    assert list_particles(out) == ["p1", "p2"]
    back = read_stack(out)
    assert [b.name for b in back] == ["p1", "p2"]
    assert_same(p, back[0])
    assert_same(q, back[1])
    np.testing.assert_array_equal(back[0].thickness, p.thickness)
    np.testing.assert_array_equal(back[0].dark_field, p.dark_field)
    truth = back[0].truth
    assert truth["coefficients"] == coeffs
    assert truth["model"] == "M1" and truth["noise"] == 1e-4 and truth["degree"] == 2
    assert truth["flags"] == [1, 2, 3] and truth["systems"] == ["A", "D"]
    assert truth["converged"] is True and truth["seed"] is None
    assert truth["noise_model"] == {"sigma": 2e-4, "kind": "gaussian"}
    np.testing.assert_array_equal(truth["gamma"], gamma)
    assert back[1].truth == {} and back[1].thickness is None
    # selection and order by name
    assert [b.name for b in read_stack(out, names=["p2"])] == ["p2"]
    with h5py.File(out) as f:
        assert f.attrs["format"] == STACK_FORMAT and f.attrs["version"] == 1
        assert f["particles/p1/mask"].dtype == np.uint8
        assert np.isnan(f["particles/p1/X"][0, 0])  # NaN outside


def test_missing_particle_name(tmp_path):
    out = write_stack(tmp_path / "s.h5", make_particle())
    with pytest.raises(InputError, match="nope"):
        read_stack(out, names=["nope"])


def test_X_normalised_outside_mask_and_clipped_within_tolerance():
    p = make_particle()
    assert np.isnan(p.X[~p.mask]).all()
    X = np.where(p.mask, 1.01, 0.0)
    q = make_particle(X=X)
    assert np.nanmax(q.X) == 1.0
    assert q.mean_X == pytest.approx(1.0)


@pytest.mark.parametrize("field_name, change, message", [
    ("e_yy", lambda p: np.zeros((5, 5)), "shape"),
    ("theta", lambda p: np.full(p.mask.shape, np.nan), "NaN everywhere"),
    ("X", lambda p: np.full(p.mask.shape, np.nan), "NaN everywhere"),
    ("X", lambda p: np.where(p.mask, 1.5, 0), r"\[0, 1\]"),
    ("X", lambda p: np.where(np.arange(p.mask.size).reshape(p.mask.shape) == 200, np.nan, p.X),
     "NaN at 1 of"),
    ("X", lambda p: np.where(p.mask, -0.3, 0), r"\[0, 1\]"),
    ("mask", lambda p: np.zeros(p.mask.shape), "empty"),
    ("pixel_size_nm", lambda p: None, "pixel size"),
    ("pixel_size_nm", lambda p: -1.0, "pixel size"),
    ("pixel_size_nm", lambda p: float("nan"), "pixel size"),
    ("pixel_size_nm", lambda p: "25nm", "pixel size"),  # a string attribute: was ValueError
    ("rotation_rad", lambda p: "north", "finite"),
    ("e_xx", lambda p: 100 * p.e_xx, "percent"),
    ("theta", lambda p: np.where(p.mask, 3.0, 0), "degrees"),
    ("strain_frame", lambda p: "lab", "crystal"),
    ("theta_sign", lambda p: 0, r"\+1 or -1"),
])
def test_bad_particle_data(field_name, change, message):
    p = make_particle()
    with pytest.raises(InputError, match=message) as err:
        make_particle(**{field_name: change(p)})
    assert err.value.field == field_name
    assert field_name in str(err.value)


def test_fragmented_mask_is_refused_and_largest_component_fixes_it():
    p = make_particle()
    mask = p.mask.copy()
    mask[0, 0] = True  # a one-pixel island (debris)
    with pytest.raises(InputError, match="fragmented into 2"):
        make_particle(mask=mask)
    cleaned = largest_component(mask)
    assert cleaned.sum() == p.mask.sum()
    make_particle(mask=cleaned)


def test_strain_in_percent_is_refused_with_file_name(tmp_path):
    p = make_particle()
    out = write_stack(tmp_path / "s.h5", p)
    with h5py.File(out, "r+") as f:
        f["particles/p1/e_yy"][...] = 100 * p.e_yy
    with pytest.raises(InputError, match="divide by 100") as err:
        read_stack(out)
    assert str(out) in str(err.value) and err.value.field == "e_yy"


def test_missing_pixel_size_in_file(tmp_path):
    out = write_stack(tmp_path / "s.h5", make_particle())
    with h5py.File(out, "r+") as f:
        del f["particles/p1"].attrs["pixel_size_nm"]
    with pytest.raises(InputError, match="pixel size") as err:
        read_stack(out)
    assert err.value.path == str(out)


def test_truncated_file_names_the_file(tmp_path):
    out = write_stack(tmp_path / "s.h5", [make_particle(shape=(60, 50))])
    data = out.read_bytes()
    bad = tmp_path / "truncated.h5"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated") as err:
        read_stack(bad)
    assert err.value.path == str(bad)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(InputError, match="garbage.h5"):
        read_stack(garbage)


def test_wrong_format_attribute(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    assert not is_stack_file(other)
    with pytest.raises(InputError, match="not a chemomech stack") as err:
        read_stack(other)
    assert err.value.field == "format"


def test_a_stack_without_particles_is_refused_naming_the_file(tmp_path):
    """A stack whose `particles` group is empty (an inversion crashed on it with IndexError)."""
    path = write_stack(tmp_path / "s.h5", make_particle())
    with h5py.File(path, "a") as f:
        del f["particles/p1"]
    with pytest.raises(InputError, match="holds no particle") as err:
        read_stack(path)
    assert err.value.path == str(path) and err.value.field == "particles"


def test_write_is_atomic_and_refuses_duplicates(tmp_path):
    out = tmp_path / "s.h5"
    write_stack(out, make_particle())
    before = out.read_bytes()
    with pytest.raises(InputError, match="duplicate"):
        write_stack(out, [make_particle(), make_particle()])
    with pytest.raises(TypeError):
        write_stack(out, [make_particle(truth={"bad": object()})])
    assert out.read_bytes() == before  # untouched by the failed writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]  # no temporary left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_with_frame_copies_and_notes():
    p = make_particle()
    q = p.with_frame(-1.0, -1, "frame check")
    assert (q.rotation_rad, q.theta_sign) == (-1.0, -1)
    assert q.source.endswith("frame check") and p.rotation_rad == 0.3


@pytest.mark.mpi
def test_collective_write_and_read(tmp_path):
    """Under mpirun: rank 0 writes, every rank reads the same particles back."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    folder = comm.bcast(str(tmp_path) if comm.rank == 0 else None, root=0)
    out = write_stack(f"{folder}/collective.h5", [make_particle("a"), make_particle("b", seed=2)],
                      comm=comm)
    back = read_stack(out)
    assert [p.name for p in back] == ["a", "b"]
    assert_same(back[1], make_particle("b", seed=2))
    checksum = float(np.nansum(back[0].e_xx))
    assert comm.allreduce(checksum, op=MPI.MAX) == pytest.approx(comm.allreduce(checksum,
                                                                                op=MPI.MIN))
    comm.barrier()
