r"""The bridge between pixel images and finite element fields, both directions.

Images to fields, :func:`image_to_function`.  The default ``method="l2"`` is the L2
projection of the piecewise-constant pixel field :math:`I_h` (pixel (i, j) is the square of
side h centred at :math:`(i h, j h)`): find :math:`f \in V` with
:math:`\int f\,v\,dx = \int I_h\,v\,dx` for all v.  The right-hand side is integrated with a
Gauss rule of degree ``quadrature_degree`` per cell (default 2p + 4 for degree-p spaces, i.e.
~3 points per pixel for one-pixel cells), each point taking the value of the pixel it falls
in; this is exact for constant images and first-order accurate in the pixel jumps otherwise.
It smooths pixel noise and conserves the mean.  ``method="bilinear"`` interpolates the bilinear
interpolant of the pixel centres at the DOF points instead.  NaN pixels (and pixels outside an
optional mask) are first replaced by the nearest valid pixel (or extrapolated linearly from
it, ``fill="linear"``), so nothing undefined leaks in.

Fields to pixels, :class:`PixelSampler`: the observation operator B (hIPPYlib vocabulary)
that evaluates a FE function at pixel centres.  Each point is owned by exactly one rank (the
lowest rank whose owned cells contain it); a point outside the mesh (the simplified boundary
may cut a pixel centre) is evaluated at the closest point of the nearest cell, and the number
of such points is logged.  Strains and other UFL expressions are sampled by
:func:`sample_expression`: interpolation into a discontinuous Lagrange space of the right
degree (exact for the strain of a displacement in the sampler's space on affine cells), then B.
"""

from __future__ import annotations

import functools
import logging
from typing import Literal

import numpy as np
import scipy.sparse
from mpi4py import MPI

from chemomech.exceptions import InputError
from chemomech.mechanics.mesh import fill_nearest

logger = logging.getLogger(__name__)


def _valid_pixels(image: np.ndarray, mask) -> np.ndarray:
    valid = np.all(np.isfinite(image), axis=-1)
    return valid if mask is None else valid & np.asarray(mask, bool)


def fill_linear(image: np.ndarray, valid: np.ndarray, max_px: float = 2.0) -> np.ndarray:
    r"""Fill invalid pixels p by first-order extrapolation from the nearest valid pixel q.

    :math:`I(p) = I(q) + \nabla I(q)\cdot(p - q)` within `max_px` pixels of the valid set
    (central or one-sided differences over valid neighbours), the nearest value beyond.
    Exact for affine images; `image` is (nx, ny, k).
    """
    from scipy import ndimage

    if not valid.any():
        raise InputError("image has no finite value inside the mask", field="image")
    dist, (ii, jj) = ndimage.distance_transform_edt(~valid, return_indices=True)
    base = image[ii, jj]  # nearest fill
    out = base.copy()
    near = (~valid) & (dist <= max_px)
    for axis, offset in ((0, np.arange(image.shape[0])[:, None] - ii),
                         (1, np.arange(image.shape[1])[None, :] - jj)):
        fwd_ok = np.zeros_like(valid)
        bwd_ok = np.zeros_like(valid)
        fwd = np.zeros_like(base)
        bwd = np.zeros_like(base)
        lo = [slice(None)] * 2
        hi = [slice(None)] * 2
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        lo, hi = tuple(lo), tuple(hi)
        ok = valid[lo] & valid[hi]
        diff = base[hi] - base[lo]
        fwd_ok[lo], fwd[lo] = ok, diff
        bwd_ok[hi], bwd[hi] = ok, diff
        both = (fwd_ok & bwd_ok)[..., None]
        grad = np.where(both, 0.5 * (fwd + bwd),
                        np.where(fwd_ok[..., None], fwd,
                                 np.where(bwd_ok[..., None], bwd, 0.0)))
        out[near] += (grad[ii, jj] * offset[..., None])[near]
    return out


