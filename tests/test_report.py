"""Figures and ParaView fields are written, readable and complete."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import h5py
import numpy as np

from chemomech.analysis.report import (
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
