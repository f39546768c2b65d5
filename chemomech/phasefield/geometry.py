r"""Particle masks for the phase-field model: a generated platelet or a mask from a file.

The generated platelet is the superellipse :math:`|\xi/A|^p + |\eta/B|^p \le 1` on a pixel
grid (x = i h, y = j h, nm; DESIGN §2), its long axis at `long_axis_rad` from image x, with
``pores`` circular through-thickness pores (2-D holes) of radius `pore_radius_nm`, placed by
``numpy.random.default_rng(seed)`` at least two pixels from the edge and from each other.
The mask is then meshed by `chemomech.mechanics.mesh.mesh_from_mask` (which also repairs it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from chemomech.exceptions import InputError

#: Empty pixels around the generated platelet.
MARGIN_PX = 3


@dataclass
class Platelet3D:
    """An extruded platelet: tetrahedral mesh (nm), the projected pixel mask and its pores."""

    mesh: object  #: dolfinx.mesh.Mesh, z along the beam in [0, thickness_nm]
    mask: np.ndarray  #: bool (nx, ny): the repaired mask that was extruded
    pixel_size_nm: float
    thickness_nm: float
    voids: list = field(default_factory=list)  #: (x, y, z, r, r_z) nm per pore


def platelet_mask(length_nm: float, width_nm: float, pixel_size_nm: float, *,
                  exponent: float = 2.5, long_axis_rad: float = 0.0, pores: int = 0,
                  pore_radius_nm: float = 60.0, seed: int = 0) -> np.ndarray:
    """Bool mask [i, j] of the superellipse platelet minus `pores` circular pores."""
    h = float(pixel_size_nm)
    if not (length_nm > 0 and width_nm > 0 and h > 0 and exponent > 0):
        raise InputError("length_nm, width_nm, pixel_size_nm and exponent must be > 0",
                         field="geometry")
    if length_nm < 6 * h or width_nm < 6 * h:
        raise InputError(f"the platelet ({length_nm} x {width_nm} nm) spans fewer than six "
                         f"pixels of {h} nm", field="geometry")
    A, B = length_nm / 2.0, width_nm / 2.0
    half = int(math.ceil(max(A, B) / h)) + MARGIN_PX
    n = 2 * half + 1
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    dx, dy = (i - half) * h, (j - half) * h
    ca, sa = math.cos(long_axis_rad), math.sin(long_axis_rad)
    xi, eta = dx * ca + dy * sa, -dx * sa + dy * ca
    mask = np.abs(xi / A) ** exponent + np.abs(eta / B) ** exponent <= 1.0
    rows, cols = np.nonzero(mask)
    mask = mask[rows.min() - MARGIN_PX: rows.max() + MARGIN_PX + 1,
                cols.min() - MARGIN_PX: cols.max() + MARGIN_PX + 1]
    if pores:
        mask = carve_pores(mask, h, pores, pore_radius_nm, seed)
    return mask


def carve_pores(mask: np.ndarray, pixel_size_nm: float, pores: int, radius_nm: float,
                seed: int) -> np.ndarray:
    """`mask` minus `pores` discs of `radius_nm`, each >= 2 px from the edge and each other."""
    h = float(pixel_size_nm)
    if radius_nm < 1.5 * h:
        raise InputError(f"pore radius {radius_nm} nm is below 1.5 pixels ({1.5 * h:.3g} nm): "
                         "the mesher would fill it", field="pore_radius_nm")
    i, j = np.meshgrid(*(np.arange(s) for s in mask.shape), indexing="ij")
    out = mask.copy()
    for x, y in _pore_centres(mask, h, pores, radius_nm, seed):
        out &= (i * h - x) ** 2 + (j * h - y) ** 2 > radius_nm ** 2
    return out


def mask_from_file(path: str, particle: str | None = None) -> tuple[np.ndarray, float, str]:
    """(mask, pixel size nm, particle name) of one particle of a stack / .mat / py4DSTEM file."""
    from chemomech.io.readers import read_particles

    particles = read_particles([path])
    if particle is not None:
        particles = [p for p in particles if p.name == particle]
        if not particles:
            raise InputError(f"no particle named {particle!r}", path=str(path),
                             field="particle")
    p = particles[0]
    return p.mask.copy(), float(p.pixel_size_nm), p.name


def _pore_centres(mask: np.ndarray, h: float, pores: int, radius_nm: float,
                  seed: int) -> list[tuple[float, float]]:
    """In-plane centres (nm) of `pores` discs of `radius_nm`, >= 2 px from the edge and apart."""
    if pores < 0 or not radius_nm > 0:
        raise InputError(f"need pores >= 0 and pore_radius_nm > 0 (got {pores}, {radius_nm})",
                         field="pores")
    rng = np.random.default_rng(seed)
    free = mask.copy()
    i, j = np.meshgrid(*(np.arange(s) for s in mask.shape), indexing="ij")
    centres = []
    for k in range(pores):
        room = ndimage.distance_transform_edt(free) * h
        candidates = np.flatnonzero(room.ravel() > radius_nm + 2.0 * h)
        if candidates.size == 0:
            raise InputError(f"no room for pore {k + 1} of radius {radius_nm} nm",
                             field="pores")
        ci, cj = np.unravel_index(candidates[rng.integers(candidates.size)], mask.shape)
        free &= (i - ci) ** 2 + (j - cj) ** 2 > ((radius_nm + 2.0 * h) / h) ** 2
        centres.append((float(ci * h), float(cj * h)))
    return centres


def extruded_platelet_mesh(mask: np.ndarray, pixel_size_nm: float, thickness_nm: float,
                           comm, *, mesh_size_px: float = 1.0, pores: int = 0,
                           pore_radius_nm: float = 60.0, seed: int = 0):
    r"""Tetrahedral mesh (nm) of the mask's particle extruded to `thickness_nm` along z (the
    beam, crystal b), with `pores` closed voids at mid-thickness: ellipsoids of in-plane
    radius `pore_radius_nm` and z semi-axis :math:`\min(r, 0.35 t)` (spheres when they fit).
    Returns a `Platelet3D`.  gmsh OCC on rank 0."""
    from dolfinx.io import gmsh as gmshio

    from chemomech.mechanics.mesh import gmsh_session, repair_mask, trace_boundaries

    h, t = float(pixel_size_nm), float(thickness_nm)
    if not t > 0:
        raise InputError(f"must be > 0, got {thickness_nm}", field="thickness_nm")
    mask = repair_mask(mask)
    loops = [loop * h for loop in trace_boundaries(mask, 0.25)]
    r_z = min(pore_radius_nm, 0.35 * t)
    voids = [(x, y, 0.5 * t, pore_radius_nm, r_z)
             for x, y in _pore_centres(mask, h, pores, pore_radius_nm, seed)] if pores else []
    lc = mesh_size_px * h
    with gmsh_session("platelet", comm) as gmsh:
        if comm.rank == 0:
            gmsh.model.add("platelet")
            occ = gmsh.model.occ
            curve_loops = []
            for loop in loops:
                pts = [occ.addPoint(float(x), float(y), 0.0) for x, y in loop]
                lines = [occ.addLine(pts[k], pts[(k + 1) % len(pts)]) for k in range(len(pts))]
                curve_loops.append(occ.addCurveLoop(lines))
            surface = occ.addPlaneSurface(curve_loops)
            extruded = occ.extrude([(2, surface)], 0.0, 0.0, t)
            volumes = [e for e in extruded if e[0] == 3]
            if voids:
                tools = []
                for x, y, z, r, rz in voids:
                    tag = occ.addSphere(x, y, z, r)
                    if rz < r:
                        occ.dilate([(3, tag)], x, y, z, 1.0, 1.0, rz / r)
                    tools.append((3, tag))
                volumes, _ = occ.cut(volumes, tools)
            occ.synchronize()
            gmsh.model.addPhysicalGroup(3, [v[1] for v in volumes], 1, name="particle")
            gmsh.option.setNumber("Mesh.MeshSizeMax", lc)
            gmsh.option.setNumber("Mesh.MeshSizeMin", 0.25 * lc)
            gmsh.model.mesh.generate(3)
        data = gmshio.model_to_mesh(gmsh.model, comm, 0, gdim=3)
    return Platelet3D(data.mesh, mask, h, t, voids)