def fill_linear_matrix(valid: np.ndarray, max_px: float = 2.0) -> scipy.sparse.csr_matrix:
    """The linear map of `fill_linear` for a fixed `valid` mask: sparse F (n_pixels, n_pixels)
    on the flattened (C-order) image with F @ I[..., c].ravel() = fill_linear(I)[..., c]
    (its transpose carries an adjoint image back through the fill)."""
    from scipy import ndimage

    valid = np.asarray(valid, bool)
    if not valid.any():
        raise InputError("image has no finite value inside the mask", field="image")
    shape = valid.shape
    dist, (ii, jj) = ndimage.distance_transform_edt(~valid, return_indices=True)
    flat = np.ravel_multi_index
    p = np.arange(valid.size)
    q = flat((ii.ravel(), jj.ravel()), shape)
    rows, cols, vals = [p], [q], [np.ones(valid.size)]
    near = ((~valid) & (dist <= max_px)).ravel()
    for axis, offset in ((0, (np.arange(shape[0])[:, None] - ii).ravel()),
                         (1, (np.arange(shape[1])[None, :] - jj).ravel())):
        qi = np.stack([ii.ravel(), jj.ravel()])
        up, down = qi.copy(), qi.copy()
        up[axis] += 1
        down[axis] -= 1
        fwd = near & (up[axis] < shape[axis])
        fwd[fwd] &= valid[up[0, fwd], up[1, fwd]]
        bwd = near & (down[axis] >= 0)
        bwd[bwd] &= valid[down[0, bwd], down[1, bwd]]
        both = fwd & bwd
        for sel, target, weight in ((both, up, 0.5), (both, down, -0.5),
                                    (fwd & ~bwd, up, 1.0), (fwd & ~bwd, qi, -1.0),
                                    (bwd & ~fwd, qi, 1.0), (bwd & ~fwd, down, -1.0)):
            rows.append(p[sel])
            cols.append(flat((target[0, sel], target[1, sel]), shape))
            vals.append(weight * offset[sel])
    return scipy.sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows),
                                                           np.concatenate(cols))),
                                   shape=(valid.size, valid.size))


def bilinear_weights(points_nm: np.ndarray, shape: tuple[int, int], pixel_size_nm: float
                     ) -> scipy.sparse.csr_matrix:
    """Sparse W (n_points, nx ny) of `bilinear_lookup`: W @ I.ravel() is the bilinear
    interpolant of the pixel-centre values at the points (clamped to the image)."""
    nx, ny = shape
    f = [np.clip(points_nm[:, k] / pixel_size_nm, 0, n - 1) for k, n in enumerate(shape)]
    i0 = [np.clip(np.floor(fk), 0, max(n - 2, 0)).astype(np.int64)
          for fk, n in zip(f, shape, strict=True)]
    t = [fk - ik for fk, ik in zip(f, i0, strict=True)]
    rows, cols, vals = [], [], []
    n = len(points_nm)
    for di in (0, 1):
        for dj in (0, 1):
            w = (t[0] if di else 1 - t[0]) * (t[1] if dj else 1 - t[1])
            i, j = np.minimum(i0[0] + di, nx - 1), np.minimum(i0[1] + dj, ny - 1)
            rows.append(np.arange(n))
            cols.append(i * ny + j)
            vals.append(w)
    return scipy.sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows),
                                                           np.concatenate(cols))),
                                   shape=(n, nx * ny))


