"""One particle of the inverse problem: its setup from images, its factorised operator and
basis loads, and the split of the world into particle groups."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from dolfinx import fem
from mpi4py import MPI
from petsc4py import PETSc

from chemomech.exceptions import InputError
from chemomech.inverse.misfit import PixelMisfit
from chemomech.mechanics.forms import eigenstrain
from chemomech.mechanics.forward import ElasticityProblem, SolverKind
from chemomech.mechanics.materials import Material

logger = logging.getLogger(__name__)


def split_for_particles(comm: MPI.Comm, n_particles: int) -> tuple[MPI.Comm, list[int]]:
    """Split `comm` into particle groups: (this rank's sub-communicator, its particle indices).

    With n_particles >= size every rank is its own group and holds particles
    rank, rank + size, ...; otherwise the ranks form n_particles contiguous groups, one
    particle each, and DOLFINx partitions that particle over the group.
    """
    if n_particles < 1:
        raise InputError(f"need at least one particle, got {n_particles}")
    size, rank = comm.size, comm.rank
    mine = particles_of_rank(rank, size, n_particles)
    color = rank if n_particles >= size else mine[0]
    return comm.Split(color=color, key=rank), mine


def particles_of_rank(rank: int, size: int, n_particles: int) -> list[int]:
    """The particle indices rank `rank` of `size` holds in `split_for_particles`."""
    if n_particles >= size:
        return list(range(rank, n_particles, size))
    return [rank * n_particles // size]


@dataclass
class ParticleSetup:
    """One particle of the joint inversion.

    `X`: Li fraction as a scalar fem.Function on the particle mesh (nm); `rotation_rad`:
    angle from image x to crystal a (ccw); `misfit`: its data misfit, built on a vector
    Lagrange space of degree `fe_degree` on the same mesh.
    """

    name: str
    X: fem.Function
    rotation_rad: float
    misfit: PixelMisfit
    fe_degree: int = 1
    u_boundary: fem.Function | None = None  # Dirichlet data on misfit.V (None: traction-free)
    pieces: int = 1  # connected pieces of the valid data (each with its own rigid modes)
    misfit_mask: np.ndarray | None = None  # the meshed pixel mask (for boundary images)
    pixel_size_nm: float | None = None
    sampler: object | None = None  #: the PixelSampler at all meshed pixels (for model maps)

    @property
    def boundary_condition(self) -> str:
        """"dirichlet" when boundary data are imposed, else "traction_free"."""
        return "traction_free" if self.u_boundary is None else "dirichlet"

    @property
    def mesh(self):
        """The particle mesh (coordinates in nm)."""
        return self.X.function_space.mesh


def particle_setup(name: str, particle_mesh, X_image: np.ndarray, rotation_rad: float, *,
                   displacement: np.ndarray | None = None, strain: np.ndarray | None = None,
                   edge_exclusion_px: int = 2, fe_degree: int = 1,
                   X_method: str = "l2", boundary_condition: str = "traction_free",
                   boundary_displacement: np.ndarray | None = None,
                   fragmented_data: str = "per_piece") -> ParticleSetup:
    """A `ParticleSetup` from a `chemomech.mechanics.mesh.ParticleMesh` and images on its
    pixel grid.

    `X_image` (nx, ny) Li fraction; exactly one of `displacement` (nx, ny, 2) nm, image frame
    (displacement misfit) or `strain` (nx, ny, 3) = (e_xx, e_yy, e_xy) image frame (strain
    misfit).  Pixels of the meshed mask within `edge_exclusion_px` of its edge and pixels with
    non-finite data are left out.  X is carried onto P1 by
    `chemomech.mechanics.fields.image_to_function`.

    ``boundary_condition="dirichlet"``: the measured displacement (`boundary_displacement`, or
    `displacement`) is imposed on the whole boundary (bilinear image interpolation, NaN pixels
    filled by linear extrapolation, `chemomech.mechanics.forward.dirichlet_from_image`); the
    misfit then has no rigid modes (the data fix them).  Connected pieces of valid
    displacement data each get their own rigid modes (`fragmented_data="per_piece"`) or are
    refused (`"refuse"`; always under Dirichlet), `chemomech.inverse.misfit.check_fragments`.
    """
    from chemomech.inverse.misfit import (
        DisplacementMisfit,
        StrainMisfit,
        check_fragments,
        connected_pieces,
    )
    from chemomech.io.stack import interior_pixels
    from chemomech.mechanics.fields import PixelSampler, image_to_function

    if (displacement is None) == (strain is None):
        raise InputError("give exactly one of displacement and strain", field="misfit")
    if boundary_condition not in ("traction_free", "dirichlet"):
        raise InputError(f"must be 'traction_free' or 'dirichlet', got {boundary_condition!r}",
                         field="boundary_condition")
    if fragmented_data not in ("per_piece", "refuse"):
        raise InputError(f"must be 'per_piece' or 'refuse', got {fragmented_data!r}",
                         field="fragmented_data")
    mask = particle_mesh.mask
    dirichlet = boundary_condition == "dirichlet"
    u_data = boundary_displacement if boundary_displacement is not None else displacement
    if dirichlet:
        if u_data is None:
            raise InputError("dirichlet needs the measured displacement (boundary_displacement)",
                             field="boundary_condition")
        check_boundary_data(name, mask, u_data)
    n_pieces, labels = 1, None
    if displacement is not None or dirichlet:
        # the pieces of the integration (finite data), not of the meshed mask: removing a
        # one-pixel bridge in meshing does not split consistently integrated data
        valid = np.all(np.isfinite(np.asarray(u_data, float)), axis=-1)
        n_pieces = check_fragments(valid, mask | valid, name, fragmented_data,
                                   boundary_condition)
        labels = connected_pieces(valid)[0] if n_pieces > 1 else None
    mesh, h = particle_mesh.mesh, particle_mesh.pixel_size_nm
    X = image_to_function(X_image, h, fem.functionspace(mesh, ("Lagrange", 1)), X_method,
                          mask=mask, name="X")
    V = fem.functionspace(mesh, ("Lagrange", fe_degree, (2,)))
    idx = particle_mesh.pixel_indices()
    sampler = PixelSampler(V, idx * h)
    used = interior_pixels(mask, edge_exclusion_px)[idx[:, 0], idx[:, 1]]
    if displacement is not None:
        d = np.asarray(displacement, float)[idx[:, 0], idx[:, 1]]
        used &= np.all(np.isfinite(d), axis=1)
        pieces = None
        if labels is not None:
            pieces = labels[idx[:, 0], idx[:, 1]]
            counts = np.bincount(pieces[used], minlength=pieces.max() + 1)
            small = np.flatnonzero((counts > 0) & (counts < 3))
            if small.size:  # too few pixels to carry their own rigid modes: no information
                logger.warning("%s: %d data piece(s) with < 3 used pixels left out", name,
                               small.size)
                used &= ~np.isin(pieces, small)
        misfit = DisplacementMisfit.from_sampler(sampler, np.nan_to_num(d), used, name=name,
                                                 pieces=pieces, rigid_modes=not dirichlet)
    else:
        e = np.asarray(strain, float)[idx[:, 0], idx[:, 1]]
        used &= np.all(np.isfinite(e), axis=1)
        misfit = StrainMisfit.from_sampler(sampler, np.nan_to_num(e), used, name=name)
    u_boundary = None
    if dirichlet:
        u_boundary = image_to_function(np.asarray(u_data, float), h, V, "bilinear", mask=mask,
                                       name="u_boundary", fill="linear")
    return ParticleSetup(name, X, rotation_rad, misfit, fe_degree=fe_degree,
                         u_boundary=u_boundary, pieces=n_pieces, misfit_mask=mask,
                         pixel_size_nm=h, sampler=sampler)


def check_boundary_data(name: str, mask: np.ndarray, displacement: np.ndarray) -> None:
    """Dirichlet needs finite measured displacement on the particle's outermost pixels (the
    mask's boundary ring); raises naming the particle when all of them are NaN, warns when
    more than half are (they are filled by linear extrapolation)."""
    from chemomech.io.stack import interior_pixels

    mask = np.asarray(mask, bool)
    d = np.asarray(displacement, float)
    if d.shape != mask.shape + (2,):
        raise InputError(f"particle {name!r}: displacement shape {d.shape} does not match the "
                         f"mask {mask.shape} + (2,)", field="boundary_condition")
    ring = mask & ~interior_pixels(mask, 1)
    finite = ring & np.all(np.isfinite(d), axis=-1)
    if not finite.any():
        raise InputError(f"particle {name!r}: boundary_condition dirichlet needs measured "
                         f"displacement on the boundary, but all {int(ring.sum())} boundary "
                         f"pixels are NaN", field="boundary_condition")
    if finite.sum() < 0.5 * ring.sum():
        logger.warning("%s: %d of %d boundary pixels have no displacement data (filled by "
                       "extrapolation)", name, int(ring.sum() - finite.sum()), int(ring.sum()))


def coefficient_count(degree: int) -> int:
    """Length 2(N+1) of the control vector (a_{0..N,a}, a_{0..N,c})."""
    return 2 * (degree + 1)


def split_coefficients(coefficients: Sequence[float], degree: int) -> tuple[np.ndarray, ...]:
    """(a_{.,a}, a_{.,c}) from the stacked control vector."""
    a = np.asarray(coefficients, dtype=float)
    return a[: degree + 1].copy(), a[degree + 1:].copy()


class _Particle:
    """Factorised forward operator, basis loads and fixed load of one particle.

    u(a) = A^-1 (b_0 + sum_k a_k b_k): the basis loads b_k vanish on Dirichlet DOFs; the fixed
    load b_0 (None if zero) holds the lifted Dirichlet data and, in plane strain, the load of
    the b-eigenstrain f_b(X) (`Material.b_coupling`).  Without Dirichlet data A is singular
    and A^-1 is the pseudo-inverse A^+ (rigid modes removed).

    With the direct solver the responses u_k = A^-1 b_k (and u_0 = A^-1 b_0) are computed
    once, in one multi-right-hand-side back-substitution (`ElasticityProblem.solve_many`), and
    every forward solve is their combination u(a) = u_0 + sum_k a_k u_k (the same vector to
    rounding: u is linear in a).  With CG + GAMG each forward solve is one solve.
    """

    def __init__(self, setup: ParticleSetup, degree: int, material: Material,
                 solver: SolverKind):
        from chemomech.mechanics.forms import out_of_plane_load_form, shifted_legendre_series
        from chemomech.mechanics.forward import dirichlet_bc

        self.setup = setup
        self.misfit = setup.misfit
        mesh = setup.mesh
        n_c = coefficient_count(degree)
        t0 = time.perf_counter()
        C = material.ufl_tensor(setup.rotation_rad, setup.X)
        Vm = self.misfit.V
        if Vm.mesh is not mesh:
            raise InputError(f"particle {setup.name!r}: the misfit space is not on the "
                             f"particle mesh", field="misfit")
        bcs = [] if setup.u_boundary is None else [dirichlet_bc(setup.u_boundary)]
        try:
            self.problem = ElasticityProblem(mesh, C, degree=setup.fe_degree, solver=solver,
                                             bcs=bcs, V=Vm)
        except ValueError as err:
            raise InputError(f"particle {setup.name!r}: {err}", field="misfit") from None
        self.V = self.problem.V
        self.setup_time = time.perf_counter() - t0
        t0 = time.perf_counter()
        unit = fem.Constant(mesh, np.zeros(n_c))
        eps_star = eigenstrain(setup.X, [unit[n] for n in range(degree + 1)],
                               [unit[degree + 1 + n] for n in range(degree + 1)],
                               setup.rotation_rad)
        self.loads: list[PETSc.Vec] = []
        load_form = self.problem.load_form(eps_star)  # compiled once, assembled 2(N+1) times
        for k in range(n_c):
            unit.value[:] = 0.0
            unit.value[k] = 1.0
            self.loads.append(self.problem.assemble_load(load_form, homogeneous=True))
        self.offset = self.problem.boundary_load()
        B = material.b_coupling(setup.rotation_rad, setup.X)
        if B is not None and np.any(material.b_coefficients):
            f_b = shifted_legendre_series(setup.X, material.b_coefficients)
            b_law = self.problem.assemble_load(
                out_of_plane_load_form(f_b, B, self.problem.test_function), homogeneous=True)
            if self.offset is None:
                self.offset = b_law
            else:
                self.offset.axpy(1.0, b_law)
                b_law.destroy()
        self.load_time = time.perf_counter() - t0
        self._rhs = self.loads[0].duplicate()
        self._responses: list[fem.Function] | None = None
        self._offset_response: fem.Function | None = None

    @property
    def comm(self) -> MPI.Comm:
        return self.setup.mesh.comm

    def solve(self, coefficients: Sequence[float], u: fem.Function | None = None,
              homogeneous: bool = False) -> fem.Function:
        """u = A^-1 (b_0 + sum_k a_k b_k); without b_0 if `homogeneous` (the tangent-linear
        response).  Direct solver: the combination of the cached responses (see the class);
        else one solve."""
        if self.problem.solver == "lu":
            responses = self.basis_responses()
            u = u or fem.Function(self.V, name="u")
            values = sum(float(c) * r.x.array for c, r in
                         zip(coefficients, responses, strict=True))
            if self._offset_response is not None and not homogeneous:
                values = values + self._offset_response.x.array
            u.x.array[:] = values
            return u
        self._rhs.zeroEntries()
        self._rhs.maxpy([float(c) for c in coefficients], self.loads)
        if self.offset is not None and not homogeneous:
            self._rhs.axpy(1.0, self.offset)
        return self.problem.solve_vector(self._rhs, u)

    def solve_adjoint(self, g) -> fem.Function:
        """lambda = A^-1 g for a ghost-consistent dual vector g (A symmetric)."""
        n_owned = self.V.dofmap.index_map.size_local * self.V.dofmap.index_map_bs
        self._rhs.array_w[:] = g.array[:n_owned]
        return self.problem.solve_vector(self._rhs, fem.Function(self.V))

    def basis_responses(self) -> list[fem.Function]:
        """u_k = A^-1 b_k for every basis load (computed once with `solve_many`, together
        with u_0 = A^-1 b_0; do not modify them)."""
        if self._responses is None:
            loads = self.loads + ([] if self.offset is None else [self.offset])
            solved = self.problem.solve_many(loads)
            self._responses = solved[: len(self.loads)]
            self._offset_response = solved[len(self.loads)] if self.offset is not None \
                else None
        return self._responses

    def boundary_response(self, displacement: np.ndarray) -> np.ndarray:
        """B A^-1 b_0(n): the observed response to a displacement image n (nx, ny, 2) nm
        imposed as Dirichlet data (eigenstrain zero); the data themselves are restored.
        Collective on the particle's communicator."""
        from chemomech.mechanics.fields import image_to_function

        g = self.setup.u_boundary
        if g is None:
            raise InputError(f"particle {self.setup.name!r} has no Dirichlet data",
                             field="boundary_condition")
        saved = g.x.array.copy()
        mask = self.setup.misfit_mask
        g.x.array[:] = image_to_function(displacement, self.setup.pixel_size_nm, self.V,
                                         "bilinear", mask=mask, fill="linear").x.array
        try:
            b = self.problem.boundary_load()
            u = self.problem.solve_vector(b, fem.Function(self.V))
            b.destroy()
        finally:
            g.x.array[:] = saved
        return self.misfit.observe(u)

    def boundary_response_adjoint(self, y: np.ndarray, valid: np.ndarray) -> np.ndarray:
        r"""This rank's part of the transpose of `boundary_response` (sum it over the particle's
        communicator): the image :math:`m` (nx, ny, 2), zero off `valid` (the finite pixels of
        the imposed displacement images), with :math:`\sum_\text{ranks} m\cdot n =
        y\cdot B A^{-1} b_0(n)` for `y` this rank's misfit rows.

        :math:`b_0(n) = E\,g`, g the bilinear interpolant of the linearly filled image at the
        constrained DOFs (``image_to_function(..., "bilinear", fill="linear")``), E the lift
        (interior rows :math:`-A^0_{IB} g`, constrained rows g, :math:`A^0` without bcs); so
        :math:`m = F^T W^T (\lambda_B - A^0_{BI}\lambda_I)`, :math:`\lambda = A^{-1} B^T y`
        (A symmetric), F the fill and W the interpolation matrices
        (`chemomech.mechanics.fields.fill_linear_matrix`, `bilinear_weights`).  Collective."""
        from dolfinx import la
        from dolfinx.fem import petsc as fem_petsc

        from chemomech.mechanics.fields import bilinear_weights, fill_linear_matrix

        if self.setup.u_boundary is None:
            raise InputError(f"particle {self.setup.name!r} has no Dirichlet data",
                             field="boundary_condition")
        rhs = fem.Function(self.V).x
        rhs.array[:] = self.misfit.B.T @ np.asarray(y, float)
        rhs.scatter_reverse(la.InsertMode.add)
        lam = self.solve_adjoint(rhs)
        dofs, n_owned = self.problem.bcs[0].dof_indices()
        owned = dofs[:n_owned]
        if getattr(self, "_A0", None) is None:
            self._A0 = fem_petsc.assemble_matrix(self.problem.a)
            self._A0.assemble()
        lam_I = lam.x.petsc_vec.copy()
        lam_I.array_w[owned] = 0.0
        A0_lam = lam_I.duplicate()
        self._A0.mult(lam_I, A0_lam)
        e = lam.x.array[owned] - A0_lam.array_r[owned]
        lam_I.destroy()
        A0_lam.destroy()
        bs = self.V.dofmap.index_map_bs
        points = self.V.tabulate_dof_coordinates()[owned // bs]
        shape = self.setup.misfit_mask.shape
        W = bilinear_weights(points, shape, self.setup.pixel_size_nm)
        F = fill_linear_matrix(np.asarray(valid, bool) & self.setup.misfit_mask)
        out = np.zeros(shape + (bs,))
        for c in range(bs):
            sel = owned % bs == c
            out[..., c] = (F.T @ (W[sel].T @ e[sel])).reshape(shape)
        return out

    def offset_response(self) -> fem.Function | None:
        """u_0 = A^-1 b_0, the response at a = 0 (None when b_0 = 0)."""
        if self.offset is None:
            return None
        return self.solve(np.zeros(len(self.loads)), fem.Function(self.V))
