"""Composition from X-ray optical density: closed-form NNLS, recovery under noise, readers."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
from scipy.optimize import nnls

from chemomech.correlative.composition import (
    DEFAULT_ENERGIES_EV,
    composition_from_files,
    fit_composition,
    model_reference_spectra,
    nnls_two_components,
    read_composition,
    read_od_stack,
    read_reference_spectra,
    write_composition,
)
from chemomech.exceptions import InputError


def write_reference_csv(path, header: bool = True) -> None:
    energy = np.arange(696.0, 740.01, 0.2)
    lfp, fp = model_reference_spectra(energy)
    table = np.column_stack([energy, lfp, fp])
    np.savetxt(path, table, delimiter=",", header="energy,od_LFP,od_FP" if header else "",
               comments="")


def synthetic_particle(nx: int = 48, ny: int = 40):
    """Elliptical particle 300 nm thick with X rising from 0 to 1 across it."""
    i, j = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    r2 = ((i - nx / 2) / (0.4 * nx)) ** 2 + ((j - ny / 2) / (0.4 * ny)) ** 2
    inside = r2 < 1
    thickness = np.where(inside, 300.0 * np.sqrt(np.clip(1 - r2, 0, 1)) ** 0.3, 0.0)
    X = np.clip(0.5 + 0.5 * np.tanh((i - nx / 2) / 6.0), 0, 1)
    return thickness * X, thickness * (1 - X), inside, X


def test_closed_form_matches_scipy_nnls_on_random_pixels():
    rng = np.random.default_rng(0)
    A = np.abs(rng.normal(size=(5, 2))) + 0.1
    # mix of feasible, one-sided and all-negative right-hand sides
    b = rng.normal(size=(5, 400)) + rng.normal(size=(1, 400))
    t, rms = nnls_two_components(A, b)
    active = {"both": 0, "one": 0, "zero": 0}
    for p in range(b.shape[1]):
        reference, norm = nnls(A, b[:, p])
        np.testing.assert_allclose(t[:, p], reference, atol=1e-10)
        assert rms[p] == pytest.approx(norm / np.sqrt(5), abs=1e-10)
        n = int((reference > 0).sum())
        active[{2: "both", 1: "one", 0: "zero"}[n]] += 1
    assert min(active.values()) > 10, active  # every active set was exercised


def test_noise_free_stack_recovers_thickness_and_x_exactly():
    A = np.column_stack(model_reference_spectra(np.asarray(DEFAULT_ENERGIES_EV)))
    t_lfp, t_fp, inside, X = synthetic_particle()
    void = np.zeros_like(inside)
    void[20:25, 18:23] = True          # a void inside the platelet stays out of the mask
    debris = np.zeros_like(inside)
    debris[0:3, 0:3] = True            # a separate speck is dropped (largest part only)
    t_lfp = np.where(void, 0.0, np.where(debris, 100.0, t_lfp))
    t_fp = np.where(void, 0.0, t_fp)
    od = A[:, 0, None, None] * t_lfp + A[:, 1, None, None] * t_fp
    maps = fit_composition(od, A, threshold=30.0)
    np.testing.assert_allclose(maps.t_lfp, t_lfp, atol=1e-9)
    np.testing.assert_allclose(maps.t_fp, t_fp, atol=1e-9)
    thick = maps.mask
    np.testing.assert_allclose(maps.X[thick], X[thick], atol=1e-12)
    assert np.isnan(maps.X[~thick]).all()
    assert not maps.mask[void].any() and not maps.mask[debris].any()
    assert (maps.mask == ((t_lfp + t_fp > 30.0) & ~debris)).all()
    assert maps.residual.max() < 1e-12


def test_poisson_noise_error_in_x_matches_propagated_noise():
    """Counts N ~ Poisson(I0 exp(-OD)): RMS error of X equals linear error propagation."""
    rng = np.random.default_rng(1)
    energies = np.asarray(DEFAULT_ENERGIES_EV)
    A = np.column_stack(model_reference_spectra(energies))
    t_lfp, t_fp, inside, X = synthetic_particle(64, 56)
    od = A[:, 0, None, None] * t_lfp + A[:, 1, None, None] * t_fp
    results = {}
    for i0 in (1e4, 1e5):
        counts = rng.poisson(i0 * np.exp(-od)).clip(1)
        maps = fit_composition(-np.log(counts / i0), A)     # default Otsu mask
        # propagate var(OD_k) = 1 / (I0 exp(-OD_k)) through the unconstrained LS solution
        pinv = np.linalg.pinv(A)                            # (2, nE)
        var_od = np.exp(od) / i0                            # (nE, nx, ny)
        cov = np.einsum("ak,bk,kij->abij", pinv, pinv, var_od)
        T = t_lfp + t_fp
        with np.errstate(invalid="ignore", divide="ignore"):
            dX = np.array([t_fp / T**2, -t_lfp / T**2])    # dX/dt_LFP, dX/dt_FP
            var_X = np.einsum("aij,abij,bij->ij", dX, cov, dX)
        core = inside & (X > 0.2) & (X < 0.8) & maps.mask
        error = np.sqrt(np.mean((maps.X[core] - X[core]) ** 2))
        predicted = np.sqrt(np.mean(var_X[core]))
        results[i0] = error
        assert error == pytest.approx(predicted, rel=0.25), (i0, error, predicted)
        # the Otsu mask finds the particle
        assert (maps.mask ^ inside).sum() < 0.05 * inside.sum()
    # ten times the dose: sqrt(10) times smaller error
    assert results[1e4] / results[1e5] == pytest.approx(np.sqrt(10), rel=0.25)


def test_tiff_hdf5_and_nxstxm_readers_round_trip(tmp_path):
    energies = np.asarray(DEFAULT_ENERGIES_EV)
    A = np.column_stack(model_reference_spectra(energies))
    t_lfp, t_fp, inside, X = synthetic_particle()
    od = A[:, 0, None, None] * t_lfp + A[:, 1, None, None] * t_fp
    refs = tmp_path / "refs.csv"
    write_reference_csv(refs)
    tifffile.imwrite(tmp_path / "od.tif", od.astype(np.float32))
    with h5py.File(tmp_path / "od.h5", "w") as f:
        f.create_dataset("maps/od", data=od)
    i0 = 2.0e4
    with h5py.File(tmp_path / "stack.nxs", "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        data = entry.create_group("data")
        data.attrs.update(NX_class="NXdata", signal="data")
        data.create_dataset("data", data=i0 * np.exp(-od))
        data.create_dataset("energy", data=energies)
    runs = [composition_from_files(tmp_path / "od.tif", refs, threshold=30.0),
            composition_from_files(tmp_path / "od.h5", refs, dataset="maps/od",
                                   threshold=30.0),
            composition_from_files(tmp_path / "stack.nxs", refs, quantity="transmission",
                                   i0=i0, threshold=30.0),
            composition_from_files(tmp_path / "stack.nxs", refs, quantity="transmission",
                                   threshold=30.0)]  # I0 from the bright background
    for maps in runs:
        np.testing.assert_allclose(maps.X[maps.mask], X[maps.mask], atol=1e-3)
    write_composition(runs[2], tmp_path / "out.h5")
    back = read_composition(tmp_path / "out.h5")
    np.testing.assert_array_equal(back.mask, runs[2].mask)
    np.testing.assert_allclose(back.energy_ev, energies)


def test_references_csv_without_header_and_interpolation(tmp_path):
    path = tmp_path / "refs.csv"
    write_reference_csv(path, header=False)
    refs = read_reference_spectra(path)
    energies = np.array([700.0, 706.3, 711.1])
    lfp, fp = model_reference_spectra(energies)
    np.testing.assert_allclose(refs.matrix(energies), np.column_stack([lfp, fp]), rtol=1e-2)
    with pytest.raises(InputError, match="outside the reference range"):
        refs.matrix([690.0, 700.0])


def test_bad_inputs_raise_clear_errors(tmp_path):
    energies = np.asarray(DEFAULT_ENERGIES_EV)
    A = np.column_stack(model_reference_spectra(energies))
    t_lfp, t_fp, _, _ = synthetic_particle()
    od = A[:, 0, None, None] * t_lfp + A[:, 1, None, None] * t_fp
    with pytest.raises(InputError, match="5 energy images but the references give 4"):
        fit_composition(od, A[:4])
    nan_od = od.copy()
    nan_od[2, 3, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        fit_composition(nan_od, A)
    with pytest.raises(InputError, match="linearly dependent"):
        fit_composition(od, np.column_stack([A[:, 0], 2 * A[:, 0]]))
    # intensities passed as OD, non-positive transmission, wrong energy count, NaN in file
    counts = 1e4 * np.exp(-od)
    tifffile.imwrite(tmp_path / "counts.tif", counts.astype(np.float32))
    with pytest.raises(InputError, match="quantity='transmission'"):
        read_od_stack(tmp_path / "counts.tif")
    counts[0, 0, 0] = 0.0
    tifffile.imwrite(tmp_path / "zero.tif", counts.astype(np.float32))
    with pytest.raises(InputError, match="non-positive transmitted"):
        read_od_stack(tmp_path / "zero.tif", quantity="transmission")
    tifffile.imwrite(tmp_path / "od.tif", od.astype(np.float32))
    with pytest.raises(InputError, match="5 energy images but 4 energies"):
        read_od_stack(tmp_path / "od.tif", energies_ev=energies[:4])
    tifffile.imwrite(tmp_path / "nan.tif", nan_od.astype(np.float32))
    with pytest.raises(InputError, match="nan.tif.*NaN"):
        read_od_stack(tmp_path / "nan.tif")
    with pytest.raises(InputError, match="no NXentry"):
        with h5py.File(tmp_path / "empty.h5", "w") as f:
            f.create_dataset("x", data=[1.0])
        read_od_stack(tmp_path / "empty.h5")


def test_cli_writes_maps_that_the_readers_load(tmp_path):
    import argparse

    from chemomech.correlative.composition import add_composition_arguments, cmd_composition
    from chemomech.io.readers import read_composition_map

    energies = np.asarray(DEFAULT_ENERGIES_EV)
    A = np.column_stack(model_reference_spectra(energies))
    t_lfp, t_fp, inside, X = synthetic_particle()
    od = A[:, 0, None, None] * t_lfp + A[:, 1, None, None] * t_fp
    tifffile.imwrite(tmp_path / "od.tif", od)
    write_reference_csv(tmp_path / "refs.csv")
    parser = argparse.ArgumentParser()
    add_composition_arguments(parser)
    args = parser.parse_args([str(tmp_path / "od.tif"), str(tmp_path / "refs.csv"), "-o",
                              str(tmp_path / "X.h5"), "--threshold-fraction", "0.1"])
    assert cmd_composition(args) == 0
    loaded = read_composition_map(tmp_path / "X.h5")
    np.testing.assert_allclose(loaded.X[loaded.mask], X[loaded.mask], atol=1e-9)
    np.testing.assert_allclose(loaded.thickness, t_lfp + t_fp, atol=1e-9)
    assert (loaded.mask ^ inside).sum() < 0.05 * inside.sum()