def _prepare_image(image, V, mask, fill: str = "nearest") -> np.ndarray:
    """Image as float (nx, ny, value_size) with invalid pixels filled (nearest or linear)."""
    image = np.asarray(image, dtype=float)
    value_size = V.dofmap.index_map_bs
    if image.ndim == 2:
        image = image[..., np.newaxis]
    if image.ndim != 3 or image.shape[-1] != value_size:
        raise InputError(f"image of shape {image.shape} does not match a space with "
                         f"{value_size} component(s): expected (nx, ny) or (nx, ny, "
                         f"{value_size})", field="image")
    if mask is not None and np.shape(mask) != image.shape[:2]:
        raise InputError(f"mask shape {np.shape(mask)} differs from image shape "
                         f"{image.shape[:2]}", field="mask")
    if fill == "linear":
        return fill_linear(image, _valid_pixels(image, mask))
    if fill != "nearest":
        raise InputError(f"fill must be 'nearest' or 'linear', got {fill!r}", field="fill")
    valid = None if mask is None else np.asarray(mask, bool)
    return fill_nearest(image, valid)


#: points within this many pixels of a pixel edge take the pixel on the +x (+y) side: some
#: quadrature points lie on pixel edges (mesh vertices sit on half-pixel lines), and their
#: pixel must not depend on the rounding of the mesh coordinates (~1e-12 px)
PIXEL_EDGE_TOL = 1e-9


def pixel_lookup(image: np.ndarray, points_nm: np.ndarray, pixel_size_nm: float) -> np.ndarray:
    """Value of the pixel containing each point: image[i, j], (i, j) = floor(x/h + 1/2),
    floor(y/h + 1/2) (clamped); a point on a pixel edge (within PIXEL_EDGE_TOL) takes the
    pixel on its +x (+y) side."""
    idx = np.floor(points_nm[:, :2] / pixel_size_nm + (0.5 + PIXEL_EDGE_TOL)).astype(np.int64)
    i = np.clip(idx[:, 0], 0, image.shape[0] - 1)
    j = np.clip(idx[:, 1], 0, image.shape[1] - 1)
    return image[i, j]


def bilinear_lookup(image: np.ndarray, points_nm: np.ndarray,
                    pixel_size_nm: float) -> np.ndarray:
    """Bilinear interpolant of the pixel-centre values at points (clamped to the image)."""
    from scipy.interpolate import RegularGridInterpolator

    nx, ny = image.shape[:2]
    grid = (np.arange(nx) * pixel_size_nm, np.arange(ny) * pixel_size_nm)
    xy = np.column_stack([np.clip(points_nm[:, 0], 0, grid[0][-1]),
                          np.clip(points_nm[:, 1], 0, grid[1][-1])])
    return RegularGridInterpolator(grid, image, method="linear")(xy)


@functools.cache
def _projection_forms(coordinate_element, element, quadrature_element, quadrature_degree: int):
    """The mass form (u, v) and load form (g, v), g in the quadrature space, of
    `_l2_projection` on an abstract mesh, compiled once per process for these elements
    (`dolfinx.fem.compile_form`): every particle mesh shares them (`dolfinx.fem.create_form`)
    instead of one JIT-cache lookup per mesh.  Returns (a, L, g)."""
    import ufl
    from dolfinx import fem

    domain = ufl.Mesh(coordinate_element)
    V = ufl.FunctionSpace(domain, element)
    g = ufl.Coefficient(ufl.FunctionSpace(domain, quadrature_element))
    dx = ufl.dx(domain=domain, metadata={"quadrature_degree": quadrature_degree})
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    return (fem.compile_form(MPI.COMM_SELF, ufl.inner(u, v) * dx),
            fem.compile_form(MPI.COMM_SELF, ufl.inner(g, v) * dx), g)


