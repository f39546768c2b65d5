r"""Triangle meshes of particles from pixel masks (gmsh, distributed with DOLFINx).

The particle of a binary mask is the union of its pixels, pixel (i, j) being the square of
side h centred at :math:`(x, y) = (i h, j h)` (nm).  Its boundary is traced with marching
squares at level 0.5 on the zero-padded mask (``skimage.measure.find_contours``), so it runs
half a pixel outside the outermost pixel centres (cutting convex pixel corners by a diagonal),
then simplified by Douglas-Peucker at a sub-pixel tolerance (``approximate_polygon``): every
pixel centre of the mask stays inside the mesh when ``simplify_tol_px < 0.35``.  The outer
contour and every hole become one gmsh plane surface, meshed on rank 0 with a size field
(``mesh_size_px`` pixels by default, optionally finer where the composition gradient is high):
Frontal-Delaunay at twice the size, then every triangle split into four at its edge
midpoints (`split_triangles`, numpy: the triangles of gmsh's ``refine`` at a fraction of its
cost; gmsh at the full size costs five times more), and distributed with
:func:`dolfinx.mesh.create_mesh`.  `remesh` meshes the same repaired mask and polygon at
another size (no second repair or contour trace).

Mask repair, all logged: connected components (4-connectivity, the convention of the contour
tracer) below ``min_island_px`` pixels are dropped with a warning; several particles left in
one mask are an error (use :func:`split_particles`); one-pixel-wide bridges and spurs (pixels
in no fully-inside 2x2 block) are removed by a morphological opening with a 2x2 square
(``thin="open"``, or ``thin="raise"``); holes smaller than ``min_hole_px`` pixels are filled.

Tags: cells ``PARTICLE_TAG``; facets ``OUTER_TAG`` on the outer boundary, ``HOLE_TAG`` on holes
(`ParticleMesh.facet_tags`, computed on first use).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from mpi4py import MPI
from scipy import ndimage

from chemomech.exceptions import InputError
from chemomech.io.parallel import signals_deferred

logger = logging.getLogger(__name__)

PARTICLE_TAG = 1
OUTER_TAG = 1
HOLE_TAG = 2

#: 4-connectivity for particle pixels (marching squares with fully_connected="low").
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
_EIGHT_CONNECTED = ndimage.generate_binary_structure(2, 2)


@dataclass
class ParticleMesh:
    """A meshed particle: DOLFINx mesh (nm), its tags and the pixel mask actually meshed."""

    mesh: object  #: dolfinx.mesh.Mesh, coordinates in nm
    cell_tags: object  #: dolfinx.mesh.MeshTags, PARTICLE_TAG on every cell
    mask: np.ndarray  #: bool (nx, ny): the repaired mask that was meshed
    pixel_size_nm: float
    boundaries_nm: list[np.ndarray] = field(default_factory=list)  #: outer first, then holes
    _facet_tags: object = field(default=None, repr=False)

    @property
    def facet_tags(self):
        """dolfinx.mesh.MeshTags, OUTER_TAG / HOLE_TAG on the exterior facets (computed on
        first use: the inversion does not need them); collective on the first call."""
        if self._facet_tags is None:
            self._facet_tags = _facet_tags(self.mesh, self.boundaries_nm)
        return self._facet_tags

    @property
    def area_nm2(self) -> float:
        """Area of the meshed polygon: outer minus holes (nm^2)."""
        areas = [abs(polygon_area(p)) for p in self.boundaries_nm]
        return float(areas[0] - sum(areas[1:])) if areas else 0.0

    def pixel_indices(self) -> np.ndarray:
        """(n, 2) integer (i, j) of the meshed pixels, in C order of the image."""
        return np.argwhere(self.mask)

    def pixel_points_nm(self) -> np.ndarray:
        """(n, 2) pixel-centre coordinates x = i h, y = j h (nm) of the meshed pixels."""
        return self.pixel_indices().astype(float) * self.pixel_size_nm

    def write_xdmf(self, path) -> None:
        """Write the mesh ("particle") and facet tags ("facets") to XDMF/HDF5; collective."""
        from dolfinx.io import XDMFFile

        self.facet_tags.name = "facets"
        with XDMFFile(self.mesh.comm, str(path), "w") as xdmf:
            xdmf.write_mesh(self.mesh)
            self.mesh.topology.create_connectivity(1, 2)
            xdmf.write_meshtags(self.facet_tags, self.mesh.geometry)


def polygon_area(points: np.ndarray) -> float:
    r"""Signed shoelace area :math:`\tfrac12\sum_k (x_k y_{k+1} - x_{k+1} y_k)` (units^2)."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def _as_mask(mask, name: str = "mask") -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"expected a 2-D mask, got shape {mask.shape}", field=name)
    if mask.dtype != bool:
        if not np.all(np.isfinite(mask)):
            raise InputError("mask contains NaN or inf", field=name)
        mask = mask > 0.5 if mask.dtype.kind == "f" else mask != 0
    if not mask.any():
        raise InputError("mask is empty (no pixel inside the particle)", field=name)
    return mask


