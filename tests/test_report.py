"""Figures and ParaView fields are written, readable and complete."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import h5py
import numpy as np
import pytest

from chemomech.analysis.report import (
    ResidualMaps,
    plot_curves,
    plot_model_errors,
    plot_residual_maps,
    write_pixel_fields,
)


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_figures_are_pngs(tmp_path):
    X = np.linspace(0, 1, 21)
    curve = {"X": X, "a": -0.05 * (1 - X), "c": 0.02 * (1 - X)}
    curve |= {f"{d}_{s}": curve[d] + (0.002 if s == "hi" else -0.002) for d in "ac"
              for s in ("lo", "hi")}
    assert _is_png(plot_curves(curve, tmp_path / "f.png", baseline=curve))
    mask = np.zeros((30, 20), bool)
    mask[5:25, 4:16] = True
    maps = {k: np.random.default_rng(0).normal(0, 1e-3, mask.shape) for k in ("aa", "cc", "ac")}
    assert _is_png(plot_residual_maps(maps, mask, 16.6, tmp_path / "r.png"))
    errors = {"M0": 2e-3, "M1": 1.6e-3}
    assert _is_png(plot_model_errors(errors, tmp_path / "e.png", {"p": errors}))
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_a_reused_residual_figure_draws_what_a_new_one_draws(tmp_path):
    """ResidualMaps redraws one figure per particle: the second particle's PNG (another shape,
    pixel size and scale) is pixel for pixel the one of a fresh figure (no state carried)."""
    from matplotlib.image import imread

    rng = np.random.default_rng(1)
    particles = []
    for shape, h, scale in (((30, 20), 16.6, 1e-3), ((24, 36), 9.0, 4e-3)):
        mask = np.zeros(shape, bool)
        mask[3:-3, 4:-4] = True
        particles.append(({k: rng.normal(0, scale, shape) for k in ("aa", "cc", "ac")}, mask, h))
    with ResidualMaps(["aa", "cc", "ac"]) as figure:
        for k, (maps, mask, h) in enumerate(particles):
            figure.save(maps, mask, h, tmp_path / f"reused{k}.png", title=f"particle {k}")
            vmax = np.percentile(np.abs([m[mask] for m in maps.values()]), 99)
            for image in figure.images:  # symmetric scale of this particle's values
                assert image.get_clim() == pytest.approx((-vmax, vmax))
                assert image.get_extent() == pytest.approx(
                    (0, mask.shape[0] * h * 1e-3, mask.shape[1] * h * 1e-3, 0))
    maps, mask, h = particles[1]
    plot_residual_maps(maps, mask, h, tmp_path / "fresh.png", title="particle 1")
    assert np.array_equal(imread(tmp_path / "reused1.png"), imread(tmp_path / "fresh.png"))


def test_pixel_fields_round_trip_and_xdmf_points_at_them(tmp_path):
    a = np.arange(12.0).reshape(4, 3)
    h5, xdmf = write_pixel_fields(tmp_path / "fields.h5",
                                  {"p1": {"pixel_size_nm": 16.6, "maps": {"X": a, "u_x": -a}}})
    with h5py.File(h5) as f:
        assert np.array_equal(f["p1/X"][...], a) and f["p1"].attrs["pixel_size_nm"] == 16.6
    root = ET.parse(xdmf).getroot()
    grid = root.find(".//Grid[@Name='p1']")
    assert grid.find("Topology").attrib["Dimensions"] == "4 3"
    items = [e.text for e in grid.iter("DataItem") if e.attrib.get("Format") == "HDF"]
    assert items == ["fields.h5:/p1/X", "fields.h5:/p1/u_x"]


@pytest.mark.mpi
def test_residual_maps_drawn_by_every_rank_are_the_serial_ones(tmp_path):
    """`save_residual_maps` deals the figures over the ranks and rank 0 writes them: every
    particle's PNG exists once and is pixel for pixel the serial figure (1 and 2 ranks)."""
    from matplotlib.image import imread
    from mpi4py import MPI

    from chemomech.analysis.report import ResidualMapJob, save_residual_maps

    comm = MPI.COMM_WORLD
    out = comm.bcast(tmp_path if comm.rank == 0 else None, root=0)
    rng = np.random.default_rng(3)
    jobs = []
    for k, shape in enumerate(((30, 20), (24, 36), (18, 18))):
        mask = np.zeros(shape, bool)
        mask[2:-2, 3:-3] = True
        maps = {c: rng.normal(0, 1e-3 * (k + 1), shape) for c in ("aa", "cc", "ac")}
        jobs.append(ResidualMapJob(maps, mask, 16.6, out / f"residual_{k}.png", f"particle {k}"))
    save_residual_maps(jobs if comm.rank == 0 else None, comm)
    if comm.rank == 0:
        assert sorted(p.name for p in out.iterdir()) == [f"residual_{k}.png" for k in range(3)]
        for job in jobs:
            serial = out / f"serial_{job.path.name}"
            plot_residual_maps(job.maps, job.mask, job.pixel_size_nm, serial, job.title)
            assert np.array_equal(imread(job.path), imread(serial))