def _quadrature_points(mesh, points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Physical coordinates (len(cells) * len(points), gdim) of reference `points` in
    `cells`: the affine map of the vertices for straight triangles, else a UFL Expression."""
    import ufl
    from dolfinx import fem

    if mesh.geometry.cmaps[0].degree != 1 or mesh.topology.cell_name() != "triangle":
        x = fem.Expression(ufl.SpatialCoordinate(mesh), points).eval(mesh, cells)
        return x.reshape(len(cells) * len(points), -1)
    gdim = mesh.geometry.dim
    vertices = mesh.geometry.x[mesh.geometry.dofmap[cells]][..., :gdim]  # (cells, 3, gdim)
    phi = np.column_stack([1.0 - points[:, 0] - points[:, 1], points[:, 0], points[:, 1]])
    return (phi @ vertices).reshape(len(cells) * len(points), gdim)  # P1 map, basix order


def _l2_projection(values_at, V, quadrature_degree: int):
    """f in V with (f, v) = (g, v), g given pointwise by `values_at(x) -> (n, value_size)`."""
    import basix
    import basix.ufl
    from dolfinx import fem
    from dolfinx.fem import petsc as fem_petsc
    from petsc4py import PETSc

    mesh = V.mesh
    cell = mesh.basix_cell()
    points, _ = basix.make_quadrature(cell, quadrature_degree)
    value_shape = V.value_shape
    quadrature_element = basix.ufl.quadrature_element(
        cell, value_shape=tuple(value_shape), scheme="default", degree=quadrature_degree)
    Q = fem.functionspace(mesh, quadrature_element)
    g = fem.Function(Q)
    cell_map = mesh.topology.index_map(mesh.topology.dim)
    cells = np.arange(cell_map.size_local + cell_map.num_ghosts, dtype=np.int32)
    x = _quadrature_points(mesh, points, cells)
    values = values_at(x).reshape(len(cells), len(points), -1)
    bs = Q.dofmap.index_map_bs
    dofs = Q.dofmap.list[cells]  # (cells, points) block indices
    for k in range(bs):
        g.x.array[dofs * bs + k] = values[..., k]
    a_compiled, L_compiled, g_abstract = _projection_forms(
        mesh.ufl_domain().ufl_coordinate_element(), V.ufl_element(), quadrature_element,
        quadrature_degree)
    a = fem.create_form(a_compiled, [V, V], mesh, {}, {}, {})
    L = fem.create_form(L_compiled, [V], mesh, {}, {g_abstract: g}, {})
    A = fem_petsc.assemble_matrix(a)
    A.assemble()
    b = fem_petsc.assemble_vector(L)
    b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
    ksp = PETSc.KSP().create(mesh.comm)
    ksp.setOperators(A)
    ksp.setType("cg")
    ksp.getPC().setType("jacobi")
    ksp.setTolerances(rtol=1e-12, atol=0.0, max_it=1000)
    f = fem.Function(V)
    try:
        ksp.solve(b, f.x.petsc_vec)
        if ksp.getConvergedReason() < 0:
            from chemomech.exceptions import SolverError

            raise SolverError(f"L2 projection did not converge (reason "
                              f"{ksp.getConvergedReason()})")
    finally:
        ksp.destroy()
        A.destroy()
        b.destroy()
    f.x.scatter_forward()
    return f


def image_to_function(image, pixel_size_nm: float, V, method: Literal["l2", "bilinear"] = "l2",
                      *, mask=None, quadrature_degree: int | None = None, name: str = "f",
                      fill: Literal["nearest", "linear"] = "nearest"):
    r"""FE function on V of a pixel image (nx, ny) or (nx, ny, k); x = i h, y = j h (nm).

    ``"l2"``: :math:`(f, v) = (I_h, v)\ \forall v`, I_h the piecewise-constant pixel field;
    ``"bilinear"``: f interpolates the bilinear interpolant of the pixel centres.
    NaN pixels and pixels outside `mask` are filled first: ``fill="nearest"`` (default) or
    ``"linear"`` (first-order extrapolation, :func:`fill_linear`; exact for affine data).
    Collective on the mesh communicator.
    """
    from dolfinx import fem

    if not pixel_size_nm > 0:
        raise InputError(f"pixel size must be positive, got {pixel_size_nm}",
                         field="pixel_size_nm")
    filled = _prepare_image(image, V, mask, fill)
    if method == "l2":
        degree = V.ufl_element().embedded_superdegree
        q = quadrature_degree if quadrature_degree is not None else 2 * degree + 4
        f = _l2_projection(lambda x: pixel_lookup(filled, x, pixel_size_nm), V, q)
    elif method == "bilinear":
        f = fem.Function(V)
        f.interpolate(lambda x: bilinear_lookup(filled, x.T, pixel_size_nm).T)
    else:
        raise InputError(f"method must be 'l2' or 'bilinear', got {method!r}", field="method")
    f.name = name
    return f


def _scalar_basix_element(V):
    element = V.ufl_element()
    if element.block_size > 1:
        element = element.sub_elements[0]
    if element.reference_value_size != 1 or V.element.needs_dof_transformations:
        raise NotImplementedError("PixelSampler supports (blocked) Lagrange / DG spaces only")
    return element.basix_element


def _closest_point_on_triangles(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Closest point to p[k] on the boundary of triangle tri[k] (p outside the triangle)."""
    best = np.empty_like(p)
    best_d = np.full(len(p), np.inf)
    for e in range(3):
        a, b = tri[:, e], tri[:, (e + 1) % 3]
        ab = b - a
        t = np.clip(np.einsum("ij,ij->i", p - a, ab) / np.einsum("ij,ij->i", ab, ab), 0, 1)
        q = a + t[:, None] * ab
        d = np.einsum("ij,ij->i", p - q, p - q)
        better = d < best_d
        best[better], best_d[better] = q[better], d[better]
    return best


def _containing_triangles(mesh, candidates, points: np.ndarray,
                          tol: float = 1e-10) -> np.ndarray:
    """For each point the first of its bounding-box candidate triangles (affine geometry)
    that contains it, barycentric coordinates >= -tol; -1 where none does."""
    offsets, cand = candidates.offsets, candidates.array
    point = np.repeat(np.arange(len(points)), np.diff(offsets))
    tri = mesh.geometry.x[mesh.geometry.dofmap[cand][:, :3], :2]
    J = np.stack([tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]], axis=2)
    rs = np.linalg.solve(J, (points[point] - tri[:, 0])[..., None])[..., 0]
    inside = (rs.min(axis=1) >= -tol) & (rs.sum(axis=1) <= 1.0 + tol)
    first_point, first = np.unique(point[inside], return_index=True)
    cell_of = np.full(len(points), -1, dtype=np.int32)
    cell_of[first_point] = cand[np.flatnonzero(inside)[first]]
    return cell_of


