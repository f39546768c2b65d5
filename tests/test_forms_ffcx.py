"""The plain-UFL forms in forms/ compile with ffcx and equal the forms the package assembles."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dolfinx
import numpy as np
import pytest
import ufl
from dolfinx import fem
from dolfinx import mesh as dmesh
from mpi4py import MPI

from chemomech.mechanics.forms import eigenstrain, stiffness_tensor
from chemomech.mechanics.forward import ElasticityProblem
from chemomech.mechanics.materials import Material

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


def test_the_ufl_file_is_standalone():
    """forms/elasticity.py imports no chemomech code: the comparison below is not circular."""
    import ast

    tree = ast.parse(UFL_FILE.read_text())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree)
               if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module}
    assert modules == {"basix", "ufl"}


def test_plain_ufl_load_equals_the_package_load():
    """Assemble a and L of forms/elasticity.py on a real mesh and compare with
    ElasticityProblem's matrix and load vector."""
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

    bilinear = fem.create_form(
        fem.compile_form(MPI.COMM_SELF, names["a"]), [problem.V, problem.V], domain,
        {fem.IntegralType.cell: [(-1, np.arange(n_cells, dtype=np.int32))]}, {},
        {names["C"]: fem.Constant(domain, C_img)})
    A = fem.assemble_matrix(bilinear).to_dense()
    A_package = problem.A.convert("dense").getDenseArray()
    assert np.abs(A_package).max() > 1.0
    assert np.allclose(A, A_package, rtol=1e-12, atol=1e-12 * np.abs(A_package).max())
