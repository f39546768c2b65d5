"""The shipped example scripts run and write what their docstrings promise."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from mpi4py import MPI

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="serial script; one rank")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduce_study_writes_the_table_and_chart_of_the_readme(real_particle_path,
                                                                  tmp_path):
    """N = 1 of examples/reproduce_study.py on LFP50_P2: the README's first column
    (bench/results/study.json) within 1 % of M0's error, and its files."""
    assert _load("reproduce_study").main(["--data", str(real_particle_path), "--output",
                                          str(tmp_path), "--degrees", "1"]) == 0
    for name in ("table.md", "table.json", "model_error.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    got = {(r["bc"], r["misfit"]): r for r in json.loads((tmp_path / "table.json")
                                                          .read_text())["rows"]}
    bench = {(r["bc"], r["misfit"]): r for r in json.loads(
        (ROOT / "bench/results/study.json").read_text())["rows"] if r["N"] == 1}
    assert got.keys() == bench.keys()
    for key, row in got.items():
        assert abs(row["change"] - bench[key]["change"]) < 1.0, key
    assert got["dirichlet", "displacement"]["change"] < -20.0  # the study: -19 %