def _locate(mesh, points: np.ndarray):
    """(owned point indices, their owned cells, reference coordinates, #outside) on this rank."""
    from dolfinx import geometry

    comm = mesh.comm
    tdim = mesh.topology.dim
    n_owned_cells = mesh.topology.index_map(tdim).size_local
    entities = np.arange(n_owned_cells, dtype=np.int32)
    pts3 = np.zeros((len(points), 3))
    pts3[:, :2] = points
    tree = geometry.bb_tree(mesh, tdim, entities=entities)
    candidates = geometry.compute_collisions_points(tree, pts3)
    if mesh.geometry.cmaps[0].degree == 1 and tdim == 2:
        cell_of = _containing_triangles(mesh, candidates, points)
    else:
        colliding = geometry.compute_colliding_cells(mesh, candidates, pts3)
        offsets = colliding.offsets
        cell_of = np.full(len(points), -1, dtype=np.int32)
        hit = np.diff(offsets) > 0
        cell_of[hit] = colliding.array[offsets[:-1][hit]]
    found = cell_of >= 0

    owner = np.where(found, comm.rank, comm.size).astype(np.int32)
    comm.Allreduce(MPI.IN_PLACE, owner, op=MPI.MIN)
    outside = np.flatnonzero(owner == comm.size)
    if len(outside):
        dist = np.full(len(outside), np.inf)
        if n_owned_cells:
            midpoint_tree = geometry.create_midpoint_tree(mesh, tdim, entities)
            closest = geometry.compute_closest_entity(tree, midpoint_tree, mesh,
                                                      pts3[outside]).astype(np.int32)
            dist = geometry.squared_distance(mesh, tdim, closest, pts3[outside])
            cell_of[outside] = closest
        best = dist.copy()
        comm.Allreduce(MPI.IN_PLACE, best, op=MPI.MIN)
        cand = np.where(dist <= best, comm.rank, comm.size).astype(np.int32)
        comm.Allreduce(MPI.IN_PLACE, cand, op=MPI.MIN)
        owner[outside] = cand
    owned = np.flatnonzero(owner == comm.rank).astype(np.int64)
    cells = cell_of[owned]
    is_outside = np.isin(owned, outside)

    gx = mesh.geometry.x[:, :2]
    nodes = mesh.geometry.dofmap[cells]
    cmap = mesh.geometry.cmaps[0]
    p = points[owned].astype(float).copy()
    if cmap.degree == 1 and len(cells):
        tri = gx[nodes[:, :3]]
        if is_outside.any():
            p[is_outside] = _closest_point_on_triangles(p[is_outside], tri[is_outside])
        J = np.stack([tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]], axis=2)
        reference = np.linalg.solve(J, (p - tri[:, 0])[..., None])[..., 0]
    else:
        reference = np.zeros((len(cells), 2))
        for k in range(len(cells)):
            reference[k] = cmap.pull_back(p[k : k + 1], gx[nodes[k]])[0]
        reference = np.clip(reference, 0.0, 1.0)  # outside points: approximate clamp
    return owned, cells, reference, len(outside)


