"""The plain-UFL forms in forms/ compile with ffcx and equal the forms the package assembles."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

dolfinx = pytest.importorskip("dolfinx")

import ufl  # noqa: E402
from dolfinx import fem  # noqa: E402
from dolfinx import mesh as dmesh  # noqa: E402

from chemomech.mechanics.forms import eigenstrain, stiffness_tensor  # noqa: E402
from chemomech.mechanics.forward import ElasticityProblem  # noqa: E402
from chemomech.mechanics.materials import Material  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
UFL_FILE = ROOT / "forms" / "elasticity.py"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def test_ffcx_compiles_the_elasticity_forms_to_valid_c(tmp_path):
    subprocess.run([sys.executable, "-m", "ffcx", str(UFL_FILE), "-d", str(tmp_path)],
                   check=True, env=_env(), cwd=tmp_path, capture_output=True)
    header = (tmp_path / "elasticity.h").read_text()
    source = tmp_path / "elasticity.c"
    assert source.exists()
    for name in ("form_elasticity_a", "form_elasticity_L"):
        assert f"ufcx_form* {name}" in header
        assert name in source.read_text()
    compiler = shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler to check the generated code")
    import ffcx.codegeneration

    include = Path(ffcx.codegeneration.__file__).parent  # ufcx.h
    subprocess.run([compiler, "-c", "-std=c17", f"-I{include}", str(source), "-o",
                    str(tmp_path / "elasticity.o")], check=True, capture_output=True)
    assert (tmp_path / "elasticity.o").stat().st_size > 0


def test_plain_ufl_load_equals_the_package_load():
    """Assemble L of forms/elasticity.py on a real mesh and compare with ElasticityProblem."""
    ufd = ufl.algorithms.load_ufl_file(str(UFL_FILE))
    names = ufd.object_by_name
    domain = dmesh.create_rectangle(MPI.COMM_SELF, [[0, 0], [3, 2]], [6, 4],
                                    dmesh.CellType.triangle)
    Q = fem.functionspace(domain, ("Lagrange", 1))
    X = fem.Function(Q)
    X.interpolate(lambda x: 0.5 * (1 + np.tanh(x[0] - 1.5 + 0.2 * x[1])))
    angle, ca, cc = 0.6, [-0.02, 0.025, 0.004], [0.01, -0.01, 0.002]
    C_img = Material().image_tensor(angle)
    problem = ElasticityProblem(domain, stiffness_tensor(C_img), degree=1, solver="lu")
    expected = problem.load_vector(eigenstrain(X, ca, cc, angle)).array.copy()

    compiled = fem.compile_form(MPI.COMM_SELF, names["L"])
    n_cells = domain.topology.index_map(2).size_local
    form = fem.create_form(
        compiled, [problem.V], domain,
        {fem.IntegralType.cell: [(-1, np.arange(n_cells, dtype=np.int32))]},
        {names["X"]: X},
        {names["C"]: fem.Constant(domain, C_img),
         names["coefficients_a"]: fem.Constant(domain, np.array(ca)),
         names["coefficients_c"]: fem.Constant(domain, np.array(cc)),
         names["angle"]: fem.Constant(domain, angle)})
    assembled = fem.assemble_vector(form)
    assembled.scatter_reverse(dolfinx.la.InsertMode.add)
    assert np.abs(expected).max() > 1.0
    assert np.allclose(assembled.array, expected, rtol=1e-12, atol=1e-12 * np.abs(
        expected).max())