def split_particles(mask, min_island_px: int = 20) -> list[np.ndarray]:
    """One bool mask per 4-connected particle of >= `min_island_px` pixels, largest first."""
    mask = _as_mask(mask)
    labels, n = ndimage.label(mask, structure=_FOUR_CONNECTED)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = [k + 1 for k in np.argsort(-sizes, kind="stable") if sizes[k] >= min_island_px]
    dropped = int(np.sum(sizes < min_island_px))
    if dropped:
        msg = (f"dropped {dropped} island(s) smaller than {min_island_px} px "
               f"({int(sizes[sizes < min_island_px].sum())} px in total)")
        warnings.warn(msg, stacklevel=2)
        logger.warning(msg)
    if not keep:
        raise InputError(f"no particle of at least {min_island_px} px in the mask", field="mask")
    return [labels == k for k in keep]


def check_composition(X, mask: np.ndarray, name: str = "X", path: str | None = None) -> None:
    """Raise InputError unless X is finite and in [0, 1] on every pixel of `mask`."""
    X = np.asarray(X, dtype=float)
    if X.shape != mask.shape:
        raise InputError(f"shape {X.shape} differs from the mask's {mask.shape}",
                         field=name, path=path)
    inside = X[mask]
    n_nan = int(np.sum(~np.isfinite(inside)))
    if n_nan:
        raise InputError(f"{n_nan} pixel(s) inside the particle are NaN/inf", field=name,
                         path=path)
    lo, hi = float(inside.min()), float(inside.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(f"Li fraction must lie in [0, 1] inside the particle, found "
                         f"[{lo:.4g}, {hi:.4g}]", field=name, path=path)


def repair_mask(mask, *, min_island_px: int = 20, min_hole_px: int = 4,
                thin: Literal["open", "raise"] = "open") -> np.ndarray:
    """The mask that gets meshed: thin features opened, small islands dropped, small holes filled.

    Raises InputError when the particle touches the image border or several particles remain.
    """
    mask = _as_mask(mask)
    if mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any():
        raise InputError("the particle touches the image border, so its boundary is not "
                         "known; crop a larger field of view or pad the mask", field="mask")
    opened = ndimage.binary_opening(mask, structure=np.ones((2, 2), bool))
    n_thin = int(np.sum(mask & ~opened))
    if n_thin:
        if thin == "raise":
            raise InputError(f"{n_thin} pixel(s) form one-pixel-wide bridges or spurs",
                             field="mask")
        if thin != "open":
            raise InputError(f"thin must be 'open' or 'raise', got {thin!r}", field="thin")
        logger.info("removed %d pixel(s) of one-pixel-wide bridges/spurs (2x2 opening)", n_thin)
        if not opened.any():
            raise InputError("nothing is left after removing one-pixel-wide features",
                             field="mask")
    particles = split_particles(opened, min_island_px)
    if len(particles) > 1:
        raise InputError(f"the mask holds {len(particles)} separate particles of >= "
                         f"{min_island_px} px; mesh each one: "
                         "chemomech.mechanics.mesh.split_particles(mask) returns one mask "
                         "per particle",
                         field="mask")
    mask = particles[0]
    background, n_bg = ndimage.label(~mask, structure=_EIGHT_CONNECTED)
    outside = background[0, 0]
    sizes = np.bincount(background.ravel(), minlength=n_bg + 1)
    small = [k for k in range(1, n_bg + 1) if k != outside and sizes[k] < min_hole_px]
    if small:
        logger.info("filled %d hole(s) smaller than %d px", len(small), min_hole_px)
        mask = mask | np.isin(background, small)
    return mask


def trace_boundaries(mask: np.ndarray, simplify_tol_px: float = 0.25) -> list[np.ndarray]:
    """Outer contour then holes of a single-particle mask, in pixel units (i, j), simplified.

    Contours at level 0.5 of the zero-padded mask: half a pixel outside the pixel centres.
    """
    from skimage.measure import approximate_polygon, find_contours

    padded = np.pad(mask.astype(float), 1)
    loops = []
    for contour in find_contours(padded, 0.5):
        if not np.allclose(contour[0], contour[-1]):
            raise InputError("open contour on a padded mask (internal error)", field="mask")
        if simplify_tol_px > 0:
            contour = approximate_polygon(contour, tolerance=simplify_tol_px)
        loop = contour[:-1] - 1.0  # unpad; drop the repeated closing point
        if len(loop) >= 3:
            loops.append(loop)
    loops.sort(key=lambda p: -abs(polygon_area(p)))
    return loops


def _size_map_view(gmsh, size_px: np.ndarray, h: float) -> int:
    """A gmsh list-based post-processing view of the pixel size map (linear triangles)."""
    nx, ny = size_px.shape
    ii, jj = np.meshgrid(np.arange(nx - 1), np.arange(ny - 1), indexing="ij")
    ii, jj = ii.ravel(), jj.ravel()
    tris = []
    for corners in (((0, 0), (1, 0), (1, 1)), ((0, 0), (1, 1), (0, 1))):
        ci = np.stack([ii + a for a, _ in corners], axis=1)
        cj = np.stack([jj + b for _, b in corners], axis=1)
        # gmsh "ST": x1 x2 x3 y1 y2 y3 z1 z2 z3 v1 v2 v3; pixel (i, j) at ((i-1) h, (j-1) h)
        tris.append(np.hstack([(ci - 1) * h, (cj - 1) * h, np.zeros_like(ci, float),
                               size_px[ci, cj] * h]))
    data = np.vstack(tris)
    view = gmsh.view.add("mesh size")
    gmsh.view.addListData(view, "ST", len(data), data.ravel().tolist())
    return view


def refinement_size_map(X: np.ndarray, mask: np.ndarray, mesh_size_px: float,
                        refine_size_px: float, gradient_per_px: float,
                        distance_px: float) -> np.ndarray:
    """Pixel map of target sizes (px): `refine_size_px` within `distance_px` of |grad X| >= thr."""
    filled = fill_nearest(X, mask)
    gx, gy = np.gradient(filled)
    steep = (np.hypot(gx, gy) >= gradient_per_px) & mask
    near = ndimage.distance_transform_edt(~steep) <= distance_px
    return np.where(near, refine_size_px, mesh_size_px)


def fill_nearest(image: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Copy of `image` with NaN (or pixels outside `valid`) set to the nearest valid pixel."""
    image = np.asarray(image, dtype=float)
    valid_px = np.isfinite(image) if image.ndim == 2 else np.all(np.isfinite(image), axis=-1)
    if valid is not None:
        valid_px &= valid
    if not valid_px.any():
        raise InputError("image has no finite value inside the mask", field="image")
    if valid_px.all():
        return image.copy()
    _, (ii, jj) = ndimage.distance_transform_edt(~valid_px, return_indices=True)
    return image[ii, jj]


def _build_gmsh_model(gmsh, loops_nm: list[np.ndarray], lc: float,
                      size_map: np.ndarray | None, h: float) -> None:
    """Mesh the polygon `loops_nm` (outer first) on rank 0 at twice the element size `lc`
    (nm), or at twice `size_map` (px) times h, by Frontal-Delaunay; `split_triangles` then
    halves it.  The size is the same everywhere the size field says it (neither the
    polygon's short segments nor its corner sizes spread inwards)."""
    gmsh.model.add("particle")
    curve_loops = []
    for loop in loops_nm:
        points = [gmsh.model.geo.addPoint(float(x), float(y), 0.0) for x, y in loop]
        lines = [gmsh.model.geo.addLine(points[k], points[(k + 1) % len(points)])
                 for k in range(len(points))]
        curve_loops.append(gmsh.model.geo.addCurveLoop(lines))
    gmsh.model.geo.addPlaneSurface(curve_loops)
    gmsh.model.geo.synchronize()
    gmsh.option.setNumber("Mesh.Algorithm", 6)  # Frontal-Delaunay: well-shaped triangles
    gmsh.option.setNumber("Mesh.MeshSizeMax", _COARSENING * lc)
    gmsh.option.setNumber("Mesh.MeshSizeFromPoints", 0)
    gmsh.option.setNumber("Mesh.MeshSizeExtendFromBoundary", 0)
    gmsh.option.setNumber("Mesh.MeshSizeFromCurvature", 0)
    view = fid = None
    if size_map is not None:
        view = _size_map_view(gmsh, _COARSENING * np.pad(size_map, 1, mode="edge"), h)
        fid = gmsh.model.mesh.field.add("PostView")
        gmsh.model.mesh.field.setNumber(fid, "ViewTag", view)
        gmsh.model.mesh.field.setAsBackgroundMesh(fid)
    gmsh.model.mesh.generate(2)
    if size_map is not None:
        gmsh.model.mesh.field.remove(fid)
        gmsh.view.remove(view)


#: generate at this multiple of the target size, then split every triangle into four
_COARSENING = 2.0


def split_triangles(cells: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Uniform 1:4 split of a triangle mesh (cells (n, 3), nodes (m, 2)): a node at every
    edge midpoint, each triangle (a, b, c) replaced by (a, m_ab, m_ca), (m_ab, b, m_bc),
    (m_ca, m_bc, c), (m_ab, m_bc, m_ca) with its orientation (gmsh's ``refine`` of linear
    triangles; the children keep their parent's shape, boundary midpoints lie on the
    polygon).  Returns (cells (4n, 3), nodes (m + edges, 2))."""
    cells = np.asarray(cells, dtype=np.int64)
    m = len(nodes)
    edges = np.concatenate([cells[:, [0, 1]], cells[:, [1, 2]], cells[:, [2, 0]]])
    key = edges.min(axis=1) * m + edges.max(axis=1)
    unique, inverse = np.unique(key, return_inverse=True)
    lo, hi = unique // m, unique % m
    new_nodes = np.vstack([nodes, 0.5 * (nodes[lo] + nodes[hi])])
    m01, m12, m20 = (m + inverse.reshape(3, -1)).astype(np.int64)
    a, b, c = cells.T
    children = [(a, m01, m20), (m01, b, m12), (m20, m12, c), (m01, m12, m20)]
    return np.vstack([np.stack(t, axis=1) for t in children]), new_nodes


def _triangles(gmsh) -> tuple[np.ndarray, np.ndarray]:
    """(cells (n, 3) int64 node indices, nodes (m, 2) float nm) of gmsh's current mesh."""
    tags, coords, _ = gmsh.model.mesh.getNodes()
    index = np.zeros(int(tags.max()) + 1, dtype=np.int64)
    index[tags.astype(np.int64)] = np.arange(len(tags))
    _, node_tags = gmsh.model.mesh.getElementsByType(2)  # 2: 3-node triangle
    cells = index[node_tags.astype(np.int64)].reshape(-1, 3)
    return cells, coords.reshape(-1, 3)[:, :2]


def _to_dolfinx(cells: np.ndarray, nodes: np.ndarray, comm: MPI.Comm):
    """DOLFINx mesh (distributed over `comm` from rank 0's arrays) with PARTICLE_TAG on every
    cell."""
    import basix.ufl
    from dolfinx import mesh as dmesh

    element = basix.ufl.element("Lagrange", "triangle", 1, shape=(2,))
    msh = dmesh.create_mesh(comm, cells, element, nodes)
    n_cells = msh.topology.index_map(2).size_local
    cell_tags = dmesh.meshtags(msh, 2, np.arange(n_cells, dtype=np.int32),
                               np.full(n_cells, PARTICLE_TAG, dtype=np.int32))
    return msh, cell_tags


def _facet_tags(msh, loops_nm: list[np.ndarray]):
    """OUTER_TAG or HOLE_TAG on the exterior facets: the loop nearest the facet midpoint
    (midpoints lie on the polygon, so the nearest loop is at distance 0)."""
    from dolfinx import mesh as dmesh

    msh.topology.create_connectivity(1, 2)
    facets = dmesh.exterior_facet_indices(msh.topology)
    values = np.full(len(facets), OUTER_TAG, dtype=np.int32)
    if len(loops_nm) > 1:  # holes: the nearest loop decides
        mid = dmesh.compute_midpoints(msh, 1, facets)[:, :2]
        distance = np.stack([_distance_to_loop(mid, loop) for loop in loops_nm], axis=1)
        values[np.argmin(distance, axis=1) != 0] = HOLE_TAG
    return dmesh.meshtags(msh, 1, facets.astype(np.int32), values)


def _distance_to_loop(points: np.ndarray, loop: np.ndarray) -> np.ndarray:
    """Distance (units of the input) from each of `points` (n, 2) to the closed polygon."""
    a, b = loop, np.roll(loop, -1, axis=0)
    ab = b - a
    t = np.einsum("nsk,sk->ns", points[:, None, :] - a[None], ab) / np.sum(ab * ab, axis=1)
    foot = a[None] + np.clip(t, 0.0, 1.0)[..., None] * ab[None]
    return np.linalg.norm(points[:, None, :] - foot, axis=2).min(axis=1)


@contextmanager
def gmsh_session(model_name: str, comm: MPI.Comm) -> Iterator:
    """The gmsh module, initialised (quiet, not interruptible) unless it already was; on exit
    the model `model_name` is removed on rank 0 and gmsh finalised if started here.

    SIGINT/SIGTERM wait until the session ends (and the mesh is distributed inside it): an
    exception unwinding through a half-built gmsh model would leave C state behind."""
    import gmsh

    with signals_deferred():
        started_here = not gmsh.isInitialized()
        if started_here:
            gmsh.initialize(interruptible=False)
        gmsh.option.setNumber("General.Terminal", 0)
        try:
            yield gmsh
        finally:
            if comm.rank == 0 and model_name in gmsh.model.list():
                gmsh.model.setCurrent(model_name)
                gmsh.model.remove()
            if started_here:
                gmsh.finalize()


#: triangles per px^2 of a mesh of size 1 px (measured: 2.47; scales as size^-2)
CELLS_PER_PX2 = 2.5
#: refused above this estimated cell count per particle: gmsh, in one call that signals
#: cannot interrupt, would run for minutes and take gigabytes
MAX_CELLS = 5e6


def _check_cell_count(mask: np.ndarray, smallest_px: float) -> None:
    """Refuse a size whose estimated cell count exceeds MAX_CELLS, before gmsh."""
    expected = CELLS_PER_PX2 * int(mask.sum()) / smallest_px**2
    if expected > MAX_CELLS:
        raise InputError(f"mesh size {smallest_px:g} px would give about {expected:.2g} cells "
                         f"for this {int(mask.sum())} px particle (at most {MAX_CELLS:.0e}): "
                         "choose a larger size", field="mesh.size_px")


def mesh_from_mask(mask, pixel_size_nm: float, comm: MPI.Comm = MPI.COMM_WORLD, *,
                   mesh_size_px: float = 1.0, simplify_tol_px: float = 0.25,
                   min_island_px: int = 20, min_hole_px: int = 4,
                   thin: Literal["open", "raise"] = "open", refine=None,
                   refine_size_px: float = 0.5, refine_gradient_per_px: float = 0.05,
                   refine_distance_px: float = 2.0) -> ParticleMesh:
    r"""Triangle mesh (nm, :math:`x = i h, y = j h`) of the one particle of `mask`.

    Collective on `comm`; every rank passes the same mask.  `refine`: an optional composition
    image X (same shape, [0, 1] inside the mask, checked); cells are ``refine_size_px`` where
    :math:`|\nabla X| \ge` ``refine_gradient_per_px`` (per pixel) within ``refine_distance_px``.
    """
    if not pixel_size_nm > 0:
        raise InputError(f"pixel size must be positive, got {pixel_size_nm}",
                         field="pixel_size_nm")
    if not mesh_size_px > 0 or not 0 <= simplify_tol_px < 0.5:
        raise InputError("need mesh_size_px > 0 and 0 <= simplify_tol_px < 0.5 "
                         f"(got {mesh_size_px}, {simplify_tol_px})", field="mesh_size_px")
    mask = repair_mask(mask, min_island_px=min_island_px, min_hole_px=min_hole_px, thin=thin)
    _check_cell_count(mask, min(mesh_size_px, refine_size_px) if refine is not None
                      else mesh_size_px)
    size_map = None
    if refine is not None:
        check_composition(refine, mask, name="refine")
        size_map = refinement_size_map(np.asarray(refine, float), mask, mesh_size_px,
                                       refine_size_px, refine_gradient_per_px,
                                       refine_distance_px)
    h = float(pixel_size_nm)
    loops_nm = [loop * h for loop in trace_boundaries(mask, simplify_tol_px)]
    return _mesh_polygon(mask, loops_nm, h, comm, mesh_size_px, size_map)


def remesh(pm: ParticleMesh, mesh_size_px: float, comm: MPI.Comm | None = None
           ) -> ParticleMesh:
    """The particle of `pm` (its repaired mask and traced polygon) meshed at another uniform
    size `mesh_size_px` (e.g. the coarse mesh of a discretisation estimate); collective on
    `comm` (default: pm's)."""
    if not mesh_size_px > 0:
        raise InputError(f"need mesh_size_px > 0, got {mesh_size_px}", field="mesh_size_px")
    _check_cell_count(pm.mask, mesh_size_px)
    return _mesh_polygon(pm.mask, [np.array(b) for b in pm.boundaries_nm], pm.pixel_size_nm,
                         pm.mesh.comm if comm is None else comm, mesh_size_px, None)


def _mesh_polygon(mask: np.ndarray, loops_nm: list[np.ndarray], h: float, comm: MPI.Comm,
                  mesh_size_px: float, size_map: np.ndarray | None) -> ParticleMesh:
    """gmsh (rank 0) + `split_triangles` + DOLFINx distribution of a traced particle."""
    with gmsh_session("particle", comm) as gmsh:
        error = None
        if comm.rank == 0:
            try:
                _build_gmsh_model(gmsh, loops_nm, mesh_size_px * h, size_map, h)
            except Exception as exc:  # gmsh raises bare Exceptions
                error = f"gmsh could not mesh the particle: {exc}"
        error = comm.bcast(error, root=0)
        if error is not None:
            raise InputError(error, field="mask")
        cells, nodes = split_triangles(*_triangles(gmsh)) if comm.rank == 0 else (
            np.empty((0, 3), np.int64), np.empty((0, 2)))
    msh, cell_tags = _to_dolfinx(cells, nodes, comm)
    msh.name = "particle"
    n_cells = msh.topology.index_map(2).size_global
    logger.info("meshed particle: %d px, %d hole(s), %d cells (h = %.4g nm, size %.3g px)",
                int(mask.sum()), len(loops_nm) - 1, n_cells, h, mesh_size_px)
    return ParticleMesh(msh, cell_tags, mask, h, loops_nm)