class PixelSampler:
    r"""Observation operator B: values of a FE function of V at points (pixel centres, nm).

    ``owned``: indices into ``points_nm`` this rank evaluates (each point on exactly one
    rank); ``matrix``: CSR (len(owned) * value_size, local+ghost dofs * bs), rows
    pixel-major, component-minor, so :math:`(B u)_{p,k} = \sum_a \phi_a(x_p) u_{a,k}`.
    Construction is collective.
    """

    def __init__(self, V, points_nm, *, _location=None):
        self.V = V
        self.points_nm = np.asarray(points_nm, dtype=float)[:, :2]
        location = _location if _location is not None else _locate(V.mesh, self.points_nm)
        self._location = location
        self.owned, self.cells, self.reference, self.num_outside = location
        if _location is None and V.mesh.comm.rank == 0:
            logger.info("PixelSampler: %d points, %d outside the mesh (evaluated at the "
                        "nearest cell)", len(self.points_nm), self.num_outside)
        self.value_size = V.dofmap.index_map_bs
        self.matrix = self._assemble()

    def _assemble(self) -> scipy.sparse.csr_matrix:
        bs = self.value_size
        index_map = self.V.dofmap.index_map
        n_cols = (index_map.size_local + index_map.num_ghosts) * bs
        n = len(self.owned)
        if n == 0:
            return scipy.sparse.csr_matrix((0, n_cols))
        phi = _scalar_basix_element(self.V).tabulate(0, self.reference)[0, :, :, 0]
        dofs = self.V.dofmap.list[self.cells]  # (n, ndofs_cell)
        n_cell_dofs = dofs.shape[1]
        rows = (np.arange(n)[:, None, None] * bs + np.arange(bs)[None, None, :])
        rows = np.broadcast_to(rows, (n, n_cell_dofs, bs))
        cols = dofs[:, :, None] * bs + np.arange(bs)[None, None, :]
        vals = np.broadcast_to(phi[:, :, None], (n, n_cell_dofs, bs))
        B = scipy.sparse.coo_matrix((vals.ravel(), (rows.ravel(), cols.ravel())),
                                    shape=(n * bs, n_cols))
        return B.tocsr()

    def for_space(self, W) -> PixelSampler:
        """A sampler on another space W of the same mesh, reusing the point location."""
        if W.mesh is not self.V.mesh:
            raise ValueError("for_space needs a space on the same mesh")
        return PixelSampler(W, self.points_nm, _location=self._location)

    def __call__(self, u) -> np.ndarray:
        """(B u) as (len(owned), value_size); collective (updates u's ghosts first)."""
        u.x.scatter_forward()
        return (self.matrix @ u.x.array).reshape(-1, self.value_size)

    def transpose_apply(self, values, out=None):
        r""":math:`B^T w` as a dolfinx ``la.Vector`` (owned entries summed over ranks, ghosts
        updated); `values` (len(owned), value_size).  Collective.  ``.petsc_vec`` for PETSc."""
        from dolfinx import la

        values = np.asarray(values, dtype=float).reshape(-1)
        if values.size != self.matrix.shape[0]:
            raise ValueError(f"expected {self.matrix.shape[0]} values, got {values.size}")
        if out is None:
            out = la.vector(self.V.dofmap.index_map, self.V.dofmap.index_map_bs)
        out.array[:] = self.matrix.T @ values
        out.scatter_reverse(la.InsertMode.add)
        out.scatter_forward()
        return out

    def gather(self, values, root: int = 0) -> np.ndarray | None:
        """Full (n_points, value_size) array of per-rank `values` on `root` (None elsewhere)."""
        comm = self.V.mesh.comm
        values = np.asarray(values).reshape(len(self.owned), -1)
        parts = comm.gather((self.owned, values), root=root)
        if comm.rank != root:
            return None
        full = np.full((len(self.points_nm), values.shape[1]), np.nan)
        for idx, vals in parts:
            full[idx] = vals
        return full


