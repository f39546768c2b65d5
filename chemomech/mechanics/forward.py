r"""Forward model: linear elasticity with an eigenstrain on one particle.

Find :math:`u \in V` with :math:`\int C:(\varepsilon(u) - \varepsilon^*) : \varepsilon(v)\,dx = 0`
for all v.  Traction-free by default: the stiffness matrix is singular with the three
rigid modes as its null space, which is attached to the PETSc matrix (and as the
near-null space for GAMG); the returned displacement is orthogonal to the rigid modes.

The stiffness matrix does not depend on the eigenstrain, so it is assembled and
factorised once and every further solve costs one back-substitution (the inverse
problem solves for 2(N+1) basis loads with the same factorisation).

Dirichlet option (what the reference code did): u equals a measured displacement image on
the boundary, :func:`dirichlet_from_image` (the image is carried onto V by
:func:`chemomech.mechanics.fields.image_to_function`, bilinear by default so that affine data are
reproduced exactly).  Composition-dependent stiffness: pass
``Material("mixed").ufl_tensor(angle, X)`` as C.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import ufl
from dolfinx import fem, la
from dolfinx import mesh as dmesh
from dolfinx.fem import petsc as fem_petsc
from petsc4py import PETSc

from chemomech.exceptions import SolverError
from chemomech.mechanics.forms import eigenstrain_load_form, elastic_energy_form

logger = logging.getLogger(__name__)

SolverKind = Literal["auto", "lu", "gamg"]

#: "auto" uses MUMPS (LDL^T) up to this many global DOFs, CG + GAMG above.
LU_MAX_DOFS = 300_000
#: GAMG for elasticity (rigid modes as near-null space): dropping graph edges weaker than
#: 1 % of the diagonal (PETSc's default keeps all) gives aggregates that follow the strong
#: couplings of the anisotropic stiffness: 16 instead of 18 CG iterations to 1e-12 at 2.6e5
#: P1 DOFs (bench/forward.py --compare).  The hierarchy is built once per operator
#: (`ksp.setUp` in the constructor) and reused by every solve.  One Chebyshev/Jacobi sweep
#: per level instead of two: more iterations (24 instead of 18 at 1e6 P1 DOFs) but 20 % less
#: time per solve.  Fischer's initial guess (the A-orthogonal projection of the new
#: solution onto the last 10 solutions, PETSc KSPGUESSFISCHER): a re-solve starts from the
#: best combination of earlier solutions, and a load in their span (M1's loads are linear
#: in the 2(N+1) coefficients) needs no iteration (bench/forward.py --resolve).
GAMG_DEFAULTS = {"pc_gamg_threshold": 0.01, "mg_levels_ksp_max_it": 1,
                 "ksp_guess_type": "fischer", "ksp_guess_fischer_model": "1,10"}


def rigid_body_modes(V: fem.FunctionSpace) -> PETSc.NullSpace:
    """Orthonormal PETSc null space of the 2-D rigid motions: x- and y-translation, rotation."""
    index_map, bs = V.dofmap.index_map, V.dofmap.index_map_bs
    n_local = index_map.size_local
    x = V.tabulate_dof_coordinates()[:n_local]
    basis = [la.vector(index_map, bs=bs, dtype=PETSc.ScalarType) for _ in range(3)]
    arrays = [b.array for b in basis]
    arrays[0][0 : bs * n_local : bs] = 1.0
    arrays[1][1 : bs * n_local : bs] = 1.0
    arrays[2][0 : bs * n_local : bs] = -x[:, 1]
    arrays[2][1 : bs * n_local : bs] = x[:, 0]
    la.orthonormalize(basis)
    vectors = [b.petsc_vec.copy() for b in basis]  # copies own their memory
    return PETSc.NullSpace().create(vectors=vectors, comm=V.mesh.comm)


def choose_solver(num_dofs: int, kind: SolverKind = "auto") -> Literal["lu", "gamg"]:
    """MUMPS (LDL^T) for small problems (<= LU_MAX_DOFS global DOFs), CG + GAMG for large
    ones."""
    if kind == "auto":
        return "lu" if num_dofs <= LU_MAX_DOFS else "gamg"
    if kind not in ("lu", "gamg"):
        raise ValueError(f"solver must be 'auto', 'lu' or 'gamg', got {kind!r}")
    return kind


def null_space_basis(nullspace: PETSc.NullSpace | None) -> np.ndarray | None:
    """The orthonormal vectors of a PETSc null space as columns (owned rows x k), or None."""
    if nullspace is None:
        return None
    return np.stack([v.getArray(readonly=True) for v in nullspace.getVecs()], axis=1)


def _remove_null_space(basis: np.ndarray | None, x: np.ndarray, comm) -> None:
    """x -= N (N^T x) in place for the columns of x (owned rows), N the orthonormal `basis`
    (classical Gram-Schmidt, as MatNullSpaceRemove)."""
    if basis is not None:
        x -= basis @ comm.allreduce(basis.T @ x)


def solve_columns(ksp: PETSc.KSP, b: np.ndarray, null_basis: np.ndarray | None = None
                  ) -> np.ndarray:
    """X = A^-1 B for the m columns of `b` (owned rows x m, numpy) with the operator of `ksp`,
    the null space (`null_space_basis`) removed from B and X.  One KSPMatSolve: with a
    factorisation (preonly + LU/Cholesky, MUMPS) a single multi-RHS back-substitution
    (MatMatSolve), which reads the factor once for all columns (benchmark
    bench/results/m2_band.json: the M2 band's CGs at the same iterations take 2.6x less CPU
    than with single solves); other KSPs solve column by column.  Collective on the KSP's
    communicator."""
    comm = ksp.getComm()
    b = np.array(b, dtype=PETSc.ScalarType, order="F", ndmin=2)
    _remove_null_space(null_basis, b, comm.tompi4py())
    n, m = b.shape
    B = PETSc.Mat().createDense([(n, PETSc.DETERMINE), (PETSc.DECIDE, m)], array=b,
                                comm=comm)
    X = PETSc.Mat().createDense([(n, PETSc.DETERMINE), (PETSc.DECIDE, m)], comm=comm)
    X.setUp()
    try:
        ksp.matSolve(B, X)
        reason = ksp.getConvergedReason()
        if reason < 0:
            raise SolverError(f"multi-RHS solve failed: KSP reason {reason} ({m} columns)")
        x = np.array(X.getDenseArray(readonly=True), order="F")
    finally:
        B.destroy()
        X.destroy()
    _remove_null_space(null_basis, x, comm.tompi4py())
    return x


class ElasticityProblem:
    """Traction-free (or Dirichlet) anisotropic elasticity on `mesh` with stiffness `C`.

    `C` is a UFL 4th-order tensor in the image frame (constant or a field of X);
    `bcs` optional Dirichlet conditions (then no null space is used); they must be built
    on the displacement space, so pass that space as ``V`` (vector Lagrange of `degree`;
    by default a new one is made).  `petsc_options` (without prefix) override the solver's
    defaults; a value None removes a default (e.g. ``{"ksp_guess_type": None}``).
    """

    _count = 0

    def __init__(self, mesh, C, degree: int = 1, solver: SolverKind = "auto",
                 bcs: list[fem.DirichletBC] | None = None, rtol: float = 1e-12,
                 petsc_options: dict | None = None, V: fem.FunctionSpace | None = None):
        self.mesh = mesh
        self.C = C
        self.bcs = list(bcs or [])
        if V is None:
            V = fem.functionspace(mesh, ("Lagrange", degree, (mesh.geometry.dim,)))
        elif V.mesh is not mesh or V.ufl_element().embedded_superdegree != degree \
                or V.dofmap.index_map_bs != mesh.geometry.dim:
            raise ValueError(f"the displacement space must be vector Lagrange of degree "
                             f"{degree} on `mesh`")
        self.V = V
        for bc in self.bcs:
            if not self.V._cpp_object.contains(bc.function_space):
                raise ValueError("a Dirichlet condition lives on another function space "
                                 "(DOLFINx would ignore it): build it on problem.V, e.g. "
                                 "dirichlet_from_image(V, ...) with the same V passed here")
        self._v = ufl.TestFunction(self.V)
        self.a = fem.form(elastic_energy_form(ufl.TrialFunction(self.V), self._v, C))
        self.A = fem_petsc.assemble_matrix(self.a, bcs=self.bcs)
        self.A.assemble()
        self.nullspace = None if self.bcs else rigid_body_modes(self.V)
        if self.nullspace is not None:
            self.A.setNullSpace(self.nullspace)
            self.A.setNearNullSpace(self.nullspace)
        self._null_basis = null_space_basis(self.nullspace)  # for solve_columns
        n_dofs = self.V.dofmap.index_map.size_global * self.V.dofmap.index_map_bs
        self.num_dofs = n_dofs
        self.solver = choose_solver(n_dofs, solver)
        self.ksp = self._make_ksp(rtol, petsc_options or {})

    def _make_ksp(self, rtol: float, extra: dict) -> PETSc.KSP:
        ElasticityProblem._count += 1
        prefix = f"chemomech_elasticity_{ElasticityProblem._count}_"
        if self.solver == "lu":  # K is symmetric: MUMPS LDL^T, half the factor of LU
            opts = {"ksp_type": "preonly", "pc_type": "cholesky",
                    "pc_factor_mat_solver_type": "mumps"}
            if self.nullspace is not None:  # singular: let MUMPS detect the null pivots
                opts |= {"mat_mumps_icntl_24": 1, "mat_mumps_icntl_25": 0}
        else:
            opts = {"ksp_type": "cg", "pc_type": "gamg", "ksp_rtol": rtol, "ksp_atol": 0.0,
                    "ksp_max_it": 2000, "pc_gamg_coarse_eq_limit": 1000,
                    "mg_levels_ksp_type": "chebyshev", "mg_levels_pc_type": "jacobi"} \
                | GAMG_DEFAULTS
        opts = {k: v for k, v in (opts | extra).items() if v is not None}  # None: drop it
        db = PETSc.Options()
        for key, value in opts.items():
            db[prefix + key] = value
        ksp = PETSc.KSP().create(self.mesh.comm)
        ksp.setOperators(self.A)
        ksp.setOptionsPrefix(prefix)
        ksp.setFromOptions()
        ksp.setUp()  # MUMPS reads its mat_mumps_* options here, at the factorisation
        for key in opts:
            del db[prefix + key]
        return ksp

    def load_vector(self, eps_star, homogeneous: bool = False) -> PETSc.Vec:
        """Assemble b = L(v) for the eigenstrain `eps_star` (a UFL 2x2 tensor).

        With Dirichlet conditions the boundary values are lifted into b, unless
        `homogeneous` (then b = 0 on the constrained DOFs: the load of a response that
        vanishes on the boundary, e.g. one basis load of the inverse problem)."""
        return self.assemble_load(eigenstrain_load_form(eps_star, self._v, self.C), homogeneous)

    def load_form(self, eps_star) -> fem.Form:
        """The compiled load form L(v) of `eps_star`: compile once, change its constants and
        reassemble it with `assemble_load` (the basis loads of the inverse problem)."""
        return fem.form(eigenstrain_load_form(eps_star, self._v, self.C))

    def assemble_load(self, linear_form, homogeneous: bool = False) -> PETSc.Vec:
        """Assemble a linear form in the test function `self.test_function` (UFL, or compiled
        by `load_form`) with the boundary values lifted (or zero on the constrained DOFs if
        `homogeneous`)."""
        compiled = linear_form if isinstance(linear_form, fem.Form) else fem.form(linear_form)
        b = fem_petsc.assemble_vector(compiled)
        if self.bcs and not homogeneous:
            fem_petsc.apply_lifting(b, [self.a], bcs=[self.bcs])
        b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        fem_petsc.set_bc(b, self.bcs, alpha=0.0 if homogeneous else 1.0)
        return b

    @property
    def test_function(self):
        """The test function v of the displacement space."""
        return self._v

    def boundary_load(self) -> PETSc.Vec | None:
        """The load of the Dirichlet values alone, -A g lifted and g on the constrained DOFs
        (so A^-1 of it is the elastic extension of the boundary data); None without bcs."""
        if not self.bcs:
            return None
        b = fem_petsc.create_vector(self.V)
        with b.localForm() as local:
            local.set(0.0)
        fem_petsc.apply_lifting(b, [self.a], bcs=[self.bcs])
        b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        fem_petsc.set_bc(b, self.bcs)
        return b

    def solve_vector(self, b: PETSc.Vec, u: fem.Function | None = None) -> fem.Function:
        """Solve A u = b for an assembled load vector (rigid modes removed)."""
        u = u or fem.Function(self.V, name="u")
        if self.nullspace is not None:
            self.nullspace.remove(b)
        self.ksp.solve(b, u.x.petsc_vec)
        reason = self.ksp.getConvergedReason()
        if reason < 0:
            raise SolverError(f"elasticity solve failed: KSP reason {reason} "
                              f"({self.solver}, {self.num_dofs} DOFs)")
        if self.nullspace is not None:
            self.nullspace.remove(u.x.petsc_vec)
        u.x.scatter_forward()
        return u

    def solve_columns(self, b: np.ndarray) -> np.ndarray:
        """Solve A U = B for m assembled loads at once: `b` (owned DOFs x m) -> U (owned DOFs
        x m), rigid modes removed (`solve_columns`)."""
        return solve_columns(self.ksp, b, self._null_basis)

    def solve(self, eps_star, u: fem.Function | None = None) -> fem.Function:
        """Displacement u for the eigenstrain `eps_star` (UFL 2x2 tensor, image frame)."""
        b = self.load_vector(eps_star)
        try:
            return self.solve_vector(b, u)
        finally:
            b.destroy()


def boundary_facets(mesh, facet_tags=None, markers=None) -> np.ndarray:
    """Local indices of exterior facets, or of the facets of `facet_tags` with `markers`."""
    fdim = mesh.topology.dim - 1
    if facet_tags is None:
        mesh.topology.create_connectivity(fdim, mesh.topology.dim)
        return dmesh.exterior_facet_indices(mesh.topology)
    markers = np.atleast_1d(markers if markers is not None else np.unique(facet_tags.values))
    return facet_tags.indices[np.isin(facet_tags.values, markers)]


def dirichlet_bc(u_boundary: fem.Function, facet_tags=None, markers=None) -> fem.DirichletBC:
    """Dirichlet condition u = `u_boundary` on the exterior boundary (or tagged facets)."""
    V = u_boundary.function_space
    facets = boundary_facets(V.mesh, facet_tags, markers)
    dofs = fem.locate_dofs_topological(V, V.mesh.topology.dim - 1, facets)
    return fem.dirichletbc(u_boundary, dofs)


def dirichlet_from_image(V: fem.FunctionSpace, displacement, pixel_size_nm: float, *,
                         mask=None, facet_tags=None, markers=None,
                         method: Literal["l2", "bilinear"] = "bilinear",
                         fill: Literal["nearest", "linear"] = "linear") -> fem.DirichletBC:
    r"""Dirichlet condition :math:`u = d` on the boundary from a displacement image d (nm).

    `displacement`: (nx, ny, 2) in the image frame (x = axis 0).  The mesh boundary runs
    half a pixel beyond the outermost pixel centres, so NaN pixels (and pixels outside
    `mask`) are filled by linear extrapolation from the nearest valid pixel (exact for
    affine data; ``fill="nearest"`` copies it instead) before carrying d onto V.  Pass the
    same V to :class:`ElasticityProblem`.  Collective.
    """
    from chemomech.mechanics.fields import image_to_function

    u_boundary = image_to_function(displacement, pixel_size_nm, V, method, mask=mask,
                                   name="u_boundary", fill=fill)
    return dirichlet_bc(u_boundary, facet_tags, markers)


def l2_norm(f: fem.Function) -> float:
    r""":math:`\|f\|_{L^2} = (\int f\cdot f\,dx)^{1/2}`, reduced over all ranks."""
    local = fem.assemble_scalar(fem.form(ufl.inner(f, f) * ufl.dx))
    return float(np.sqrt(f.function_space.mesh.comm.allreduce(local)))
