"""The notebooks: paired .ipynb without outputs, executed headless; notebook 2 under MPI.

Each `notebooks/NN_*.py` (jupytext percent format, the reviewed source) is executed with
nbclient in a fresh kernel whose working folder is `notebooks/`; any cell error fails.
The notebooks on LFP50_P2 need `../shared/data` (skipped with a message where it is absent,
as the other real-data tests).
"""

from __future__ import annotations

import runpy
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))
REAL_DATA = ("03_lfp50_p2", "04_dislocations_m2")


def test_there_are_six_notebooks_each_paired_without_outputs():
    assert [p.stem[:2] for p in SOURCES] == ["01", "02", "03", "04", "05", "06"]
    for source in SOURCES:
        paired = source.with_suffix(".ipynb")
        assert paired.exists(), f"{paired.name} missing: jupytext --sync {source.name}"
        stored = nbformat.read(paired, as_version=4)
        assert all(not c.get("outputs") and not c.get("execution_count")
                   for c in stored.cells if c.cell_type == "code"), f"{paired.name} has outputs"
        # the pair has not drifted from the reviewed source
        expected = jupytext.read(source)
        assert [c.source for c in stored.cells] == [c.source for c in expected.cells], \
            f"{paired.name} differs from {source.name}: jupytext --sync {source.name}"


def _execute(source: Path) -> None:
    notebook = jupytext.read(source)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_notebook_runs_headless(source, request):
    if source.stem in REAL_DATA:
        request.getfixturevalue("real_particle_path")  # skips where ../shared is absent
    _execute(source)


@pytest.mark.mpi
@pytest.mark.mpi_only
def test_notebook_2_runs_under_mpi(monkeypatch):
    """Under `mpirun -n 2 pytest -m mpi` both ranks run the notebook's script together
    (distributed mesh, joint fit); its own asserts (Taylor rate, TAO = fast path) must hold.
    Deselected on one rank (``mpi_only``): the serial run is the headless notebook test."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(ROOT)
    import matplotlib

    matplotlib.use("Agg")
    runpy.run_path(str(NOTEBOOKS / "02_learning_on_twins.py"), run_name="__main__")