def sample_expression(expr, sampler: PixelSampler, degree: int | None = None) -> np.ndarray:
    r"""A UFL expression (e.g. :math:`\varepsilon(u)`) at the sampler's points, shape
    (len(owned), \*expr.ufl_shape): interpolated into DG(`degree`) (default: the sampler's
    degree - 1, exact for first derivatives on affine cells), then sampled.  Collective."""
    from dolfinx import fem

    if degree is None:
        degree = max(sampler.V.ufl_element().embedded_superdegree - 1, 0)
    shape = tuple(expr.ufl_shape)
    W = fem.functionspace(sampler.V.mesh, ("Discontinuous Lagrange", degree, shape))
    w = fem.Function(W)
    w.interpolate(fem.Expression(expr, W.element.interpolation_points))
    values = sampler.for_space(W)(w)
    return values.reshape((len(sampler.owned), *shape))


def model_maps(u, strain_expr, pm, shape: tuple[int, int],
               sampler: PixelSampler | None = None) -> dict[str, np.ndarray]:
    """u and eps(u) of the model at the meshed pixels, as images on the group's rank 0.

    `sampler`: a `PixelSampler` at ``pm.pixel_points_nm()`` on a space of u's mesh and element
    (e.g. the misfit's) to reuse its point location; by default a new one is built."""
    if sampler is None or sampler.V.mesh is not u.function_space.mesh \
            or len(sampler.points_nm) != len(pm.pixel_indices()):
        sampler = PixelSampler(u.function_space, pm.pixel_points_nm())
    elif sampler.V is not u.function_space:
        sampler = sampler.for_space(u.function_space)
    u_values = sampler.gather(sampler(u))
    eps_values = sampler.gather(sample_expression(strain_expr, sampler).reshape(-1, 4))
    if u_values is None:
        return {}
    idx = pm.pixel_indices()
    out = {}
    for key, column in (("u_x", u_values[:, 0]), ("u_y", u_values[:, 1]),
                        ("e_xx", eps_values[:, 0]), ("e_yy", eps_values[:, 3]),
                        ("e_xy", eps_values[:, 1])):
        image = np.full(shape, np.nan)
        image[idx[:, 0], idx[:, 1]] = column
        out[key] = image
    out["meshed_mask"] = np.zeros(shape)
    out["meshed_mask"][idx[:, 0], idx[:, 1]] = 1.0
    return out
